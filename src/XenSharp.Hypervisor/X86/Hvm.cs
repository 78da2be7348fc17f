using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Hvm.Params;

namespace XenSharp.Hypervisor.X86;

/// <summary>__HYPERVISOR_hvm_op: HVM parameters, time, and the per-vCPU upcall vector.</summary>
internal static class HvmOps
{
    public static long Do(Vcpu v, in HypercallArgs a)
    {
        ulong arg = a.A2;
        var d = v.Domain;
        switch ((int)a.A1)
        {
            case HvmOp.HVMOP_set_param:
            case HvmOp.HVMOP_get_param:
            {
                if (!GuestAccess.Read(v, arg, out XenHvmParam p))
                    return -Errno.EFAULT;
                var t = d.Host.LookupForGuest(d, p.Domid, out long err);
                if (t is null)
                    return err;
                if (Xsm.XsmHooks.HvmParam(d, t, (int)a.A1 == HvmOp.HVMOP_set_param) is < 0 and var denied)
                    return denied;
                if (p.Index >= HVM_NR_PARAMS)
                    return -Errno.EINVAL;
                if ((int)a.A1 == HvmOp.HVMOP_set_param)
                {
                    // A guest may set the parameters Xen's hvm_allow_set_param lets it; the rest are the toolstack's.
                    if (t == d && !d.IsPrivileged && !GuestSettable(p.Index))
                        return -Errno.EPERM;
                    if (t == d && p.Index == HVM_PARAM_CALLBACK_IRQ && d.Has32BitSharedInfo != v.Compat)
                    {
                        // The guest's mode when it sets its callback fixes the shared_info layout.
                        d.Has32BitSharedInfo = v.Compat;
                        d.Host.Time.UpdateWallclock(d);
                    }
                    return SetParam(t, (int)p.Index, p.Value);
                }
                p.Value = t.Arch.Params[p.Index];
                return GuestAccess.Write(v, arg, p) ? 0 : -Errno.EFAULT;
            }
            case HvmOp.HVMOP_altp2m:
                return Altp2mOps.Do(v, arg);
            case HvmOp.HVMOP_get_time:
                return GuestAccess.Write(v, arg, new XenHvmGetTime { Now = (ulong)d.Host.Time.NowNs }) ? 0 : -Errno.EFAULT;
            case HvmOp.HVMOP_pagetable_dying:
            {
                if (!GuestAccess.Read(v, arg, out XenHvmPagetableDying p))
                    return -Errno.EFAULT;
                if (p.Domid != Xen.DOMID_SELF && p.Domid != d.DomainId)
                    return -Errno.EINVAL;
                // Only shadow paging gains from the hint; with the p2m walked directly there is nothing to drop.
                return -Errno.EINVAL;
            }
            case HvmOp.HVMOP_set_evtchn_upcall_vector:
            {
                if (!GuestAccess.Read(v, arg, out XenHvmEvtchnUpcallVector u))
                    return -Errno.EFAULT;
                if (u.Vector < 0x10)
                    return -Errno.EINVAL;
                var target = d.GetVcpu(u.Vcpu);
                if (target is null)
                    return -Errno.ENOENT;
                target.Arch.UpcallVector = u.Vector;
                target.Kick();
                return 0;
            }
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>The parameters a guest may set on itself (hvmloader relocates the ACPI ports and sizes its VM86 TSS).</summary>
    private static bool GuestSettable(uint index) => index is HVM_PARAM_CALLBACK_IRQ or HVM_PARAM_VM86_TSS
        or HVM_PARAM_VM86_TSS_SIZED or HVM_PARAM_ACPI_IOPORTS_LOCATION or HVM_PARAM_VM_GENERATION_ID_ADDR
        or HVM_PARAM_STORE_EVTCHN or HVM_PARAM_CONSOLE_EVTCHN or HVM_PARAM_X87_FIP_WIDTH;

    public static long SetParam(Domain d, int index, ulong value)
    {
        if ((uint)index >= HVM_NR_PARAMS)
            return -Errno.EINVAL;
        var hvm = d.Arch;
        if (index == HVM_PARAM_TIMER_MODE && value > (ulong)TimerMode.OneMissedTickPending)
            return -Errno.EINVAL;
        // Xen's pmtimer_change_ioport knows two layouts: 0 (qemu-xen-traditional's) and 1 (qemu-xen's).
        if (index == HVM_PARAM_ACPI_IOPORTS_LOCATION && value > 1)
            return -Errno.EINVAL;
        if (index == HVM_PARAM_ALTP2M && value > Altp2m.XEN_ALTP2M_limited)
            return -Errno.EINVAL;
        hvm.Params[index] = value;
        hvm.Platform?.ParamChanged(index, value);
        if (index == HVM_PARAM_ACPI_IOPORTS_LOCATION && value == 1)
            hvm.AcpiPortsRelocated();
        if (index == HVM_PARAM_CALLBACK_IRQ)
        {
            ulong type = (value & HVM_PARAM_CALLBACK_IRQ_TYPE_MASK) >> HVM_PARAM_CALLBACK_IRQ_TYPE_SHIFT;
            if (type == HVM_PARAM_CALLBACK_TYPE_VECTOR && (byte)value < 0x10)
            {
                hvm.SetCallbackVia(CallbackVia.None, 0, 0);
                return -Errno.EINVAL;
            }
            var via = value == 0 ? CallbackVia.None : type switch
            {
                HVM_PARAM_CALLBACK_TYPE_GSI => CallbackVia.Gsi,
                HVM_PARAM_CALLBACK_TYPE_PCI_INTX => CallbackVia.PciIntx,
                HVM_PARAM_CALLBACK_TYPE_VECTOR => CallbackVia.Vector,
                _ => CallbackVia.None,
            };
            hvm.SetCallbackVia(via, (byte)value, value & ~HVM_PARAM_CALLBACK_IRQ_TYPE_MASK);
            foreach (var vc in d.Vcpus)
                vc.Kick();
        }
        return 0;
    }
}
