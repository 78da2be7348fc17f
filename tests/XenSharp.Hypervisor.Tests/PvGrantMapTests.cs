using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86.Pv;
using XenSharp.Public;
using static XenSharp.Public.GrantTable;
using static XenSharp.Public.Mmu;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// Grants between PV domains, which are not translated: a grant entry names the granter's machine frame,
/// setup_table answers machine frames, and GNTTABOP_map_grant_ref with GNTMAP_host_map writes a PTE into the
/// mapper's page tables (by linear address, or by the PTE's machine address with GNTMAP_contains_pte), through
/// which the mapper's engine reaches the other domain's frame until GNTTABOP_unmap_grant_ref clears it again.
/// Every reference a mapping takes is gone after its unmap.
/// </summary>
[Trait("Feature", "x86/PV")]
public class PvGrantMapTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong P = PvMm.PAGE_PRESENT, RW = PvMm.PAGE_RW;
    // The mapper's tree: VA 0x400000 is L4[0] → L3[0] → L2[2] → L1, whose slots 0.. map VA 0x400000 + i pages.
    private const ulong L4 = 0x100, L3 = 0x101, L2 = 0x102, L1 = 0x103, Data = 0x110, Args = 0x120;
    private const ulong Va = 0x400000;
    private const ulong Shared = 0x130; // the granter's granted page
    private const uint Gref = 10;

    private sealed class Pv(XenHypervisor host)
    {
        public readonly Guest G = new(host, vcpus: 1, ramMiB: 4, maxMiB: 8, type: DomainKind.Pv);
        public FrameTable Frames => G.Domain.Host.Frames;
        public ulong Mfn(ulong gfn) => G.Domain.P2m.TryLookup(gfn, out uint mfn, out _) ? mfn : throw new InvalidOperationException();
        public ulong Pte(ulong gfn, ulong flags) => (Mfn(gfn) << 12) | flags;
        public ulong Ma(ulong gfn, ulong offset = 0) => (Mfn(gfn) << 12) + offset;

        public void LoadTree()
        {
            G.Write(L4 << 12, Pte(L3, P | RW));
            G.Write(L3 << 12, Pte(L2, P | RW));
            G.Write((L2 << 12) + 2 * 8, Pte(L1, P | RW));
            G.Write(L1 << 12, Pte(Data, P | RW));
            G.Write(Args << 12, new MmuextOp { Cmd = MMUEXT_NEW_BASEPTR, Arg1 = Mfn(L4) });
            Assert.Equal(0, G.Call(Xen.__HYPERVISOR_mmuext_op, Ma(Args), 1, 0, Xen.DOMID_SELF));
        }

        public GnttabMapGrantRef Map(ulong hostAddr, uint flags, ushort dom, uint gref)
        {
            G.Write(Args << 12, new GnttabMapGrantRef { HostAddr = hostAddr, Flags = flags, Ref = gref, Dom = dom });
            Assert.Equal(0, G.Call(Xen.__HYPERVISOR_grant_table_op, (ulong)GNTTABOP_map_grant_ref, Ma(Args), 1));
            return G.Read<GnttabMapGrantRef>(Args << 12);
        }

        public short Unmap(ulong hostAddr, uint handle)
        {
            G.Write(Args << 12, new GnttabUnmapGrantRef { HostAddr = hostAddr, Handle = handle });
            Assert.Equal(0, G.Call(Xen.__HYPERVISOR_grant_table_op, (ulong)GNTTABOP_unmap_grant_ref, Ma(Args), 1));
            return G.Read<GnttabUnmapGrantRef>(Args << 12).Status;
        }

        public ulong L1e(int slot) => G.Read<ulong>((L1 << 12) + (ulong)slot * 8);

        public unsafe bool Reaches(ulong mfn, bool write) => G.Domain.Pv!.Machine.GetPage(mfn, write) is not null;
    }

    /// <summary>Two PV domains: the granter grants its page <see cref="Shared"/> (by machine frame) to the mapper.</summary>
    private (Pv Granter, Pv Mapper) Pair(bool readOnlyGrant = false)
    {
        var granter = new Pv(_host);
        var mapper = new Pv(_host);
        mapper.LoadTree();
        granter.G.Write(Shared << 12, 0x6772616E746564UL);
        ushort flags = (ushort)(GTF_permit_access | (readOnlyGrant ? GTF_readonly : 0));
        Assert.True(granter.G.Domain.Gnttab.WriteEntryV1(Gref, flags, mapper.G.Id, (uint)granter.Mfn(Shared)));
        return (granter, mapper);
    }

    [Fact]
    public void SetupTableGivesAPvDomainTheMachineFramesOfItsTable()
    {
        var pv = new Pv(_host);
        pv.G.Write(Args << 12, new GnttabSetupTable { Dom = Xen.DOMID_SELF, NrFrames = 2, FrameList = pv.Ma(Args, 0x800) });
        Assert.Equal(0, pv.G.Call(Xen.__HYPERVISOR_grant_table_op, (ulong)GNTTABOP_setup_table, pv.Ma(Args), 1));
        Assert.Equal(GNTST_okay, pv.G.Read<GnttabSetupTable>(Args << 12).Status);
        for (int i = 0; i < 2; i++)
        {
            ulong mfn = pv.G.Read<ulong>((Args << 12) + 0x800 + (ulong)i * 8);
            Assert.Equal(pv.G.Id, pv.Frames.OwnerOf((uint)mfn));
            Assert.True(pv.Reaches(mfn, write: true), "the guest cannot write its own grant table frame");
        }
    }

    [Fact]
    public void AHostMappingByLinearAddressReachesTheGrantedFrameUntilItsUnmap()
    {
        var (granter, mapper) = Pair();
        ulong mfn = granter.Mfn(Shared);
        int refsBefore = granter.Frames.RefsOf((uint)mfn);
        Assert.False(mapper.Reaches(mfn, write: false));

        var op = mapper.Map(Va + 3 * 0x1000, GNTMAP_host_map, granter.G.Id, Gref);
        Assert.Equal(GNTST_okay, op.Status);
        // The PTE names the granter's machine frame, writable, in the slot the linear address uses.
        Assert.Equal(mfn, (mapper.L1e(3) & PvMm.AddressMask) >> 12);
        Assert.Equal(P | RW, mapper.L1e(3) & (P | RW));
        Assert.True(mapper.Reaches(mfn, write: true));
        Assert.Equal(GTF_permit_access | GTF_writing, granter.G.Domain.Gnttab.ActiveGrants().Single().Flags & 0x1F);
        unsafe
        {
            // What the mapper's engine writes through the mapping is in the granter's page.
            var page = (ulong*)mapper.G.Domain.Pv!.Machine.GetPage(mfn, write: true);
            Assert.Equal(0x6772616E746564UL, page[0]);
            page[1] = 0x4D41505045440A;
        }
        Assert.Equal(0x4D41505045440AUL, granter.G.Read<ulong>((Shared << 12) + 8));
        // The granted page holds a writable type while mapped: the granter cannot make it a page table.
        Assert.Equal(-Errno.EINVAL, PvMm.Pin(granter.G.Domain, PageType.L1, mfn));

        // Unmapping by another address fails and changes nothing; by its own address it clears the PTE.
        Assert.Equal(GNTST_general_error, mapper.Unmap(Va + 4 * 0x1000, op.Handle));
        Assert.True(mapper.Reaches(mfn, write: true));
        Assert.Equal(GNTST_okay, mapper.Unmap(Va + 3 * 0x1000, op.Handle));
        Assert.Equal(0UL, mapper.L1e(3));
        Assert.False(mapper.Reaches(mfn, write: false));
        Assert.Equal(refsBefore, granter.Frames.RefsOf((uint)mfn));
        Assert.False(granter.G.Domain.Gnttab.IsActive(Gref));
        Assert.Equal(GNTST_bad_handle, mapper.Unmap(Va + 3 * 0x1000, op.Handle));
        // The frame is the granter's own again: it may become a page table now.
        Assert.Equal(0, PvMm.Pin(granter.G.Domain, PageType.L1, mfn));
    }

    [Fact]
    public void AHostMappingByPteAddressIsReadOnlyWhenAsked()
    {
        var (granter, mapper) = Pair(readOnlyGrant: true);
        ulong mfn = granter.Mfn(Shared);
        ulong pteMa = mapper.Ma(L1, 5 * 8);
        // A read-only grant cannot be mapped writable.
        Assert.Equal(GNTST_general_error, mapper.Map(pteMa, GNTMAP_host_map | GNTMAP_contains_pte, granter.G.Id, Gref).Status);
        Assert.Equal(0UL, mapper.L1e(5));

        var op = mapper.Map(pteMa, GNTMAP_host_map | GNTMAP_contains_pte | GNTMAP_readonly, granter.G.Id, Gref);
        Assert.Equal(GNTST_okay, op.Status);
        Assert.Equal(mfn, (mapper.L1e(5) & PvMm.AddressMask) >> 12);
        Assert.Equal(0UL, mapper.L1e(5) & RW);
        Assert.True(mapper.Reaches(mfn, write: false));
        Assert.False(mapper.Reaches(mfn, write: true));
        Assert.Equal(GNTST_okay, mapper.Unmap(pteMa, op.Handle));
        Assert.Equal(0UL, mapper.L1e(5));
        Assert.False(mapper.Reaches(mfn, write: false));
    }

    [Fact]
    public void MappingsWhereNoL1IsOrOfFramesNotGrantedAreRefused()
    {
        var (granter, mapper) = Pair();
        // No L1 maps this address; the PTE address is in no L1 (a data page), or not the mapper's at all.
        Assert.Equal(GNTST_general_error, mapper.Map(0x40000000, GNTMAP_host_map, granter.G.Id, Gref).Status);
        Assert.Equal(GNTST_general_error, mapper.Map(mapper.Ma(Data), GNTMAP_host_map | GNTMAP_contains_pte, granter.G.Id, Gref).Status);
        Assert.Equal(GNTST_general_error, mapper.Map(granter.Ma(L1), GNTMAP_host_map | GNTMAP_contains_pte, granter.G.Id, Gref).Status);
        // A grant to nobody, an entry past the table, a domain that does not exist.
        Assert.Equal(GNTST_general_error, mapper.Map(Va + 0x1000, GNTMAP_host_map, granter.G.Id, Gref + 1).Status);
        Assert.Equal(GNTST_bad_gntref, mapper.Map(Va + 0x1000, GNTMAP_host_map, granter.G.Id, 100000).Status);
        Assert.Equal(GNTST_bad_domain, mapper.Map(Va + 0x1000, GNTMAP_host_map, 0x7000, Gref).Status);
        Assert.Equal(0UL, mapper.L1e(1));
        Assert.False(granter.G.Domain.Gnttab.IsActive(Gref));
        // A page table of the granter granted writable is refused: no one else may write it.
        Assert.Equal(0, PvMm.Pin(granter.G.Domain, PageType.L1, granter.Mfn(0x140)));
        Assert.True(granter.G.Domain.Gnttab.WriteEntryV1(Gref + 2, GTF_permit_access, mapper.G.Id, (uint)granter.Mfn(0x140)));
        Assert.Equal(GNTST_general_error, mapper.Map(Va + 0x1000, GNTMAP_host_map, granter.G.Id, Gref + 2).Status);
        Assert.Equal(GNTST_okay, mapper.Map(Va + 0x1000, GNTMAP_host_map | GNTMAP_readonly, granter.G.Id, Gref + 2).Status);
    }

    [Fact]
    public void APvDomainCopiesAGrantIntoItsOwnFrameByMachineFrameButNotIntoAPageTable()
    {
        var (granter, mapper) = Pair();
        ulong dest = mapper.Mfn(Data);
        var copy = new GnttabCopy
        {
            Source = new GnttabCopyPtr { RefOrGmfn = Gref, Domid = granter.G.Id, Offset = 0 },
            Dest = new GnttabCopyPtr { RefOrGmfn = dest, Domid = Xen.DOMID_SELF, Offset = 16 },
            Len = 8,
            Flags = GNTCOPY_source_gref,
        };
        mapper.G.Write(Args << 12, copy);
        Assert.Equal(0, mapper.G.Call(Xen.__HYPERVISOR_grant_table_op, (ulong)GNTTABOP_copy, mapper.Ma(Args), 1));
        Assert.Equal(GNTST_okay, mapper.G.Read<GnttabCopy>(Args << 12).Status);
        Assert.Equal(0x6772616E746564UL, mapper.G.Read<ulong>((Data << 12) + 16));
        // The mapper's L1 (typed as a table by its loaded tree) is no copy destination; a frame not its own is none either.
        copy.Dest.RefOrGmfn = mapper.Mfn(L1);
        mapper.G.Write(Args << 12, copy);
        Assert.Equal(0, mapper.G.Call(Xen.__HYPERVISOR_grant_table_op, (ulong)GNTTABOP_copy, mapper.Ma(Args), 1));
        Assert.Equal(GNTST_general_error, mapper.G.Read<GnttabCopy>(Args << 12).Status);
        copy.Dest.RefOrGmfn = granter.Mfn(Data);
        mapper.G.Write(Args << 12, copy);
        Assert.Equal(0, mapper.G.Call(Xen.__HYPERVISOR_grant_table_op, (ulong)GNTTABOP_copy, mapper.Ma(Args), 1));
        Assert.Equal(GNTST_bad_page, mapper.G.Read<GnttabCopy>(Args << 12).Status);
        // Nothing stays held: the destination may become a page table, and the grant is idle.
        Assert.False(granter.G.Domain.Gnttab.IsActive(Gref));
        lock (mapper.Frames.TypeLock)
            Assert.Equal(0, mapper.Frames.TypeInfoOf(dest).Count - 1); // the tree's own writable mapping of it
    }

    [Fact]
    public void DestroyingBothDomainsWithAMappingInPlaceGivesAllTheirMemoryBack()
    {
        _ = _host.Services.MachToPhys;
        long free = (long)_host.GetHostInfo().FreeMemoryBytes;
        var (granter, mapper) = Pair();
        Assert.Equal(GNTST_okay, mapper.Map(Va + 0x1000, GNTMAP_host_map, granter.G.Id, Gref).Status);
        _host.Destroy(mapper.G.Id);
        _host.Destroy(granter.G.Id);
        Assert.True(TestHosts.WaitUntil(() => { _host.Services.Frames.Reclaim(); return (long)_host.GetHostInfo().FreeMemoryBytes == free; }),
            $"free memory {_host.GetHostInfo().FreeMemoryBytes} after destroy, {free} before");
    }
}
