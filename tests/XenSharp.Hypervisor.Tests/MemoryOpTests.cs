using XenSharp.Public;
using static XenSharp.Public.Memory;

namespace XenSharp.Hypervisor.Tests;

public class MemoryOpTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong ExtentList = Guest.Scratch + 0x1000;

    private long Reservation(Guest g, int op, ulong[] gfns, uint order = 0, ushort domid = Xen.DOMID_SELF)
    {
        for (int i = 0; i < gfns.Length; i++)
            g.Write(ExtentList + (ulong)i * 8, gfns[i]);
        var r = new XenMemoryReservation { ExtentStart = ExtentList, NrExtents = (ulong)gfns.Length, ExtentOrder = order, Domid = domid };
        g.Write(Guest.Scratch, r);
        return g.Call(Xen.__HYPERVISOR_memory_op, (ulong)op, Guest.Scratch);
    }

    [Fact]
    [Trait("Feature", "Dynamic memory control")]
    public void DecreaseReservationGivesTheHostItsMemoryBack()
    {
        var g = new Guest(_host, ramMiB: 4, maxMiB: 8);
        var gfns = Enumerable.Range(0x200, 256).Select(i => (ulong)i).ToArray();
        foreach (ulong gfn in gfns)
            g.Write(gfn << 12, 0x0123456789ABCDEFUL);
        long before = _host.Frames.BackedBytes(g.Id);
        Assert.True(before >= 256 * 4096L, $"the domain's memfd holds {before} bytes");
        foreach (var chunk in gfns.Chunk(64))
            Assert.Equal(64, Reservation(g, XENMEM_decrease_reservation, chunk));
        long after = _host.Frames.BackedBytes(g.Id);
        // Less the pages the hypercall arguments were written to.
        Assert.True(before - after >= 250 * 4096L, $"{before} -> {after} bytes after giving back 256 pages");
    }

    [Fact]
    [Trait("Feature", "Dynamic memory control")]
    public void BalloonDownReturnsFramesToThePoolAndBackUpGivesZeroedPages()
    {
        var g = new Guest(_host, ramMiB: 4, maxMiB: 8);
        long tot = g.Domain.TotPages;
        long freeBefore = _host.GetHostInfo().FreeMemoryBytes is var f ? (long)f : 0;
        g.Write(0x200000, 0xDEADBEEFUL);

        Assert.Equal(2, Reservation(g, XENMEM_decrease_reservation, [0x200, 0x201]));
        Assert.Equal(tot - 2, g.Domain.TotPages);
        Assert.Equal(freeBefore + 2 * 4096, (long)_host.GetHostInfo().FreeMemoryBytes);
        Assert.Throws<HypervisorException>(() => g.Read<ulong>(0x200000));

        Assert.Equal(2, Reservation(g, XENMEM_populate_physmap, [0x200, 0x201]));
        Assert.Equal(tot, g.Domain.TotPages);
        Assert.Equal(0UL, g.Read<ulong>(0x200000));
    }

    [Fact]
    [Trait("Feature", "Dynamic memory control")]
    public void PopulateStopsAtTheMaximumReservation()
    {
        var g = new Guest(_host, ramMiB: 1, maxMiB: 1);
        Assert.Equal(0, Reservation(g, XENMEM_populate_physmap, [0x500]));
        Assert.Equal(256L, g.Domain.TotPages);
        Assert.Equal(256, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_current_reservation, WriteDomid(g, Xen.DOMID_SELF)));
        Assert.Equal(256, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_maximum_reservation, WriteDomid(g, Xen.DOMID_SELF)));
        _host.SetMaxMemory(g.Id, 2048);
        Assert.Equal(1, Reservation(g, XENMEM_populate_physmap, [0x1], order: 0));
        Assert.Equal(1, Reservation(g, XENMEM_populate_physmap, [0x400], order: 2));
        Assert.Equal(0x403, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_maximum_gpfn, WriteDomid(g, Xen.DOMID_SELF)));
    }

    [Fact]
    [Trait("Feature", "Dynamic memory control")]
    public void IncreaseReservationGivesATranslatedGuestFramesItCannotSee()
    {
        ulong free = _host.GetHostInfo().FreeMemoryBytes;
        var g = new Guest(_host, ramMiB: 1, maxMiB: 2);
        long maxGpfn = g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_maximum_gpfn, WriteDomid(g, Xen.DOMID_SELF));
        ulong afterBuild = _host.GetHostInfo().FreeMemoryBytes;

        // Xen writes MFNs back only for PV guests: the list keeps what the guest put there, the p2m is unchanged.
        Assert.Equal(2, Reservation(g, XENMEM_increase_reservation, [0x1111, 0x2222], order: 1));
        Assert.Equal(256L + 4, g.Domain.TotPages);
        Assert.Equal(afterBuild - 4 * 4096, _host.GetHostInfo().FreeMemoryBytes);
        Assert.Equal(0x1111UL, g.Read<ulong>(ExtentList));
        Assert.Equal(0x2222UL, g.Read<ulong>(ExtentList + 8));
        Assert.Equal(maxGpfn, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_maximum_gpfn, WriteDomid(g, Xen.DOMID_SELF)));

        // The reservation still bounds them: 252 pages are left, so the second extent of 128 does not fit.
        Assert.Equal(1, Reservation(g, XENMEM_increase_reservation, [0, 0], order: 7));
        Assert.Equal(256L + 4 + 128, g.Domain.TotPages);

        _host.Destroy(g.Id);
        Assert.Equal(free, _host.GetHostInfo().FreeMemoryBytes);
    }

    private static ulong WriteDomid(Guest g, ushort domid)
    {
        g.Write(Guest.Scratch, domid);
        return Guest.Scratch;
    }

    [Fact]
    public void ReservationFaultsReturnTheExtentsDone()
    {
        var g = new Guest(_host, ramMiB: 4, maxMiB: 8);
        // A bad argument structure: nothing done.
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_populate_physmap, Guest.Bad));
        // A bad extent list: stops at the first unreadable entry.
        var r = new XenMemoryReservation { ExtentStart = Guest.Bad, NrExtents = 3, Domid = Xen.DOMID_SELF };
        g.Write(Guest.Scratch, r);
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_decrease_reservation, Guest.Scratch));
        // Decreasing a GFN with no RAM stops there.
        Assert.Equal(1, Reservation(g, XENMEM_decrease_reservation, [0x10, 0x5000]));
    }

    [Fact]
    public void OtherDomainsNeedPrivilege()
    {
        var a = new Guest(_host);
        var b = new Guest(_host);
        Assert.Equal(-Errno.EPERM, a.Call(Xen.__HYPERVISOR_memory_op, XENMEM_current_reservation, WriteDomid(a, b.Id)));
        Assert.Equal(-Errno.ESRCH, a.Call(Xen.__HYPERVISOR_memory_op, XENMEM_current_reservation, WriteDomid(a, 999)));
        Assert.Equal(-Errno.EPERM, Reservation(a, XENMEM_populate_physmap, [0x900], domid: b.Id));
    }

    [Fact]
    [Trait("Feature", "x86/PVH")]
    public unsafe void SharedInfoReplacesARamPage()
    {
        var g = new Guest(_host);
        long tot = g.Domain.TotPages;
        var x = new XenAddToPhysmap { Domid = Xen.DOMID_SELF, Space = XENMAPSPACE_shared_info, Idx = 0, Gpfn = 1 };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap, ref x));
        Assert.Equal(tot - 1, g.Domain.TotPages);
        // The page at gfn 1 is now shared_info: the wall clock is there, vcpu_info[0].time is published.
        var wc = g.Read<uint>(0x1000 + SharedInfo.OffsetWcSec);
        Assert.True(wc > 1_600_000_000);
        Assert.Equal(0u, g.Read<uint>(0x1000 + SharedInfo.OffsetWcVersion) & 1);
        var t = g.Read<VcpuTimeInfo>(0x1000 + VcpuInfo.OffsetTime);
        Assert.NotEqual(0u, t.TscToSystemMul);
        Assert.Equal(0u, t.Version & 1);
        // Moving it leaves a hole behind.
        x.Gpfn = 0x300;
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap, ref x));
        Assert.Throws<HypervisorException>(() => g.Read<uint>(0x1000));
        x.Idx = 1;
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap, ref x));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap, Guest.Bad));
    }

    [Fact]
    public void GmfnMovesAndRemoveFromPhysmapFrees()
    {
        var g = new Guest(_host);
        g.Write(0x5000, 0x1234UL);
        var x = new XenAddToPhysmap { Domid = Xen.DOMID_SELF, Space = XENMAPSPACE_gmfn, Idx = 5, Gpfn = 0x800 };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap, ref x));
        Assert.Equal(0x1234UL, g.Read<ulong>(0x800000));
        long tot = g.Domain.TotPages;
        var r = new XenRemoveFromPhysmap { Domid = Xen.DOMID_SELF, Gpfn = 0x800 };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_remove_from_physmap, ref r));
        Assert.Equal(tot - 1, g.Domain.TotPages);
        Assert.Equal(-Errno.ENOENT, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_remove_from_physmap, ref r));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_remove_from_physmap, Guest.Bad));
    }

    [Fact]
    [Trait("Feature", "x86/PVH")]
    public void MemoryMapReturnsWhatTheToolstackSet()
    {
        var g = new Guest(_host);
        var m = new XenMemoryMap { NrEntries = 8, Buffer = Guest.Scratch + 0x100 };
        Assert.Equal(-Errno.ENOSYS, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_memory_map, ref m));
        _host.SetMemoryMap(g.Id, [new E820Entry { Addr = 0, Size = 4 << 20, Type = 1 }, new E820Entry { Addr = 0xFC000000, Size = 0x1000, Type = 4 }]);
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_memory_map, ref m));
        Assert.Equal(2u, m.NrEntries);
        Assert.Equal(0xFC000000UL, g.Read<ulong>(Guest.Scratch + 0x100 + 20));
        Assert.Equal(4u, g.Read<uint>(Guest.Scratch + 0x100 + 36));
        m.Buffer = Guest.Bad;
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_memory_map, ref m));
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_memory_map, Guest.Bad));
    }

    [Fact]
    public void MaximumRamPageAndUnknownOps()
    {
        var g = new Guest(_host);
        Assert.Equal((256L << 20 >> 12) - 1, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_maximum_ram_page));
        Assert.Equal(-Errno.ENOSYS, g.Call(Xen.__HYPERVISOR_memory_op, 0x3e, Guest.Scratch));
    }

    [Fact]
    public void DestroyReturnsAllMemory()
    {
        ulong free = _host.GetHostInfo().FreeMemoryBytes;
        var g = new Guest(_host, ramMiB: 8, maxMiB: 8);
        Assert.True(_host.GetHostInfo().FreeMemoryBytes < free);
        _host.Destroy(g.Id);
        Assert.Equal(free, _host.GetHostInfo().FreeMemoryBytes);
        Assert.DoesNotContain(_host.ListDomains(), d => d.DomainId == g.Id);
    }
}
