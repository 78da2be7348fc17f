using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86.Pv;
using XenSharp.Public;
using XenSharp.Public.ArchX86;
using static XenSharp.Public.Mmu;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// The PV MMU: page types and their validation, mmu_update, mmuext_op and update_va_mapping, with Xen's errno for
/// every refusal and the frame table left as it was after one. Page tables are built in guest RAM at known PFNs;
/// hypercall arguments sit in a plain page addressed by machine address, as a PV guest's would be.
/// </summary>
public class PvMmTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong P = PvMm.PAGE_PRESENT, RW = PvMm.PAGE_RW;
    // A four-level tree mapping VA 0x400000 (L4[0] → L3[0] → L2[2] → L1[0]) to a data page.
    private const ulong L4 = 0x100, L3 = 0x101, L2 = 0x102, L1 = 0x103, Data = 0x110, Data2 = 0x111, Args = 0x120;
    private const ulong Va = 0x400000;

    private sealed class PvGuest(XenHypervisor host)
    {
        public readonly Guest G = new(host, vcpus: 2, ramMiB: 4, maxMiB: 8, type: DomainKind.Pv);
        public FrameTable Frames => G.Domain.Host.Frames;

        public ulong Mfn(ulong gfn) => G.Domain.P2m.TryLookup(gfn, out uint mfn, out _) ? mfn : throw new InvalidOperationException();
        public ulong Pte(ulong gfn, ulong flags) => (Mfn(gfn) << 12) | flags;
        public ulong Ma(ulong gfn, ulong offset = 0) => (Mfn(gfn) << 12) + offset;

        public void BuildTree()
        {
            G.Write(L4 << 12, Pte(L3, P | RW));
            G.Write(L3 << 12, Pte(L2, P | RW));
            G.Write((L2 << 12) + 2 * 8, Pte(L1, P | RW));
            G.Write(L1 << 12, Pte(Data, P | RW));
        }

        public long Mmuext(uint cmd, ulong arg1 = 0, ulong arg2 = 0, ushort foreigndom = Xen.DOMID_SELF)
        {
            G.Write(Args << 12, new MmuextOp { Cmd = cmd, Arg1 = arg1, Arg2 = arg2 });
            return G.Call(Xen.__HYPERVISOR_mmuext_op, Ma(Args), 1, 0, foreigndom);
        }

        public long MmuUpdate(params MmuUpdate[] reqs) => MmuUpdateFor(Xen.DOMID_SELF, out _, reqs);

        public long MmuUpdateFor(uint foreigndom, out uint done, params MmuUpdate[] reqs)
        {
            for (int i = 0; i < reqs.Length; i++)
                G.Write((Args << 12) + (ulong)i * 16, reqs[i]);
            G.Write((Args << 12) + 0xF00, 0xFFFFu);
            long rc = G.Call(Xen.__HYPERVISOR_mmu_update, Ma(Args), (ulong)reqs.Length, Ma(Args, 0xF00), foreigndom);
            done = G.Read<uint>((Args << 12) + 0xF00);
            return rc;
        }

        public PageTypeInfo TypeOf(ulong gfn)
        {
            lock (Frames.TypeLock)
                return Frames.TypeInfoOf(Mfn(gfn));
        }

        public int RefsOf(ulong gfn) => Frames.RefsOf((uint)Mfn(gfn));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void PinningAnL4ValidatesTheTreeAndTypesEveryFrameInIt()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));

        Assert.Equal((PageType.L4, true, 1), (pv.TypeOf(L4).Type, pv.TypeOf(L4).Pinned, pv.TypeOf(L4).Count));
        Assert.Equal((PageType.L3, 1), (pv.TypeOf(L3).Type, pv.TypeOf(L3).Count));
        Assert.Equal((PageType.L2, 1), (pv.TypeOf(L2).Type, pv.TypeOf(L2).Count));
        Assert.Equal((PageType.L1, 1), (pv.TypeOf(L1).Type, pv.TypeOf(L1).Count));
        Assert.Equal((PageType.Writable, 1), (pv.TypeOf(Data).Type, pv.TypeOf(Data).Count));
        Assert.Equal(1, pv.RefsOf(Data));
        // The guest kernel runs in ring 3: entries come back as user entries.
        Assert.Equal(pv.Pte(Data, P | RW | PvMm.PAGE_USER), pv.G.Read<ulong>(L1 << 12));
        // Xen's slot 256 of the L4 maps the read-only M2P.
        ulong m2pSlot = pv.G.Read<ulong>((L4 << 12) + 256 * 8);
        Assert.Equal((ulong)_host.Services.MachToPhys.L3Mfn, (m2pSlot & PvMm.AddressMask) >> 12);
        Assert.Equal(0UL, m2pSlot & RW);
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void APageTableCannotBeMappedWritableButMayBeMappedReadOnly()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));

        Assert.Equal(-Errno.EINVAL, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(L1, 8), Val = pv.Pte(L2, P | RW) }));
        Assert.Equal(0UL, pv.G.Read<ulong>((L1 << 12) + 8));
        Assert.Equal(1, pv.TypeOf(L2).Count);

        Assert.Equal(0, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(L1, 8), Val = pv.Pte(L2, P) }));
        Assert.Equal(pv.Pte(L2, P | PvMm.PAGE_USER), pv.G.Read<ulong>((L1 << 12) + 8));
        // A frame mapped writable cannot become a table either.
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_PIN_L1_TABLE, pv.Mfn(Data)));
        Assert.Equal((PageType.Writable, 1), (pv.TypeOf(Data).Type, pv.TypeOf(Data).Count));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void AMalformedTableIsRefusedWithEinvalAndLeavesNoReferenceBehind()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        // A superpage in the L2 (PSE), which 64-bit PV guests may not use.
        pv.G.Write((L2 << 12) + 3 * 8, pv.Pte(Data2, P | RW | PvMm.PAGE_PSE));
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));
        foreach (ulong gfn in new[] { L4, L3, L2, L1, Data, Data2 })
        {
            Assert.Equal(default, pv.TypeOf(gfn));
            Assert.Equal(0, pv.RefsOf(gfn));
        }
        // An L1 entry with a cache attribute the domain may not set, and an entry beyond machine memory.
        pv.G.Write((L2 << 12) + 3 * 8, 0UL);
        pv.G.Write((L1 << 12) + 8, pv.Pte(Data2, P | PvMm.PAGE_PCD));
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_PIN_L1_TABLE, pv.Mfn(L1)));
        pv.G.Write((L1 << 12) + 8, (0xF_FFFF_FFFFUL << 12) | P);
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_PIN_L1_TABLE, pv.Mfn(L1)));
        // A table naming itself as its next level.
        pv.G.Write((L1 << 12) + 8, 0UL);
        pv.G.Write((L3 << 12) + 8, pv.Pte(L3, P));
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_PIN_L3_TABLE, pv.Mfn(L3)));
        Assert.Equal(0, pv.RefsOf(L3));
        Assert.Equal(0, pv.RefsOf(Data));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void AnotherDomainsFrameCannotBeMapped()
    {
        var pv = new PvGuest(_host);
        var other = new PvGuest(_host);
        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));
        ulong theirs = other.Mfn(Data);
        other.G.Write(Data << 12, 0x5EC4E7UL);

        Assert.Equal(-Errno.EINVAL, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(L1, 8), Val = (theirs << 12) | P }));
        // Naming the other domain as the pages' owner needs privilege.
        Assert.Equal(-Errno.ESRCH, pv.MmuUpdateFor(other.G.Id, out _, new MmuUpdate { Ptr = pv.Ma(L1, 8), Val = (theirs << 12) | P }));
        // Nor may a guest write another domain's memory, or M2P entries for it.
        Assert.Equal(-Errno.EINVAL, pv.MmuUpdate(new MmuUpdate { Ptr = theirs << 12, Val = 0 }));
        Assert.Equal(-Errno.EINVAL, pv.MmuUpdate(new MmuUpdate { Ptr = (theirs << 12) | MMU_MACHPHYS_UPDATE, Val = 7 }));
        Assert.Equal(0x5EC4E7UL, other.G.Read<ulong>(Data << 12));
        Assert.Equal(0, other.RefsOf(Data));
        // The M2P is Xen's: not mappable by a guest either.
        ulong m2p = _host.Services.MachToPhys.L3Mfn;
        Assert.Equal(-Errno.EINVAL, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(L1, 8), Val = (m2p << 12) | P }));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void XensL4SlotsAreNotTheGuests()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));
        ulong before = pv.G.Read<ulong>((L4 << 12) + 256 * 8);
        Assert.Equal(-Errno.EINVAL, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(L4, 256 * 8), Val = pv.Pte(Data, P | RW) }));
        Assert.Equal(-Errno.EINVAL, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(L4, 271 * 8), Val = 0 }));
        Assert.Equal(before, pv.G.Read<ulong>((L4 << 12) + 256 * 8));
        // Slot 272 is the guest's again.
        Assert.Equal(0, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(L4, 272 * 8), Val = 0 }));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void MachphysUpdateSetsTheM2pEntryOfAnOwnFrame()
    {
        var pv = new PvGuest(_host);
        Assert.Equal(0, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(Data) | MMU_MACHPHYS_UPDATE, Val = 0x1234 }));
        Assert.Equal(0x1234UL, pv.G.Domain.Pv!.MachToPhys.Get(pv.Mfn(Data)));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void ABatchStopsAtItsFirstBadRequestAndReportsHowManyWereDone()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));
        long rc = pv.MmuUpdateFor(Xen.DOMID_SELF, out uint done,
            new MmuUpdate { Ptr = pv.Ma(L1, 8), Val = pv.Pte(Data2, P | RW) },
            new MmuUpdate { Ptr = pv.Ma(L1, 16), Val = pv.Pte(L1, P | RW) },
            new MmuUpdate { Ptr = pv.Ma(L1, 24), Val = pv.Pte(Data2, P) });
        Assert.Equal(-Errno.EINVAL, rc);
        Assert.Equal(1u, done);
        Assert.Equal(0UL, pv.G.Read<ulong>((L1 << 12) + 24));
        // An unknown command is -ENOSYS.
        Assert.Equal(-Errno.ENOSYS, pv.Mmuext(99));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void UnpinningDropsEveryReferenceTheTreeHeld()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));
        Assert.Equal(1, pv.TypeOf(L4).Count);
        Assert.Equal(0, pv.Mmuext(MMUEXT_UNPIN_TABLE, pv.Mfn(L4)));
        foreach (ulong gfn in new[] { L4, L3, L2, L1, Data })
        {
            Assert.Equal(default, pv.TypeOf(gfn));
            Assert.Equal(0, pv.RefsOf(gfn));
        }
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_UNPIN_TABLE, pv.Mfn(L4)));
        // Once no longer a table, the frame is ordinary memory again.
        Assert.Equal(0, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(L1, 8), Val = 0xABCD }));
        Assert.Equal(0xABCDUL, pv.G.Read<ulong>((L1 << 12) + 8));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void NewBaseptrLoadsTheL4AndUpdateVaMappingChangesTheEntryForAnAddress()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_NEW_BASEPTR, pv.Mfn(Data) + 0x100000));
        Assert.Equal(0, pv.Mmuext(MMUEXT_NEW_BASEPTR, pv.Mfn(L4)));
        pv.G.Cpu().GetSpecialRegisters(out var s);
        Assert.Equal(pv.Mfn(L4) << 12, s.Cr3);
        Assert.Equal(PageType.L4, pv.TypeOf(L4).Type);

        var g = pv.G;
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_update_va_mapping, Va + 0x1000, pv.Pte(Data2, P | RW), UVMF_INVLPG | UVMF_LOCAL));
        Assert.Equal(pv.Pte(Data2, P | RW | PvMm.PAGE_USER), g.Read<ulong>((L1 << 12) + 8));
        Assert.Equal((PageType.Writable, 1), (pv.TypeOf(Data2).Type, pv.TypeOf(Data2).Count));
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_update_va_mapping, Va + 0x2000, pv.Pte(L2, P | RW), UVMF_NONE));
        // No L1 maps the address, or it lies in Xen's part of the address space.
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_update_va_mapping, 0x40000000, pv.Pte(Data2, P), UVMF_NONE));
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_update_va_mapping, HYPERVISOR_VIRT_START, pv.Pte(Data2, P), UVMF_NONE));
        // Unmapping lets the frame go.
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_update_va_mapping, Va + 0x1000, 0, UVMF_TLB_FLUSH | UVMF_ALL));
        Assert.Equal(default, pv.TypeOf(Data2));

        // The old base is let go when a new one replaces it; the user base may be cleared.
        Assert.Equal(0, pv.Mmuext(MMUEXT_NEW_USER_BASEPTR, pv.Mfn(L4)));
        Assert.Equal(2, pv.TypeOf(L4).Count);
        Assert.Equal(0, pv.Mmuext(MMUEXT_NEW_USER_BASEPTR, 0));
        Assert.Equal(1, pv.TypeOf(L4).Count);
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void ClearAndCopyPageWorkOnOrdinaryFramesOnly()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L1_TABLE, pv.Mfn(L1)));
        pv.G.Write(Data2 << 12, 0x600DUL);
        Assert.Equal(0, pv.Mmuext(MMUEXT_COPY_PAGE, pv.Mfn(Data), pv.Mfn(Data2)));
        Assert.Equal(0x600DUL, pv.G.Read<ulong>(Data << 12));
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_COPY_PAGE, pv.Mfn(L1), pv.Mfn(Data2)));
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_CLEAR_PAGE, pv.Mfn(L1)));
        Assert.NotEqual(0UL, pv.G.Read<ulong>(L1 << 12));
        Assert.Equal(0, pv.Mmuext(MMUEXT_CLEAR_PAGE, pv.Mfn(Data2)));
        Assert.Equal(0UL, pv.G.Read<ulong>(Data2 << 12));
        Assert.Equal(-Errno.EOPNOTSUPP, pv.Mmuext(MMUEXT_MARK_SUPER, pv.Mfn(Data)));
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_SET_LDT, 0x1001, 1));
        Assert.Equal(-Errno.EINVAL, pv.Mmuext(MMUEXT_SET_LDT, 0x1000, LDT_MAX_ENTRIES + 1));
        Assert.Equal(0, pv.Mmuext(MMUEXT_SET_LDT, 0x1000, 16));
    }

    [Fact]
    [Trait("Feature", "x86/PV"), Trait("Feature", "xl migrate")]
    public void LogDirtyFollowsAPvGuestsWritesByMachineFrameAndThePvMmusOwn()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        ushort id = pv.G.Id;
        _host.PvSetMachToPhys(id, 0, 1024);
        var bits = new ulong[1024 / 64];
        bool Dirty(ulong gfn) => (bits[gfn >> 6] & (1UL << (int)(gfn & 63))) != 0;
        _host.ShadowOp(id, Domctl.XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY, bits);

        // Pinning validates the tree: each table took its type and is dirty; the data page it maps was not written.
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));
        _host.ShadowOp(id, Domctl.XEN_DOMCTL_SHADOW_OP_CLEAN, bits);
        Assert.True(Dirty(L4) && Dirty(L3) && Dirty(L2) && Dirty(L1), "a table that took its type is not dirty");
        Assert.False(Dirty(Data));

        // mmu_update of an L1 entry: the table is dirty, not the frame it now maps nor the tables above it.
        Assert.Equal(0, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(L1), Val = pv.Pte(Data2, P | RW) }));
        _host.ShadowOp(id, Domctl.XEN_DOMCTL_SHADOW_OP_CLEAN, bits);
        Assert.True(Dirty(L1), "the L1 mmu_update wrote is not dirty");
        Assert.False(Dirty(Data2) || Dirty(L2) || Dirty(L4));

        // The engine's view: a clean frame is not left writable in its TLB; a write marks the frame's pfn.
        var machine = pv.G.Domain.Pv!.Machine;
        unsafe
        {
            Assert.True(machine.GetPageForWriteCache(pv.Mfn(Data2)) is null);
            Assert.True(machine.GetPage(pv.Mfn(Data2), write: true) is not null);
            Assert.True(machine.GetPageForWriteCache(pv.Mfn(Data2)) is not null);
        }
        _host.ShadowOp(id, Domctl.XEN_DOMCTL_SHADOW_OP_PEEK, bits);
        Assert.True(Dirty(Data2), "a write through the machine view is not logged by pfn");
        Assert.False(Dirty(Data));

        // Unpinned, the tables lose their types: dirty again, to be sent as the data pages they now are.
        _host.ShadowOp(id, Domctl.XEN_DOMCTL_SHADOW_OP_CLEAN, bits);
        Assert.Equal(0, pv.Mmuext(MMUEXT_UNPIN_TABLE, pv.Mfn(L4)));
        _host.ShadowOp(id, Domctl.XEN_DOMCTL_SHADOW_OP_PEEK, bits);
        Assert.True(Dirty(L4) && Dirty(L1), "a table that lost its type is not dirty");

        _host.ShadowOp(id, Domctl.XEN_DOMCTL_SHADOW_OP_OFF, bits);
        unsafe { Assert.True(machine.GetPageForWriteCache(pv.Mfn(Data)) is not null); }
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void TheMachineViewKeepsPageTablesFromGuestWrites()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        var machine = pv.G.Domain.Pv!.Machine;
        unsafe
        {
            Assert.True(machine.GetPage(pv.Mfn(L1), write: true) is not null);
            Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L1_TABLE, pv.Mfn(L1)));
            Assert.True(machine.GetPage(pv.Mfn(L1), write: true) is null);
            Assert.True(machine.GetPage(pv.Mfn(L1), write: false) is not null);
            var other = new PvGuest(_host);
            Assert.True(machine.GetPage(other.Mfn(Data), write: false) is null);
            Assert.True(machine.GetPage(_host.Services.MachToPhys.L3Mfn, write: false) is not null);
            Assert.True(machine.GetPage(_host.Services.MachToPhys.L3Mfn, write: true) is null);
        }
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void DestroyingADomainWithPinnedTablesGivesAllItsMemoryBack()
    {
        _ = _host.Services.MachToPhys;
        long free = (long)_host.GetHostInfo().FreeMemoryBytes;
        var pv = new PvGuest(_host);
        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));
        Assert.Equal(0, pv.Mmuext(MMUEXT_NEW_BASEPTR, pv.Mfn(L4)));
        _host.Destroy(pv.G.Id);
        Assert.True(TestHosts.WaitUntil(() => { _host.Services.Frames.Reclaim(); return (long)_host.GetHostInfo().FreeMemoryBytes == free; }),
            $"free memory {_host.GetHostInfo().FreeMemoryBytes} after destroy, {free} before");
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void HvmAndPvhDomainsHaveNoPvMmu()
    {
        var g = new Guest(_host);
        Assert.Equal(-Errno.ENOSYS, g.Call(Xen.__HYPERVISOR_mmu_update, Guest.Scratch, 1, 0, Xen.DOMID_SELF));
        Assert.Equal(-Errno.ENOSYS, g.Call(Xen.__HYPERVISOR_mmuext_op, Guest.Scratch, 1, 0, Xen.DOMID_SELF));
        Assert.Equal(-Errno.ENOSYS, g.Call(Xen.__HYPERVISOR_update_va_mapping, 0, 0, 0));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void SetGdtMakesValidatedReadOnlyDescriptorPagesAndRefusesGatesAndTss()
    {
        var pv = new PvGuest(_host);
        const ulong Code64Dpl0 = 0x00AF9A000000FFFF, Tss = 0x0000E90000000067;
        pv.G.Write((Data2 << 12) + 2 * 8, Code64Dpl0);
        long SetGdt(ulong gfn, ulong entries)
        {
            pv.G.Write((Args << 12) + 0x800, pv.Mfn(gfn));
            return pv.G.Call(Xen.__HYPERVISOR_set_gdt, pv.Ma(Args, 0x800), entries);
        }

        Assert.Equal(-Errno.EINVAL, SetGdt(Data2, PvMm.FirstReservedGdtEntry + 1));
        Assert.Equal(0, SetGdt(Data2, 16));
        Assert.Equal((PageType.SegDesc, 1), (pv.TypeOf(Data2).Type, pv.TypeOf(Data2).Count));
        Assert.Equal(0x00AFFB000000FFFFUL, pv.G.Read<ulong>((Data2 << 12) + 2 * 8)); // DPL 3, accessed
        unsafe { Assert.True(pv.G.Domain.Pv!.Machine.GetPage(pv.Mfn(Data2), write: true) is null); }
        // A descriptor page is no more writable than a page table.
        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L1_TABLE, pv.Mfn(L1)));
        Assert.Equal(-Errno.EINVAL, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(L1, 8), Val = pv.Pte(Data2, P | RW) }));
        // update_descriptor: checked like the page's others.
        Assert.Equal(-Errno.EINVAL, pv.G.Call(Xen.__HYPERVISOR_update_descriptor, pv.Ma(Data2, 3 * 8), Tss));
        Assert.Equal(-Errno.EINVAL, pv.G.Call(Xen.__HYPERVISOR_update_descriptor, pv.Ma(Data2, 3 * 8 + 4), Code64Dpl0));
        Assert.Equal(0, pv.G.Call(Xen.__HYPERVISOR_update_descriptor, pv.Ma(Data2, 3 * 8), Code64Dpl0));
        Assert.Equal(0x00AFFB000000FFFFUL, pv.G.Read<ulong>((Data2 << 12) + 3 * 8));
        // A page with a TSS in it does not become a GDT; the old GDT stays.
        pv.G.Write((Data << 12) + 4 * 8, Tss);
        Assert.Equal(0, pv.MmuUpdate(new MmuUpdate { Ptr = pv.Ma(L1, 0), Val = 0 })); // Data no longer mapped writable
        Assert.Equal(-Errno.EINVAL, SetGdt(Data, 16));
        Assert.Equal(default, pv.TypeOf(Data));
        Assert.Equal(1, pv.TypeOf(Data2).Count);
        // An empty GDT lets the frame go.
        Assert.Equal(0, pv.G.Call(Xen.__HYPERVISOR_set_gdt, pv.Ma(Args, 0x800), 0));
        Assert.Equal(default, pv.TypeOf(Data2));
        Assert.Equal(0, pv.RefsOf(Data2));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void APvGuestIsToldThePvFeaturesItsKernelNeeds()
    {
        var pv = new PvGuest(_host);
        pv.G.Write(Args << 12, new XenFeatureInfo { SubmapIdx = 0 });
        Assert.Equal(0, pv.G.Call(Xen.__HYPERVISOR_xen_version, Public.Version.XENVER_get_features, pv.Ma(Args)));
        uint submap = pv.G.Read<XenFeatureInfo>(Args << 12).Submap;
        Assert.Equal((1u << Features.XENFEAT_pae_pgdir_above_4gb) | (1u << Features.XENFEAT_mmu_pt_update_preserve_ad)
            | (1u << Features.XENFEAT_gnttab_map_avail_bits), submap);
        // Not translated: the guest sees machine frames.
        Assert.Equal(0u, submap & (1u << Features.XENFEAT_auto_translated_physmap));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void SetIoplTakesLevelsZeroToThreeAndRefusesGarbage()
    {
        var pv = new PvGuest(_host);
        const ulong SetIopl = 6;
        pv.G.Write(Args << 12, 1u);
        Assert.Equal(0, pv.G.Call(Xen.__HYPERVISOR_physdev_op, SetIopl, pv.Ma(Args)));
        Assert.Equal(1u, pv.G.Vcpu().Pv!.Iopl);
        pv.G.Write(Args << 12, 4u);
        Assert.Equal(-Errno.EINVAL, pv.G.Call(Xen.__HYPERVISOR_physdev_op, SetIopl, pv.Ma(Args)));
        Assert.Equal(-Errno.EFAULT, pv.G.Call(Xen.__HYPERVISOR_physdev_op, SetIopl, Guest.Bad));
        Assert.Equal(1u, pv.G.Vcpu().Pv!.Iopl);
        Assert.Equal(-Errno.ENOSYS, pv.G.Call(Xen.__HYPERVISOR_physdev_op, 1000, pv.Ma(Args)));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public void VmAssistOffersAPvGuestWritablePageTablesAndRefusesUnknownTypes()
    {
        var pv = new PvGuest(_host);
        Assert.Equal(0, pv.G.Call(Xen.__HYPERVISOR_vm_assist, Xen.VMASST_CMD_enable, Xen.VMASST_TYPE_writable_pagetables));
        Assert.Equal(0, pv.G.Call(Xen.__HYPERVISOR_vm_assist, Xen.VMASST_CMD_enable, Xen.VMASST_TYPE_pae_extended_cr3));
        Assert.Equal(-Errno.EINVAL, pv.G.Call(Xen.__HYPERVISOR_vm_assist, Xen.VMASST_CMD_enable, 6));
        Assert.Equal(-Errno.EINVAL, pv.G.Call(Xen.__HYPERVISOR_vm_assist, Xen.VMASST_CMD_enable, 64));
        // An HVM-side guest is offered only what Xen offers it.
        var pvh = new Guest(_host);
        Assert.Equal(-Errno.EINVAL, pvh.Call(Xen.__HYPERVISOR_vm_assist, Xen.VMASST_CMD_enable, Xen.VMASST_TYPE_writable_pagetables));
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public unsafe void VcpuInfoMovesToAnOwnWritableMachineFrameOnly()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));
        long Register(ulong mfn, uint offset)
        {
            pv.G.Write((Args << 12) + 0x800, new VcpuRegisterVcpuInfo { Mfn = mfn, Offset = offset });
            return pv.G.Call(Xen.__HYPERVISOR_vcpu_op, VcpuOp.VCPUOP_register_vcpu_info, 0, pv.Ma(Args, 0x800));
        }
        Assert.Equal(-Errno.EINVAL, Register(pv.Mfn(L1), 0));            // a page table
        Assert.Equal(-Errno.EINVAL, Register(0xFFFF_FFFF_FFUL, 0));      // no such frame
        Assert.Equal(-Errno.EINVAL, Register(pv.Mfn(Data2), 4));         // misaligned
        Assert.Equal(0, Register(pv.Mfn(Data2), 64));
        Assert.True(pv.G.Vcpu().VcpuInfo == (VcpuInfo*)(pv.Frames.PageAddress(pv.Mfn(Data2)) + 64));
        Assert.Equal(-Errno.EINVAL, Register(pv.Mfn(Data2), 128));       // only once
    }

    [Fact]
    [Trait("Feature", "x86/PV")]
    public unsafe void VcpuInitialiseTakesAPvContextAndRefusesGarbage()
    {
        var pv = new PvGuest(_host);
        pv.BuildTree();
        ulong ctxAt = 0x200; // pages 0x200.. hold the 5 KiB context
        long Init(in VcpuGuestContext c, int vcpu)
        {
            pv.G.Write(ctxAt << 12, c);
            return pv.G.Call(Xen.__HYPERVISOR_vcpu_op, VcpuOp.VCPUOP_initialise, (ulong)vcpu, pv.Ma(ctxAt));
        }
        var c = new VcpuGuestContext { Flags = VcpuGuestContext.VGCF_in_kernel, KernelSp = 0x5000, EventCallbackEip = 0x401000 };
        c.UserRegs.Rip = 0x400000;
        c.UserRegs.Rflags = 0x1000; // IOPL 1
        Assert.Equal(0, pv.Mmuext(MMUEXT_PIN_L4_TABLE, pv.Mfn(L4)));
        c.Ctrlreg[3] = pv.Mfn(L3) << 12;
        Assert.Equal(-Errno.EINVAL, Init(c, 1));                        // CR3 an L3, not an L4
        c.Ctrlreg[3] = pv.Mfn(L4) << 12;
        var notKernel = c;
        notKernel.Flags = 0;
        Assert.Equal(-Errno.EINVAL, Init(notKernel, 1));
        var badBase = c;
        badBase.FsBase = 0x0000_8000_0000_0000;
        Assert.Equal(-Errno.EINVAL, Init(badBase, 1));                  // non-canonical
        Assert.Equal(-Errno.EFAULT, pv.G.Call(Xen.__HYPERVISOR_vcpu_op, VcpuOp.VCPUOP_initialise, 1, Guest.Bad));
        Assert.Equal(0, Init(c, 1));
        var v1 = pv.G.Vcpu(1).Pv!;
        Assert.Equal((pv.Mfn(L4), 1u, 0x5000UL, 0x401000UL), (v1.GuestTable, v1.Iopl, v1.KernelSp, v1.EventCallback));
        Assert.Equal(PageType.L4, pv.TypeOf(L4).Type);
        Assert.Equal(-Errno.EEXIST, Init(c, 1));                        // once only
    }

    [Theory]
    [Trait("Feature", "x86/PV")]
    [InlineData(0UL, true, 0UL)]                                         // not present: left as it is
    [InlineData(0x00CFFA000000FFFFUL, true, 0x00CFFB000000FFFFUL)]       // 32-bit code, DPL 3: accessed
    [InlineData(0x00AFF3000000FFFFUL, true, 0x00AFF3000000FFFFUL)]       // data, DPL 3
    [InlineData(0x00AF9A000000FFFFUL, true, 0x00AFFB000000FFFFUL)]       // 64-bit code, DPL 0: raised to 3
    [InlineData(0x0000EE0000100000UL, false, 0UL)]                      // a call/interrupt gate
    [InlineData(0x0000E90000000067UL, false, 0UL)]                      // a TSS
    public void DescriptorPagesHoldOnlyDescriptorsTheGuestMayUse(ulong desc, bool safe, ulong adjusted)
    {
        Assert.Equal(safe, PvMm.CheckDescriptor(ref desc));
        if (safe)
            Assert.Equal(adjusted, desc);
    }
}
