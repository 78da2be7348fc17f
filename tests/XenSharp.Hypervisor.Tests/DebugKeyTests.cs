using XenSharp.Public;
using static XenSharp.Public.EventChannel;

namespace XenSharp.Hypervisor.Tests;

/// <summary>XEN_SYSCTL_debug_keys reports in the console ring, and XEN_DOMCTL_sendtrigger.</summary>
[Trait("Feature", "Hypervisor 'debug keys'")]
public class DebugKeyTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private string Keys(string keys)
    {
        _host.ReadDmesg(clear: true);
        _host.DebugKeys(keys);
        return _host.ReadDmesg();
    }

    [Fact]
    public void HelpListsTheHandlers()
    {
        string s = Keys("h");
        Assert.Contains("(XEN) 'h' pressed -> showing installed handlers", s);
        Assert.Contains("(XEN)  key 'q' (ascii '71') => dump domain (and guest debug) info", s);
        Assert.Contains("(XEN)  key 'e' (ascii '65') => dump evtchn info", s);
        // A key without a handler is ignored, as in Xen.
        Assert.Equal("", Keys("Z"));
    }

    [Fact]
    public void DomainInfoDumpNotifiesGuestsThroughVirqDebug()
    {
        var g = new Guest(_host, vcpus: 2);
        var bind = new EvtchnBindVirq { Virq = Xen.VIRQ_DEBUG, Vcpu = 1 };
        Assert.Equal(0, Evtchn.Op(g, EVTCHNOP_bind_virq, ref bind, vcpu: 1));
        Assert.False(g.Domain.Evtchn.IsPending(bind.Port));

        string s = Keys("q");
        Assert.Contains("'q' pressed -> dumping domain info", s);
        Assert.Contains($"General information for domain {g.Id}:", s);
        Assert.Contains($"VCPU information and callbacks for domain {g.Id}:", s);
        Assert.Matches(@"    VCPU1: CPU-?\d+ \[has=F\] poll=0 upcall_pend=00 upcall_mask=00", s);
        Assert.Contains($"Notifying guest {g.Id}:1 (virq {Xen.VIRQ_DEBUG}, port {bind.Port})", s);
        Assert.True(g.Domain.Evtchn.IsPending(bind.Port));
    }

    [Fact]
    public void EventChannelsGrantsMemoryRunQueuesAndTsc()
    {
        var g = new Guest(_host, vcpus: 1, tscMode: TscMode.AlwaysEmulate);
        uint port = Evtchn.AllocUnbound(g, 0);
        _host.SeedGrantEntry(g.Id, 8, GrantTable.GTF_permit_access, 0, 0x30);
        Assert.Equal(GrantTable.GNTST_okay, _host.Dom0Services.TryMapGrant(g.Id, 8, readOnly: true, out var map));
        using (map)
        {
            string s = Keys("egmrs");
            Assert.Contains("'e' pressed -> dumping event-channel info", s);
            Assert.Contains($"Event channel information for domain {g.Id}:", s);
            Assert.Contains($"    {port,4} [0/0]: s=2 n=0 x=0 d=0", s);
            Assert.Contains("gnttab_usage_print_all [ key 'g' pressed", s);
            Assert.Contains($"grant-table for remote d{g.Id} (v1)", s);
            Assert.Contains("[0x008]      0 0x", s);
            Assert.Contains("Dom heap: ", s);
            Assert.Contains("Cpupool 0:", s);
            Assert.Contains("Scheduler: SMP Credit Scheduler (credit)", s);
            Assert.Contains($"dom{g.Id}(hvm): mode=1,khz=2000000", s);
            Assert.DoesNotContain("No domains have emulated TSC", s);
        }
    }

    [Fact]
    public void RegistersOfEveryVcpu()
    {
        var g = new Guest(_host, vcpus: 1);
        g.Cpu().Regs.Rip = 0xFFFFFFFF81000123;
        g.Cpu().Regs.Rax = 0x42;
        string s = Keys("d0");
        Assert.Contains($"*** Dumping guest state (d{g.Id}v0): ***", s);
        Assert.Contains("RIP:    0010:[<ffffffff81000123>]", s);
        Assert.Contains("rax: 0000000000000042", s);
        Assert.Contains("'0' pressed -> dumping Dom0's registers", s);
        // The dump paused the domain only while reading.
        Assert.Equal(DomainRunState.Paused, _host.GetDomainInfo(g.Id).State);
        _host.Unpause(g.Id);
        Keys("d");
        Assert.Equal(DomainRunState.Running, _host.GetDomainInfo(g.Id).State);
    }

    [Fact]
    public void TriggersFollowXen()
    {
        var g = new Guest(_host, vcpus: 2);
        _host.Unpause(g.Id);
        // The vCPU is halted: the NMI wakes it and reaches the engine.
        Assert.True(TestHosts.WaitUntil(() => g.Vcpu(0).Blocked));
        _host.SendTrigger(g.Id, Domctl.XEN_DOMCTL_SENDTRIGGER_NMI, 0);
        Assert.True(TestHosts.WaitUntil(() => g.Cpu().NmisInjected == 1));

        Assert.Equal(Errno.ESRCH, Assert.Throws<HypervisorException>(() => _host.SendTrigger(g.Id, Domctl.XEN_DOMCTL_SENDTRIGGER_NMI, 2)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<HypervisorException>(() => _host.SendTrigger(g.Id, Domctl.XEN_DOMCTL_SENDTRIGGER_POWER, 0)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<HypervisorException>(() => _host.SendTrigger(g.Id, Domctl.XEN_DOMCTL_SENDTRIGGER_SLEEP, 0)).Errno);
        Assert.Equal(Errno.ENOSYS, Assert.Throws<HypervisorException>(() => _host.SendTrigger(g.Id, Domctl.XEN_DOMCTL_SENDTRIGGER_RESET, 0)).Errno);
        Assert.Equal(Errno.ENOSYS, Assert.Throws<HypervisorException>(() => _host.SendTrigger(g.Id, Domctl.XEN_DOMCTL_SENDTRIGGER_INIT, 0)).Errno);
        Assert.Equal(Errno.ESRCH, Assert.Throws<HypervisorException>(() => _host.SendTrigger(0x5000, Domctl.XEN_DOMCTL_SENDTRIGGER_NMI, 0)).Errno);
    }
}
