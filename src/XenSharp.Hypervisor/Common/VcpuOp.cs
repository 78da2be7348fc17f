using XenSharp.Public;
using XenSharp.Public.Compat;
using XenSharp.Public.Hvm;
using static XenSharp.Public.VcpuOp;

namespace XenSharp.Hypervisor.Common;

/// <summary>__HYPERVISOR_vcpu_op(cmd, vcpuid, arg).</summary>
internal static unsafe class VcpuOps
{
    public static long Do(Vcpu caller, in HypercallArgs a)
    {
        int cmd = (int)a.A1;
        var d = caller.Domain;
        var v = d.GetVcpu((uint)a.A2);
        if (v is null)
            return -Errno.ENOENT;
        ulong arg = a.A3;
        var host = d.Host;
        switch (cmd)
        {
            case VCPUOP_register_vcpu_info:
            {
                if (!GuestAccess.Read(caller, arg, out VcpuRegisterVcpuInfo r))
                    return -Errno.EFAULT;
                if (r.Offset > FrameTable.PageSize - (uint)sizeof(VcpuInfo) || (r.Offset & 7) != 0)
                    return -Errno.EINVAL;
                if (v.VcpuInfoRegistered)
                    return -Errno.EINVAL;
                lock (d.Lock)
                {
                    if (!X86.Pv.PvMm.TryGuestWritableFrame(d, r.Mfn, out uint mfn))
                        return -Errno.EINVAL;
                    var where = (VcpuInfo*)(host.Frames.PageAddress(mfn) + r.Offset);
                    if (v.VcpuInfo is not null)
                        *where = *v.VcpuInfo;
                    else
                        *where = default;
                    v.RegisterVcpuInfo(mfn, where);
                    // Nothing may be lost in the move: claim everything pending and let the guest sort it out.
                    if (d.Has32BitSharedInfo)
                        *(uint*)((byte*)where + SharedInfo32.VcpuInfoOffsetPendingSel) = uint.MaxValue;
                    else
                        where->EvtchnPendingSel = ulong.MaxValue;
                    where->EvtchnUpcallPending = 1;
                }
                v.Kick();
                return 0;
            }
            case VCPUOP_register_runstate_memory_area:
            {
                if (!GuestAccess.Read(caller, arg, out VcpuRegisterRunstateMemoryArea r))
                    return -Errno.EFAULT;
                v.RunstateGuestArea = r.Addr;
                if (v == caller)
                    WriteRunstateArea(v, host.Time.NowNs);
                return 0;
            }
            case VCPUOP_register_vcpu_time_memory_area:
            {
                if (!GuestAccess.Read(caller, arg, out VcpuRegisterTimeMemoryArea r))
                    return -Errno.EFAULT;
                v.TimeGuestArea = r.Addr;
                if (v == caller)
                    WriteTimeArea(v);
                return 0;
            }
            case VCPUOP_get_runstate_info:
            {
                var info = v.GetRunstate(host.Time.NowNs, includeCurrent: true);
                if (caller.Compat)
                    return GuestAccess.Write(caller, arg, To32(info)) ? 0 : -Errno.EFAULT;
                return GuestAccess.Write(caller, arg, info) ? 0 : -Errno.EFAULT;
            }
            case VCPUOP_set_singleshot_timer:
            {
                if (v != caller)
                    return -Errno.EINVAL;
                if (!GuestAccess.Read(caller, arg, out VcpuSetSingleshotTimer t))
                    return -Errno.EFAULT;
                if ((t.Flags & VCPU_SSHOTTMR_future) != 0 && (long)t.TimeoutAbsNs < host.Time.NowNs)
                    return -Errno.ETIME;
                TimeOps.ArmSingleshot(v, (long)Math.Min(t.TimeoutAbsNs, long.MaxValue - 1));
                return 0;
            }
            case VCPUOP_stop_singleshot_timer:
                if (v != caller)
                    return -Errno.EINVAL;
                v.SingleshotDeadline = long.MaxValue;
                return 0;
            case VCPUOP_set_periodic_timer:
            {
                if (!GuestAccess.Read(caller, arg, out VcpuSetPeriodicTimer t))
                    return -Errno.EFAULT;
                if (t.PeriodNs < 1_000_000 || t.PeriodNs > long.MaxValue / 2)
                    return -Errno.EINVAL;
                TimeOps.ArmPeriodic(v, (long)t.PeriodNs);
                return 0;
            }
            case VCPUOP_stop_periodic_timer:
                v.PeriodicPeriod = 0;
                v.PeriodicNext = long.MaxValue;
                return 0;
            case VCPUOP_is_up:
                return v.IsUp ? 1 : 0;
            case VCPUOP_up:
                if (!v.Initialised && v.Id != 0)
                    return -Errno.EINVAL;
                host.BringUp(v);
                return 0;
            case VCPUOP_down:
                host.TakeDown(v);
                return 0;
            case VCPUOP_initialise when d.Pv is { Is32: true }:
            {
                // A 32-bit PV vCPU: the compat layout of struct vcpu_guest_context.
                if (!GuestAccess.Read(caller, arg, out XenSharp.Public.ArchX86.CompatVcpuGuestContext compatCtx))
                    return -Errno.EFAULT;
                if (v.IsUp)
                    return -Errno.EEXIST;
                return X86.Pv.PvContext.InitialiseCompat(v, compatCtx);
            }
            case VCPUOP_initialise when d.Pv is not null:
            {
                // A PV vCPU starts from a struct vcpu_guest_context (Xen's arch_set_info_guest).
                if (!GuestAccess.Read(caller, arg, out XenSharp.Public.ArchX86.VcpuGuestContext pvCtx))
                    return -Errno.EFAULT;
                if (v.IsUp)
                    return -Errno.EEXIST;
                return X86.Pv.PvContext.Initialise(v, pvCtx);
            }
            case VCPUOP_initialise:
            {
                if (!GuestAccess.Read(caller, arg, out VcpuHvmContext ctx))
                    return -Errno.EFAULT;
                if (v.IsUp)
                    return -Errno.EEXIST;
                return v.SetInitialContext(ctx);
            }
            case VCPUOP_send_nmi:
                v.PendingNmi = true;
                v.Kick();
                v.Engine?.RequestExit();
                return 0;
            case VCPUOP_get_physid:
                return -Errno.EINVAL; // only the hardware domain has physical CPUs to ask about
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>Copies the runstate into the guest's registered area (on the vCPU's own thread: the address is linear).</summary>
    public static void WriteRunstateArea(Vcpu v, long now)
    {
        if (v.RunstateGuestArea == 0)
            return;
        var info = v.GetRunstate(now);
        if (v.Domain.Has32BitSharedInfo)
        {
            // 32-bit guests keep state_entry_time at offset 4 (uint64_t is 4-byte aligned there).
            var info32 = To32(info);
            GuestAccess.Write(v, v.RunstateGuestArea, info32);
            return;
        }
        bool flag = (v.Domain.VmAssist & (1UL << Xen.VMASST_TYPE_runstate_update_flag)) != 0;
        if (flag)
        {
            // Tell readers an update is in progress by setting the top bit of state_entry_time first.
            ulong marked = info.StateEntryTime | XEN_RUNSTATE_UPDATE;
            GuestAccess.Write(v, v.RunstateGuestArea + 8, marked);
            Interlocked.MemoryBarrier();
            info.StateEntryTime |= XEN_RUNSTATE_UPDATE;
            GuestAccess.Write(v, v.RunstateGuestArea, info);
            Interlocked.MemoryBarrier();
            info.StateEntryTime &= ~XEN_RUNSTATE_UPDATE;
            GuestAccess.Write(v, v.RunstateGuestArea + 8, info.StateEntryTime);
        }
        else
            GuestAccess.Write(v, v.RunstateGuestArea, info);
    }

    private static VcpuRunstateInfo32 To32(in VcpuRunstateInfo i)
    {
        var o = new VcpuRunstateInfo32 { State = i.State, StateEntryTime = i.StateEntryTime };
        for (int n = 0; n < 4; n++)
            o.Time[n] = i.Time[n];
        return o;
    }

    public static void WriteTimeArea(Vcpu v)
    {
        if (v.TimeGuestArea == 0)
            return;
        byte* p = GuestAccess.Translate(v, v.TimeGuestArea, write: true);
        if (p is null || ((nint)p & (FrameTable.PageSize - 1)) > FrameTable.PageSize - sizeof(VcpuTimeInfo))
            return;
        v.Domain.Host.Time.Publish((VcpuTimeInfo*)p, v.Domain.Host.Time.NowNs);
    }
}
