using System.Runtime.InteropServices;
using XenSharp.Hypervisor.X86;
using XenSharp.Public;
using static XenSharp.Public.Domctl;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// The domctls that create, build and run a domain, as a toolstack of Domain-0 (libxl and libxenguest) issues them:
/// createdomain with its 4.17 configuration, the memory and vCPU limits, affinities, TSC and time, the HVM context
/// of the boot vCPU, the CPU policy, and pause, unpause and destroy. Each reaches the control face
/// (<see cref="HostServices.Control"/>); a refusal there is the errno it carries, never an exception to the caller.
/// </summary>
internal static class DomctlBuild
{
    /// <summary>The largest HVM context a toolstack may hand in (Xen allocates what it is told; this bounds it).</summary>
    private const uint MaxHvmContext = 16 << 20;

    private static XenHypervisor Control(Vcpu v) =>
        v.Domain.Host.Control ?? throw new InvalidOperationException("no control face for the toolstack's domctls");

    /// <summary>Runs a control-face call and turns its refusal into -errno.</summary>
    private static long Call(Action action)
    {
        try
        {
            action();
            return 0;
        }
        catch (HypervisorException e)
        {
            return -(e.Errno == 0 ? Errno.EINVAL : e.Errno);
        }
    }

    public static long CreateDomain(Vcpu v, ref XenDomctl op, Domain? _, out bool copyBack)
    {
        copyBack = false;
        var c = op.As<XenDomctlCreatedomain>();
        const uint knownFlags = XEN_DOMCTL_CDF_hvm | XEN_DOMCTL_CDF_hap | XEN_DOMCTL_CDF_s3_integrity | XEN_DOMCTL_CDF_oos_off
            | XEN_DOMCTL_CDF_xs_domain | XEN_DOMCTL_CDF_iommu | XEN_DOMCTL_CDF_nested_virt | XEN_DOMCTL_CDF_vpmu;
        // Xen's sanitise_domain_config: unknown bits, and what this host has not got (PV, shadow paging, an IOMMU,
        // nested virtualisation, a vPMU, vmtrace, a xenstore stub domain), are refused.
        if ((c.Flags & ~knownFlags) != 0 || (c.IommuOpts & ~1u) != 0)
            return -Errno.EINVAL;
        if ((c.Flags & XEN_DOMCTL_CDF_hvm) == 0 || (c.Flags & XEN_DOMCTL_CDF_hap) == 0)
            return -Errno.EINVAL;
        if ((c.Flags & (XEN_DOMCTL_CDF_iommu | XEN_DOMCTL_CDF_nested_virt | XEN_DOMCTL_CDF_vpmu | XEN_DOMCTL_CDF_xs_domain)) != 0
            || c.VmtraceSize != 0)
            return -Errno.EINVAL;
        if (c.MaxVcpus < 1 || c.MaxVcpus > 128 || c.MaxGrantFrames == 0 || c.MaxMaptrackFrames < -1)
            return -Errno.EINVAL;
        uint grantVersion = c.GrantOpts & XEN_DOMCTL_GRANT_version_mask;
        if ((c.GrantOpts & ~XEN_DOMCTL_GRANT_version_mask) != 0 || grantVersion is < 1 or > 2)
            return -Errno.EINVAL;
        if ((c.MiscFlags & ~XEN_X86_MSR_RELAXED) != 0)
            return -Errno.EINVAL;
        // emulation_flags_ok: a PVH domain has the local APIC alone, an HVM one the whole PC (vPCI aside).
        DomainKind kind;
        if (c.EmulationFlags == XEN_X86_EMU_LAPIC)
            kind = DomainKind.Pvh;
        else if ((c.EmulationFlags & ~XEN_X86_EMU_USE_PIRQ) == (XEN_X86_EMU_ALL & ~(XEN_X86_EMU_VPCI | XEN_X86_EMU_USE_PIRQ)))
            kind = DomainKind.Hvm;
        else
            return -Errno.EOPNOTSUPP;
        var hv = Control(v);
        if (c.CpupoolId != 0 && v.Domain.Host.Scheduler.Pool((int)c.CpupoolId) is null)
            return -Errno.ENOENT;
        // A free id the caller names, else the next free one after the last given (Xen's rover).
        ushort? wanted = op.Domain is > 0 and < Xen.DOMID_FIRST_RESERVED ? op.Domain : null;
        if (wanted is ushort w && v.Domain.Host.FindDomain(w) is not null)
            return -Errno.EEXIST;
        var handle = new byte[16];
        unsafe
        {
            for (int i = 0; i < 16; i++)
                handle[i] = op.U[4 + i]; // after ssidref
        }
        var config = new DomainCreateConfig(kind, 0, (int)c.MaxVcpus)
        {
            DomainId = wanted,
            MaxGrantFrames = c.MaxGrantFrames < 0 ? 64 : c.MaxGrantFrames,
            MaxEventChannels = c.MaxEvtchnPort,
            Handle = new Guid(handle, bigEndian: true),
            Ssidref = c.Ssidref,
        };
        ushort domid = 0;
        long rc = Call(() => domid = hv.CreateDomain(config));
        if (rc != 0)
            return rc;
        if (c.CpupoolId != 0 && (rc = Call(() => hv.CpupoolMigrate(domid, (int)c.CpupoolId))) != 0)
        {
            hv.Destroy(domid);
            return rc;
        }
        op.Domain = domid;
        copyBack = true;
        hv.RaiseDomainCreatedByDom0(domid);
        return 0;
    }

