using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using static XenSharp.Public.Memory;

namespace XenSharp.Hypervisor.Tests;

/// <summary>XENMEM_add_to_physmap(_batch): gmfn, gmfn_range and a backend's gmfn_foreign mappings, and removing them.</summary>
public class ForeignMapTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong Idxs = Guest.Scratch + 0x1000, Gpfns = Guest.Scratch + 0x2000, Errs = Guest.Scratch + 0x3000;

    private static long Batch(Guest g, ushort space, ushort foreign, ulong[] idxs, ulong[] gpfns, out int[] errs)
    {
        for (int i = 0; i < idxs.Length; i++)
        {
            g.Write(Idxs + (ulong)i * 8, idxs[i]);
            g.Write(Gpfns + (ulong)i * 8, gpfns[i]);
            g.Write(Errs + (ulong)i * 4, 0x5A5A5A5A);
        }
        g.Write(Guest.Scratch, new XenAddToPhysmapBatch
        {
            Domid = Xen.DOMID_SELF, Space = space, Size = (ushort)idxs.Length, ForeignDomid = foreign, Idxs = Idxs, Gpfns = Gpfns, Errs = Errs,
        });
        long rc = g.CallToCompletion(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap_batch, Guest.Scratch, 0, out _);
        errs = Enumerable.Range(0, idxs.Length).Select(i => g.Read<int>(Errs + (ulong)i * 4)).ToArray();
        return rc;
    }

    private static long Remove(Guest g, ulong gpfn)
    {
        g.Write(Guest.Scratch, new XenRemoveFromPhysmap { Domid = Xen.DOMID_SELF, Gpfn = gpfn });
        return g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_remove_from_physmap, Guest.Scratch);
    }

    [Fact]
    public void ABackendMapsAForeignFrameThatOutlivesItsOwnersFree()
    {
        var backend = new Guest(_host, privileged: true);
        var front = new Guest(_host);
        front.Write(0x30000, 0xF00DUL);
        front.Domain.P2m.TryLookup(0x30, out uint mfn, out _);

        Assert.Equal(0, Batch(backend, (ushort)XENMAPSPACE_gmfn_foreign, front.Id, [0x30], [0x2000], out var errs));
        Assert.Equal([0], errs);
        Assert.Equal(0xF00DUL, backend.Read<ulong>(0x2000000));
        Assert.Equal(1, _host.Frames.RefsOf(mfn));

        // Writes through the mapping land in the front end's frame.
        backend.Write(0x2000008, 0xBEEFUL);
        Assert.Equal(0xBEEFUL, front.Read<ulong>(0x30008));

        // The owner balloons the frame out: the mapping keeps it alive.
        long free = (long)_host.GetHostInfo().FreeMemoryBytes;
        Assert.True(front.Domain.RemovePage(0x30));
        Assert.Equal(free, (long)_host.GetHostInfo().FreeMemoryBytes);
        Assert.Equal(0xF00DUL, backend.Read<ulong>(0x2000000));

        // Unmapping drops the last reference and the frame goes back to the machine.
        Assert.Equal(0, Remove(backend, 0x2000));
        Assert.Equal(free + 4096, (long)_host.GetHostInfo().FreeMemoryBytes);
        Assert.Throws<HypervisorException>(() => backend.Read<ulong>(0x2000000));
        Assert.Equal(-Errno.ENOENT, Remove(backend, 0x2000));
    }

    [Fact]
    public void DestroyingEitherSideLeavesNothingBehind()
    {
        long start = (long)_host.GetHostInfo().FreeMemoryBytes;
        var backend = new Guest(_host, privileged: true);
        long withBackend = (long)_host.GetHostInfo().FreeMemoryBytes;
        var front = new Guest(_host);
        Assert.Equal(0, Batch(backend, (ushort)XENMAPSPACE_gmfn_foreign, front.Id, [0x30, 0x31], [0x2000, 0x2001], out _));
        _host.Destroy(front.Id);
        // The two mapped frames wait for the backend; everything else of the front end is back.
        Assert.Equal(withBackend - 2 * 4096, (long)_host.GetHostInfo().FreeMemoryBytes);
        Assert.Equal(0UL, backend.Read<ulong>(0x2001000));
        _host.Destroy(backend.Id);
        Assert.Equal(start, (long)_host.GetHostInfo().FreeMemoryBytes);
    }

    [Fact]
    public void ForeignMappingsFollowXensRules()
    {
        var domU = new Guest(_host);
        var other = new Guest(_host);
        var backend = new Guest(_host, privileged: true);

        // Only a privileged domain may map foreign frames; the per-entry error says so.
        Assert.Equal(0, Batch(domU, (ushort)XENMAPSPACE_gmfn_foreign, other.Id, [0x30], [0x2000], out var errs));
        Assert.Equal([-Errno.EPERM], errs);
        Assert.False(domU.Domain.P2m.TryLookup(0x2000, out _, out _));

        // Each entry has its own result.
        Assert.Equal(0, Batch(backend, (ushort)XENMAPSPACE_gmfn_foreign, other.Id, [0x30, 0x9000, 0x31], [0x2000, 0x2001, 0x2002], out errs));
        Assert.Equal([0, -Errno.EINVAL, 0], errs);
        Assert.Equal(0, Batch(backend, (ushort)XENMAPSPACE_gmfn_foreign, 0x6000, [0x30], [0x2003], out errs));
        Assert.Equal([-Errno.ESRCH], errs);
        Assert.Equal(0, Batch(backend, (ushort)XENMAPSPACE_gmfn_foreign, backend.Id, [0x30], [0x2003], out errs));
        Assert.Equal([-Errno.EINVAL], errs);

        // Foreign frames go only through the batch; the batch takes no ranges.
        backend.Write(Guest.Scratch, new XenAddToPhysmap { Domid = Xen.DOMID_SELF, Space = XENMAPSPACE_gmfn_foreign, Idx = 0x30, Gpfn = 0x2004 });
        Assert.Equal(-Errno.ENOSYS, backend.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap, Guest.Scratch));
        Assert.Equal(-Errno.EOPNOTSUPP, Batch(backend, (ushort)XENMAPSPACE_gmfn_range, 0, [0x30], [0x2004], out _));
        // A bad array is a fault of the whole call.
        backend.Write(Guest.Scratch, new XenAddToPhysmapBatch { Domid = Xen.DOMID_SELF, Space = (ushort)XENMAPSPACE_gmfn_foreign, Size = 1, ForeignDomid = other.Id, Idxs = Guest.Bad, Gpfns = Gpfns, Errs = Errs });
        Assert.Equal(-Errno.EFAULT, backend.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap_batch, Guest.Scratch));
    }

    [Fact]
    public void GmfnAndGmfnRangeMoveOwnFrames()
    {
        var g = new Guest(_host);
        g.Write(0x40000, 0x4040UL);
        g.Write(0x41000, 0x4141UL);
        g.Write(Guest.Scratch, new XenAddToPhysmap { Domid = Xen.DOMID_SELF, Space = XENMAPSPACE_gmfn, Idx = 0x40, Gpfn = 0x1000 });
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap, Guest.Scratch));
        Assert.Equal(0x4040UL, g.Read<ulong>(0x1000000));
        Assert.False(g.Domain.P2m.TryLookup(0x40, out _, out _));

        int n = Hypercall.PreemptBudget + 10;
        g.Write(Guest.Scratch, new XenAddToPhysmap { Domid = Xen.DOMID_SELF, Space = XENMAPSPACE_gmfn_range, Size = (ushort)n, Idx = 0x41, Gpfn = 0x1001 });
        Assert.Equal(0, g.CallToCompletion(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap, Guest.Scratch, 0, out int pieces));
        Assert.Equal(2, pieces);
        Assert.Equal(0x4141UL, g.Read<ulong>(0x1001000));
        Assert.True(g.Domain.P2m.TryLookup(0x1001 + (ulong)n - 1, out _, out _));
        Assert.False(g.Domain.P2m.TryLookup(0x41 + (ulong)n - 1, out _, out _));
        // A GFN with no RAM behind it.
        g.Write(Guest.Scratch, new XenAddToPhysmap { Domid = Xen.DOMID_SELF, Space = XENMAPSPACE_gmfn, Idx = 0x9000, Gpfn = 0x1800 });
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap, Guest.Scratch));
    }
}
