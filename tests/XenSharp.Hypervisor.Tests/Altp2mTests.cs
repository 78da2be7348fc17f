using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Hvm.Altp2m;

namespace XenSharp.Hypervisor.Tests;

/// <summary>HVMOP_altp2m as a guest using its own views (HVM_PARAM_ALTP2M mixed) meets it, and the engine's view of
/// memory through them.</summary>
[Trait("Feature", "Alternative p2m")]
public unsafe class Altp2mTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private static XenHvmAltp2mOp Op(uint cmd) => new() { Version = HVMOP_ALTP2M_INTERFACE_VERSION, Cmd = cmd, Domain = Xen.DOMID_SELF };

    private static long Call(Guest g, ref XenHvmAltp2mOp a) => g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_altp2m, ref a);

    [Fact]
    public void TheConfigurationDecidesWhoMayUseViews()
    {
        var g = new Guest(_host);
        var a = Op(HVMOP_altp2m_get_domain_state);
        Assert.Equal(-Errno.EINVAL, Call(g, ref a)); // XEN_ALTP2M_disabled
        a = Op(HVMOP_altp2m_create_p2m);
        Assert.Equal(-Errno.EOPNOTSUPP, Call(g, ref a)); // not active
        _host.SetHvmParam(g.Id, Params.HVM_PARAM_ALTP2M, XEN_ALTP2M_external);
        a = Op(HVMOP_altp2m_set_domain_state);
        a.State = 1;
        Assert.Equal(-Errno.EPERM, Call(g, ref a)); // external: the guest itself may not
        Assert.Throws<HypervisorException>(() => _host.SetHvmParam(g.Id, Params.HVM_PARAM_ALTP2M, 4));
        _host.SetHvmParam(g.Id, Params.HVM_PARAM_ALTP2M, XEN_ALTP2M_mixed);
        Assert.Equal(0, Call(g, ref a));
        a = Op(HVMOP_altp2m_get_domain_state);
        Assert.Equal(0, Call(g, ref a));
        Assert.Equal(1, a.State);
        // Bad headers, #VE and the ops not offered.
        a = Op(HVMOP_altp2m_get_domain_state);
        a.Version = 2;
        Assert.Equal(-Errno.EINVAL, Call(g, ref a));
        a = Op(HVMOP_altp2m_get_domain_state);
        a.Pad1 = 1;
        Assert.Equal(-Errno.EINVAL, Call(g, ref a));
        a = Op(99);
        Assert.Equal(-Errno.EOPNOTSUPP, Call(g, ref a));
        a = Op(HVMOP_altp2m_vcpu_enable_notify);
        Assert.Equal(-Errno.EOPNOTSUPP, Call(g, ref a));
        a = Op(HVMOP_altp2m_vcpu_enable_notify);
        a.VcpuId = 7;
        Assert.Equal(-Errno.EINVAL, Call(g, ref a));
    }

    [Fact]
    public void ViewsAreCreatedRestrictedRemappedSwitchedAndDestroyed()
    {
        var g = new Guest(_host);
        _host.SetHvmParam(g.Id, Params.HVM_PARAM_ALTP2M, XEN_ALTP2M_mixed);
        var a = Op(HVMOP_altp2m_set_domain_state);
        a.State = 1;
        Assert.Equal(0, Call(g, ref a));
        // Views 1-9 (view 0 is the host p2m's), then no more.
        for (int i = 1; i < MAX_ALTP2M; i++)
        {
            a = Op(HVMOP_altp2m_create_p2m);
            a.DefaultAccess = VmEvent.XENMEM_access_rwx;
            Assert.Equal(0, Call(g, ref a));
            Assert.Equal(i, a.View);
        }
        a = Op(HVMOP_altp2m_create_p2m);
        Assert.Equal(-Errno.EINVAL, Call(g, ref a));
        for (ushort i = 2; i < MAX_ALTP2M; i++)
        {
            a = Op(HVMOP_altp2m_destroy_p2m);
            a.View = i;
            Assert.Equal(0, Call(g, ref a));
        }

        // View 1: gfn 0x20 read-only, gfn 0x21 showing gfn 0x22's frame; a hole cannot be restricted.
        g.Write(0x20000, 0x1111UL);
        g.Write(0x22000, 0x2222UL);
        a = Op(HVMOP_altp2m_set_mem_access);
        a.View = 1; a.Gfn = 0x20; a.Access = VmEvent.XENMEM_access_rx;
        Assert.Equal(0, Call(g, ref a));
        a.Gfn = 0x100000;
        Assert.Equal(-Errno.ESRCH, Call(g, ref a));
        a.View = 5; a.Gfn = 0x20;
        Assert.Equal(-Errno.EINVAL, Call(g, ref a)); // destroyed
        a = Op(HVMOP_altp2m_get_mem_access);
        a.View = 1; a.Gfn = 0x20;
        Assert.Equal(0, Call(g, ref a));
        Assert.Equal(VmEvent.XENMEM_access_rx, a.Access);
        a = Op(HVMOP_altp2m_change_gfn);
        a.View = 1; a.OldGfn = 0x21; a.NewGfn = 0x22;
        Assert.Equal(0, Call(g, ref a));

        // The engine sees the view its vCPU is in; the host p2m (and so the hypervisor's copies) stays as it was.
        var p2m = g.Domain.P2m;
        IGuestMemory mem = p2m;
        a = Op(HVMOP_altp2m_switch_p2m);
        a.View = 1;
        Assert.Equal(0, Call(g, ref a));
        a = Op(HVMOP_altp2m_get_p2m_idx);
        a.VcpuId = 1;
        Assert.Equal(0, Call(g, ref a));
        Assert.Equal(1, a.VcpuAltp2mIdx);
        p2m.EnterView(0);
        Assert.Equal(0x2222UL, *(ulong*)mem.GetPage(0x21, false));
        Assert.True(mem.GetPage(0x20, true) == null);
        Assert.Equal(0x1111UL, *(ulong*)mem.GetPage(0x20, false));
        Assert.Equal(VmEvent.MEM_ACCESS_W, p2m.EngineDeniedAccess(0x20));
        Assert.Equal(0UL, g.Read<ulong>(0x21000));
        Assert.True(p2m.GetPage(0x20, true) != null);

        // A view in use cannot go; back in view 0 everything is the host's again.
        a = Op(HVMOP_altp2m_destroy_p2m);
        a.View = 1;
        Assert.Equal(-Errno.EBUSY, Call(g, ref a));
        Assert.True(p2m.SwitchVcpu(0, 0));
        Assert.Equal(-Errno.EBUSY, Call(g, ref a)); // vCPU 1 still sees it
        a = Op(HVMOP_altp2m_switch_p2m);
        a.View = 0;
        Assert.Equal(0, Call(g, ref a));
        p2m.EnterView(0);
        Assert.Equal(0UL, *(ulong*)mem.GetPage(0x21, false));
        Assert.True(mem.GetPage(0x20, true) != null);
        a = Op(HVMOP_altp2m_destroy_p2m);
        a.View = 1;
        Assert.Equal(0, Call(g, ref a));
        Assert.Equal(-Errno.EBUSY, Call(g, ref a));
        a = Op(HVMOP_altp2m_set_domain_state);
        a.State = 0;
        Assert.Equal(0, Call(g, ref a));
        Assert.False(p2m.Altp2mActive);
        Assert.False(p2m.AccessRestricted);
    }
}
