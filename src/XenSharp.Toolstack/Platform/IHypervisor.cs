using XenSharp.Cpu;
using XenSharp.Hypervisor;
using XenSharp.Public;

namespace XenSharp.Toolstack.Platform;

/// <summary>What XEN_DOMCTL_createdomain and the max_vcpus/max_mem domctls are given.</summary>
public sealed record DomainCreateInfo(DomainKind Kind, Guid Uuid, int MaxVcpus, long MaxMemKb, string Name)
{
    /// <summary>xl.cfg tsc_mode (native_paravirt never reaches the hypervisor: libxl refuses it).</summary>
    public TscMode TscMode { get; init; }
    /// <summary>The wall clock's offset from the host's in seconds (XEN_DOMCTL_settimeoffset; HVM rtc_timeoffset).</summary>
    public long TimeOffsetSeconds { get; init; }
    /// <summary>The FLASK label to create the domain under (createdomain's ssidref); 0 for none.</summary>
    public uint Ssidref { get; init; }
}

/// <summary>A domain's run state as XEN_DOMCTL_getdomaininfo reports it.</summary>
/// <summary>A domain the toolstack did not create, as the hypervisor knows it.</summary>
public sealed record ForeignDomain(IHypervisorDomain Domain, Guid Uuid, int MaxVcpus, DomainKind Kind);

/// <remarks><paramref name="Gone"/>: the hypervisor no longer has the domain (destroyed, the toolstack not told yet).</remarks>
public readonly record struct DomainRunInfo(
    bool Running, bool Blocked, bool Paused, bool Shutdown, ShutdownReason Reason, bool Dying,
    ulong CpuTimeNs, int OnlineVcpus, long CurrentMemKb, bool Gone = false);

/// <summary>A vCPU's state; Hard/Soft are its affinities when the hypervisor keeps them.</summary>
public readonly record struct VcpuRunState(int Vcpu, bool Online, bool Running, bool Blocked, int Cpu, ulong CpuTimeNs,
    IReadOnlyList<int>? Hard = null, IReadOnlyList<int>? Soft = null);

/// <summary>dom0's end of an interdomain event channel.</summary>
public interface IEventChannelEndpoint : IDisposable
{
    uint LocalPort { get; }
    /// <summary>EVTCHNOP_send from dom0's end.</summary>
    void Notify();
}

/// <summary>
/// The hypervisor as the toolstack drives it: the domctl/sysctl operations of libxc, in-process.
/// The daemon binds it to XenSharp.Hypervisor (<see cref="XenHypervisorPlatform"/>).
/// </summary>
public interface IHypervisor : IDisposable
{
    /// <summary>pCPU ids run 0 to HostCpus - 1; OnlineHostCpus of them are online (the rest taken offline by pCPU hotplug).</summary>
    int HostCpus { get; }
    int OnlineHostCpus => HostCpus;
    string Version { get; }
    string Capabilities { get; }

    IHypervisorDomain CreateDomain(uint domId, DomainCreateInfo info);

    /// <summary>Starts the pCPU threads now rather than when a domain first runs (an incoming migration's domain
    /// would start them in the guest's downtime).</summary>
    void StartPcpus() { }

    /// <summary>XEN_SYSCTL_physinfo's total_pages and free_pages, in bytes: the hypervisor's machine memory and
    /// what no domain holds of it.</summary>
    (ulong Total, ulong Free) MachineMemory { get; }

    /// <summary>What XEN_VERSION answers (a core dump records it).</summary>
    XenSharp.Hypervisor.XenVersionInfo VersionInfo => XenSharp.Hypervisor.XenHypervisor.VersionInfo;

    /// <summary>XEN_SYSCTL_readconsole: the hypervisor's console ring.</summary>
    string ReadConsole(bool clear);

    /// <summary>Appends a line to the hypervisor console (what Xen prints as "(XEN) ...").</summary>
    void ConsoleWrite(string line);

    /// <summary>Whether the hypervisor runs FLASK (xsm_op answers).</summary>
    bool FlaskEnabled => false;

    /// <summary>FLASK_CONTEXT_TO_SID: 0 with the label's SID, or -errno (-ENOSYS with FLASK off).</summary>
    long FlaskContextToSid(string context, out uint sid)
    {
        sid = 0;
        return -Errno.ENOSYS;
    }

    /// <summary>FLASK_RELABEL_DOMAIN: 0 or -errno.</summary>
    long FlaskRelabelDomain(uint domId, uint sid) => -Errno.ENOSYS;

    /// <summary>XEN_SYSCTL_debug_keys.</summary>
    void DebugKeys(string keys);

