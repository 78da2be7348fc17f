using XenSharp.Public;
using static XenSharp.Public.Domctl;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// XEN_DOMCTL_shadow_op's log-dirty operations (Xen's paging_domctl for a HAP domain): ENABLE_LOGDIRTY (or ENABLE
/// with only the log-dirty mode), CLEAN, PEEK and OFF over the domain's <see cref="P2m"/>; the allocation ops are
/// answered as HAP answers them (no shadow pool). Enable and clean hold the domain off the CPUs while the bitmap
/// changes and the vCPUs drop their writable translations, so no write after the call goes unseen. A PV domain's
/// bitmap is by PFN too: its writes by machine frame are marked through the M2P (<see cref="X86.Pv.PvDomain.MarkDirty"/>).
/// </summary>
internal static class LogDirty
{
    public static long Op(Domain d, uint op, uint mode, Span<ulong> bitmap, out uint faults, out uint dirtied)
    {
        faults = dirtied = 0;
        if (d.IsHost)
            return -Errno.EINVAL;
        switch (op)
        {
            case XEN_DOMCTL_SHADOW_OP_OFF:
                d.P2m.DisableLogDirty();
                return 0;
            case XEN_DOMCTL_SHADOW_OP_ENABLE when mode == XEN_DOMCTL_SHADOW_ENABLE_LOG_DIRTY:
            case XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY:
                if (d.P2m.LogDirty)
                    return -Errno.EINVAL;
                WithVcpusOff(d, () => d.P2m.EnableLogDirty());
                return 0;
            case XEN_DOMCTL_SHADOW_OP_CLEAN:
            case XEN_DOMCTL_SHADOW_OP_PEEK:
            {
                if (!d.P2m.LogDirty)
                    return -Errno.EINVAL;
                bool clean = op == XEN_DOMCTL_SHADOW_OP_CLEAN;
                // A PV guest's registered vcpu_info is written by the hypervisor through a lasting mapping (pending
                // events, system time): it counts as dirty in every round, as Xen marks the frames it keeps mapped.
                if (d.Pv is { } pv)
                    foreach (var v in d.Vcpus)
                        if (v.VcpuInfoMfn is uint m)
                            pv.MarkDirty(m);
                (uint, uint) stats = default;
                if (clean)
                {
                    // A ulong[] cannot be captured from a span: copy through a scratch array sized to the request.
                    var scratch = new ulong[bitmap.Length];
                    WithVcpusOff(d, () => stats = d.P2m.ReadDirty(scratch, clean: true));
                    scratch.CopyTo(bitmap);
                }
                else
                    stats = d.P2m.ReadDirty(bitmap, clean: false);
                (faults, dirtied) = stats;
                return 0;
            }
            case XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION:
            case XEN_DOMCTL_SHADOW_OP_SET_ALLOCATION:
                return 0;
            default:
                return -Errno.EINVAL;
        }
    }

    private static void WithVcpusOff(Domain d, Action change)
    {
        d.Host.PauseDomain(d);
        try
        {
            change();
            foreach (var v in d.Vcpus)
                v.Engine?.DropWritableTranslations();
        }
        finally
        {
            d.Host.UnpauseDomain(d);
        }
    }
}
