using System.Text.Json;
using System.Text.Json.Serialization;

namespace XenSharp.Toolstack.Control;

/// <summary>
/// The control protocol between xl and xensharpd: one JSON object per line over the Unix socket,
/// a request answered by one <see cref="ControlResponse"/>. Every operation is one record below
/// (the role of Firecracker's VmmAction). After a successful <see cref="ConsoleAttachRequest"/> the
/// connection carries the console's raw bytes both ways until either side closes it.
/// </summary>
[JsonPolymorphic(TypeDiscriminatorPropertyName = "op")]
[JsonDerivedType(typeof(PingRequest), "ping")]
[JsonDerivedType(typeof(CreateRequest), "create")]
[JsonDerivedType(typeof(ListRequest), "list")]
[JsonDerivedType(typeof(DestroyRequest), "destroy")]
[JsonDerivedType(typeof(ShutdownRequest), "shutdown")]
[JsonDerivedType(typeof(PauseRequest), "pause")]
[JsonDerivedType(typeof(UnpauseRequest), "unpause")]
[JsonDerivedType(typeof(RenameRequest), "rename")]
[JsonDerivedType(typeof(VcpuListRequest), "vcpu-list")]
[JsonDerivedType(typeof(BlockListRequest), "block-list")]
[JsonDerivedType(typeof(BlockAttachRequest), "block-attach")]
[JsonDerivedType(typeof(BlockDetachRequest), "block-detach")]
[JsonDerivedType(typeof(CdInsertRequest), "cd-insert")]
[JsonDerivedType(typeof(NetworkListRequest), "network-list")]
[JsonDerivedType(typeof(NetworkAttachRequest), "network-attach")]
[JsonDerivedType(typeof(NetworkDetachRequest), "network-detach")]
[JsonDerivedType(typeof(VcpuPinRequest), "vcpu-pin")]
[JsonDerivedType(typeof(VcpuSetRequest), "vcpu-set")]
[JsonDerivedType(typeof(MemSetRequest), "mem-set")]
[JsonDerivedType(typeof(MemMaxRequest), "mem-max")]
[JsonDerivedType(typeof(InfoRequest), "info")]
[JsonDerivedType(typeof(DmesgRequest), "dmesg")]
[JsonDerivedType(typeof(DebugKeysRequest), "debug-keys")]
[JsonDerivedType(typeof(SysrqRequest), "sysrq")]
[JsonDerivedType(typeof(TriggerRequest), "trigger")]
[JsonDerivedType(typeof(DumpCoreRequest), "dump-core")]
[JsonDerivedType(typeof(SaveRequest), "save")]
[JsonDerivedType(typeof(RestoreRequest), "restore")]
[JsonDerivedType(typeof(MigrateSendRequest), "migrate-send")]
[JsonDerivedType(typeof(MigrateReceiveRequest), "migrate-receive")]
[JsonDerivedType(typeof(ConsoleAttachRequest), "console")]
[JsonDerivedType(typeof(VncDisplayRequest), "vnc-display")]
[JsonDerivedType(typeof(StopDaemonRequest), "stop-daemon")]
[JsonDerivedType(typeof(CpupoolListRequest), "cpupool-list")]
[JsonDerivedType(typeof(CpupoolCreateRequest), "cpupool-create")]
[JsonDerivedType(typeof(CpupoolDestroyRequest), "cpupool-destroy")]
[JsonDerivedType(typeof(CpupoolRenameRequest), "cpupool-rename")]
[JsonDerivedType(typeof(CpupoolCpuRequest), "cpupool-cpu")]
[JsonDerivedType(typeof(CpupoolMigrateRequest), "cpupool-migrate")]
[JsonDerivedType(typeof(CpupoolNumaSplitRequest), "cpupool-numa-split")]
[JsonDerivedType(typeof(SchedCreditRequest), "sched-credit")]
[JsonDerivedType(typeof(SchedRtdsRequest), "sched-rtds")]
public abstract record ControlRequest;

/// <summary>A request whose successful answer carries a <typeparamref name="TResult"/>.</summary>
public abstract record ControlRequest<TResult> : ControlRequest;

public sealed record Unit
{
    public static readonly Unit Value = new();
}

public sealed record PingRequest : ControlRequest<PingResult>;
public sealed record PingResult(string Version, int Pid, string RunDir);