    /// <summary>VIRQ_DOM_EXC: a domain shut down (or crashed) and needs the toolstack's attention.</summary>
    event Action<uint>? DomainStateChanged;

    /// <summary>What dom0's kernel gives backends: grant maps and copies, event channels, foreign mappings.</summary>
    XenSharp.Dom0.IDom0Services Dom0Services { get; }

    /// <summary>Cpupools and schedulers; null when the platform has none.</summary>
    IScheduling? Scheduling => null;

    /// <summary>A handle on domain <paramref name="domId"/>, which a Domain-0 program created (Xen's own xl through
    /// the dom0 interface), with its uuid and vCPU count; null when there is no such domain.</summary>
    ForeignDomain? AdoptDomain(uint domId) => null;

    /// <summary>Whether the hypervisor has domain <paramref name="domId"/> (made by the toolstack or not).</summary>
    bool HasDomain(uint domId) => false;

    /// <summary>Raised (on a thread pool thread) when a domain is destroyed, whoever destroyed it.</summary>
    event Action<uint>? DomainDestroyed { add { } remove { } }

    /// <summary>Raised (on a thread pool thread) when a Domain-0 program created a domain.</summary>
    event Action<uint>? DomainCreatedOutside { add { } remove { } }
}

public interface IHypervisorDomain : IDisposable
{
    uint DomId { get; }
    IGuestPhysicalMemory Memory { get; }

    /// <summary>XEN_DOMCTL_setvcpucontext for a vCPU that has not run yet.</summary>
    void SetVcpuContext(int vcpu, in Registers regs, in SpecialRegisters sregs);

    /// <summary>XEN_DOMCTL_max_vcpus sized it; this brings vCPUs online/offline (the hotplug view).</summary>
    void SetOnlineVcpus(int count);

    void SetVcpuAffinity(int vcpu, IReadOnlyList<int>? hard, IReadOnlyList<int>? soft);

    /// <summary>The e820 the guest gets from XENMEM_memory_map (the same as the start info's memmap).</summary>
    void SetMemoryMap(IReadOnlyList<(ulong Addr, ulong Size, uint Type)> entries);

    /// <summary>Where the guest's ACPI poweroff arrives: the FADT's PM1a control port and \_S5's SLP_TYP.</summary>
    void SetAcpiSleepControl(ushort pm1aControlPort, int s5SleepType);

    /// <summary>The guest's PM1a control port belongs to its device model, which reports a poweroff itself.</summary>
    void ReleaseAcpiSleepControl() { }

    void SetHvmParam(int index, ulong value);
    ulong GetHvmParam(int index);

    /// <summary>Writes a grant entry of the guest's table from outside, as libxl seeds the reserved console and
    /// xenstore grants for their backends' domain.</summary>
    void SeedGrantEntry(uint gref, ushort flags, ushort grantee, ulong gfn) { }

    /// <summary>EVTCHNOP_alloc_unbound in the guest for dom0: returns the guest's port.</summary>
    uint AllocUnboundPort(uint remoteDomId);

    /// <summary>EVTCHNOP_bind_interdomain from dom0 to the guest's port; <paramref name="onEvent"/>
    /// runs when the guest signals it.</summary>
    IEventChannelEndpoint BindInterdomain(uint remotePort, Action onEvent);

    void Pause();
    void Unpause();

    /// <summary>XEN_DOMCTL_setmaxmem.</summary>
    void SetMaxMem(long kb);

    /// <summary>Shuts the domain down from outside (SCHEDOP_remote_shutdown), as xl -F and triggers do.</summary>
    void Shutdown(ShutdownReason reason);

    /// <summary>XEN_DOMCTL_getvcpucontext.</summary>
    XenSharp.Public.ArchX86.VcpuGuestContext GetVcpuContext(int vcpu);

    /// <summary>A copy of the domain's shared info page.</summary>
    void ReadSharedInfo(Span<byte> page);

    /// <summary>XEN_DOMCTL_sendtrigger: nmi, reset, init, power, sleep, s3resume.</summary>
    void SendTrigger(string trigger, int vcpu);

    DomainRunInfo State { get; }
    IReadOnlyList<VcpuRunState> Vcpus { get; }

    /// <summary>When the domain last shut down (microseconds since 1970, the host's clock), as the hypervisor saw it;
    /// 0 when unknown.</summary>
    long ShutdownTime => 0;

    /// <summary>XEN_DOMCTL_gethvmcontext: the vCPUs' state as Xen's HVM save records.</summary>
    byte[] GetHvmContext() => throw new NotSupportedException("this hypervisor has no HVM context");

