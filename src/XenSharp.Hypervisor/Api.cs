using XenSharp.Public;
using XenSharp.Cpu;

namespace XenSharp.Hypervisor;

/// <summary>The kinds of domain this hypervisor runs (Xen's createdomain: XEN_DOMCTL_CDF_hvm, with or without
/// emulated devices); the toolstack's libxl_domain_type maps onto it.</summary>
public enum DomainKind { Pvh, Hvm, Pv }

/// <summary>A domain's lifecycle state.</summary>
public enum DomainRunState { Paused, Running, Shutdown, Dying }

/// <summary>How to build a domain: xen_domctl_createdomain with the max_mem and max_vcpus domctls.</summary>
public sealed record DomainCreateConfig(DomainKind Type, ulong MaxMemKiB, int Vcpus)
{
    /// <summary>A specific domain id, or null for the next free one.</summary>
    public ushort? DomainId { get; init; }
    public int MaxGrantFrames { get; init; } = 64;
    public uint MaxEventChannels { get; init; } = 1023;
    /// <summary>A control domain (Xen's is_privileged): it may name other domains in its hypercalls and map their
    /// frames, as a backend or toolstack domain does.</summary>
    public bool Privileged { get; init; }
    /// <summary>xl.cfg tsc_mode: what the Xen TSC leaf reports and how the guest's TSC is presented.</summary>
    public TscMode TscMode { get; init; } = TscMode.Default;
    /// <summary>XEN_DOMCTL_settimeoffset: the domain's wall clock (and so its RTC) ahead of the host's, in seconds
    /// (xl.cfg rtc_timeoffset, plus the host's zone offset with localtime=1).</summary>
    public long TimeOffsetSeconds { get; init; }
    /// <summary>The domain's handle (xen_domain_handle_t, the UUID xl shows), or null for a new random one.</summary>
    public Guid? Handle { get; init; }
    /// <summary>The domain's FLASK label (xen_domctl_createdomain's ssidref, a SID of <see cref="XenHypervisor.FlaskContextToSid"/>);
    /// 0 leaves it unlabeled. Ignored while FLASK is off.</summary>
    public uint Ssidref { get; init; }
}

/// <summary>A domain as xen_domctl_getdomaininfo reports it (what a row of `xl list` is made from).</summary>
public sealed record DomctlDomainInfo(
    ushort DomainId,
    Guid Handle,
    DomainKind Type,
    DomainRunState State,
    ShutdownReason? ShutdownReason,
    bool IsRunningNow,
    bool IsBlocked,
    long CpuTimeNs,
    long TotPages,
    ulong MaxPages,
    int Vcpus,
    int OnlineVcpus);

/// <summary>One row of `xl vcpu-list`.</summary>
public sealed record VcpuListEntry(ushort DomainId, int VcpuId, bool Online, bool Running, bool Blocked, int? Pcpu, long CpuTimeNs);

/// <summary>What `xl info` asks of the hypervisor: XEN_SYSCTL_physinfo and the version.</summary>
public sealed record PhysInfo(ulong TotalMemoryBytes, ulong FreeMemoryBytes, int Pcpus, string Scheduler,
    int XenMajor, int XenMinor, string XenExtra, string Capabilities, string CommandLine, ulong GuestTscHz,
    int OnlinePcpus);

/// <summary>Raised when a domain shuts down, with Xen's reason.</summary>
public sealed class DomainShutdownEventArgs(ushort domainId, ShutdownReason reason) : EventArgs
{
    public ushort DomainId { get; } = domainId;
    public ShutdownReason Reason { get; } = reason;
}

/// <summary>
/// Where a domain's port I/O and MMIO go when no device in the hypervisor claims them: Xen's IOREQ server (the role
/// of QEMU as the device model). <paramref name="type"/> arguments are IOREQ_TYPE_PIO or IOREQ_TYPE_COPY (MMIO).
/// Called on the vCPU's thread.
/// </summary>
public interface IIoreqServer
{
    /// <summary>Emulates a read; false when the server does not serve that address (the guest then reads all ones).</summary>
    bool TryRead(ushort domid, uint type, ulong address, int size, out ulong value);

    /// <summary>Emulates a write; false when the server does not serve that address (the write is dropped).</summary>
    bool TryWrite(ushort domid, uint type, ulong address, int size, ulong value);
}

/// <summary>What XENMEM_get_pod_target reports: the domain's pages, its PoD cache and its outstanding PoD entries.</summary>
public readonly record struct PodTarget(long TotPages, long CachePages, long Entries);

/// <summary>Host configuration of the hypervisor.</summary>
public sealed class HypervisorOptions
{
    /// <summary>Size of machine memory (reserved lazily, backed as guests touch it).</summary>
    public ulong MachineMemoryBytes { get; init; } = 16UL << 30;
    /// <summary>Host worker threads that run vCPUs.</summary>
    public int Pcpus { get; init; } = Environment.ProcessorCount;
    /// <summary>Pool-0's scheduler (Xen's sched= option): credit, credit2, rtds, arinc653 or null.</summary>
    public string Scheduler { get; init; } = "credit";
    /// <summary>
    /// Where the host's NUMA topology is read: a sysfs node directory (node*/cpulist, node*/distance). A made-up tree
    /// describes another host; a missing one is a host of one node.
    /// </summary>
    public string NumaSysfsPath { get; init; } = "/sys/devices/system/node";
    /// <summary>Creates the execution engine of a domain over its guest-physical memory (default: the x86 emulator at <see cref="GuestTscHz"/>).</summary>
    public Func<IGuestMemory, ICpuEngine>? EngineFactory { get; init; }
    /// <summary>The engine's CPUID policy for vCPU n, which the Xen leaves are layered over (default: the x86 engine's).</summary>
    public Func<int, ICpuidPolicy>? BaseCpuid { get; init; }
    /// <summary>Guest TSC frequency, and the guest TSC value at a given system time (ns). Defaults: the x86 engine's
    /// (2 GHz, TSC = host monotonic ns × kHz / 10^6). A custom engine must supply both to keep pvclock right.</summary>
    public ulong GuestTscHz { get; init; } = X86Engine.DefaultTscKhz * 1000;
    public Func<long, ulong>? GuestTscAtSystemTime { get; init; }
    /// <summary>The hypervisor command line reported by XENVER_commandline and `xl info`.</summary>
    public string CommandLine { get; init; } = "";
    /// <summary>After a domain is built or destroyed, collect the process's heap and return its free memory to the
    /// host (a long-running host process such as the daemon; off for hypervisors embedded in tests and tools).</summary>
    public bool TrimHostHeap { get; init; }

