using XenSharp.Hypervisor.Scheduling;
using XenSharp.Public;
using static XenSharp.Public.Domctl;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// __HYPERVISOR_domctl (Xen's common/domctl.c) for a control domain's toolstack, in the 4.17 layouts
/// (XEN_DOMCTL_INTERFACE_VERSION 0x15): another version is refused with -EACCES before anything else, an
/// unprivileged caller with -EPERM, a domain that does not exist with -ESRCH. The sub-operations are the declared
/// table below; the rest answer -ENOSYS.
/// </summary>
internal static class DomctlOp
{
    internal delegate long Handler(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack);

    private static readonly Dictionary<uint, Handler> Table = new()
    {
        [XEN_DOMCTL_getdomaininfo] = GetDomainInfo,
        [XEN_DOMCTL_getvcpuinfo] = GetVcpuInfo,
        [XEN_DOMCTL_getvcpuaffinity] = GetVcpuAffinity,
        [XEN_DOMCTL_scheduler_op] = SchedulerOp,
        [XEN_DOMCTL_shadow_op] = ShadowOp,
        [XEN_DOMCTL_createdomain] = DomctlBuild.CreateDomain,
        [XEN_DOMCTL_destroydomain] = DomctlBuild.DestroyDomain,
        [XEN_DOMCTL_pausedomain] = DomctlBuild.PauseDomain,
        [XEN_DOMCTL_unpausedomain] = DomctlBuild.UnpauseDomain,
        [XEN_DOMCTL_max_mem] = DomctlBuild.MaxMem,
        [XEN_DOMCTL_max_vcpus] = DomctlBuild.MaxVcpus,
        [XEN_DOMCTL_setvcpuaffinity] = DomctlBuild.SetVcpuAffinity,
        [XEN_DOMCTL_setnodeaffinity] = DomctlBuild.SetNodeAffinity,
        [XEN_DOMCTL_getnodeaffinity] = DomctlBuild.GetNodeAffinity,
        [XEN_DOMCTL_settimeoffset] = DomctlBuild.SetTimeOffset,
        [XEN_DOMCTL_settscinfo] = DomctlBuild.SetTscInfo,
        [XEN_DOMCTL_gettscinfo] = DomctlBuild.GetTscInfo,
        [XEN_DOMCTL_gethvmcontext] = DomctlBuild.GetHvmContext,
        [XEN_DOMCTL_sethvmcontext] = DomctlBuild.SetHvmContext,
        [XEN_DOMCTL_get_cpu_policy] = DomctlBuild.GetCpuPolicy,
        [XEN_DOMCTL_set_cpu_policy] = DomctlBuild.SetCpuPolicy,
        [XEN_DOMCTL_get_paging_mempool_size] = DomctlBuild.GetPagingMempoolSize,
        [XEN_DOMCTL_set_paging_mempool_size] = DomctlBuild.SetPagingMempoolSize,
        [XEN_DOMCTL_setdomainhandle] = DomctlBuild.SetDomainHandle,
        [XEN_DOMCTL_getvcpucontext] = DomctlVcpuContext.GetVcpuContext,
        [XEN_DOMCTL_setvcpucontext] = DomctlVcpuContext.SetVcpuContext,
        [XEN_DOMCTL_get_address_size] = DomctlVcpuContext.GetAddressSize,
        [XEN_DOMCTL_gethvmcontext_partial] = DomctlVcpuContext.GetHvmContextPartial,
        [XEN_DOMCTL_getpageframeinfo3] = DomctlSave.GetPageFrameInfo3,
        [XEN_DOMCTL_resumedomain] = DomctlSave.ResumeDomain,
        [XEN_DOMCTL_soft_reset] = SoftReset.Domctl,
        [XEN_DOMCTL_soft_reset_cont] = SoftReset.Domctl,
        [Public.VmEvent.XEN_DOMCTL_vm_event_op] = X86.DomainMonitor.VmEventOp,
        [Public.VmEvent.XEN_DOMCTL_monitor_op] = X86.DomainMonitor.MonitorOp,
        [Public.VmEvent.XEN_DOMCTL_set_access_required] = X86.DomainMonitor.SetAccessRequired,
        [Public.VmEvent.XEN_DOMCTL_debug_op] = X86.DomainMonitor.DebugOp,
        [Public.MemSharing.XEN_DOMCTL_mem_sharing_op] = MemSharing.DomctlOp,
    };