/// <summary>Create a domain from xl.cfg text; <see cref="ConfigFile"/> names it in messages and
/// anchors relative paths; <see cref="Overrides"/> are the command line's key=value settings.</summary>
public sealed record CreateRequest(string ConfigText, string ConfigFile, string? ConfigDirectory,
    IReadOnlyList<string> Overrides, bool Paused) : ControlRequest<CreateResult>;
public sealed record CreateResult(uint DomId, string Name, IReadOnlyList<string> Warnings);

/// <summary>Domains by id or name; empty means all.</summary>
public sealed record ListRequest(IReadOnlyList<string> Domains, bool Long) : ControlRequest<IReadOnlyList<DomainInfo>>;

public sealed record DestroyRequest(string Domain, bool Force) : ControlRequest<Unit>;

public enum ShutdownKind { Poweroff, Reboot }

/// <summary>Ask a guest to shut down or reboot (control/shutdown); with <see cref="AcpiFallback"/>
/// an HVM guest without PV drivers gets the ACPI power/reset event instead.</summary>
public sealed record ShutdownRequest(string Domain, ShutdownKind Kind, bool AcpiFallback) : ControlRequest<Unit>;
public sealed record PauseRequest(string Domain) : ControlRequest<Unit>;
public sealed record UnpauseRequest(string Domain) : ControlRequest<Unit>;
public sealed record RenameRequest(string Domain, string NewName) : ControlRequest<Unit>;
public sealed record VcpuListRequest(IReadOnlyList<string> Domains) : ControlRequest<IReadOnlyList<VcpuInfoEntry>>;
/// <summary>The vbd devices of one domain (libxl_device_disk_list + libxl_device_disk_getinfo).</summary>
public sealed record BlockListRequest(string Domain) : ControlRequest<IReadOnlyList<DiskInfoEntry>>;
/// <summary>xl block-attach: <paramref name="Spec"/> is an xl-disk-configuration(5) string; a relative target is
/// relative to <paramref name="Directory"/>, the client's working directory.</summary>
public sealed record BlockAttachRequest(string Domain, string Spec, string Directory) : ControlRequest<Unit>;
/// <summary>xl block-detach: the disk by vdev name or device number.</summary>
public sealed record BlockDetachRequest(string Domain, string Device) : ControlRequest<Unit>;
/// <summary>The vif devices of one domain (libxl_device_nic_list + libxl_device_nic_getinfo).</summary>
public sealed record NetworkListRequest(string Domain) : ControlRequest<IReadOnlyList<NicInfoEntry>>;
/// <summary>xl network-attach: <paramref name="Spec"/> is an xl-network-configuration(5) string.</summary>
public sealed record NetworkAttachRequest(string Domain, string Spec) : ControlRequest<Unit>;
/// <summary>xl network-detach: the vif by device number or by MAC address (any argument with a colon).</summary>
public sealed record NetworkDetachRequest(string Domain, string Device) : ControlRequest<Unit>;
/// <summary>xl cd-insert (a <paramref name="Target"/>) and xl cd-eject (none): the cdrom <paramref name="Vdev"/> gets the
/// medium; a relative target is relative to <paramref name="Directory"/>; <paramref name="Format"/> null is raw.</summary>
public sealed record CdInsertRequest(string Domain, string Vdev, string? Target, string? Format, string Directory) : ControlRequest<Unit>;

/// <summary>Vcpu is -1 for all; Hard/Soft are CPULIST text, "-" (leave) or null.</summary>
public sealed record VcpuPinRequest(string Domain, int Vcpu, string? Hard, string? Soft) : ControlRequest<Unit>;
public sealed record VcpuSetRequest(string Domain, int Count, bool IgnoreHost) : ControlRequest<Unit>;
public sealed record MemSetRequest(string Domain, long TargetKb) : ControlRequest<Unit>;
public sealed record MemMaxRequest(string Domain, long MaxKb) : ControlRequest<Unit>;
public sealed record InfoRequest : ControlRequest<HostInfo>;
public sealed record DmesgRequest(bool Clear) : ControlRequest<string>;
public sealed record DebugKeysRequest(string Keys) : ControlRequest<Unit>;
public sealed record SysrqRequest(string Domain, char Key) : ControlRequest<Unit>;
public sealed record TriggerRequest(string Domain, string Trigger, int Vcpu) : ControlRequest<Unit>;
/// <summary>xl dump-core: the domain's core in Xen's dump-core format, written by the daemon to <see cref="File"/> (absolute).</summary>
public sealed record DumpCoreRequest(string Domain, string File) : ControlRequest<Unit>;

