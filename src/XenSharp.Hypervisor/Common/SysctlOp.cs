using XenSharp.Hypervisor.Scheduling;
using XenSharp.Public;
using static XenSharp.Public.Sysctl;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// __HYPERVISOR_sysctl (Xen's common/sysctl.c) for a control domain's toolstack, in the 4.17 layouts
/// (XEN_SYSCTL_INTERFACE_VERSION 0x15): another version is refused with -EACCES, an unprivileged caller with
/// -EPERM. The sub-operations are the declared table below; the rest answer -ENOSYS.
/// </summary>
internal static class SysctlOp
{
    private delegate long Handler(Vcpu v, ref XenSysctl op, out bool copyBack);

    private static readonly Dictionary<uint, Handler> Table = new()
    {
        [XEN_SYSCTL_readconsole] = ReadConsole,
        [XEN_SYSCTL_physinfo] = PhysInfo,
        [XEN_SYSCTL_debug_keys] = DebugKeys,
        [XEN_SYSCTL_cpu_hotplug] = CpuHotplug,
        [XEN_SYSCTL_pcitopoinfo] = PciTopoInfo,
        [XEN_SYSCTL_tbuf_op] = TbufOp,
        [XEN_SYSCTL_sched_id] = SchedId,
        [XEN_SYSCTL_getdomaininfolist] = GetDomainInfoList,
        [XEN_SYSCTL_cputopoinfo] = CpuTopoInfo,
        [XEN_SYSCTL_numainfo] = NumaInfo,
        [XEN_SYSCTL_cpupool_op] = CpupoolOp,
        [XEN_SYSCTL_scheduler_op] = SchedulerOp,
        [XEN_SYSCTL_get_cpu_featureset] = GetCpuFeatureset,
        [XEN_SYSCTL_get_cpu_policy] = GetCpuPolicy,
    };