    /// <summary>Domain ids at and above this name no domain (DOMID_FIRST_RESERVED).</summary>
    private const ushort DomidFirstReserved = 0x7FF0;

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        if (!GuestAccess.Read(v, a.A1, out XenDomctl op))
            return -Errno.EFAULT;
        if (op.InterfaceVersion != XEN_DOMCTL_INTERFACE_VERSION)
            return -Errno.EACCES;
        if (!v.Domain.IsPrivileged)
            return -Errno.EPERM;
        // getdomaininfo looks for the first domain at or after the id; everything else names one domain, which
        // must exist before the operation is even looked at (Xen's do_domctl).
        Domain? d = null;
        if (op.Cmd != XEN_DOMCTL_getdomaininfo && op.Cmd != XEN_DOMCTL_createdomain)
        {
            d = v.Domain.Host.FindDomain(op.Domain);
            if (d is null)
                return -Errno.ESRCH;
        }
        if (!Table.TryGetValue(op.Cmd, out var handler))
            return -Errno.ENOSYS;
        if (Xsm.XsmHooks.Domctl(v, d, ref op) is < 0 and var denied)
            return denied;
        long rc = handler(v, ref op, d, out bool copyBack);
        if (copyBack && !GuestAccess.Write(v, a.A1, op))
            return -Errno.EFAULT;
        return rc;
    }

    /// <summary>XEN_DOMCTL_shadow_op (<see cref="LogDirty"/>): PEEK and CLEAN copy up to <c>pages</c> bits to the
    /// caller's bitmap and answer the number of pages the p2m spans.</summary>
    private static long ShadowOp(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        ref var s = ref op.As<XenDomctlShadowOp>();
        bool bitmap = s.Op is XEN_DOMCTL_SHADOW_OP_CLEAN or XEN_DOMCTL_SHADOW_OP_PEEK;
        ulong span = d!.P2m.MaxMappedGfn + 1;
        ulong pages = bitmap ? Math.Min(s.Pages, span) : 0;
        var bits = new ulong[(pages + 63) / 64];
        long rc = LogDirty.Op(d, s.Op, s.Mode, bits, out s.FaultCount, out s.DirtyCount);
        if (rc < 0)
            return rc;
        if (bitmap)
        {
            if (s.DirtyBitmap != 0 && !GuestAccess.CopyTo(v, s.DirtyBitmap, System.Runtime.InteropServices.MemoryMarshal.AsBytes(bits.AsSpan())[..(int)((pages + 7) / 8)]))
                return -Errno.EFAULT;
            s.Pages = pages;
        }
        if (s.Op == XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION)
            s.Mb = 0;
        copyBack = true;
        return 0;
    }

    private static long GetDomainInfo(Vcpu v, ref XenDomctl op, Domain? _, out bool copyBack)
    {
        copyBack = false;
        if (op.Domain >= DomidFirstReserved)
            return -Errno.EINVAL;
        ushort first = op.Domain;
        var d = v.Domain.Host.AllDomains().Where(x => x.DomainId >= first).MinBy(x => x.DomainId);
        if (d is null)
            return -Errno.ESRCH;
        if (Xsm.XsmHooks.GetDomainInfo(v, d) is < 0 and var denied)
            return denied;
        FillInfo(d, ref op.As<XenDomctlGetdomaininfo>());
        op.Domain = d.DomainId;
        copyBack = true;
        return 0;
    }

    /// <summary>xen_domctl_getdomaininfo of <paramref name="d"/> (Xen's getdomaininfo()). Domain-0 is the host
    /// process: it holds the host's memory outside the hypervisor's, runs one vCPU per pCPU, and is in no cpupool.</summary>
    public static unsafe void FillInfo(Domain d, ref XenDomctlGetdomaininfo info)
    {
        info = default;
        info.Domain = d.DomainId;
        info.Ssidref = d.Ssid;
        if (d.IsHost)
        {
            int cpus = d.Host.Options.Pcpus;
            ulong pages = Dom0View.MemoryPages(d.Host);
            info.Flags = XEN_DOMINF_running;
            info.TotPages = pages;
            info.MaxPages = pages;
            info.CpuTime = (ulong)Dom0View.CpuTimeNs();
            info.NrOnlineVcpus = (uint)cpus;
            info.MaxVcpuId = (uint)(cpus - 1);
            info.Cpupool = Sysctl.XEN_SYSCTL_CPUPOOL_PAR_ANY;
            info.GpaddrBits = 52;
            return;
        }
        // A PV domain is neither an HVM guest nor paged by HAP (tools pick the PV paths by this: xenctx, libxl).
        uint flags = d.Type == DomainKind.Pv ? 0 : XEN_DOMINF_hvm_guest | XEN_DOMINF_hap;
        if (d.State == DomainRunState.Dying || d.IsDying)
            flags |= XEN_DOMINF_dying;
        if (d.ShutdownReason is uint reason)
            flags |= XEN_DOMINF_shutdown | ((reason & XEN_DOMINF_shutdownmask) << XEN_DOMINF_shutdownshift);
        if (d.PauseCount > 0 || d.State == DomainRunState.Paused)
            flags |= XEN_DOMINF_paused;
        bool running = false, allBlocked = d.Vcpus.Length > 0;
        uint online = 0;
        ulong cpuTime = 0;
        foreach (var vc in d.Vcpus)
        {
            running |= vc.IsRunning;
            if (vc.IsUp)
            {
                online++;
                allBlocked &= vc.Blocked;
            }
            cpuTime += (ulong)Interlocked.Read(ref vc.CpuTimeNs);
        }
        // A domain with no vCPU online is neither running nor blocked (Xen reports no run state for it).
        if (running)
            flags |= XEN_DOMINF_running;
        else if (allBlocked && online > 0)
            flags |= XEN_DOMINF_blocked;
        info.Flags = flags;
        info.TotPages = (ulong)d.TotPages;
        info.MaxPages = d.MaxPages;
        info.PagedPages = (ulong)Math.Max(0, Interlocked.Read(ref d.PagedPages));
        info.SharedInfoFrame = d.SharedInfoMfn;
        info.CpuTime = cpuTime;
        info.NrOnlineVcpus = online;
        info.MaxVcpuId = d.Vcpus.Length == 0 ? XEN_INVALID_MAX_VCPU_ID : (uint)(d.Vcpus.Length - 1);
        var handle = d.Handle.ToByteArray(bigEndian: true);
        for (int i = 0; i < 16; i++)
            info.Handle[i] = handle[i];
        info.Cpupool = (uint)d.Host.Scheduler.PoolOf(d).Id;
        info.GpaddrBits = 52;
        // x86's emulation_flags: a PVH domain has only the local APIC emulated; an HVM one the PC's devices too.
        info.EmulationFlags = d.Arch.EmulationFlags;
    }

    private static long GetVcpuInfo(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        ref var vi = ref op.As<XenDomctlGetvcpuinfo>();
        if (d!.IsHost)
        {
            if (vi.Vcpu >= (uint)d.Host.Options.Pcpus)
                return -Errno.EINVAL;
            // Domain-0's vCPUs are the host's CPUs, each where it is.
            vi.Online = 1;
            vi.Running = 1;
            vi.Blocked = 0;
            vi.CpuTime = 0;
            vi.Cpu = vi.Vcpu;
            copyBack = true;
            return 0;
        }
        if (vi.Vcpu >= (uint)d.Vcpus.Length)
            return -Errno.EINVAL;
        var vc = d.Vcpus[vi.Vcpu];
        vi.Online = (byte)(vc.IsUp ? 1 : 0);
        vi.Blocked = (byte)(vc.Blocked ? 1 : 0);
        vi.Running = (byte)(vc.IsRunning ? 1 : 0);
        vi.CpuTime = (ulong)Interlocked.Read(ref vc.CpuTimeNs);
        int processor = SchedUnit.Of(vc).Processor;
        vi.Cpu = processor < 0 ? 0 : (uint)processor;
        copyBack = true;
        return 0;
    }

    private static long GetVcpuAffinity(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        ref var va = ref op.As<XenDomctlVcpuaffinity>();
        if ((va.Flags & (XEN_VCPUAFFINITY_HARD | XEN_VCPUAFFINITY_SOFT)) == 0)
            return -Errno.EINVAL;
        int pcpus = d!.Host.Scheduler.NrPcpus;
        CpuMask hard, soft;
        if (d.IsHost)
        {
            if (va.Vcpu >= (uint)d.Host.Options.Pcpus)
                return -Errno.EINVAL;
            hard = soft = new CpuMask(pcpus, all: true);
        }
        else
        {
            if (va.Vcpu >= (uint)d.Vcpus.Length)
                return -Errno.EINVAL;
            var u = SchedUnit.Of(d.Vcpus[va.Vcpu]);
            hard = u.Hard;
            soft = u.Soft;
        }
        if ((va.Flags & XEN_VCPUAFFINITY_HARD) != 0 && !Bitmaps.Write(v, va.CpumapHard, hard))
            return -Errno.EFAULT;
        if ((va.Flags & XEN_VCPUAFFINITY_SOFT) != 0 && !Bitmaps.Write(v, va.CpumapSoft, soft))
            return -Errno.EFAULT;
        return 0;
    }

    private static long SchedulerOp(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        ref var so = ref op.As<XenDomctlSchedulerOp>();
        if (d!.IsHost)
            return -Errno.EINVAL; // Domain-0 is the host itself: no scheduler of ours runs it
        var scheduler = d.Host.Scheduler.PoolOf(d).Scheduler;
        if (SchedulerId(scheduler.Name) != so.SchedId)
            return -Errno.EINVAL;
        switch (scheduler, so.Cmd)
        {
            case (CreditScheduler c, XEN_DOMCTL_SCHEDOP_getinfo):
            {
                var (weight, cap) = c.GetDomainParams(d);
                (so.Weight, so.Cap) = ((ushort)weight, (ushort)cap);
                copyBack = true;
                return 0;
            }
            case (Credit2Scheduler c2, XEN_DOMCTL_SCHEDOP_getinfo):
            {
                var (weight, cap) = c2.GetDomainParams(d);
                (so.Weight, so.Cap) = ((ushort)weight, (ushort)cap);
                copyBack = true;
                return 0;
            }
            case (CreditScheduler or Credit2Scheduler, XEN_DOMCTL_SCHEDOP_putinfo):
            {
                // A weight of 0 leaves it as it is; caps above 100% per vCPU are refused as Xen refuses them.
                int? weight = so.Weight == 0 ? null : so.Weight;
                if (so.Cap > 100 * d.Vcpus.Length)
                    return -Errno.EINVAL;
                try
                {
                    if (scheduler is CreditScheduler c)
                        c.SetDomainParams(d, weight, so.Cap);
                    else
                        ((Credit2Scheduler)scheduler).SetDomainParams(d, weight, so.Cap);
                }
                catch (HypervisorException e)
                {
                    return -(e.Errno == 0 ? Errno.EINVAL : e.Errno);
                }
                return 0;
            }
            default:
                return -Errno.ENOSYS;
        }
    }
}