    public static long DestroyDomain(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost || d == v.Domain)
            return -Errno.EINVAL;
        return Call(() => Control(v).Destroy(d.DomainId));
    }

    public static long PauseDomain(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost || d == v.Domain)
            return -Errno.EINVAL;
        return Call(() => Control(v).Pause(d.DomainId));
    }

    public static long UnpauseDomain(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost)
            return -Errno.EINVAL;
        // The controller's pause count starts at 1 for a new domain; unpausing below 0 is refused.
        lock (d.Lock)
            if (d.PauseCount == 0)
                return -Errno.EINVAL;
        return Call(() => Control(v).Unpause(d.DomainId));
    }

    public static long MaxMem(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost)
            return -Errno.EINVAL;
        // No check against what the domain holds: above the new limit it can only give memory back.
        ulong pages = op.As<XenDomctlMaxMem>().MaxMemKb >> (FrameTable.PageShift - 10);
        lock (d.Lock)
            d.MaxPages = Math.Min(pages, uint.MaxValue);
        return 0;
    }

    /// <summary>The vCPU count is fixed by createdomain: only the same count is accepted.</summary>
    public static long MaxVcpus(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        return d == v.Domain || d!.IsHost || op.As<XenDomctlMaxVcpus>().Max != (uint)d.Vcpus.Length ? -Errno.EINVAL : 0;
    }

    public static long SetVcpuAffinity(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        var va = op.As<XenDomctlVcpuaffinity>();
        if (d!.IsHost || va.Vcpu >= (uint)d.Vcpus.Length
            || (va.Flags & (XEN_VCPUAFFINITY_HARD | XEN_VCPUAFFINITY_SOFT)) == 0)
            return -Errno.EINVAL;
        List<int>? hard = null, soft = null;
        if ((va.Flags & XEN_VCPUAFFINITY_HARD) != 0 && !Bitmaps.Read(v, va.CpumapHard, out hard))
            return -Errno.EFAULT;
        if ((va.Flags & XEN_VCPUAFFINITY_SOFT) != 0 && !Bitmaps.Read(v, va.CpumapSoft, out soft))
            return -Errno.EFAULT;
        int pcpus = d.Host.Scheduler.NrPcpus;
        hard = hard?.Where(c => c < pcpus).ToList();
        soft = soft?.Where(c => c < pcpus).ToList();
        long rc = Call(() => Control(v).SetVcpuAffinity(d.DomainId, (int)va.Vcpu, hard, soft));
        if (rc != 0)
            return rc;
        // The caller gets the affinities now in force back in its maps.
        var u = Scheduling.SchedUnit.Of(d.Vcpus[va.Vcpu]);
        if (hard is not null && !Bitmaps.Write(v, va.CpumapHard, u.Hard))
            return -Errno.EFAULT;
        if (soft is not null && !Bitmaps.Write(v, va.CpumapSoft, u.Soft))
            return -Errno.EFAULT;
        return 0;
    }

    public static long SetNodeAffinity(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost)
            return -Errno.EINVAL;
        if (!Bitmaps.Read(v, op.As<XenDomctlNodeaffinity>().Nodemap, out var nodes))
            return -Errno.EFAULT;
        return Call(() => Control(v).SetDomainNodeAffinity(d.DomainId, nodes));
    }

    public static long GetNodeAffinity(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost)
            return -Errno.EINVAL;
        return Bitmaps.Write(v, op.As<XenDomctlNodeaffinity>().Nodemap, Control(v).GetDomainNodeAffinity(d.DomainId)) ? 0 : -Errno.EFAULT;
    }

    public static long SetTimeOffset(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost)
            return -Errno.EINVAL;
        long seconds = op.As<XenDomctlSettimeoffset>().TimeOffsetSeconds;
        if (seconds is > long.MaxValue / 1_000_000_000 or < long.MinValue / 1_000_000_000)
            return -Errno.EINVAL;
        d.WallclockOffsetNs = seconds * 1_000_000_000;
        d.Host.Time.UpdateWallclock(d);
        return 0;
    }

    /// <summary>XEN_DOMCTL_settscinfo (Xen's tsc_set_info): default, always_emulate or native, which the domain's
    /// vCPUs report in the TSC leaf from then on; PVRDTSCP (gone from Xen) or any other mode is EINVAL. The guest TSC
    /// runs at the host's frequency (a gtsc_khz of 0 asks for it); another frequency is EOPNOTSUPP, since the engine
    /// and the vcpu_time_info scale share one.</summary>
    public static long SetTscInfo(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        var t = op.As<XenDomctlTscInfo>();
        if (d!.IsHost || d == v.Domain || t.TscMode > (uint)TscMode.Native)
            return -Errno.EINVAL;
        uint khz = (uint)(d.Host.Time.TscHz / 1000);
        if (t.GtscKhz != 0 && t.GtscKhz != khz)
            return -Errno.EOPNOTSUPP;
        var mode = (TscMode)t.TscMode;
        lock (d.Lock)
        {
            d.TscMode = mode;
            foreach (var vcpu in d.Vcpus)
                if (vcpu.Cpuid is XenCpuid x)
                    x.TscMode = mode;
        }
        return 0;
    }

    public static long GetTscInfo(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost || d == v.Domain)
            return -Errno.EINVAL;
        op.As<XenDomctlTscInfo>() = new XenDomctlTscInfo
        {
            TscMode = (uint)d.TscMode,
            GtscKhz = (uint)(d.Host.Time.TscHz / 1000),
            ElapsedNsec = (ulong)d.Host.Time.NowNs,
        };
        copyBack = true;
        return 0;
    }

    /// <summary>XEN_DOMCTL_gethvmcontext: with a null buffer, the size the context needs; else the context, or
    /// -ENOSPC when the buffer is smaller.</summary>
    public static long GetHvmContext(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost || d == v.Domain)
            return -Errno.EINVAL;
        ref var c = ref op.As<XenDomctlHvmcontext>();
        byte[] context = [];
        long rc = Call(() => context = Control(v).GetHvmContext(d.DomainId));
        if (rc != 0)
            return rc;
        if (c.Buffer != 0)
        {
            if (c.Size < (uint)context.Length)
                return -Errno.ENOSPC;
            if (!GuestAccess.CopyTo(v, c.Buffer, context))
                return -Errno.EFAULT;
        }
        c.Size = (uint)context.Length;
        copyBack = true;
        return 0;
    }

    public static long SetHvmContext(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost || d == v.Domain)
            return -Errno.EINVAL;
        var c = op.As<XenDomctlHvmcontext>();
        if (c.Size > MaxHvmContext)
            return -Errno.ENOMEM;
        var context = new byte[c.Size];
        if (!GuestAccess.CopyFrom(v, c.Buffer, context))
            return -Errno.EFAULT;
        return Call(() => Control(v).SetHvmContext(d.DomainId, context));
    }

    /// <summary>XEN_DOMCTL_get_cpu_policy: the leaves the domain's vCPU 0 answers, and its policy MSRs; null arrays
    /// ask for the counts, a short one is -ENOBUFS.</summary>
    public static long GetCpuPolicy(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost || d.Vcpus.Length == 0 || d.Vcpus[0].Cpuid is not { } cpuid)
            return -Errno.EINVAL;
        ref var p = ref op.As<XenDomctlCpuPolicy>();
        long rc = WritePolicy(v, CpuPolicy.Serialise(cpuid), CpuPolicy.SerialiseMsrs(d.Vcpus[0].Engine),
            p.Leaves, ref p.NrLeaves, p.Msrs, ref p.NrMsrs);
        copyBack = rc == 0;
        return rc;
    }

    /// <summary>XEN_DOMCTL_set_cpu_policy, before the domain first runs (-EEXIST after): the leaves must each have a
    /// place in a policy (-ERANGE naming the first that has none), the MSRs must be the policy's, and the whole must
    /// be what vCPU 0 can give (the host's vendor, no feature it lacks: -EINVAL naming the leaf). An accepted policy
    /// is written over the domain's (leaf by leaf) and every vCPU's CPUID applies it (<see cref="DomainCpuPolicy"/>).</summary>
    public static long SetCpuPolicy(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost || d == v.Domain || d.Vcpus.Length == 0 || d.Vcpus[0].Cpuid is not XenCpuid cpuid)
            return -Errno.EINVAL;
        if (d.HasRun)
            return -Errno.EEXIST;
        ref var p = ref op.As<XenDomctlCpuPolicy>();
        p.ErrLeaf = p.ErrSubleaf = p.ErrMsr = uint.MaxValue;
        copyBack = true;
        if (p.NrLeaves > CpuPolicy.MaxLeaves || p.NrMsrs > CpuPolicy.MaxMsrs)
            return -Errno.E2BIG;
        var leaves = new XenCpuidLeaf[p.NrLeaves];
        if (p.NrLeaves > 0 && !GuestAccess.CopyFrom(v, p.Leaves, MemoryMarshal.AsBytes(leaves.AsSpan())))
            return -Errno.EFAULT;
        var msrs = new XenMsrEntry[p.NrMsrs];
        if (p.NrMsrs > 0 && !GuestAccess.CopyFrom(v, p.Msrs, MemoryMarshal.AsBytes(msrs.AsSpan())))
            return -Errno.EFAULT;
        long rc = CpuPolicy.CheckLeaves(leaves, out p.ErrLeaf, out p.ErrSubleaf);
        if (rc != 0)
            return rc;
        foreach (var m in msrs)
            if (m.Flags != 0 || m.Idx is not (CpuPolicy.MsrPlatformInfo or CpuPolicy.MsrArchCapabilities))
            {
                p.ErrMsr = m.Idx;
                return -Errno.ERANGE;
            }
        rc = CpuPolicy.CheckCompatible(leaves, cpuid.Max, out p.ErrLeaf, out p.ErrSubleaf);
        if (rc != 0)
            return rc;
        var policy = DomainCpuPolicy.Merge(cpuid.Policy, leaves);
        foreach (var vcpu in d.Vcpus)
            if (vcpu.Cpuid is XenCpuid x)
                x.Policy = policy;
        return 0;
    }

    /// <summary>Writes a serialised policy to the caller's arrays (Xen's copy_to_buffer): a null array reports the
    /// most it could need, a short one is -ENOBUFS.</summary>
    internal static long WritePolicy(Vcpu v, List<XenCpuidLeaf> leaves, XenMsrEntry[] msrs,
        ulong leavesArray, ref uint nrLeaves, ulong msrsArray, ref uint nrMsrs)
    {
        if (leavesArray == 0)
            nrLeaves = CpuPolicy.MaxLeaves;
        else
        {
            if (nrLeaves < (uint)leaves.Count)
                return -Errno.ENOBUFS;
            if (!GuestAccess.CopyTo(v, leavesArray, MemoryMarshal.AsBytes(CollectionsMarshal.AsSpan(leaves))))
                return -Errno.EFAULT;
            nrLeaves = (uint)leaves.Count;
        }
        if (msrsArray == 0)
            nrMsrs = CpuPolicy.MaxMsrs;
        else
        {
            if (nrMsrs < (uint)msrs.Length)
                return -Errno.ENOBUFS;
            if (!GuestAccess.CopyTo(v, msrsArray, MemoryMarshal.AsBytes(msrs.AsSpan())))
                return -Errno.EFAULT;
            nrMsrs = (uint)msrs.Length;
        }
        return 0;
    }

    public static long GetPagingMempoolSize(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost)
            return -Errno.EINVAL;
        op.As<XenDomctlPagingMempool>().Size = d.PagingMempoolBytes;
        copyBack = true;
        return 0;
    }

    /// <summary>The size must be whole pages (Xen's check); the engine's paging needs no pool of its own.</summary>
    public static long SetPagingMempoolSize(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        ulong size = op.As<XenDomctlPagingMempool>().Size;
        if (d!.IsHost || d == v.Domain || (size & (FrameTable.PageSize - 1)) != 0)
            return -Errno.EINVAL;
        d.PagingMempoolBytes = size;
        return 0;
    }

    public static unsafe long SetDomainHandle(Vcpu v, ref XenDomctl op, Domain? d, out bool copyBack)
    {
        copyBack = false;
        if (d!.IsHost)
            return -Errno.EINVAL;
        var bytes = new byte[16];
        fixed (byte* u = op.U)
            new ReadOnlySpan<byte>(u, 16).CopyTo(bytes);
        d.Handle = new Guid(bytes, bigEndian: true);
        return 0;
    }
}
