using System.Runtime.CompilerServices;
using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using static XenSharp.Public.MemPaging;

namespace XenSharp.Hypervisor.Tests;

/// <summary>XENMEM_paging_op and the paging ring: the p2m's paging states, their errnos, and the requests a touch of
/// a paged-out gfn sends to the pager.</summary>
public unsafe class MemPagingTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong RingGfn = 0x300, Page = 0x200, Buffer = Guest.Scratch + 0x1000;

    private static long Paging(Guest pager, byte op, ushort domid, ulong gfn, ulong buffer = 0)
    {
        pager.Write(Guest.Scratch, new XenMemPagingOp { Op = op, Domain = domid, Gfn = gfn, Buffer = buffer });
        return pager.Call(Xen.__HYPERVISOR_memory_op, XENMEM_paging_op, Guest.Scratch);
    }

    private uint _ringMfn;

    /// <summary>Request <paramref name="index"/> on the ring (a header of 64 bytes, then 400-byte entries).</summary>
    private VmEventSt Request(Guest g, int index) =>
        Unsafe.ReadUnaligned<VmEventSt>(g.Domain.Host.Frames.PageAddress(_ringMfn) + 64 + (index % 8) * 400);

    [Fact]
    public void APageGoesOutAndComesBackWithXensErrnos()
    {
        var pager = new Guest(_host, privileged: true);
        var g = new Guest(_host);
        var d = g.Domain;
        g.Write(Page << 12, 0x1122334455667788UL);

        // No ring yet: ENODEV; a domain of one's own or none: EPERM and ESRCH.
        Assert.Equal(-Errno.ENODEV, Paging(pager, XENMEM_paging_op_nominate, g.Id, Page));
        Assert.Equal(-Errno.EPERM, Paging(pager, XENMEM_paging_op_nominate, pager.Id, Page));
        Assert.Equal(-Errno.ESRCH, Paging(pager, XENMEM_paging_op_nominate, 999, Page));

        d.Arch.Params[Public.Hvm.Params.HVM_PARAM_PAGING_RING_PFN] = RingGfn;
        d.P2m.TryLookup(RingGfn, out _ringMfn, out _);
        Assert.Equal(0, VmEventRing.Enable(d, 0, out _, paging: true));
        Assert.Equal(-Errno.EBUSY, VmEventRing.Enable(d, 0, out _, paging: true));

        // evict and prep want a gfn in the right state; a hole is not pageable.
        Assert.Equal(-Errno.EBUSY, Paging(pager, XENMEM_paging_op_evict, g.Id, Page));
        Assert.Equal(-Errno.ENOENT, Paging(pager, XENMEM_paging_op_prep, g.Id, Page, Buffer));
        Assert.Equal(-Errno.EBUSY, Paging(pager, XENMEM_paging_op_nominate, g.Id, 0x7FFFF));

        long tot = d.TotPages;
        Assert.Equal(0, Paging(pager, XENMEM_paging_op_nominate, g.Id, Page));
        Assert.True(d.P2m.TryLookup(Page, out _, out var t) && t == P2mType.PagingOut);
        // The guest (the engine's view) no longer reaches it; the pager's foreign map still does.
        Assert.True(((IGuestMemory)d.P2m).GetPage(Page, false) == null);
        Assert.True(((IGuestMemory)d.P2m).IsPaged(Page));
        Assert.Equal(0, Paging(pager, XENMEM_paging_op_evict, g.Id, Page));
        Assert.Equal(tot - 1, d.TotPages);
        Assert.Equal(1, Interlocked.Read(ref d.PagedPages));
        Assert.Equal(-Errno.EBUSY, Paging(pager, XENMEM_paging_op_evict, g.Id, Page));

        // Something wants it: a request for the gfn (no vCPU paused), and the gfn is on its way in.
        Assert.True(d.P2m.GetPage(Page, false) == null);
        var req = Request(g, 0);
        Assert.Equal(VmEvent.VM_EVENT_REASON_MEM_PAGING, req.Reason);
        Assert.Equal(Page, req.MemPaging.Gfn);
        Assert.Equal(0u, req.Flags & VmEvent.VM_EVENT_FLAG_VCPU_PAUSED);
        Assert.True(d.P2m.TryLookup(Page, out _, out t) && t == P2mType.PagingIn);

        // prep: a buffer is needed for a page that has no frame; then the page is back with the pager's contents.
        Assert.Equal(-Errno.EINVAL, Paging(pager, XENMEM_paging_op_prep, g.Id, Page));
        pager.Write(Buffer, 0x1122334455667788UL);
        Assert.Equal(0, Paging(pager, XENMEM_paging_op_prep, g.Id, Page, Buffer));
        Assert.Equal(0x1122334455667788UL, g.Read<ulong>(Page << 12));
        Assert.Equal(tot, d.TotPages);
        Assert.Equal(0, Interlocked.Read(ref d.PagedPages));

        // A nominated page that is touched before its eviction: the request says evict will fail, and it does.
        Assert.Equal(0, Paging(pager, XENMEM_paging_op_nominate, g.Id, Page));
        Assert.True(d.P2m.GetPage(Page, false) == null);
        req = Request(g, 1);
        Assert.Equal(MEM_PAGING_EVICT_FAIL, req.MemPaging.Flags & MEM_PAGING_EVICT_FAIL);
        Assert.Equal(-Errno.EBUSY, Paging(pager, XENMEM_paging_op_evict, g.Id, Page));
        // The pager's answer makes it RAM again, contents untouched.
        Common.MemPaging.Resume(d, req);
        Assert.Equal(0x1122334455667788UL, g.Read<ulong>(Page << 12));

        // A gfn evicted and then given back by the guest: DROP_PAGE, and the count goes down.
        Assert.Equal(0, Paging(pager, XENMEM_paging_op_nominate, g.Id, Page));
        Assert.Equal(0, Paging(pager, XENMEM_paging_op_evict, g.Id, Page));
        Assert.True(d.RemovePage(Page));
        req = Request(g, 2);
        Assert.Equal(MEM_PAGING_DROP_PAGE, req.MemPaging.Flags);
        Assert.Equal(0, Interlocked.Read(ref d.PagedPages));
        Assert.Equal(tot - 1, d.TotPages);
    }
}