/// <summary>xenctl_bitmap: a caller's byte array of bits, as Xen's cpumask_to_xenctl_bitmap fills it.</summary>
internal static class Bitmaps
{
    /// <summary>Writes <paramref name="mask"/> into the caller's bitmap: as many bytes as its nr_bits need, bits past
    /// the mask cleared.</summary>
    public static bool Write(Vcpu v, in XenctlBitmap target, CpuMask mask) => Write(v, target, mask.Cpus);

    /// <summary>The bits set in the caller's bitmap (at most 32768 of them are looked at, more than any host has).</summary>
    public static bool Read(Vcpu v, in XenctlBitmap source, out List<int> bits)
    {
        bits = [];
        int bytes = (int)((Math.Min(source.NrBits, 32768u) + 7) / 8);
        if (bytes == 0)
            return true;
        var buffer = new byte[bytes];
        if (!GuestAccess.CopyFrom(v, source.Bitmap, buffer))
            return false;
        for (int b = 0; b < Math.Min(source.NrBits, 32768u); b++)
            if ((buffer[b / 8] & (1 << (b % 8))) != 0)
                bits.Add(b);
        return true;
    }

    public static bool Write(Vcpu v, in XenctlBitmap target, IEnumerable<int> bits)
    {
        int bytes = (int)((target.NrBits + 7) / 8);
        if (bytes == 0)
            return true;
        var buffer = new byte[bytes];
        foreach (int b in bits)
            if ((uint)b < target.NrBits)
                buffer[b / 8] |= (byte)(1 << (b % 8));
        return GuestAccess.CopyTo(v, target.Bitmap, buffer);
    }
}

/// <summary>What the control ABI reports for Domain-0, which is the host process rather than a guest of ours.</summary>
internal static class Dom0View
{
    /// <summary>The host's RAM outside the hypervisor's machine memory, as a dom0_mem would be.</summary>
    public static ulong MemoryPages(HostServices host)
    {
        long totalKb = 0;
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemTotal:", StringComparison.Ordinal))
                {
                    long.TryParse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], out totalKb);
                    break;
                }
        }
        catch (IOException) { }
        long machineKb = (long)((ulong)host.Frames.FrameCount << FrameTable.PageShift >> 10);
        return (ulong)Math.Max(0, totalKb - machineKb) / 4;
    }

    public static long CpuTimeNs() => System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime.Ticks * 100;
}