/// <summary>xl save: suspends the domain, writes its state to <see cref="File"/> (an absolute host path) and
/// destroys it, unless <see cref="Checkpoint"/> (-c), when it resumes it (paused with <see cref="Paused"/>, -p); <see cref="ConfigText"/> replaces the
/// configuration the file records.</summary>
public sealed record SaveRequest(string Domain, string File, bool Checkpoint, string? ConfigText, bool Paused = false) : ControlRequest<SaveResult>;
public sealed record SaveResult(uint DomId, string Name, long Bytes, long Pages);

/// <summary>xl restore: builds a domain again from a file <see cref="SaveRequest"/> wrote; <see cref="ConfigText"/>
/// (from CONFIG) replaces the configuration the file records.</summary>
public sealed record RestoreRequest(string File, string? ConfigText, string? ConfigFile, string? ConfigDirectory, bool Paused)
    : ControlRequest<RestoreResult>;
public sealed record RestoreResult(uint DomId, string Name, long Pages);

/// <summary>xl migrate's sending half. After the answer the connection carries <see cref="MigrationFrames"/> from the
/// daemon: the stream (xl's header and the libxl stream, live: pre-copy rounds under log-dirty, then the suspended
/// guest's last pages and state) and progress lines, then END ("PAGES STOPPED_AT [SENT_AT]", microseconds since 1970; SENT_AT when the daemon wrote the last byte into
/// xl's pipe itself); xl may
/// answer <c>away</c> (the target has the guest: the domain is renamed NAME--migratedaway, answered by an OUTCOME frame
/// <c>away</c> or the reason it could not be), then one line, <c>commit</c> (the receiver
/// runs the guest: destroy it here) or anything else (resume it here, under its name), and gets the outcome as a last frame. A
/// connection that drops before that line resumes the guest. With <paramref name="RemusIntervalMs"/> (xl remus) the
/// stream is checkpointed instead and never ends on its own: after the live rounds a checkpoint every so many
/// milliseconds, each followed by a progress line; it ends with a FAILED frame (the guest runs on here) or an OUTCOME
/// frame <c>destroyed</c> (the primary domain was destroyed). <paramref name="TargetFd"/>, xl's descriptor of its pipe
/// to SSHCMD: the daemon writes the stream there itself (opened through /proc as xl's peer process), as libxl writes
/// to the fd xl gives it, and sends no data frames; when it cannot, the data frames carry the stream.</summary>
public sealed record MigrateSendRequest(string Domain, string? ConfigText, bool Debug, int RemusIntervalMs = 0, int? TargetFd = null)
    : ControlRequest<MigrateSendResult>;
public sealed record MigrateSendResult(uint DomId, string Name);

/// <summary>xl migrate-receive's half: after the answer xl sends the stream's raw bytes; the daemon restores the
/// domain paused as NAME--incoming and writes one line, <c>ok DOMID NAME--incoming</c> or <c>error ERRNO MESSAGE</c>, then reads
/// one line, <c>unpause</c> (rename it NAME and unpause it) or anything else (destroy it), and answers with a last line. A connection that drops before
/// leaves no domain. With <paramref name="Remus"/> (xl migrate-receive -r) the stream is checkpointed: the domain stays
/// paused at the last complete checkpoint until the stream ends (xl shuts down its sending side), then it is unpaused
/// there (failover) and the daemon writes <c>failover DOMID NAME CHECKPOINTS</c> or <c>error ERRNO MESSAGE</c>.
/// <paramref name="SourceFd"/> and <paramref name="ReplyFd"/>, xl's descriptors of its pipes from and to SSHCMD: the
/// daemon reads the stream there itself (as libxl reads the fd xl gives it), with no copy through xl, and says so
/// with a first line <c>direct</c>; then, after its <c>ok</c> line, it speaks the rest of xl's protocol there too
/// (ready, the sender's permission, unpause, the report), with no process between the two hosts' daemons in the
/// guest's downtime, and ends with <c>started</c> or <c>failed MESSAGE</c>. With a first line <c>relay</c> (the
/// descriptors are not pipes it can open) xl sends the stream's bytes over the connection and speaks the protocol
/// itself, as above.</summary>
public sealed record MigrateReceiveRequest(string? ConfigDirectory, bool Remus = false, int? SourceFd = null, int? ReplyFd = null)
    : ControlRequest<Unit>;

