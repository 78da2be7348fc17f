using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Hvm.Altp2m;
using static XenSharp.Public.VmEvent;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// HVMOP_altp2m (Xen's do_altp2m_op): alternate p2m views of an HVM or PVH domain, which a privileged agent (or the
/// guest itself, as HVM_PARAM_ALTP2M allows) creates, restricts page by page, remaps and switches vCPUs between.
/// The views live in the domain's <see cref="P2m"/>. #VE (vcpu_enable_notify, suppress_ve) needs a CPU feature this
/// hypervisor does not offer: -EOPNOTSUPP, as Xen answers on such a CPU.
/// </summary>
internal static class Altp2mOps
{
    public static long Do(Vcpu caller, ulong arg)
    {
        if (!GuestAccess.Read(caller, arg, out XenHvmAltp2mOp a))
            return -Errno.EFAULT;
        if (a.Pad1 != 0 || a.Pad2 != 0 || a.Version != HVMOP_ALTP2M_INTERFACE_VERSION)
            return -Errno.EINVAL;
        if (a.Cmd is < HVMOP_altp2m_get_domain_state or > HVMOP_altp2m_set_visibility)
            return -Errno.EOPNOTSUPP;
        var d = a.Domain == Xen.DOMID_SELF ? caller.Domain : caller.Domain.Host.FindDomain(a.Domain);
        if (d is null)
            return -Errno.ESRCH;
        if (d.Pv is not null || d.IsHost)
            return -Errno.EOPNOTSUPP;
        var p2m = d.P2m;
        if (a.Cmd is not (HVMOP_altp2m_get_domain_state or HVMOP_altp2m_set_domain_state) && !p2m.Altp2mActive)
            return -Errno.EOPNOTSUPP;
        ulong mode = d.Arch.Params[Params.HVM_PARAM_ALTP2M];
        if (mode == XEN_ALTP2M_disabled)
            return -Errno.EINVAL;
        if (!Permitted(caller.Domain, d, mode, a.Cmd))
            return -Errno.EPERM;

        switch (a.Cmd)
        {
            case HVMOP_altp2m_get_domain_state:
                a.State = p2m.Altp2mActive ? (byte)1 : (byte)0;
                return GuestAccess.Write(caller, arg, a) ? 0 : -Errno.EFAULT;
            case HVMOP_altp2m_set_domain_state:
            {
                bool self = caller.Domain == d;
                if (!self)
                    d.Host.PauseDomain(d);
                try
                {
                    if (p2m.SetAltp2mActive(a.State != 0, d.Vcpus.Length))
                        foreach (var v in d.Vcpus)
                            v.Engine?.RequestExit(); // each takes its view at its next entry
                    // The monitor's per-entry hook is what names a vCPU's view to the engine.
                    _ = d.Monitor;
                    return 0;
                }
                finally
                {
                    if (!self)
                        d.Host.UnpauseDomain(d);
                }
            }
            case HVMOP_altp2m_vcpu_enable_notify:
                return a.VcpuId >= (uint)d.Vcpus.Length || a.AccessPad != 0 ? -Errno.EINVAL : -Errno.EOPNOTSUPP;
            case HVMOP_altp2m_vcpu_disable_notify:
                return a.VcpuId >= (uint)d.Vcpus.Length ? -Errno.EINVAL : -Errno.EOPNOTSUPP;
            case HVMOP_altp2m_create_p2m:
            {
                if (!ToAccess(p2m, a.DefaultAccess, out byte access))
                    return -Errno.EINVAL;
                long rc = p2m.CreateView(access, out int index);
                if (rc != 0)
                    return rc;
                a.View = (ushort)index;
                return GuestAccess.Write(caller, arg, a) ? 0 : -Errno.EFAULT;
            }
            case HVMOP_altp2m_destroy_p2m:
                return PausedFor(caller, d, () => p2m.DestroyView(a.View));
            case HVMOP_altp2m_switch_p2m:
                return PausedFor(caller, d, () =>
                {
                    if (!p2m.SwitchAll(a.View))
                        return -Errno.EINVAL;
                    foreach (var v in d.Vcpus)
                        v.Engine?.RequestExit();
                    return 0;
                });
            case HVMOP_altp2m_set_mem_access:
            {
                if (a.AccessPad != 0)
                    return -Errno.EINVAL;
                byte xenmem = (byte)a.Access;
                if (a.Access > XENMEM_access_default)
                    return -Errno.EINVAL;
                if (xenmem is XENMEM_access_rx2rw or XENMEM_access_n2rwx)
                    return -Errno.EOPNOTSUPP; // not kept, as XENMEM_access_op
                if (a.View == 0)
                {
                    if (a.Gfn > p2m.MaxMappedGfn)
                        return -Errno.EINVAL;
                    p2m.SetAccess(a.Gfn, 1, xenmem == XENMEM_access_default ? p2m.DefaultAccess : xenmem);
                    return 0;
                }
                return p2m.SetViewAccess(a.View, a.Gfn, xenmem == XENMEM_access_default ? ViewDefault(p2m, a.View) : xenmem);
            }
            case HVMOP_altp2m_get_mem_access:
            {
                if (a.AccessPad != 0)
                    return -Errno.EINVAL;
                byte access;
                long rc = a.View == 0
                    ? (p2m.TryGetAccess(a.Gfn, out access) ? 0 : -Errno.ESRCH)
                    : p2m.GetViewAccess(a.View, a.Gfn, out access);
                if (rc != 0)
                    return rc;
                a.Access = access;
                return GuestAccess.Write(caller, arg, a) ? 0 : -Errno.EFAULT;
            }
            case HVMOP_altp2m_change_gfn:
                if (a.ChangePad1 != 0 || a.ChangePad2 != 0)
                    return -Errno.EINVAL;
                return p2m.ChangeGfn(a.View, a.OldGfn, a.NewGfn);
            case HVMOP_altp2m_get_p2m_idx:
                if (a.VcpuId >= (uint)d.Vcpus.Length)
                    return -Errno.EINVAL;
                a.VcpuAltp2mIdx = (ushort)p2m.VcpuView((int)a.VcpuId);
                return GuestAccess.Write(caller, arg, a) ? 0 : -Errno.EFAULT;
            default:
                // set_mem_access_multi, suppress_ve and set_visibility are not offered.
                return -Errno.EOPNOTSUPP;
        }
    }

