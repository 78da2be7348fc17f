using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using static XenSharp.Public.EventChannel;
using static XenSharp.Public.Memory;

namespace XenSharp.Hypervisor.Tests;

/// <summary>XEN_DOMCTL_soft_reset as Xen's domain_soft_reset does it: only for a domain shut down, in place for HVM
/// and PVH (memory kept, channels closed, shared_info's GFN RAM again, the domain running on), refused with EINVAL
/// for PV after the common part, the domain then left shut down for the toolstack to destroy.</summary>
[Trait("Feature", "Soft-reset for PV guests")]
public sealed class SoftResetTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private static void ShutDownForSoftReset(Guest g)
    {
        var s = new SchedShutdown { Reason = Sched.SHUTDOWN_soft_reset };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_shutdown, ref s));
        Assert.Equal(DomainRunState.Shutdown, g.Domain.State);
    }

    [Fact]
    public void PvhDomainRunsOnWithItsMemoryAndNoChannels()
    {
        var g = new Guest(_host, vcpus: 1);
        uint ipi = Evtchn.BindIpi(g, 0);
        uint unbound = Evtchn.AllocUnbound(g, 0);
        var x = new XenAddToPhysmap { Domid = Xen.DOMID_SELF, Space = XENMAPSPACE_shared_info, Idx = 0, Gpfn = 1 };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_memory_op, XENMEM_add_to_physmap, ref x));
        g.Write(0x3000UL, 0x1234_5678_9ABC_DEF0UL);

        ShutDownForSoftReset(g);
        _host.SoftReset(g.Id);

        Assert.NotEqual(DomainRunState.Shutdown, g.Domain.State);
        Assert.Null(_host.GetDomainInfo(g.Id).ShutdownReason);
        Assert.Equal(0x1234_5678_9ABC_DEF0UL, g.Read<ulong>(0x3000));
        Assert.Equal(EVTCHNSTAT_closed, Evtchn.Status(g, ipi).Status);
        Assert.Equal(EVTCHNSTAT_closed, Evtchn.Status(g, unbound).Status);
        // shared_info left gfn 1; a page of RAM is there instead.
        Assert.True(g.Domain.P2m.TryLookup(1, out uint mfn, out var type));
        Assert.Equal(P2mType.RamRw, type);
        Assert.NotEqual(g.Domain.SharedInfoMfn, mfn);
        Assert.Null(g.Domain.SharedInfoGfn);
        // Ports are handed out again from the lowest.
        Assert.Equal(ipi, Evtchn.BindIpi(g, 0));
    }

    [Fact]
    public void RunningDomainIsRefused()
    {
        var g = new Guest(_host, vcpus: 1);
        var e = Assert.Throws<HypervisorException>(() => _host.SoftReset(g.Id));
        Assert.Equal(Errno.EINVAL, e.Errno);
    }

    [Fact]
    public void PvDomainIsRefusedAndStaysShutDown()
    {
        var g = new Guest(_host, vcpus: 1, ramMiB: 4, maxMiB: 8, type: DomainKind.Pv);
        Assert.Equal(0, g.Domain.Evtchn.BindIpi(0, out uint ipi));
        _host.Shutdown(g.Id, ShutdownReason.SoftReset);
        var e = Assert.Throws<HypervisorException>(() => _host.SoftReset(g.Id));
        Assert.Equal(Errno.EINVAL, e.Errno);
        Assert.Equal(DomainRunState.Shutdown, g.Domain.State);
        Assert.Equal(ShutdownReason.SoftReset, _host.GetDomainInfo(g.Id).ShutdownReason);
        // Xen closed the channels before its x86 part refused.
        Assert.Null(g.Domain.Evtchn.InUse().FirstOrDefault(c => c.Port == ipi));
    }
}