/// <summary>The messages of xl's migration protocol (xl_migrate.c) between sender and receiver, which xl sends with
/// their terminating NUL (the banner ends in a newline instead).</summary>
public static class XlMigrationMessages
{
    public static readonly byte[] Banner = "xl migration receiver ready, send binary domain data.\n"u8.ToArray();
    public static readonly byte[] ReceiverReady = "domain received, ready to unpause\0"u8.ToArray();
    public static readonly byte[] PermissionToGo = "domain is yours, you are cleared to unpause\0"u8.ToArray();
    public static readonly byte[] Report = "my copy unpause results are as follows\0"u8.ToArray();
}

/// <summary>The frames of a migration's sending connection: a kind byte, a little-endian 32-bit length, the payload.</summary>
public static class MigrationFrames
{
    /// <summary>The largest payload of a frame.</summary>
    public const int MaxData = 1 << 20;
    public const byte Data = (byte)'D', Progress = (byte)'P', End = (byte)'E', Failed = (byte)'X', Outcome = (byte)'R';
}
/// <summary>With <paramref name="Unpause"/> the daemon unpauses the domain once the console is attached
/// (xl create -c), so that nothing the guest writes can come before its reader.</summary>
public sealed record ConsoleAttachRequest(string Domain, bool Unpause = false) : ControlRequest<ConsoleAttachResult>;
public sealed record ConsoleAttachResult(uint DomId, string Name);
public sealed record StopDaemonRequest : ControlRequest<Unit>;
/// <summary>Where a domain's VNC server listens (xenstore console/vnc-listen and vnc-port), for xl vncviewer.</summary>
public sealed record VncDisplayRequest(string Domain) : ControlRequest<VncDisplay>;
public sealed record VncDisplay(string Listen, int Port, string? Password);

/// <summary>Cpupools by name (null: all).</summary>
public sealed record CpupoolListRequest(string? Pool) : ControlRequest<IReadOnlyList<CpupoolEntry>>;
public sealed record CpupoolEntry(int PoolId, string Name, string Scheduler, string Cpus, int CpuCount, int Domains);

/// <summary>A cpupool from its config (name, sched, cpus or nodes; cpus/nodes are CPULIST text).</summary>
public sealed record CpupoolCreateRequest(string Name, string? Scheduler, string? Cpus, string? Nodes) : ControlRequest<CpupoolEntry>;
public sealed record CpupoolDestroyRequest(string Pool) : ControlRequest<Unit>;
public sealed record CpupoolRenameRequest(string Pool, string NewName) : ControlRequest<Unit>;

/// <summary>Adds (or removes) the pCPUs of a CPULIST or "node:N" to (from) a pool.</summary>
public sealed record CpupoolCpuRequest(string Pool, string Cpus, bool Add) : ControlRequest<Unit>;
public sealed record CpupoolMigrateRequest(string Domain, string Pool) : ControlRequest<Unit>;
public sealed record CpupoolNumaSplitRequest : ControlRequest<Unit>;

/// <summary>
/// `xl sched-credit` / `sched-credit2` (Scheduler "credit" or "credit2"): sets what is given, and answers the
/// pools (with their parameters) and domains the command prints.
/// </summary>
public sealed record SchedCreditRequest(string Scheduler, string? Domain, int? Weight, int? Cap, string? Pool,
    bool PoolParams, int? TsliceMs, int? RatelimitUs, int? MigrationDelayUs = null) : ControlRequest<SchedResult>;

/// <summary>`xl sched-rtds`: Vcpus empty means every vCPU; Periods/Budgets/Extratimes pair with Vcpus (or apply to all).</summary>
public sealed record SchedRtdsRequest(string? Domain, string? Pool, IReadOnlyList<int> Vcpus, IReadOnlyList<long> Periods,
    IReadOnlyList<long> Budgets, IReadOnlyList<bool> Extratimes, bool AllVcpus) : ControlRequest<SchedResult>;

public sealed record SchedResult(IReadOnlyList<SchedPool> Pools);

/// <summary>One pool of a scheduler with its parameters and the domains (or vCPUs) in it.</summary>
public sealed record SchedPool(string Name, int TsliceMs, int RatelimitUs, IReadOnlyList<SchedDomain> Domains, int MigrationDelayUs = 0);
public sealed record SchedDomain(string Name, uint DomId, int Weight, int Cap, int Vcpu = -1, long PeriodUs = 0,
    long BudgetUs = 0, bool Extratime = false);

