using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86.Pv;
using XenSharp.Public;
using static XenSharp.Public.Mmu;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// The PV MMU for a 32-bit PAE PV domain (the compat ABI): its base is a PAE L3 of four entries, the last of which
/// Xen keeps; PDPTEs get the rights the long-mode walk needs; its kernel runs in ring 1, so entries are not made
/// user ones and descriptors need only DPL 1; mmuext_op comes in the 12-byte compat layout; L4s are not its own.
/// </summary>
public class PvCompatMmTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong P = PvMm.PAGE_PRESENT, RW = PvMm.PAGE_RW, User = PvMm.PAGE_USER;
    // VA 0x400000: L3[0] → L2[2] → L1[0] → Data; L3[3] → L2Top (the gigabyte Xen keeps an entry of).
    private const ulong L3 = 0x100, L2 = 0x102, L1 = 0x103, L2Top = 0x104, Data = 0x110, Args = 0x120;

    private sealed class Pv32Guest
    {
        public readonly Guest G;

        public Pv32Guest(XenHypervisor host)
        {
            G = new(host, vcpus: 1, ramMiB: 4, maxMiB: 8, type: DomainKind.Pv);
            host.PvSetAddressSize(G.Id, 32);
        }

        public FrameTable Frames => G.Domain.Host.Frames;
        public ulong Mfn(ulong gfn) => G.Domain.P2m.TryLookup(gfn, out uint mfn, out _) ? mfn : throw new InvalidOperationException();
        public ulong Pte(ulong gfn, ulong flags) => (Mfn(gfn) << 12) | flags;
        public ulong Ma(ulong gfn, ulong offset = 0) => (Mfn(gfn) << 12) + offset;

        public void BuildTree(bool withTop = true)
        {
            G.Write(L3 << 12, Pte(L2, P));
            if (withTop)
                G.Write((L3 << 12) + 3 * 8, Pte(L2Top, P));
            G.Write((L2 << 12) + 2 * 8, Pte(L1, P | RW));
            G.Write(L1 << 12, Pte(Data, P | RW));
        }

        public long Mmuext(uint cmd, ulong arg1 = 0, ulong arg2 = 0)
        {
            G.Write(Args << 12, new CompatMmuextOp { Cmd = cmd, Arg1 = (uint)arg1, Arg2 = (uint)arg2 });
            return G.Call(Xen.__HYPERVISOR_mmuext_op, Ma(Args), 1, 0, Xen.DOMID_SELF);
        }

        public long MmuUpdate(ulong ptr, ulong val)
        {
            G.Write(Args << 12, new MmuUpdate { Ptr = ptr, Val = val });
            return G.Call(Xen.__HYPERVISOR_mmu_update, Ma(Args), 1, 0, Xen.DOMID_SELF);
        }

        public PageTypeInfo TypeOf(ulong gfn)
        {
            lock (Frames.TypeLock)
                return Frames.TypeInfoOf(Mfn(gfn));
        }
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void APaeL3ValidatesWithRightsOnItsEntriesAndNothingPastTheFourth()
    {
        var pv = new Pv32Guest(_host);
        pv.BuildTree();
        pv.G.Write((L3 << 12) + 4 * 8, pv.Pte(Data, P)); // garbage past the PDPTEs: not the guest's to use
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L3_TABLE, pv.Mfn(L3)));

        Assert.Equal((PageType.L3, true), (pv.TypeOf(L3).Type, pv.TypeOf(L3).Pinned));
        Assert.Equal(PageType.L2, pv.TypeOf(L2Top).Type);
        Assert.Equal((PageType.Writable, 1), (pv.TypeOf(Data).Type, pv.TypeOf(Data).Count));
        // PDPTEs carry no rights: the long-mode walk gets RW and USER there and the lower levels decide.
        Assert.Equal(pv.Pte(L2, P | RW | User), pv.G.Read<ulong>(L3 << 12));
        Assert.Equal(0UL, pv.G.Read<ulong>((L3 << 12) + 4 * 8));
        // The kernel runs in ring 1: its own entries stay supervisor ones.
        Assert.Equal(pv.Pte(Data, P | RW), pv.G.Read<ulong>(L1 << 12));
        Assert.Equal(pv.Pte(L1, P | RW), pv.G.Read<ulong>((L2 << 12) + 2 * 8));
        // So do the entries it writes later: user space may reach only what the guest maps as user.
        Assert.Equal(0, pv.MmuUpdate(pv.Ma(L1, 8), pv.Pte(Data + 1, P | RW)));
        Assert.Equal(pv.Pte(Data + 1, P | RW), pv.G.Read<ulong>((L1 << 12) + 8));
        Assert.Equal(0, pv.MmuUpdate(pv.Ma(L1, 16), pv.Pte(Data + 2, P | User)));
        Assert.Equal(pv.Pte(Data + 2, P | User), pv.G.Read<ulong>((L1 << 12) + 16));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void TheLastL3EntryMustBeThereAndStaysAsValidated()
    {
        var pv = new Pv32Guest(_host);
        pv.BuildTree(withTop: false);
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_PIN_L3_TABLE, pv.Mfn(L3)));
        Assert.Equal(0, pv.TypeOf(L3).Count);
        Assert.Equal(0, pv.TypeOf(L2).Count);

        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L3_TABLE, pv.Mfn(L3)));
        Assert.Equal(-Errno.EINVAL, pv.MmuUpdate(pv.Ma(L3, 3 * 8), 0));
        Assert.Equal(-Errno.EINVAL, pv.MmuUpdate(pv.Ma(L3, 5 * 8), pv.Pte(L2, P)));
        Assert.Equal(pv.Pte(L2Top, P | RW | User), pv.G.Read<ulong>((L3 << 12) + 3 * 8));
        // The first three may change: an entry written now gets the same rights.
        Assert.Equal(0, pv.MmuUpdate(pv.Ma(L3, 1 * 8), pv.Pte(L2, P)));
        Assert.Equal(pv.Pte(L2, P | RW | User), pv.G.Read<ulong>((L3 << 12) + 1 * 8));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void TheL2UnderTheLastL3EntryGetsXensCompatM2pSlotsAndKeepsThemToItself()
    {
        var pv = new Pv32Guest(_host);
        pv.BuildTree();
        // What the guest had in Xen's slots is neither validated nor kept.
        pv.G.Write((L2Top << 12) + 500 * 8, pv.Pte(Data + 3, P | RW));
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L3_TABLE, pv.Mfn(L3)));
        var top = pv.TypeOf(L2Top);
        Assert.Equal((PageType.L2, true, 1), (top.Type, top.PaeXenL2, top.Count));
        Assert.Equal(0, pv.TypeOf(Data + 3).Count);

        var m2p = _host.Services.MachToPhys;
        int first = MachToPhys.CompatFirstL2Slot;
        Assert.Equal(428, first);
        for (int i = first; i < 512; i++)
        {
            ulong e = pv.G.Read<ulong>((L2Top << 12) + (ulong)i * 8);
            int chunk = i - first;
            // Present read-only supervisor superpages, as Xen's compat_idle_pg_table_l2 has them.
            Assert.Equal(chunk < m2p.CompatChunks.Length ? ((ulong)m2p.CompatChunks[chunk] << 12) | P | PvMm.PAGE_PSE : 0, e);
        }
        // The table follows the M2P: entries of the guest's frames name their PFNs, 32 bits wide.
        m2p.Set(pv.Mfn(Data), Data);
        Assert.Equal((uint)Data, m2p.GetCompat(pv.Mfn(Data)));

        // Xen's slots are not the guest's to change; the others are.
        Assert.Equal(-Errno.EPERM, pv.MmuUpdate(pv.Ma(L2Top, (ulong)first * 8), 0));
        Assert.Equal(-Errno.EPERM, pv.MmuUpdate(pv.Ma(L2Top, 511 * 8), pv.Pte(L1, P)));
        Assert.Equal(0, pv.MmuUpdate(pv.Ma(L2Top, (ulong)(first - 1) * 8), pv.Pte(L1, P | RW)));

        // It belongs to one L3: another L3 may not name it in its slot 3, nor may a plain L2 slot.
        const ulong L3b = 0x130;
        pv.G.Write(L3b << 12, pv.Pte(L2, P));
        pv.G.Write((L3b << 12) + 3 * 8, pv.Pte(L2Top, P));
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_PIN_L3_TABLE, pv.Mfn(L3b)));
        Assert.Equal(-Errno.EINVAL, pv.MmuUpdate(pv.Ma(L3, 1 * 8), pv.Pte(L2Top, P)));
        Assert.Equal(1, pv.TypeOf(L2Top).Count);

        // Unpinned, it is a plain frame again; an L2 pinned as plain one cannot go under slot 3.
        Assert.Equal(0, pv.Mmuext(MMUEXT_UNPIN_TABLE, pv.Mfn(L3)));
        Assert.Equal((PageType.None, false, 0), (pv.TypeOf(L2Top).Type, pv.TypeOf(L2Top).PaeXenL2, pv.TypeOf(L2Top).Count));
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L2_TABLE, pv.Mfn(L2)));
        pv.G.Write((L3b << 12) + 3 * 8, pv.Pte(L2, P));
        pv.G.Write(L3b << 12, 0UL);
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_PIN_L3_TABLE, pv.Mfn(L3b)));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void A32BitGuestHasNoL4AndNoUserBase()
    {
        var pv = new Pv32Guest(_host);
        pv.BuildTree();
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(Data + 1)));
        Assert.Equal(0, pv.TypeOf(Data + 1).Count);
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_NEW_USER_BASEPTR, pv.Mfn(L3)));
        // Its base is the L3, validated (and referenced) by NEW_BASEPTR.
        Assert.Equal(0, pv.Mmuext(MMUEXT_NEW_BASEPTR, pv.Mfn(L3)));
        Assert.Equal(PageType.L3, pv.TypeOf(L3).Type);
        Assert.Equal(pv.Mfn(L3), pv.G.Vcpu().Pv!.GuestTable);
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void TheAddressSizeIsSetBeforeThereArePageTables()
    {
        var pv = new Pv32Guest(_host);
        Assert.True(pv.G.Domain.Pv!.Is32);
        Assert.True(pv.G.Domain.Has32BitSharedInfo);
        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_NEW_BASEPTR, pv.Mfn(L3)));
        var e = Assert.Throws<HypervisorException>(() => _host.PvSetAddressSize(pv.G.Id, 64));
        Assert.Equal(Errno.EINVAL, e.Errno);
        Assert.Throws<HypervisorException>(() => _host.PvSetAddressSize(pv.G.Id, 16));
    }

    [Theory]
    [Trait("Feature", "x86/PV")]
    [InlineData(0x00CF9A000000FFFFUL, true, 0x00CFBB000000FFFFUL)]       // ring-0 code: raised to ring 1, accessed
    [InlineData(0x00CFB2000000FFFFUL, true, 0x00CFB3000000FFFFUL)]       // ring-1 data: kept
    [InlineData(0x00CFFA000000FFFFUL, true, 0x00CFFB000000FFFFUL)]       // ring-3 code: kept
    [InlineData(0x0000E90000000067UL, false, 0UL)]                      // a TSS
    public void A32BitGuestsDescriptorsNeedOnlyRing1(ulong desc, bool safe, ulong adjusted)
    {
        Assert.Equal(safe, PvMm.CheckDescriptor(ref desc, kernelDpl: 1));
        if (safe)
            Assert.Equal(adjusted, desc);
    }
}
