using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Public;
using static XenSharp.Public.Domctl;
using static XenSharp.Public.Sysctl;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// The binary domctl/sysctl of Xen 4.17 as a Domain-0 program reaches them (a <see cref="Dom0HypercallContext"/> over
/// a buffer area, as privcmd sets it up), and as guests see them.
/// </summary>
[Trait("Feature", "Dom0 stable libraries")]
public sealed unsafe class DomctlSysctlTests : IDisposable
{
    private const ulong CallerBase = 0x7f00_0000_0000;
    private const int BufferBytes = 64 * 1024;
    private readonly XenHypervisor _host = TestHosts.Create(pcpus: 2);
    private readonly byte* _buffers = (byte*)NativeMemory.AllocZeroed(BufferBytes);
    private readonly Dom0HypercallContext _dom0;

    public DomctlSysctlTests() => _dom0 = _host.OpenDom0Hypercalls((nint)_buffers, CallerBase, BufferBytes);

    public void Dispose()
    {
        _dom0.Dispose();
        _host.Dispose();
        NativeMemory.Free(_buffers);
    }

    private ref T At<T>(int offset) where T : unmanaged => ref *(T*)(_buffers + offset);

    private long Sysctl(ref XenSysctl op)
    {
        At<XenSysctl>(0) = op;
        long rc = _dom0.Hypercall(Xen.__HYPERVISOR_sysctl, CallerBase);
        op = At<XenSysctl>(0);
        return rc;
    }

    private long Domctl(ref XenDomctl op)
    {
        At<XenDomctl>(0) = op;
        long rc = _dom0.Hypercall(Xen.__HYPERVISOR_domctl, CallerBase);
        op = At<XenDomctl>(0);
        return rc;
    }

    [Fact]
    public void PhysinfoDescribesMachineMemoryAndPcpus()
    {
        var op = new XenSysctl { Cmd = XEN_SYSCTL_physinfo, InterfaceVersion = XEN_SYSCTL_INTERFACE_VERSION };
        Assert.Equal(0, Sysctl(ref op));
        var pi = op.As<XenSysctlPhysinfo>();
        Assert.Equal(2u, pi.NrCpus);
        Assert.Equal(1u, pi.MaxCpuId);
        Assert.Equal((256UL << 20) / 4096, pi.TotalPages);
        Assert.Equal(pi.TotalPages, pi.FreePages);
        Assert.Equal(XEN_SYSCTL_PHYSCAP_hvm, pi.Capabilities & XEN_SYSCTL_PHYSCAP_hvm);
    }

    [Fact]
    public void GetdomaininfoFindsTheFirstDomainAtOrAfterTheId()
    {
        var g = new Guest(_host, vcpus: 2, ramMiB: 4);
        var op = new XenDomctl { Cmd = XEN_DOMCTL_getdomaininfo, InterfaceVersion = XEN_DOMCTL_INTERFACE_VERSION, Domain = 1 };
        Assert.Equal(0, Domctl(ref op));
        Assert.Equal(g.Id, op.Domain);
        var info = op.As<XenDomctlGetdomaininfo>();
        Assert.Equal(g.Id, info.Domain);
        Assert.Equal(4UL * 256, info.TotPages);
        Assert.Equal(1u, info.MaxVcpuId);
        Assert.Equal(1u, info.NrOnlineVcpus); // vCPU 1 is down until the guest brings it up, as in Xen
        Assert.NotEqual(0u, info.Flags & XEN_DOMINF_paused);
        Assert.NotEqual(0u, info.Flags & XEN_DOMINF_hvm_guest);
        Assert.Equal(0u, info.Cpupool);

        op = new XenDomctl { Cmd = XEN_DOMCTL_getdomaininfo, InterfaceVersion = XEN_DOMCTL_INTERFACE_VERSION, Domain = (ushort)(g.Id + 1) };
        Assert.Equal(-Errno.ESRCH, Domctl(ref op));
    }

    [Fact]
    public void GetdomaininfolistFillsTheCallersArray()
    {
        var g = new Guest(_host);
        At<XenSysctl>(0) = default;
        var op = new XenSysctl { Cmd = XEN_SYSCTL_getdomaininfolist, InterfaceVersion = XEN_SYSCTL_INTERFACE_VERSION };
        op.As<XenSysctlGetdomaininfolist>() = new XenSysctlGetdomaininfolist { FirstDomain = 0, MaxDomains = 8, Buffer = CallerBase + 4096 };
        Assert.Equal(0, Sysctl(ref op));
        Assert.Equal(2u, op.As<XenSysctlGetdomaininfolist>().NumDomains);
        Assert.Equal(0, At<XenDomctlGetdomaininfo>(4096).Domain);
        Assert.Equal(g.Id, At<XenDomctlGetdomaininfo>(4096 + sizeof(XenDomctlGetdomaininfo)).Domain);
    }