    /// <summary>Argo, as Xen's <c>argo=</c> boot option enables it; null (the default, as Xen's) leaves it off.</summary>
    public ArgoOptions? Argo { get; init; }

    /// <summary>FLASK, as Xen's <c>flask=</c> boot option: disabled (the default: Xen's dummy XSM, nothing checked
    /// beyond privilege), permissive or enforcing.</summary>
    public Xsm.FlaskMode Flask { get; init; }

    /// <summary>The policy FLASK loads at start, as Xen loads its boot module or built-in policy (the daemon passes
    /// <see cref="Xsm.DefaultPolicy.Binary"/>); none with <see cref="Xsm.FlaskMode.Late"/>, or when null, in which case
    /// everything is allowed until a policy is loaded.</summary>
    public byte[]? FlaskPolicy { get; init; }
}

/// <summary>A guest frame mapped into the host; dispose to let the frame go.</summary>
public sealed unsafe class GuestMapping : XenSharp.Dom0.IForeignMapping
{
    private Action? _release;

    internal GuestMapping(byte* pointer, ushort domid, ulong gfn, bool writable, Action release)
    {
        Pointer = pointer;
        DomainId = domid;
        Gfn = gfn;
        Writable = writable;
        _release = release;
    }

    public byte* Pointer { get; private set; }
    public ushort DomainId { get; }
    public ulong Gfn { get; }
    public bool Writable { get; }
    public Span<byte> Span => Pointer is null ? throw new ObjectDisposedException(nameof(GuestMapping)) : new Span<byte>(Pointer, 4096);

    public void Dispose()
    {
        Pointer = null;
        Interlocked.Exchange(ref _release, null)?.Invoke();
    }
}

/// <summary>A grant of a guest mapped into the host by Domain-0; dispose to unmap (GNTTABOP_unmap_grant_ref).</summary>
public sealed unsafe class GrantMapping : IDisposable
{
    private Action? _unmap;

    internal GrantMapping(byte* pointer, ushort domid, uint gref, bool readOnly, Action unmap)
    {
        Pointer = pointer;
        DomainId = domid;
        Ref = gref;
        ReadOnly = readOnly;
        _unmap = unmap;
    }

    public byte* Pointer { get; private set; }
    public ushort DomainId { get; }
    public uint Ref { get; }
    public bool ReadOnly { get; }
    public Span<byte> Span => Pointer is null ? throw new ObjectDisposedException(nameof(GrantMapping)) : new Span<byte>(Pointer, 4096);

    public void Dispose()
    {
        Pointer = null;
        Interlocked.Exchange(ref _unmap, null)?.Invoke();
    }
}

/// <summary>An event channel end in Domain-0 (the host) connected to a guest port; events arrive as callbacks.</summary>
public sealed class Dom0EventChannel : IDisposable
{
    private readonly Dom0Services _host;
    private bool _closed;

    internal Dom0EventChannel(Dom0Services host, uint localPort, ushort remoteDomain)
    {
        _host = host;
        LocalPort = localPort;
        RemoteDomain = remoteDomain;
    }

    /// <summary>The port number in Domain-0.</summary>
    public uint LocalPort { get; }
    public ushort RemoteDomain { get; }

    /// <summary>Raises the event in the guest (EVTCHNOP_send from Domain-0).</summary>
    public void Notify() => _host.Notify(LocalPort);

    public void Dispose()
    {
        if (_closed)
            return;
        _closed = true;
        _host.Unbind(LocalPort);
    }
}

/// <summary>A failure of the host side (bad toolstack request, exhausted machine memory).</summary>
public sealed class HypervisorException : Exception
{
    public HypervisorException(string message, int errno = 0) : base(message) => Errno = errno;
    /// <summary>The Xen errno this failure corresponds to, when there is one.</summary>
    public int Errno { get; }
}

/// <summary>Xen's <c>argo=</c> boot option: on, and whether rings may accept messages from any domain.</summary>
public sealed record ArgoOptions(bool MacPermissive)
{
    /// <summary>Parses Xen's syntax, a list of a boolean and <c>mac-permissive=BOOL</c> (e.g. <c>1,mac-permissive=1</c>);
    /// null when Argo stays off; throws FormatException for anything else.</summary>
    public static ArgoOptions? Parse(string? value)
    {
        if (string.IsNullOrEmpty(value))
            return null;
        bool on = false, permissive = false;
        foreach (var item in value.Split(','))
        {
            if (item.StartsWith("mac-permissive=", StringComparison.Ordinal))
                permissive = Bool(item["mac-permissive=".Length..]);
            else
                on = Bool(item);
        }
        return on ? new ArgoOptions(permissive) : null;

        static bool Bool(string s) => s switch
        {
            "1" or "yes" or "on" or "true" or "enable" => true,
            "0" or "no" or "off" or "false" or "disable" => false,
            _ => throw new FormatException($"argo: invalid value '{s}'"),
        };
    }
}