    /// <summary>Bytes copied per piece of a console read, so a large buffer does not take one long copy.</summary>
    private const int ReadChunk = 16 * 1024;

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        if (!GuestAccess.Read(v, a.A1, out XenSysctl op))
            return -Errno.EFAULT;
        if (op.InterfaceVersion != XEN_SYSCTL_INTERFACE_VERSION)
            return -Errno.EACCES;
        if (!v.Domain.IsPrivileged)
            return -Errno.EPERM;
        if (!Table.TryGetValue(op.Cmd, out var handler))
            return -Errno.ENOSYS;
        if (Xsm.XsmHooks.Sysctl(v, ref op) is < 0 and var denied)
            return denied;
        long rc = handler(v, ref op, out bool copyBack);
        if (copyBack && !GuestAccess.Write(v, a.A1, op))
            return -Errno.EFAULT;
        return rc;
    }

    private static long ReadConsole(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        copyBack = false;
        ref var rc = ref op.As<XenSysctlReadconsole>();
        var ring = v.Domain.Host.ConsoleRing;
        var chunk = new byte[ReadChunk];
        uint index = rc.Index, done = 0;
        bool incremental = rc.Incremental != 0;
        while (done < rc.Count)
        {
            int n = ring.ReadIndexed(ref index, incremental, clear: false, chunk.AsSpan(0, (int)Math.Min(ReadChunk, rc.Count - done)));
            if (n == 0)
                break;
            if (!GuestAccess.CopyTo(v, rc.Buffer + done, chunk.AsSpan(0, n)))
                return -Errno.EFAULT;
            done += (uint)n;
            incremental = true; // the next piece continues where this one stopped
        }
        if (rc.Clear != 0)
            ring.ReadIndexed(ref index, incremental: true, clear: true, Span<byte>.Empty);
        rc.Count = done;
        rc.Index = index;
        copyBack = true;
        return 0;
    }

    private static unsafe long PhysInfo(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        var host = v.Domain.Host;
        ref var pi = ref op.As<XenSysctlPhysinfo>();
        pi = default;
        int cpus = host.Options.Pcpus;
        var nodes = host.Scheduler.Topology.Nodes;
        pi.ThreadsPerCore = 1;
        pi.NrNodes = (uint)Math.Max(1, nodes.Length);
        pi.CoresPerSocket = (uint)Math.Max(1, cpus / (int)pi.NrNodes);
        pi.NrCpus = (uint)host.Scheduler.OnlineCpus;
        pi.MaxCpuId = (uint)(cpus - 1);
        pi.MaxNodeId = (uint)(nodes.Length == 0 ? 0 : nodes[^1]);
        pi.CpuKhz = HostCpuKhz();
        // Guests run under the engine's own two-stage paging, which is what HAP means to the toolstack.
        pi.Capabilities = XEN_SYSCTL_PHYSCAP_hvm | XEN_SYSCTL_PHYSCAP_hap | XEN_SYSCTL_PHYSCAP_gnttab_v1 | XEN_SYSCTL_PHYSCAP_gnttab_v2;
        pi.TotalPages = host.Frames.FrameCount;
        pi.FreePages = (ulong)host.Frames.FreeFrames;
        pi.MaxMfn = host.Frames.MaxMfn;
        copyBack = true;
        return 0;
    }

    /// <summary>Each key runs its handler, as if typed on Xen's serial console (`xl debug-keys`).</summary>
    private static long DebugKeys(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        copyBack = false;
        ref var dk = ref op.As<XenSysctlDebugKeys>();
        if (v.Domain.Host.Control is not { } control)
            return -Errno.ENOSYS;
        // Key by key, as Xen reads them: the keys before an unreadable one have run.
        Span<byte> key = stackalloc byte[1];
        for (uint i = 0; i < dk.NrKeys; i++)
        {
            if (!GuestAccess.CopyFrom(v, dk.Keys + i, key))
                return -Errno.EFAULT;
            KeyHandler.Handle(control, (char)key[0]);
        }
        return 0;
    }

    /// <summary>pCPUs offline and online (xen-hptool). The host's pCPUs are threads without SMT siblings, so the SMT
    /// operations answer -EOPNOTSUPP, as Xen does on hardware without hyperthreading.</summary>
    private static long CpuHotplug(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        copyBack = false;
        var hp = op.As<XenSysctlCpuHotplug>();
        var pools = v.Domain.Host.Scheduler;
        try
        {
            switch (hp.Op)
            {
                case XEN_SYSCTL_CPU_HOTPLUG_ONLINE: pools.OnlineCpu((int)hp.Cpu); return 0;
                case XEN_SYSCTL_CPU_HOTPLUG_OFFLINE: pools.OfflineCpu((int)hp.Cpu); return 0;
                default: return -Errno.EOPNOTSUPP;
            }
        }
        catch (HypervisorException e)
        {
            return -e.Errno;
        }
    }

    /// <summary>The NUMA node of each PCI device asked about. The host's PCI devices are not the hypervisor's (there
    /// is no passthrough), so each is XEN_INVALID_DEV, as Xen answers for a device it has not found.</summary>
    private static long PciTopoInfo(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        ref var pt = ref op.As<XenSysctlPcitopoinfo>();
        uint i = 0;
        long rc = 0;
        for (; i < pt.NumDevs; i++)
        {
            if (!GuestAccess.ReadElement(v, pt.Devs, i, out uint _) || !GuestAccess.WriteElement(v, pt.Nodes, i, XEN_INVALID_DEV))
            {
                rc = -Errno.EFAULT;
                break;
            }
        }
        pt.NumDevs = i;
        copyBack = true;
        return rc;
    }

    /// <summary>The trace buffers, as xentrace drives them: a size set once, enable/disable, masks, and where t_info is.</summary>
    private static long TbufOp(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        copyBack = false;
        ref var tb = ref op.As<XenSysctlTbufOp>();
        var trace = v.Domain.Host.TraceBuffers;
        switch (tb.Cmd)
        {
            case XEN_SYSCTL_TBUFOP_get_info:
                (tb.EvtMask, tb.BufferMfn, tb.Size) = trace.Info();
                copyBack = true;
                return 0;
            case XEN_SYSCTL_TBUFOP_set_cpu_mask:
            {
                int cpus = v.Domain.Host.Scheduler.NrPcpus;
                var bits = new byte[(Math.Min(tb.CpuMask.NrBits, (uint)cpus) + 7) / 8];
                if (!GuestAccess.CopyFrom(v, tb.CpuMask.Bitmap, bits))
                    return -Errno.EFAULT;
                var mask = new bool[cpus];
                for (int c = 0; c < cpus && c < tb.CpuMask.NrBits; c++)
                    mask[c] = (bits[c / 8] & (1 << (c % 8))) != 0;
                trace.SetCpuMask(mask);
                return 0;
            }
            case XEN_SYSCTL_TBUFOP_set_evt_mask:
                trace.SetEventMask(tb.EvtMask);
                return 0;
            case XEN_SYSCTL_TBUFOP_set_size:
                return trace.SetSize(tb.Size);
            case XEN_SYSCTL_TBUFOP_enable:
                return trace.Enable();
            case XEN_SYSCTL_TBUFOP_disable:
                trace.Disable();
                return 0;
            default:
                return -Errno.EINVAL;
        }
    }

    private static long SchedId(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        op.As<XenSysctlSchedId>().SchedId = Domctl.SchedulerId(v.Domain.Host.Scheduler.Name);
        copyBack = true;
        return 0;
    }

    private static long GetDomainInfoList(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        copyBack = false;
        ref var l = ref op.As<XenSysctlGetdomaininfolist>();
        uint n = 0;
        ushort first = l.FirstDomain;
        foreach (var d in v.Domain.Host.AllDomains().Where(x => x.DomainId >= first).OrderBy(x => x.DomainId))
        {
            if (n >= l.MaxDomains)
                break;
            XenDomctlGetdomaininfo info = default;
            DomctlOp.FillInfo(d, ref info);
            if (!GuestAccess.WriteElement(v, l.Buffer, n, info))
                return -Errno.EFAULT;
            n++;
        }
        l.NumDomains = n;
        copyBack = true;
        return 0;
    }

    /// <summary>Each pCPU's core, socket and node (one core per pCPU, one socket per node, as physinfo says).</summary>
    private static long CpuTopoInfo(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        copyBack = false;
        ref var ti = ref op.As<XenSysctlCputopoinfo>();
        var nodeOf = v.Domain.Host.Scheduler.Topology.NodeOfCpu;
        if (ti.Cputopo != 0)
        {
            uint n = Math.Min(ti.NumCpus, (uint)nodeOf.Length);
            for (uint i = 0; i < n; i++)
            {
                // An offline pCPU has no topology, as Xen reports it.
                var t = v.Domain.Host.Scheduler.IsOnline((int)i)
                    ? new XenSysctlCputopo { Core = i, Socket = (uint)nodeOf[i], Node = (uint)nodeOf[i] }
                    : new XenSysctlCputopo { Core = uint.MaxValue, Socket = uint.MaxValue, Node = uint.MaxValue };
                if (!GuestAccess.WriteElement(v, ti.Cputopo, i, t))
                    return -Errno.EFAULT;
            }
        }
        ti.NumCpus = (uint)nodeOf.Length;
        copyBack = true;
        return 0;
    }

    /// <summary>Each node's memory (machine memory is one pool: node 0 holds it) and the distance matrix.</summary>
    private static long NumaInfo(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        copyBack = false;
        ref var ni = ref op.As<XenSysctlNumainfo>();
        var host = v.Domain.Host;
        var topology = host.Scheduler.Topology;
        uint nodes = (uint)Math.Max(1, topology.NodeCount);
        if (ni.Meminfo != 0 && ni.Distance != 0)
        {
            if (ni.NumNodes < nodes)
            {
                ni.NumNodes = nodes;
                copyBack = true;
                return -Errno.ENOBUFS;
            }
            for (uint i = 0; i < nodes; i++)
            {
                bool present = Array.IndexOf(topology.Nodes, (int)i) >= 0;
                var mi = !present
                    ? new XenSysctlMeminfo { Memsize = XEN_INVALID_MEM_SZ, Memfree = XEN_INVALID_MEM_SZ }
                    : i == 0
                        ? new XenSysctlMeminfo { Memsize = (ulong)host.Frames.FrameCount << FrameTable.PageShift, Memfree = (ulong)host.Frames.FreeFrames << FrameTable.PageShift }
                        : new XenSysctlMeminfo();
                if (!GuestAccess.WriteElement(v, ni.Meminfo, i, mi))
                    return -Errno.EFAULT;
                for (uint j = 0; j < nodes; j++)
                {
                    uint distance = i == j ? (uint)HostTopology.LocalDistance : (uint)HostTopology.RemoteDistance;
                    if (!GuestAccess.WriteElement(v, ni.Distance, i * nodes + j, distance))
                        return -Errno.EFAULT;
                }
            }
        }
        ni.NumNodes = nodes;
        copyBack = true;
        return 0;
    }

    private static long CpupoolOp(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        copyBack = false;
        ref var cp = ref op.As<XenSysctlCpupoolOp>();
        var pools = v.Domain.Host.Scheduler;
        switch (cp.Op)
        {
            case XEN_SYSCTL_CPUPOOL_OP_INFO:
            {
                // The first pool whose id is at or after the one asked for, as Xen's cpupool_get_next_by_id.
                uint wanted = cp.CpupoolId;
                var p = pools.All().Where(x => (uint)x.Id >= wanted).MinBy(x => x.Id);
                if (p is null)
                    return -Errno.ENOENT;
                cp.CpupoolId = (uint)p.Id;
                cp.SchedId = Domctl.SchedulerId(p.Scheduler.Name);
                cp.NDom = (uint)pools.DomainCount(p);
                if (!Bitmaps.Write(v, cp.Cpumap, p.Cpus))
                    return -Errno.EFAULT;
                copyBack = true;
                return 0;
            }
            case XEN_SYSCTL_CPUPOOL_OP_FREEINFO:
                if (!Bitmaps.Write(v, cp.Cpumap, pools.FreeCpus()))
                    return -Errno.EFAULT;
                return 0;
            default:
                return -Errno.ENOSYS;
        }
    }

    private static long SchedulerOp(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        copyBack = false;
        ref var so = ref op.As<XenSysctlSchedulerOp>();
        var pool = v.Domain.Host.Scheduler.Pool((int)so.CpupoolId);
        if (pool is null)
            return -Errno.ESRCH;
        if (Domctl.SchedulerId(pool.Scheduler.Name) != so.SchedId)
            return -Errno.EINVAL;
        switch (pool.Scheduler, so.Cmd)
        {
            case (CreditScheduler c, XEN_SYSCTL_SCHEDOP_getinfo):
                so.Credit = new XenSysctlCreditSchedule
                {
                    TsliceMs = (uint)(c.TsliceNs / 1_000_000),
                    RatelimitUs = (uint)(c.RatelimitNs / 1000),
                    VcpuMigrDelayUs = (uint)(c.MigrationDelayNs / 1000),
                };
                copyBack = true;
                return 0;
            case (Credit2Scheduler c2, XEN_SYSCTL_SCHEDOP_getinfo):
                // credit2's member of the union is its rate limit alone, where credit keeps its time slice.
                so.Credit = new XenSysctlCreditSchedule { TsliceMs = (uint)(c2.RatelimitNs / 1000) };
                copyBack = true;
                return 0;
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>The CPUID a new domain's vCPU 0 answers: every system policy (raw, host, max, default) is this one,
    /// since the engine's CPU is the only one guests get.</summary>
    private static X86.XenCpuid SystemCpuid(HostServices host) =>
        new(host.Options.BaseCpuid?.Invoke(0) ?? new XenSharp.Cpu.DefaultCpuidPolicy(0), 0,
            () => (host.Time.TscToSystemMul, host.Time.TscShift, host.Time.TscHz));

    /// <summary>XEN_SYSCTL_get_cpu_featureset: the feature words of the system policy; a short buffer gets what fits
    /// and the full count, as Xen writes it.</summary>
    private static long GetCpuFeatureset(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        copyBack = false;
        ref var fs = ref op.As<XenSysctlCpuFeatureset>();
        if (fs.Index > XEN_SYSCTL_cpu_featureset_hvm_max)
            return -Errno.EINVAL;
        // No PV guests: their featuresets are empty, as Xen's are without CONFIG_PV.
        var words = fs.Index is XEN_SYSCTL_cpu_featureset_pv or XEN_SYSCTL_cpu_featureset_pv_max
            ? new uint[X86.CpuPolicy.FeaturesetWords]
            : X86.CpuPolicy.Featureset(SystemCpuid(v.Domain.Host), null);
        uint n = Math.Min(fs.NrFeatures, (uint)words.Length);
        for (uint i = 0; i < n; i++)
            if (!GuestAccess.WriteElement(v, fs.Features, i, words[i]))
                return -Errno.EFAULT;
        fs.NrFeatures = (uint)words.Length;
        copyBack = true;
        return 0;
    }

    /// <summary>XEN_SYSCTL_get_cpu_policy: null arrays ask for the most a policy needs; the PV policies are
    /// -EOPNOTSUPP (no PV guests), an unknown index -EINVAL.</summary>
    private static long GetCpuPolicy(Vcpu v, ref XenSysctl op, out bool copyBack)
    {
        copyBack = false;
        ref var p = ref op.As<XenSysctlCpuPolicy>();
        if (p.Index > XEN_SYSCTL_cpu_policy_hvm_default || p.Rsvd != 0)
            return -Errno.EINVAL;
        bool sizing = p.Leaves == 0 && p.Msrs == 0;
        if (!sizing && p.Index is XEN_SYSCTL_cpu_policy_pv_max or XEN_SYSCTL_cpu_policy_pv_default)
            return -Errno.EOPNOTSUPP;
        var cpuid = SystemCpuid(v.Domain.Host);
        long rc = DomctlBuild.WritePolicy(v, X86.CpuPolicy.Serialise(cpuid), X86.CpuPolicy.SerialiseMsrs(null),
            p.Leaves, ref p.NrLeaves, p.Msrs, ref p.NrMsrs);
        copyBack = rc == 0;
        return rc;
    }

    /// <summary>The host CPU's clock in kHz (Xen reports its measured cpu_khz), from /proc/cpuinfo.</summary>
    private static uint HostCpuKhz()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("cpu MHz", StringComparison.Ordinal)
                    && double.TryParse(line[(line.IndexOf(':') + 1)..], System.Globalization.CultureInfo.InvariantCulture, out double mhz))
                    return (uint)(mhz * 1000);
        }
        catch (IOException) { }
        return 0;
    }
}