    /// <summary>XEN_DOMCTL_sethvmcontext on a domain that has not run; the vCPUs with a CPU record come up.</summary>
    void SetHvmContext(ReadOnlySpan<byte> context) => throw new NotSupportedException("this hypervisor has no HVM context");

    /// <summary>Copies a frame save carries: RAM with a frame behind it, and the Xen pages (shared info, grant
    /// frames) the guest placed in its physical space, which a restored guest finds as RAM until it places them
    /// again, as on Xen. False for holes, mappings of other domains' pages and untouched PoD entries.</summary>
    bool TryReadSaveFrame(ulong gfn, Span<byte> page) => Memory.TryReadFrame(gfn, page);

    /// <summary>XEN_DOMCTL_shadow_op's log-dirty operations (Domctl.XEN_DOMCTL_SHADOW_OP_*): enable, peek, clean
    /// (the bitmap gets one bit per page of its length × 64) and off; returns the stats.</summary>
    (uint Faults, uint Dirtied) ShadowOp(uint op, Span<ulong> bitmap) => throw new NotSupportedException("this hypervisor has no log-dirty mode");

    /// <summary>Resumes a suspended domain in place, its suspend cancelled (with <paramref name="cancelHypercall"/>
    /// the guest's SCHEDOP_shutdown returns 1; false for a guest suspended from outside).</summary>
    void ResumeSuspended(bool cancelHypercall) => throw new NotSupportedException("this hypervisor cannot resume a suspended domain");
    /// <summary>XEN_DOMCTL_soft_reset of a domain shut down for a soft reset: it runs on in place with its memory,
    /// its event channels closed; throws for a domain that may not be soft-reset (PV), which stays shut down.</summary>
    void SoftReset() => throw new NotSupportedException("this hypervisor cannot soft-reset a domain");
    /// <summary>What the PV builder needs of a PV domain; null for HVM and PVH domains.</summary>
    IPvBuildTarget? Pv => null;

    /// <summary>The guest TSC frequency in kHz and Xen's system time in ns now (the TSC info record).</summary>
    uint TscKhz => 0;
    ulong SystemTimeNs => 0;
}

/// <summary>
/// The hypervisor calls the PV domain builder makes, as libxc makes them of Xen: the MFNs the populated PFNs got, the
/// M2P entries, pinning and loading the initial page tables (MMUEXT_PIN_L4_TABLE, the vCPU context's CR3) and the
/// hypercall page (XEN_DOMCTL_hypercall_init).
/// </summary>
public interface IPvBuildTarget
{
    ulong MfnOf(ulong pfn);
    void SetMachToPhys(ulong firstPfn, ulong count);
    ulong SharedInfoMfn { get; }
    /// <summary>Fails (with the hypervisor's errno) when the table does not validate.</summary>
    void PinTable(int level, ulong mfn);
    void SetBaseptr(int vcpu, ulong mfn);
    void InitHypercallPage(ulong pfn);
    /// <summary>XEN_DOMCTL_set_address_size: 32 makes the domain a 32-bit PV (compat) one, before it is built.</summary>
    void SetAddressSize(int bits) => throw new NotSupportedException("this hypervisor runs no 32-bit PV guests");

    // Save and restore (libxc's x86 PV save and restore).
    bool Is32 => false;
    /// <summary>The domain's RAM: each PFN with its MFN.</summary>
    IReadOnlyList<(ulong Pfn, ulong Mfn)> Physmap() => throw new NotSupportedException("this hypervisor cannot save PV guests");
    /// <summary>The page-table level (0 for none) a frame is validated as, and whether it is pinned.</summary>
    (int Level, bool Pinned) PageType(ulong mfn) => (0, false);
    /// <summary>vcpu_guest_context in the domain's layout, MFNs as they are; null for an offline vCPU.</summary>
    byte[]? GetVcpuContext(int vcpu) => throw new NotSupportedException("this hypervisor cannot save PV guests");
    void SetVcpuContext(int vcpu, ReadOnlySpan<byte> context) => throw new NotSupportedException("this hypervisor cannot restore PV guests");
    byte[] GetExtVcpuContext(int vcpu) => throw new NotSupportedException("this hypervisor cannot save PV guests");
    void SetExtVcpuContext(int vcpu, ReadOnlySpan<byte> context) => throw new NotSupportedException("this hypervisor cannot restore PV guests");
    void RestoreSharedInfo(ReadOnlySpan<byte> saved) => throw new NotSupportedException("this hypervisor cannot restore PV guests");
}