    /// <summary>xsm_hvm_altp2mhvm_op's default policy: in mixed mode the domain itself or a privileged one, in external
    /// mode a privileged one only, in limited mode a privileged one except for vcpu_enable_notify.</summary>
    private static bool Permitted(Domain caller, Domain d, ulong mode, uint cmd) => mode switch
    {
        XEN_ALTP2M_mixed => caller == d || caller.IsPrivileged,
        XEN_ALTP2M_external => caller.IsPrivileged,
        XEN_ALTP2M_limited => caller.IsPrivileged || (cmd == HVMOP_altp2m_vcpu_enable_notify && caller == d),
        _ => false,
    };

    private static bool ToAccess(P2m p2m, ushort xenmem, out byte access)
    {
        access = xenmem == XENMEM_access_default ? p2m.DefaultAccess : (byte)xenmem;
        return xenmem <= XENMEM_access_rwx || xenmem == XENMEM_access_default;
    }

    private static byte ViewDefault(P2m p2m, int view) => p2m.ViewDefaultAccess(view) ?? p2m.DefaultAccess;

    /// <summary>domain_pause_except_self around an operation on the domain's views.</summary>
    private static long PausedFor(Vcpu caller, Domain d, Func<long> op)
    {
        bool self = caller.Domain == d;
        if (!self)
            d.Host.PauseDomain(d);
        try
        {
            return op();
        }
        finally
        {
            if (!self)
                d.Host.UnpauseDomain(d);
        }
    }
}