    [Fact]
    public void ReadconsoleReadsTheRingIncrementally()
    {
        _host.DebugKeys("h");
        var op = new XenSysctl { Cmd = XEN_SYSCTL_readconsole, InterfaceVersion = XEN_SYSCTL_INTERFACE_VERSION };
        op.As<XenSysctlReadconsole>() = new XenSysctlReadconsole { Incremental = 1, Index = 0, Buffer = CallerBase + 4096, Count = 64 };
        Assert.Equal(0, Sysctl(ref op));
        var first = op.As<XenSysctlReadconsole>();
        Assert.Equal(64u, first.Count);
        var all = new StringBuilder(Encoding.UTF8.GetString(new ReadOnlySpan<byte>(_buffers + 4096, 64)));
        while (true)
        {
            uint index = op.As<XenSysctlReadconsole>().Index;
            op = new XenSysctl { Cmd = XEN_SYSCTL_readconsole, InterfaceVersion = XEN_SYSCTL_INTERFACE_VERSION };
            op.As<XenSysctlReadconsole>() = new XenSysctlReadconsole { Incremental = 1, Index = index, Buffer = CallerBase + 4096, Count = 4096 };
            Assert.Equal(0, Sysctl(ref op));
            uint n = op.As<XenSysctlReadconsole>().Count;
            if (n == 0)
                break;
            all.Append(Encoding.UTF8.GetString(new ReadOnlySpan<byte>(_buffers + 4096, (int)n)));
        }
        Assert.Equal(_host.ReadDmesg(), all.ToString());
    }

    [Fact]
    public void CpupoolInfoWalksThePools()
    {
        var op = new XenSysctl { Cmd = XEN_SYSCTL_cpupool_op, InterfaceVersion = XEN_SYSCTL_INTERFACE_VERSION };
        op.As<XenSysctlCpupoolOp>() = new XenSysctlCpupoolOp
        {
            Op = XEN_SYSCTL_CPUPOOL_OP_INFO, CpupoolId = 0, Cpumap = new XenctlBitmap { Bitmap = CallerBase + 4096, NrBits = 8 },
        };
        Assert.Equal(0, Sysctl(ref op));
        Assert.Equal(0u, op.As<XenSysctlCpupoolOp>().CpupoolId);
        Assert.Equal(XEN_SCHEDULER_CREDIT, op.As<XenSysctlCpupoolOp>().SchedId);
        Assert.Equal(0b11, _buffers[4096]);
        op.As<XenSysctlCpupoolOp>().CpupoolId = 1;
        Assert.Equal(-Errno.ENOENT, Sysctl(ref op));
    }

    [Fact]
    public void WrongVersionsBadPointersAndMissingDomainsGetXensErrno()
    {
        var op = new XenSysctl { Cmd = XEN_SYSCTL_physinfo, InterfaceVersion = 0x14 };
        Assert.Equal(-Errno.EACCES, Sysctl(ref op));
        var d = new XenDomctl { Cmd = XEN_DOMCTL_pausedomain, InterfaceVersion = XEN_DOMCTL_INTERFACE_VERSION, Domain = 999 };
        Assert.Equal(-Errno.ESRCH, Domctl(ref d));
        Assert.Equal(-Errno.EFAULT, _dom0.Hypercall(Xen.__HYPERVISOR_sysctl, CallerBase + BufferBytes));
        Assert.Equal(-Errno.EFAULT, _dom0.Hypercall(Xen.__HYPERVISOR_sysctl, 0x1000));
        Assert.Equal(-Errno.ENOSYS, _dom0.Hypercall(Xen.__HYPERVISOR_vcpu_op, 0, 0, 0));
        Assert.Equal(-Errno.ENOSYS, _dom0.Hypercall(Xen.__HYPERVISOR_sched_op, Sched.SCHEDOP_shutdown, CallerBase));
    }

    [Fact]
    public void GuestsAreRefusedUnlessPrivileged()
    {
        var g = new Guest(_host);
        g.Write(Guest.Scratch, new XenSysctl { Cmd = XEN_SYSCTL_physinfo, InterfaceVersion = XEN_SYSCTL_INTERFACE_VERSION });
        Assert.Equal(-Errno.EPERM, g.Call(Xen.__HYPERVISOR_sysctl, Guest.Scratch));
        g.Write(Guest.Scratch, new XenSysctl { Cmd = XEN_SYSCTL_physinfo, InterfaceVersion = 0x13 });
        Assert.Equal(-Errno.EACCES, g.Call(Xen.__HYPERVISOR_sysctl, Guest.Scratch));
        var p = new Guest(_host, privileged: true);
        p.Write(Guest.Scratch, new XenSysctl { Cmd = XEN_SYSCTL_physinfo, InterfaceVersion = XEN_SYSCTL_INTERFACE_VERSION });
        Assert.Equal(0, p.Call(Xen.__HYPERVISOR_sysctl, Guest.Scratch));
    }

    [Fact]
    public void Dom0EventChannelsNotifyTheirOwnerAcrossALoopback()
    {
        int raisedA = 0, raisedB = 0;
        Assert.Equal(0, _host.Dom0EvtchnAllocUnbound(0, () => Interlocked.Increment(ref raisedA), out uint a));
        Assert.Equal(0, _host.Dom0EvtchnBindInterdomain(0, a, () => Interlocked.Increment(ref raisedB), out uint b));
        Assert.Equal(1, raisedB); // a new interdomain port is raised once
        Assert.Equal(0, _host.Dom0EvtchnSend(b));
        Assert.Equal(1, raisedA);
        Assert.Equal(-Errno.ESRCH, _host.Dom0EvtchnAllocUnbound(999, () => { }, out _));
        Assert.Equal(0, _host.Dom0EvtchnBindVirq(Xen.VIRQ_DOM_EXC, () => { }, out uint virq));
        Assert.NotEqual(0u, virq);
        Assert.Equal(0, _host.Dom0EvtchnClose(b));
        Assert.Equal(0, _host.Dom0EvtchnClose(a));
    }
}