/// <summary>One domain as xl list shows it (libxl_dominfo plus what list -l prints).</summary>
public sealed record DomainInfo
{
    public uint DomId { get; init; }
    public string Name { get; init; } = "";
    public Guid Uuid { get; init; }
    public string Type { get; init; } = "pvh";
    public long CurrentMemKb { get; init; }
    public long MaxMemKb { get; init; }
    public long TargetMemKb { get; init; }
    public int VcpuOnline { get; init; }
    public int VcpuMaxId { get; init; }
    public bool Running { get; init; }
    public bool Blocked { get; init; }
    public bool Paused { get; init; }
    public bool Shutdown { get; init; }
    public bool Dying { get; init; }
    /// <summary>libxl_shutdown_reason (0 poweroff, 1 reboot, 2 suspend, 3 crash, 4 watchdog, 5 soft_reset).</summary>
    public int ShutdownReason { get; init; }
    public ulong CpuTimeNs { get; init; }
    public double UptimeSeconds { get; init; }
    public long StartTimeUnix { get; init; }
    public string? SsidLabel { get; init; }
    /// <summary>The cpupool the domain is in (list -c).</summary>
    public string Cpupool { get; init; } = "Pool-0";
    /// <summary>The NUMA nodes the domain's memory comes from (list -n): "all" or node ranges.</summary>
    public string NodeAffinity { get; init; } = "all";
    /// <summary>The domain's configuration in libxl's JSON form (list -l only).</summary>
    public JsonElement? Config { get; init; }
}

/// <summary>libxl_diskinfo: the device number, both ends' domids, the frontend's xenbus state, event channel and
/// ring reference (-1 while the frontend has not written them) and the backend's xenstore path.</summary>
/// <summary>libxl_nicinfo: the device number, the backend's domid, the MAC, the frontend's xenbus state, event channel
/// (one channel; -1 with split channels or before the frontend wrote it), both ring references and the backend's path.</summary>
public sealed record NicInfoEntry(int Devid, uint BackendId, string Mac, int State, int EventChannel, int TxRingRef, int RxRingRef, string BackendPath);
public sealed record DiskInfoEntry(int Vdev, uint BackendId, uint FrontendId, int State, int EventChannel, int RingRef, string BackendPath);

public sealed record VcpuInfoEntry(string Name, uint DomId, int Vcpu, int Cpu, bool Online, bool Running,
    bool Blocked, ulong CpuTimeNs, string Hard, string Soft);

/// <summary>What xl info prints about the host.</summary>
public sealed record HostInfo
{
    public string Host { get; init; } = "";
    public string Release { get; init; } = "";
    public string Version { get; init; } = "";
    public string Machine { get; init; } = "";
    public int NrCpus { get; init; }
    public int MaxCpuId { get; init; }
    public int NrNodes { get; init; } = 1;
    public int CoresPerSocket { get; init; }
    public int ThreadsPerCore { get; init; } = 1;
    public int CpuMhz { get; init; }
    public string HwCaps { get; init; } = "";
    public string VirtCaps { get; init; } = "";
    public long TotalMemoryMb { get; init; }
    public long FreeMemoryMb { get; init; }
    public long SharingFreedMemoryMb { get; init; }
    public long SharingUsedMemoryMb { get; init; }
    public long OutstandingClaimsMb { get; init; }
    public long FreeCpus { get; init; }
    public int XenMajor { get; init; }
    public int XenMinor { get; init; }
    public string XenExtra { get; init; } = "";
    public string XenVersion { get; init; } = "";
    public string XenCaps { get; init; } = "";
    public string XenScheduler { get; init; } = "credit";
    public int XenPagesize { get; init; } = 4096;
    public string Platform { get; init; } = "";
    public string XenChangeset { get; init; } = "";
    public string XenCommandline { get; init; } = "";
    public string CcCompiler { get; init; } = "";
    public string CcCompileBy { get; init; } = "";
    public string CcCompileDomain { get; init; } = "";
    public string CcCompileDate { get; init; } = "";
    public string BuildId { get; init; } = "";
    public string XendConfigFormat { get; init; } = "4";
    /// <summary>info -n: each CPU's core, socket and node, and each node's memory and distances.</summary>
    public IReadOnlyList<CpuTopologyEntry> CpuTopology { get; init; } = [];
    public IReadOnlyList<NumaNodeEntry> NumaNodes { get; init; } = [];
}

/// <summary>A row of xl info -n's cpu_topology (libxl_cputopology).</summary>
public sealed record CpuTopologyEntry(int Cpu, int Core, int Socket, int Node);

