using XenSharp.Public;
using static XenSharp.Public.Memory;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// Populate-on-demand as Xen's p2m-pod keeps it: entries the toolstack marks, a cache sized by the PoD target,
/// first touches served from the cache, decrease_reservation dropping entries and refilling the cache, the
/// figures XENMEM_get_pod_target reports, and a guest that outgrows its cache crashing alone.
/// </summary>
public class PodTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong ExtentList = Guest.Scratch + 0x1000;
    private const ulong PodStart = 0x100, PodEnd = 0x1000; // 1 MiB of real RAM below, 15 MiB of PoD above

    /// <summary>A guest with 1 MiB of ordinary RAM (for hypercall arguments), PoD above it up to 16 MiB, and a
    /// target of 4 MiB: a cache of 768 frames.</summary>
    private Guest PodGuest()
    {
        var g = new Guest(_host, vcpus: 1, ramMiB: 1, maxMiB: 17);
        _host.PopulateOnDemand(g.Id, PodStart, PodEnd - PodStart);
        var t = _host.SetPodTarget(g.Id, 1024);
        Assert.Equal(new PodTarget(1024, 768, (long)(PodEnd - PodStart)), t);
        return g;
    }

    private static long Reservation(Guest g, int op, ulong[] gfns, uint order = 0, ushort domid = Xen.DOMID_SELF, uint flags = 0)
    {
        for (int i = 0; i < gfns.Length; i++)
            g.Write(ExtentList + (ulong)i * 8, gfns[i]);
        g.Write(Guest.Scratch, new XenMemoryReservation { ExtentStart = ExtentList, NrExtents = (ulong)gfns.Length, ExtentOrder = order, MemFlags = flags, Domid = domid });
        return g.Call(Xen.__HYPERVISOR_memory_op, (ulong)op, Guest.Scratch);
    }

    private static long PodOp(Guest caller, int op, ushort domid, ulong targetPages, out XenPodTarget result)
    {
        result = new XenPodTarget { TargetPages = targetPages, Domid = domid };
        return caller.Call(Xen.__HYPERVISOR_memory_op, (ulong)op, ref result);
    }

    [Fact]
    [Trait("Feature", "Populate-on-demand memory")]
    public void FirstTouchesComeFromTheCacheAndKeepTheReservation()
    {
        var g = PodGuest();
        for (ulong gfn = 0x800; gfn < 0x800 + 100; gfn++)
            g.Write(gfn << 12, gfn);
        Assert.Equal(new PodTarget(1024, 668, 3840 - 100), _host.GetPodTarget(g.Id));
        Assert.Equal(0x805UL, g.Read<ulong>(0x805000));
        // Untouched PoD memory reads as zero (and is populated by the read).
        Assert.Equal(0UL, g.Read<ulong>(0x900000));
        Assert.Equal(new PodTarget(1024, 667, 3840 - 101), _host.GetPodTarget(g.Id));
        Assert.Equal(0xFFF, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_maximum_gpfn, Write(g, Xen.DOMID_SELF)));
    }

    [Fact]
    [Trait("Feature", "Populate-on-demand memory")]
    public void DecreaseReservationDropsEntriesAndStealsFreedFramesForTheCache()
    {
        var g = PodGuest();
        for (ulong gfn = 0x800; gfn < 0x810; gfn++)
            g.Write(gfn << 12, 0xAAUL);
        // Ten untouched PoD entries: gone, nothing freed.
        Assert.Equal(10, Reservation(g, XENMEM_decrease_reservation, [.. Enumerable.Range(0xA00, 10).Select(x => (ulong)x)]));
        Assert.Equal(new PodTarget(1024, 752, 3840 - 16 - 10), _host.GetPodTarget(g.Id));
        // Touched frames while the entries outnumber the cache: back into the cache, the reservation kept.
        Assert.Equal(4, Reservation(g, XENMEM_decrease_reservation, [0x800, 0x801, 0x802, 0x803]));
        Assert.Equal(new PodTarget(1024, 756, 3840 - 26), _host.GetPodTarget(g.Id));
        Assert.Throws<HypervisorException>(() => g.Read<ulong>(0x800000));
        // A gfn already given back is no extent to decrease; an order-1 extent over two PoD entries is.
        Assert.Equal(0, Reservation(g, XENMEM_decrease_reservation, [0xA00]));
        Assert.Equal(1, Reservation(g, XENMEM_decrease_reservation, [0xB00], order: 1));
        Assert.Equal(new PodTarget(1024, 756, 3840 - 28), _host.GetPodTarget(g.Id));
        // Stolen frames come back zeroed.
        g.Write(0x804000 + 8, 1UL);
        Assert.Equal(1, Reservation(g, XENMEM_decrease_reservation, [0x804]));
        Assert.Equal(0UL, g.Read<ulong>(0xC00000 + 8));
    }

    [Fact]
    [Trait("Feature", "Populate-on-demand memory")]
    public void BallooningPastTheEntriesReturnsTheSurplusCache()
    {
        var g = PodGuest();
        ulong free = _host.GetHostInfo().FreeMemoryBytes;
        // Give back all but 500 of the 3840 entries: the cache (768) shrinks to the 500 still outstanding.
        ulong[] gfns = [.. Enumerable.Range((int)PodStart, 3840 - 500).Select(x => (ulong)x)];
        for (int i = 0; i < gfns.Length; i++)
            g.Write(ExtentList + (ulong)i * 8, gfns[i]);
        g.Write(Guest.Scratch, new XenMemoryReservation { ExtentStart = ExtentList, NrExtents = (ulong)gfns.Length, Domid = Xen.DOMID_SELF });
        Assert.Equal(gfns.Length, g.CallToCompletion(Xen.__HYPERVISOR_memory_op, XENMEM_decrease_reservation, Guest.Scratch, 0, out _));
        Assert.Equal(new PodTarget(256 + 500, 500, 500), _host.GetPodTarget(g.Id));
        Assert.Equal(free + 268 * 4096UL, _host.GetHostInfo().FreeMemoryBytes);
        // The guest can now touch every remaining entry and still run.
        for (ulong gfn = PodEnd - 500; gfn < PodEnd; gfn++)
            g.Write(gfn << 12, gfn);
        Assert.Equal(new PodTarget(756, 0, 0), _host.GetPodTarget(g.Id));
        Assert.Null(_host.GetDomainInfo(g.Id).ShutdownReason);
    }

    [Fact]
    [Trait("Feature", "Populate-on-demand memory")]
    public void PodTargetIsTheControlDomainsToSetAndRead()
    {
        var g = PodGuest();
        var ctl = new Guest(_host, vcpus: 1, ramMiB: 1, maxMiB: 2, privileged: true);
        Assert.Equal(-Errno.EPERM, PodOp(g, XENMEM_get_pod_target, Xen.DOMID_SELF, 0, out _));
        Assert.Equal(-Errno.EPERM, PodOp(g, XENMEM_set_pod_target, Xen.DOMID_SELF, 1024, out _));
        Assert.Equal(-Errno.ESRCH, PodOp(ctl, XENMEM_get_pod_target, 999, 0, out _));

        Assert.Equal(0, PodOp(ctl, XENMEM_get_pod_target, g.Id, 0, out var t));
        Assert.Equal((1024UL, 768UL, 3840UL, g.Id), (t.TotPages, t.PodCachePages, t.PodEntries, t.Domid));
        Assert.Equal(-Errno.EINVAL, PodOp(ctl, XENMEM_set_pod_target, g.Id, 17 * 256 + 1, out _));
        // A higher target grows the cache up to the outstanding entries; a lower one is the balloon driver's.
        Assert.Equal(0, PodOp(ctl, XENMEM_set_pod_target, g.Id, 2048, out t));
        Assert.Equal((2048UL, 1792UL, 3840UL), (t.TotPages, t.PodCachePages, t.PodEntries));
        Assert.Equal(0, PodOp(ctl, XENMEM_set_pod_target, g.Id, 512, out t));
        Assert.Equal((2048UL, 1792UL), (t.TotPages, t.PodCachePages));

        // Only the toolstack places PoD entries: a guest asking for them on itself gets none.
        Assert.Equal(0, Reservation(g, XENMEM_populate_physmap, [0x1000], flags: XENMEMF_populate_on_demand));
        Assert.Equal(1, Reservation(ctl, XENMEM_populate_physmap, [0x1000], domid: g.Id, flags: XENMEMF_populate_on_demand));
        Assert.Equal(3841, _host.GetPodTarget(g.Id).Entries);
        // Populated RAM cannot become PoD.
        Assert.Equal(0, Reservation(ctl, XENMEM_populate_physmap, [0x10], domid: g.Id, flags: XENMEMF_populate_on_demand));
    }

    [Fact]
    [Trait("Feature", "Populate-on-demand memory")]
    public void TouchingMoreThanTheCacheCrashesThatGuestAlone()
    {
        var other = new Guest(_host, vcpus: 1, ramMiB: 1, maxMiB: 2);
        ulong free = _host.GetHostInfo().FreeMemoryBytes;
        var g = PodGuest();
        for (ulong gfn = PodStart; gfn < PodStart + 768; gfn++)
            g.Write(gfn << 12, gfn);
        Assert.Null(_host.GetDomainInfo(g.Id).ShutdownReason);
        Assert.Throws<HypervisorException>(() => g.Write((PodStart + 768) << 12, 1UL));
        Assert.Equal(ShutdownReason.Crash, _host.GetDomainInfo(g.Id).ShutdownReason);
        Assert.Contains("out of PoD memory", _host.ReadDmesg(false));
        // The hypervisor and the other domain carry on; destroying the crashed one returns all its memory.
        other.Write(0x1000, 42UL);
        Assert.Equal(42UL, other.Read<ulong>(0x1000));
        _host.Destroy(g.Id);
        Assert.Equal(free, _host.GetHostInfo().FreeMemoryBytes);
    }

    private static ulong Write(Guest g, ushort domid)
    {
        g.Write(Guest.Scratch, domid);
        return Guest.Scratch;
    }
}
