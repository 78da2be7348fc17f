using System.Runtime.InteropServices;
using XenSharp.Public;
using static XenSharp.Public.Sysctl;

namespace XenSharp.Hypervisor.Tests.Scheduling;

/// <summary>XEN_SYSCTL_cpu_hotplug: an offlined pCPU leaves Pool-0 and runs no vCPU until it is back online.</summary>
[Trait("Feature", "Physical CPU Hotplug")]
public sealed unsafe class CpuHotplugTests : IDisposable
{
    private const ulong CallerBase = 0x7f00_0000_0000;
    private readonly XenHypervisor _host = SchedGuests.Host(pcpus: 2);
    private readonly byte* _buffer = (byte*)NativeMemory.AllocZeroed(4096);
    private readonly Dom0HypercallContext _dom0;

    public CpuHotplugTests() => _dom0 = _host.OpenDom0Hypercalls((nint)_buffer, CallerBase, 4096);

    public void Dispose()
    {
        _dom0.Dispose();
        _host.Dispose();
        NativeMemory.Free(_buffer);
    }

    private long Hotplug(uint op, uint cpu)
    {
        var sysctl = new XenSysctl { Cmd = XEN_SYSCTL_cpu_hotplug, InterfaceVersion = XEN_SYSCTL_INTERFACE_VERSION };
        sysctl.As<XenSysctlCpuHotplug>() = new XenSysctlCpuHotplug { Cpu = cpu, Op = op };
        *(XenSysctl*)_buffer = sysctl;
        return _dom0.Hypercall(Xen.__HYPERVISOR_sysctl, CallerBase);
    }

    [Fact]
    public void AnOfflinePcpuRunsNothingUntilItIsBack()
    {
        var trace = SchedGuests.Trace(_host);
        ushort a = SchedGuests.Spinner(_host), b = SchedGuests.Spinner(_host);
        _host.Unpause(a);
        _host.Unpause(b);
        Assert.True(TestHosts.WaitUntil(() => trace.Any(e => e.Cpu == 1)));

        Assert.Equal(0, Hotplug(XEN_SYSCTL_CPU_HOTPLUG_OFFLINE, 1));
        Assert.Equal([0], _host.GetCpupool(0).Cpus);
        Assert.Empty(_host.GetFreeCpus());
        trace.Clear();
        Assert.True(TestHosts.WaitUntil(() => trace.Count(e => e.Dom == a && e.Cpu == 0) >= 3 && trace.Count(e => e.Dom == b && e.Cpu == 0) >= 3));
        // The slice under way on pCPU 1 may end (and be traced) after the call, however late the host lets that
        // thread see the request; after it pCPU 1 runs nothing, while both domains take turns on pCPU 0.
        Assert.True(trace.Count(e => e.Cpu == 1) <= 1, string.Join(", ", trace.Where(e => e.Cpu == 1)));

        Assert.Equal(-Errno.EEXIST, Hotplug(XEN_SYSCTL_CPU_HOTPLUG_OFFLINE, 1));
        Assert.Equal(-Errno.EINVAL, Hotplug(XEN_SYSCTL_CPU_HOTPLUG_OFFLINE, 0));
        Assert.Equal(-Errno.EINVAL, Hotplug(XEN_SYSCTL_CPU_HOTPLUG_OFFLINE, 2));
        Assert.Equal(-Errno.EOPNOTSUPP, Hotplug(XEN_SYSCTL_CPU_HOTPLUG_SMT_DISABLE, 0));
        Assert.Equal(16, Assert.Throws<HypervisorException>(() => _host.CpupoolAddCpu(0, 1)).Errno);

        Assert.Equal(0, Hotplug(XEN_SYSCTL_CPU_HOTPLUG_ONLINE, 1));
        Assert.Equal([0, 1], _host.GetCpupool(0).Cpus);
        Assert.Equal(-Errno.EEXIST, Hotplug(XEN_SYSCTL_CPU_HOTPLUG_ONLINE, 1));
        trace.Clear();
        Assert.True(TestHosts.WaitUntil(() => trace.Any(e => e.Cpu == 1)));
    }

    [Fact]
    public void APcpuOfAnotherPoolOrTheLastOfABusyPoolStays()
    {
        _host.CpupoolRemoveCpu(0, 1);
        int id = _host.CreateCpupool("other", "credit", [1]);
        Assert.Equal(-Errno.EBUSY, Hotplug(XEN_SYSCTL_CPU_HOTPLUG_OFFLINE, 1));
        _host.DestroyCpupool(id);
        // A free pCPU goes offline without a pool to leave, and comes back into Pool-0.
        Assert.Equal(0, Hotplug(XEN_SYSCTL_CPU_HOTPLUG_OFFLINE, 1));
        Assert.Empty(_host.GetFreeCpus());
        Assert.Equal(0, Hotplug(XEN_SYSCTL_CPU_HOTPLUG_ONLINE, 1));
        Assert.Equal([0, 1], _host.GetCpupool(0).Cpus);
    }
}