/// <summary>A row of xl info -n's numa_info (libxl_numainfo): memory in bytes, distance to each node.</summary>
public sealed record NumaNodeEntry(int Node, ulong MemSizeBytes, ulong MemFreeBytes, IReadOnlyList<int> Distances);

/// <summary>The answer to any request: either ok with a result, or an error message and an errno.</summary>
public sealed record ControlResponse(bool Ok, string? Error, int Errno, JsonElement? Result)
{
    public static ControlResponse Success(object? result) =>
        new(true, null, 0, result is null ? null : JsonSerializer.SerializeToElement(result, result.GetType(), ControlJson.Options));

    public static ControlResponse Failure(string error, int errno = 0) => new(false, error, errno, null);
}

public static class ControlJson
{
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web)
    {
        WriteIndented = false,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.KebabCaseLower) },
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>
    /// Decodes one request line. Whatever the line holds, the result is a request whose non-nullable members
    /// are all present, null for the JSON <c>null</c>, or a <see cref="JsonException"/> saying what is wrong.
    /// </summary>
    public static ControlRequest? ReadRequest(string line) => ReadRequest(System.Text.Encoding.UTF8.GetBytes(line));

    public static ControlRequest? ReadRequest(ReadOnlySpan<byte> utf8)
    {
        ControlRequest? request;
        try { request = JsonSerializer.Deserialize<ControlRequest>(utf8, Options); }
        // Without an "op" the serializer is asked for the abstract request type itself.
        catch (NotSupportedException e) { throw new JsonException("the request has no \"op\"", e); }
        catch (JsonException e) when (UnknownOp(utf8) is { } op) { throw new UnknownRequestException(op, e); }
        if (request is not null) CheckPresent(request);
        return request;
    }

    /// <summary>The "op" of every request this protocol knows, as the records declare them.</summary>
    public static readonly IReadOnlySet<string> Ops = typeof(ControlRequest)
        .GetCustomAttributes(typeof(JsonDerivedTypeAttribute), inherit: false)
        .Select(a => (string)((JsonDerivedTypeAttribute)a).TypeDiscriminator!)
        .ToHashSet();

    /// <summary>The op of a JSON object whose "op" (its first member, as the serializer requires) is a
    /// string naming no request; null for anything else.</summary>
    private static string? UnknownOp(ReadOnlySpan<byte> utf8)
    {
        try
        {
            var reader = new Utf8JsonReader(utf8);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject) return null;
            if (!reader.Read() || reader.TokenType != JsonTokenType.PropertyName || !reader.ValueTextEquals("op"u8)) return null;
            if (!reader.Read() || reader.TokenType != JsonTokenType.String) return null;
            string op = reader.GetString()!;
            return Ops.Contains(op) ? null : op;
        }
        catch (JsonException) { return null; }
    }

    /// <summary>The serializer leaves a member that is missing from the JSON null even where the record declares it
    /// non-nullable (a string, a list of strings); the handlers rely on the declaration.</summary>
    private static void CheckPresent(ControlRequest request)
    {
        var nullability = new System.Reflection.NullabilityInfoContext(); // not thread-safe: one per call
        foreach (var property in request.GetType().GetProperties())
        {
            if (property.PropertyType.IsValueType || property.GetIndexParameters().Length > 0) continue;
            var info = nullability.Create(property);
            object? value = property.GetValue(request);
            string name = Options.PropertyNamingPolicy?.ConvertName(property.Name) ?? property.Name;
            if (value is null && info.ReadState == System.Reflection.NullabilityState.NotNull)
                throw new JsonException($"the request lacks \"{name}\"");
            if (value is System.Collections.IEnumerable items and not string
                && info.GenericTypeArguments is [{ ReadState: System.Reflection.NullabilityState.NotNull }]
                && items.Cast<object?>().Any(i => i is null))
                throw new JsonException($"the request's \"{name}\" holds a null");
        }
    }
}

/// <summary>A well-formed request whose op this side does not know (a newer client, or a mistake):
/// answered with ENOSYS, as Xen answers a domctl it does not have.</summary>
public sealed class UnknownRequestException(string op, Exception inner)
    : JsonException($"unknown request \"{op}\"", inner)
{
    public string Op { get; } = op;
}

/// <summary>A failure the daemon reported (its message is for the user as is).</summary>
public sealed class ControlException(string message, int errno = 0) : Exception(message)
{
    public int Errno { get; } = errno;
}
