using System.Diagnostics;
using System.Text.Json;
using XenSharp.Backends.Console;
using XenSharp.Public.Hvm;
using XenSharp.Store;
using XenSharp.Toolstack.Builder;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The daemon's heart (libxl's role in one process): owns the hypervisor, xenstored and the
/// guest domains; answers the control requests; acts on domain shutdowns with the on_* actions;
/// and on <see cref="Dispose"/> destroys every domain so nothing outlives the daemon.
/// </summary>
public sealed partial class Host : IDisposable
{
    private readonly IHypervisor _hv;
    private readonly XenStored _xs;
    private readonly RunPaths _paths;
    private readonly ConsoleLogLimits _consoleLogs;
    private readonly Lock _lock = new();
    /// <summary>Serialises building and tearing down domains (not queries).</summary>
    private readonly Lock _lifecycle = new();
    private readonly Dictionary<uint, Domain> _domains = [];
    /// <summary>Guests with a running incarnation or a pending restart.</summary>
    private readonly HashSet<Lineage> _lineages = [];
    private readonly TimeProvider _time;
    private readonly DateTimeOffset _started = DateTimeOffset.UtcNow;
    private uint _nextDomId = 1;
    private bool _disposed;

    /// <summary>Raised when a client asked the daemon to stop.</summary>
    public event Action? StopRequested;

    /// <summary>The pause before each restart, as xl sleeps before it recreates a domain (2 s there).
    /// Without it a guest that crashes as it boots restarts as fast as domains can be built; one
    /// second bounds that to a restart a second and still lets a reboot come back promptly.</summary>
    public static readonly TimeSpan RestartPause = TimeSpan.FromSeconds(1);

    /// <summary>How long the domid of an incarnation that was restarted still names its guest for
    /// xl destroy: long enough for a destroy that read the domid just before the restart, short
    /// enough that a stale domid soon names nothing, as in Xen.</summary>
    public static readonly TimeSpan RetiredDomIdKept = TimeSpan.FromSeconds(30);

    public Host(IHypervisor hv, XenStored xs, RunPaths paths, TimeProvider? time = null, ConsoleLogLimits? consoleLogs = null)
    {
        _hv = hv;
        _xs = xs;
        _paths = paths;
        _time = time ?? TimeProvider.System;
        _consoleLogs = consoleLogs ?? ConsoleLogLimits.Default;
        XenstoreLayout.WriteDom0(xs);
        _hv.DomainStateChanged += OnDomainStateChanged;
        _hv.ConsoleWrite($"Xen version {_hv.Version} (XenSharp)");
        _hv.ConsoleWrite($"Command line: {string.Join(' ', Environment.GetCommandLineArgs().Skip(1))}");
        _hv.ConsoleWrite($"xensharpd: run directory {paths.RunDir}, {_hv.HostCpus} pCPUs");
    }

    public IReadOnlyCollection<uint> DomainIds { get { lock (_lock) return [.. _domains.Keys]; } }

    // ---- requests ----

    public ControlResponse Handle(ControlRequest request)
    {
        try
        {
            object? result = request switch
            {
                PingRequest => new PingResult(_hv.Version, Environment.ProcessId, _paths.RunDir),
                CreateRequest r => Create(r),
                ListRequest r => List(r),
                DestroyRequest r => Do(() => DestroyGuest(r)),
                ShutdownRequest r => Do(() => RequestShutdown(r)),
                PauseRequest r => Do(() => Resolve(r.Domain).Hv.Pause()),
                UnpauseRequest r => Do(() => Resolve(r.Domain).Hv.Unpause()),
                RenameRequest r => Do(() => Rename(r)),
                VcpuListRequest r => VcpuList(r),
                VcpuPinRequest r => Do(() => VcpuPin(r)),
                VcpuSetRequest r => Do(() => VcpuSet(r)),
                MemSetRequest r => Do(() => MemSet(r)),
                MemMaxRequest r => Do(() => MemMax(r)),
                InfoRequest => Info(),
                DmesgRequest r => _hv.ReadConsole(r.Clear),
                DebugKeysRequest r => Do(() => _hv.DebugKeys(r.Keys)),
                SysrqRequest r => Do(() => _xs.Write($"{XenstoreLayout.DomainPath(Resolve(r.Domain).DomId)}/control/sysrq", r.Key.ToString())),
                TriggerRequest r => Do(() => Trigger(r)),
                DumpCoreRequest r => Do(() => DumpCoreTo(Resolve(r.Domain), r.File)),
                ConsoleAttachRequest r => ConsoleTarget(r),
                StopDaemonRequest => Do(() => ThreadPool.QueueUserWorkItem(_ => StopRequested?.Invoke())),
                CpupoolListRequest r => CpupoolList(r),
                CpupoolCreateRequest r => CpupoolCreate(r),
                CpupoolDestroyRequest r => Do(() => Sched.DestroyCpupool(Pool(r.Pool).PoolId)),
                CpupoolRenameRequest r => Do(() => CpupoolRename(r)),
                CpupoolCpuRequest r => Do(() => CpupoolCpu(r)),
                CpupoolMigrateRequest r => Do(() => Sched.CpupoolMigrate(Resolve(r.Domain).DomId, Pool(r.Pool).PoolId)),
                CpupoolNumaSplitRequest => Do(() => Sched.CpupoolNumaSplit()),
                SchedCreditRequest r => SchedCredit(r),
                SchedRtdsRequest r => SchedRtds(r),
                _ => throw new ControlException("unknown request"),
            };
            return ControlResponse.Success(result);
        }
        catch (ControlException e) { return ControlResponse.Failure(e.Message, e.Errno); }
        catch (XlConfigException e) { return ControlResponse.Failure(e.Message); }
        catch (DomainBuildException e) { return ControlResponse.Failure(e.Message); }
        catch (XenStoreException e) { return ControlResponse.Failure(e.Message); }
        catch (NotSupportedException e) { return ControlResponse.Failure(e.Message); }
        catch (ArgumentException e) { return ControlResponse.Failure(e.Message); }
        catch (FormatException e) { return ControlResponse.Failure(e.Message); }
        catch (XenSharp.Hypervisor.HypervisorException e) { return ControlResponse.Failure(e.Message, e.Errno); }
        // Machine memory ran out building a domain or filling a PoD cache: the request fails (ENOMEM), the daemon goes on.
        catch (OutOfMemoryException e) { return ControlResponse.Failure(e.Message, 12); }
    }

    private static Unit Do(Action a) { a(); return Unit.Value; }

    /// <summary>A domain by id or name, as xl's find_domain.</summary>
    private Domain Resolve(string domain, bool allowDom0 = false)
    {
        lock (_lock) return FindLocked(domain, allowDom0) ?? throw InvalidDomain(domain);
    }

    private static ControlException InvalidDomain(string domain) =>
        new($"{domain} is an invalid domain identifier (rc=-6)", 22);

    /// <summary>Under <see cref="_lock"/>: the domain by id or name, or null.</summary>
    private Domain? FindLocked(string domain, bool allowDom0)
    {
        if (uint.TryParse(domain, out uint id))
        {
            if (id == 0 && !allowDom0)
                throw new ControlException("Domain 0 cannot be the target of this operation");
            return _domains.GetValueOrDefault(id);
        }
        var d = _domains.Values.FirstOrDefault(x => x.Config.Name == domain);
        if (d is null && domain == "Domain-0" && !allowDom0)
            throw new ControlException("Domain 0 cannot be the target of this operation");
        return d;
    }

    /// <summary>Under <see cref="_lock"/>: whether a domain, or a guest's pending restart, holds the name.</summary>
    private bool NameTakenLocked(string name, Domain? except = null, Lineage? restarting = null) =>
        name == "Domain-0"
        || _domains.Values.Any(x => x != except && x.Config.Name == name)
        || _lineages.Any(l => l != restarting && l.Pending && l.PendingName == name);

    private static readonly System.Text.RegularExpressions.Regex ValidName = new("^[^/\\\\\\x00-\\x1f]+$");

    private CreateResult Create(CreateRequest r)
    {
        var cfg = XlConfigParser.Parse(r.ConfigText, r.ConfigFile);
        cfg.Directory = r.ConfigDirectory;
        foreach (var o in r.Overrides) XlConfigParser.ParseInto(cfg, o, "command line");
        var read = DomainConfigReader.Read(cfg, _hv.HostCpus, _hv.Scheduling?.CpuNodes);
        var d = read.Config;
        d.SourceText = r.ConfigText;
        d.SourceFile = r.ConfigFile;
        var dom = Start(d, r.Paused);
        return new CreateResult(dom.DomId, d.Name, read.Warnings);
    }

    /// <summary>Creates, builds, wires up and (unless <paramref name="paused"/>) unpauses a domain.</summary>
    private Domain Start(DomainConfig c, bool paused)
    {
        lock (_lifecycle)
        {
            if (_disposed) throw new ControlException("xensharpd is stopping");
            return StartLocked(c, paused);
        }
    }

    /// <summary>Under <see cref="_lifecycle"/>: builds a domain, the first incarnation of a new
    /// guest or, with <paramref name="restarting"/>, the next one of that guest.</summary>
    private Domain StartLocked(DomainConfig c, bool paused, Lineage? restarting = null)
    {
        uint domId;
        lock (_lock)
        {
            if (NameTakenLocked(c.Name, restarting: restarting))
                throw new ControlException($"domain with name \"{c.Name}\" already exists.");
            if (_domains.Values.Any(x => x.Config.Uuid == c.Uuid))
                throw new ControlException($"domain with uuid {c.Uuid} already exists.");
            // Domids that still name a restarted guest are not handed out again meanwhile.
            var now = _time.GetUtcNow();
            while (_domains.ContainsKey(_nextDomId) || _nextDomId == 0 || _nextDomId >= 0x7FF0
                   || _lineages.Any(l => l.Retains(_nextDomId, now, RetiredDomIdKept)))
                _nextDomId = _nextDomId >= 0x7FF0 ? 1 : _nextDomId + 1;
            domId = _nextDomId++;
        }

        string image = c.Type == DomainType.Hvm && c.FirmwareOverride is not null ? c.FirmwareOverride : c.Kernel!;
        byte[] kernel = ReadImage(image, c.Type == DomainType.Hvm && c.FirmwareOverride is not null ? "firmware_override" : "kernel");
        byte[]? ramdisk = c.Ramdisk is null ? null : ReadImage(c.Ramdisk, "ramdisk");

        if (c.TscMode == TscMode.NativeParavirt)
            throw new ControlException("TSC Mode native_paravirt (a.k.a PVRDTSCP) has been removed");
        var hvd = _hv.CreateDomain(domId, new DomainCreateInfo(c.Type == DomainType.Hvm ? DomainKind.Hvm : DomainKind.Pvh,
            c.Uuid, c.MaxVcpus, c.MaxMemKb, c.Name) { TscMode = c.TscMode });
        var dom = new Domain { DomId = domId, Config = c, Hv = hvd, Started = DateTimeOffset.UtcNow, Lineage = restarting ?? new Lineage() };
        lock (_lock) _domains[domId] = dom;
        try
        {
            // The pool, the affinities and the NUMA placement come before the memory, as in libxl's build_pre.
            ApplySchedulingConfig(domId, c);
            for (int v = 0; v < c.MaxVcpus; v++)
            {
                var hard = c.CpusHard is { } h ? (h.Count == 1 ? h[0] : v < h.Count ? h[v] : null) : null;
                var soft = c.CpusSoft is { } s ? (s.Count == 1 ? s[0] : v < s.Count ? s[v] : null) : null;
                if (hard is not null || soft is not null)
                    hvd.SetVcpuAffinity(v, hard?.Cpus.ToList(), soft?.Cpus.ToList());
            }
            if (c.CpusHard is null && c.CpusSoft is null)
                PlaceOnNumaNodes(domId, c, hvd);

            var built = PvhBuilder.Build(new PvhBuildSpec(kernel, image, ramdisk, c.Cmdline, (ulong)c.TargetMemKb * 1024,
                c.Vcpus, c.MaxVcpus, (ulong)c.MaxMemKb * 1024), hvd.Memory);
            hvd.SetVcpuContext(0, built.Registers, built.SpecialRegisters);
            hvd.SetMemoryMap(built.Memmap.Select(e => (e.Addr, e.Size, e.Type)).ToList());
            hvd.SetAcpiSleepControl(AcpiTables.Pm1aControlPort, AcpiTables.S5SleepType);
            hvd.SetOnlineVcpus(c.Vcpus);

            // xenstore ring and console ring, with their event channels.
            uint storePort = hvd.AllocUnboundPort(0);
            uint consolePort = hvd.AllocUnboundPort(0);
            hvd.SetHvmParam(Params.HVM_PARAM_STORE_PFN, built.XenstorePfn);
            hvd.SetHvmParam(Params.HVM_PARAM_STORE_EVTCHN, storePort);
            hvd.SetHvmParam(Params.HVM_PARAM_CONSOLE_PFN, built.ConsolePfn);
            hvd.SetHvmParam(Params.HVM_PARAM_CONSOLE_EVTCHN, consolePort);

            var storePage = new GuestPage(hvd.Memory, built.XenstorePfn);
            dom.Store = _xs.Introduce(domId, storePage, built.XenstorePfn, storePort);
            var storeDomain = dom.Store;
            dom.StoreChannel = hvd.BindInterdomain(storePort, () => storeDomain.Signal());
            var storeChannel = dom.StoreChannel;
            storePage.SetNotify(storeChannel.Notify);

            ConnectPrimaryConsole(dom, built.ConsolePfn, consolePort);

            XenstoreLayout.WriteDomain(_xs, domId, c, new XenstoreLayout.Rings(storePort, built.XenstorePfn, consolePort, built.ConsolePfn), dom.Started);
            _hv.ConsoleWrite($"d{domId}: {c.Name} built: entry 0x{built.Entry:x}, start info 0x{built.StartInfoAddress:x}, {c.TargetMemKb / 1024} MiB, {c.Vcpus}/{c.MaxVcpus} vCPUs");
            if (!paused) hvd.Unpause();
            lock (_lock)
            {
                dom.Ready = true;
                dom.Lineage.Current = dom;
                dom.Lineage.PendingName = null;
                _lineages.Add(dom.Lineage);
            }
            return dom;
        }
        catch
        {
            Destroy(dom);
            throw;
        }
    }

    private static byte[] ReadImage(string path, string what)
    {
        try { return UserFile.ReadAllBytes(path); }
        catch (UserFileException e) { throw new ControlException($"{what}: {path}: {e.Reason}"); }
    }

    /// <summary>Destroys a domain and everything that belongs to it: console, xenstore nodes and
    /// connection, event channels, memory.</summary>
    private void Destroy(Domain d)
    {
        lock (_lifecycle) DestroyLocked(d);
    }

    /// <summary>Under <see cref="_lifecycle"/>. The guest ends with its running incarnation unless
    /// <paramref name="restarting"/>, when the domid is kept a while as a name for the guest.</summary>
    private void DestroyLocked(Domain d, bool restarting = false)
    {
        lock (_lock)
        {
            if (d.Destroyed) return;
            d.Destroyed = true;
            _domains.Remove(d.DomId);
            var l = d.Lineage;
            if (restarting)
                l.Retired.Add((d.DomId, _time.GetUtcNow()));
            else if (l.Current == d)
            {
                l.Current = null;
                l.Ended = true;
                _lineages.Remove(l);
            }
        }
        DisconnectDevices(d);
        d.StoreChannel?.Dispose();
        try
        {
            if (d.Store is not null) _xs.Release(d.DomId);
            XenstoreLayout.Remove(_xs, d.DomId, d.Config.Uuid);
        }
        catch (XenStoreException) { }
        // Waits for a core dump that is reading the memory; it stops at the next page.
        lock (d.MemoryUse) d.Hv.Dispose();
        _hv.ConsoleWrite($"d{d.DomId}: destroyed");
    }

    /// <summary>xl destroy: the domain named, and the guest with it, whatever point of a restart it
    /// is at. Under <see cref="_lifecycle"/>, so the restart steps happen wholly before or after it:
    /// a pending restart is cancelled, a domain being built is destroyed once built, and a domid
    /// the guest had before a restart still names it for <see cref="RetiredDomIdKept"/>.</summary>
    private void DestroyGuest(DestroyRequest r)
    {
        lock (_lifecycle)
        {
            Domain? d;
            Lineage? guest = null;
            lock (_lock)
            {
                d = FindLocked(r.Domain, allowDom0: r.Force);
                if (uint.TryParse(r.Domain, out uint id))
                {
                    var now = _time.GetUtcNow();
                    guest = _lineages.FirstOrDefault(l => l.Retains(id, now, RetiredDomIdKept));
                }
                else if (d is null)
                    guest = _lineages.FirstOrDefault(l => l.Pending && l.PendingName == r.Domain);
                if (d is null && guest is null) throw InvalidDomain(r.Domain);
            }
            if (guest is not null)
            {
                var current = guest.Current;
                EndLineageLocked(guest);
                if (current is not null) DestroyLocked(current);
            }
            if (d is not null) DestroyLocked(d);
        }
    }

    /// <summary>Under <see cref="_lifecycle"/>: no incarnation follows; a pending restart is cancelled.</summary>
    private void EndLineageLocked(Lineage l)
    {
        string? pending;
        lock (_lock)
        {
            if (l.Ended) return;
            pending = l.Pending ? l.PendingName : null;
            l.Ended = true;
            l.PendingName = null;
            _lineages.Remove(l);
        }
        l.Pause?.Cancel();
        if (pending is not null) _hv.ConsoleWrite($"{pending}: restart cancelled");
    }

    private void RequestShutdown(ShutdownRequest r)
    {
        var d = Resolve(r.Domain);
        string dom = XenstoreLayout.DomainPath(d.DomId);
        string feature = r.Kind == ShutdownKind.Reboot ? "feature-reboot" : "feature-poweroff";
        bool pvControl = _xs.Read($"{dom}/control/{feature}") == "1";
        if (!pvControl)
        {
            if (!r.AcpiFallback)
                throw new ControlException("PV control interface not available: external graceful shutdown not possible.\n" +
                    $"Use \"-F\" to fallback to ACPI {(r.Kind == ShutdownKind.Reboot ? "reset" : "power")} event.");
            d.Hv.SendTrigger(r.Kind == ShutdownKind.Reboot ? "reset" : "power", 0);
            return;
        }
        _xs.Write($"{dom}/control/shutdown", r.Kind == ShutdownKind.Reboot ? "reboot" : "poweroff");
    }

    private void Rename(RenameRequest r) => Rename(Resolve(r.Domain), r.NewName);

    private void Rename(Domain d, string newName)
    {
        if (string.IsNullOrEmpty(newName) || !ValidName.IsMatch(newName))
            throw new ControlException($"invalid domain name `{newName}'");
        lock (_lock)
            if (NameTakenLocked(newName, except: d))
                throw new ControlException($"domain with name \"{newName}\" already exists.");
        d.Config.Name = newName;
        d.Console?.Rename(newName);
        XenstoreLayout.Rename(_xs, d.DomId, d.Config.Uuid, newName);
    }

    private void VcpuPin(VcpuPinRequest r)
    {
        var d = Resolve(r.Domain, allowDom0: false);
        CpuMap? Parse(string? s)
        {
            if (s is null) return null;
            return CpuMap.TryParse(s, _hv.HostCpus, out var err, _hv.Scheduling?.CpuNodes) ?? throw new ControlException(err!);
        }
        var hard = Parse(r.Hard);
        var soft = Parse(r.Soft);
        int max = d.Config.MaxVcpus;
        if (r.Vcpu >= max) throw new ControlException($"vcpu {r.Vcpu} does not exist (the domain has {max})");
        var hardList = (d.Config.CpusHard ?? []).ToList();
        var softList = (d.Config.CpusSoft ?? []).ToList();
        for (int v = r.Vcpu < 0 ? 0 : r.Vcpu; v < (r.Vcpu < 0 ? max : r.Vcpu + 1); v++)
        {
            d.Hv.SetVcpuAffinity(v, hard?.Cpus.ToList(), soft?.Cpus.ToList());
            SetPerVcpu(hardList, v, hard, max);
            SetPerVcpu(softList, v, soft, max);
        }
        d.Config.CpusHard = hardList.Count > 0 ? hardList : null;
        d.Config.CpusSoft = softList.Count > 0 ? softList : null;
    }

    private void SetPerVcpu(List<CpuMap> list, int vcpu, CpuMap? map, int max)
    {
        if (map is null) return;
        if (list.Count == 1 && max > 1) list.AddRange(Enumerable.Repeat(list[0], max - 1));
        while (list.Count < max) list.Add(CpuMap.All(_hv.HostCpus));
        list[vcpu] = map;
    }

    private void VcpuSet(VcpuSetRequest r)
    {
        var d = Resolve(r.Domain);
        if (r.Count > d.Config.MaxVcpus)
            throw new ControlException($"Requested vcpus {r.Count} exceeds the domain's maximum of {d.Config.MaxVcpus}");
        if (!r.IgnoreHost && r.Count > _hv.HostCpus)
            throw new ControlException($"You are overcommmitting! You have {_hv.HostCpus} physical CPUs and want {r.Count} vCPUs! Aborting, use --ignore-host to continue");
        string dom = XenstoreLayout.DomainPath(d.DomId);
        for (int i = 0; i < d.Config.MaxVcpus; i++)
            _xs.Write($"{dom}/cpu/{i}/availability", i < r.Count ? "online" : "offline");
        d.Hv.SetOnlineVcpus(r.Count);
        d.Config.Vcpus = r.Count;
    }

    private void MemSet(MemSetRequest r)
    {
        var d = Resolve(r.Domain);
        if (r.TargetKb > d.Config.MaxMemKb)
            throw new ControlException($"memory_dynamic_max must be less than or equal to memory_static_max");
        if (r.TargetKb <= 0) throw new ControlException("invalid memory target");
        // libxl_set_memory_target with enforce: the reservation limit follows the target, the PoD cache is
        // sized for it (a no-op once the guest has ballooned to it), and the balloon driver reads memory/target.
        d.Hv.SetMaxMem(r.TargetKb);
        d.Hv.Memory.SetPodTarget((ulong)r.TargetKb / 4);
        _xs.Write($"{XenstoreLayout.DomainPath(d.DomId)}/memory/target", r.TargetKb.ToString());
        d.Config.TargetMemKb = r.TargetKb;
    }

    private void MemMax(MemMaxRequest r)
    {
        var d = Resolve(r.Domain);
        if (r.MaxKb < d.Config.TargetMemKb)
            throw new ControlException($"cannot set max memory below the current target ({d.Config.TargetMemKb} KiB)");
        d.Hv.SetMaxMem(r.MaxKb);
        _xs.Write($"{XenstoreLayout.DomainPath(d.DomId)}/memory/static-max", r.MaxKb.ToString());
        d.Config.MaxMemKb = r.MaxKb;
    }

    private void Trigger(TriggerRequest r)
    {
        var d = Resolve(r.Domain);
        if (r.Trigger is not ("nmi" or "reset" or "init" or "power" or "sleep" or "s3resume"))
            throw new ControlException($"Invalid trigger \"{r.Trigger}\"");
        try { d.Hv.SendTrigger(r.Trigger, r.Vcpu); }
        catch (XenSharp.Hypervisor.HypervisorException e)
        {
            // libxl_send_trigger's report: the errno of XEN_DOMCTL_sendtrigger in words.
            throw new ControlException($"libxl: error: libxl_domain.c: Domain {d.DomId}:Send trigger '{r.Trigger}' failed: {ErrnoText(e.Errno)}", e.Errno);
        }
    }

    private static string ErrnoText(int errno) => errno switch
    {
        1 => "Operation not permitted",
        3 => "No such process",
        22 => "Invalid argument",
        38 => "Function not implemented",
        _ => $"errno {errno}",
    };

    // ---- information ----

    private IReadOnlyList<DomainInfo> List(ListRequest r)
    {
        var all = new List<DomainInfo> { Dom0Info(r.Long) };
        List<Domain> doms;
        lock (_lock) doms = [.. _domains.Values.Where(x => x.Ready).OrderBy(x => x.DomId)];
        all.AddRange(doms.Select(d => GuestInfo(d, r.Long)));
        if (r.Domains.Count == 0) return all;
        var picked = new List<DomainInfo>();
        foreach (var want in r.Domains)
        {
            var m = all.FirstOrDefault(x => x.Name == want || x.DomId.ToString() == want)
                ?? throw new ControlException($"{want} is an invalid domain identifier (rc=-6)", 22);
            picked.Add(m);
        }
        return picked;
    }

    /// <summary>Domain-0 is the host itself: its memory is the host's RAM outside the hypervisor's machine
    /// memory, a fixed figure as a Xen dom0's dom0_mem is.</summary>
    private DomainInfo Dom0Info(bool details)
    {
        var p = Process.GetCurrentProcess();
        long dom0Kb = Math.Max(0, HostMemory.Read().TotalKb - (long)(_hv.MachineMemory.Total >> 10));
        return new DomainInfo
        {
            DomId = 0, Name = "Domain-0", Uuid = Guid.Empty, Type = "pv",
            CurrentMemKb = dom0Kb, MaxMemKb = dom0Kb, TargetMemKb = dom0Kb,
            VcpuOnline = _hv.HostCpus, VcpuMaxId = _hv.HostCpus - 1,
            Running = true, CpuTimeNs = (ulong)(p.TotalProcessorTime.Ticks * 100),
            UptimeSeconds = HostMemory.UptimeSeconds(),
            StartTimeUnix = _started.ToUnixTimeSeconds(),
            Config = details ? JsonSerializer.SerializeToElement(new Dictionary<string, object>
            {
                ["c_info"] = new Dictionary<string, object> { ["type"] = "pv", ["name"] = "Domain-0", ["uuid"] = Guid.Empty.ToString() },
                ["b_info"] = new Dictionary<string, object> { ["max_vcpus"] = _hv.HostCpus, ["max_memkb"] = dom0Kb, ["target_memkb"] = dom0Kb },
            }) : null,
        };
    }

    private DomainInfo GuestInfo(Domain d, bool details)
    {
        var s = d.Hv.State;
        return new DomainInfo
        {
            DomId = d.DomId, Name = d.Config.Name, Uuid = d.Config.Uuid, Type = DomainConfig.TypeName(d.Config.Type),
            CurrentMemKb = s.CurrentMemKb, MaxMemKb = d.Config.MaxMemKb, TargetMemKb = d.Config.TargetMemKb,
            // vCPUs the guest has not started yet (waiting for INIT-SIPI) still count, as in Xen.
            VcpuOnline = Math.Max(s.OnlineVcpus, d.Config.Vcpus), VcpuMaxId = d.Config.MaxVcpus - 1,
            Running = s.Running, Blocked = s.Blocked, Paused = s.Paused, Shutdown = s.Shutdown,
            ShutdownReason = (int)s.Reason, Dying = s.Dying, CpuTimeNs = s.CpuTimeNs,
            UptimeSeconds = (DateTimeOffset.UtcNow - d.Started).TotalSeconds,
            StartTimeUnix = d.Started.ToUnixTimeSeconds(),
            Cpupool = CpupoolName(d.DomId),
            NodeAffinity = NodeAffinityText(d.DomId),
            Config = details ? JsonSerializer.SerializeToElement(LibxlJson.DomainConfig(d.Config)) : null,
        };
    }

    private IReadOnlyList<VcpuInfoEntry> VcpuList(VcpuListRequest r)
    {
        var result = new List<VcpuInfoEntry>();
        var names = r.Domains.Count == 0 ? null : r.Domains;
        bool Wanted(uint id, string name) => names is null || names.Contains(name) || names.Contains(id.ToString());
        if (Wanted(0, "Domain-0"))
            for (int i = 0; i < _hv.HostCpus; i++)
                result.Add(new VcpuInfoEntry("Domain-0", 0, i, i, true, true, false, 0, "all", "all"));
        List<Domain> doms;
        lock (_lock) doms = [.. _domains.Values.OrderBy(x => x.DomId)];
        if (names is not null)
            foreach (var n in names)
                if (n != "Domain-0" && n != "0" && !doms.Any(d => d.Config.Name == n || d.DomId.ToString() == n))
                    throw new ControlException($"{n} is an invalid domain identifier (rc=-6)", 22);
        foreach (var d in doms.Where(d => Wanted(d.DomId, d.Config.Name)))
            foreach (var v in d.Hv.Vcpus)
            {
                string hard = v.Hard is { } h ? XenSharp.Hypervisor.CpuList.Format(h, _hv.HostCpus) : Affinity(d.Config.CpusHard, v.Vcpu);
                string soft = v.Soft is { } so ? XenSharp.Hypervisor.CpuList.Format(so, _hv.HostCpus) : Affinity(d.Config.CpusSoft, v.Vcpu);
                result.Add(new VcpuInfoEntry(d.Config.Name, d.DomId, v.Vcpu, v.Cpu, v.Online, v.Running, v.Blocked, v.CpuTimeNs, hard, soft));
            }
        return result;
    }

    private static string Affinity(IReadOnlyList<CpuMap>? maps, int vcpu) =>
        maps is null ? "all" : (maps.Count == 1 ? maps[0] : vcpu < maps.Count ? maps[vcpu] : null)?.ToString() ?? "all";

    private HostInfo Info()
    {
        var (total, free) = _hv.MachineMemory;
        var uname = HostMemory.Uname();
        string[] ver = _hv.Version.Split('.', 3);
        var (topology, nodes) = NumaTables();
        int nrNodes = Math.Max(1, topology.Select(t => t.Node).Distinct().Count());
        return new HostInfo
        {
            Host = Environment.MachineName,
            Release = uname.Release,
            Version = uname.Version,
            Machine = "x86_64",
            NrCpus = _hv.HostCpus,
            MaxCpuId = _hv.HostCpus - 1,
            NrNodes = nrNodes,
            CoresPerSocket = Math.Max(1, _hv.HostCpus / nrNodes),
            ThreadsPerCore = 1,
            CpuMhz = HostMemory.CpuMhz(),
            HwCaps = "00000000:00000000:00000000:00000000:00000000:00000000:00000000:00000000",
            VirtCaps = "hvm",
            // physinfo: the hypervisor's machine memory and what no domain holds of it, not the host's.
            TotalMemoryMb = (long)(total >> 20),
            FreeMemoryMb = (long)(free >> 20),
            FreeCpus = 0,
            XenMajor = int.Parse(ver[0]),
            XenMinor = int.Parse(ver[1]),
            XenExtra = "." + ver[2],
            XenVersion = _hv.Version,
            XenCaps = _hv.Capabilities,
            XenScheduler = "credit",
            XenPagesize = 4096,
            Platform = "virt_start=0xffff800000000000",
            XenChangeset = "",
            XenCommandline = "",
            CcCompiler = $".NET {Environment.Version}",
            CcCompileBy = "xensharp",
            CcCompileDomain = "",
            CcCompileDate = File.GetLastWriteTimeUtc(typeof(Host).Assembly.Location).ToString("ddd MMM d HH:mm:ss UTC yyyy"),
            BuildId = typeof(Host).Assembly.ManifestModule.ModuleVersionId.ToString("N"),
            XendConfigFormat = "4",
            CpuTopology = topology,
            NumaNodes = nodes,
        };
    }

    // ---- consoles ----

    private ConsoleAttachResult ConsoleTarget(ConsoleAttachRequest r)
    {
        var d = Resolve(r.Domain);
        if (d.Console is null) throw new ControlException($"domain {d.DomId} has no console");
        if (d.Console.HasClient) throw new ControlException($"the console of domain {d.DomId} is already attached");
        return new ConsoleAttachResult(d.DomId, d.Config.Name);
    }

    /// <summary>After a successful attach answer, the connection is the console's: output flows to
    /// <paramref name="client"/>, its bytes go to the guest; returns when either side closes.
    /// <paramref name="unpause"/> lets a domain created paused for this console run once it is attached.</summary>
    public async Task RunConsoleAsync(uint domId, Stream client, bool unpause, CancellationToken ct)
    {
        Domain? d;
        lock (_lock) _domains.TryGetValue(domId, out d);
        var backend = d?.Console;
        bool attached = backend is not null && backend.Attach(client);
        // Unpaused even when another reader won the console: the domain must not wait for this one.
        if (unpause && d is not null)
            try { d.Hv.Unpause(); } catch (XenSharp.Hypervisor.HypervisorException) { } // destroyed meanwhile
        if (!attached) return;
        try
        {
            var buf = new byte[1024];
            while (!ct.IsCancellationRequested)
            {
                int n = await client.ReadAsync(buf, ct).ConfigureAwait(false);
                if (n == 0) break;
                int off = 0;
                while (off < n)
                {
                    int w = backend.WriteInput(buf.AsSpan(off, n - off));
                    if (w == 0)
                    {
                        lock (_lock) if (d!.Destroyed) return;
                        await Task.Delay(10, ct).ConfigureAwait(false);
                    }
                    off += w;
                }
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException) { }
        finally { backend!.Detach(client); }
    }

    // ---- shutdown handling ----

    private void OnDomainStateChanged(uint domId)
    {
        // Runs on a thread pool thread: whatever fails, the daemon carries on.
        try { HandleShutdown(domId); }
        catch (Exception e) { _hv.ConsoleWrite($"d{domId}: shutdown handling failed: {e.Message}"); }
    }

    private void HandleShutdown(uint domId)
    {
        Domain? d;
        lock (_lock)
        {
            if (_disposed || !_domains.TryGetValue(domId, out d) || d.ShutdownHandled) return;
            if (!d.Hv.State.Shutdown) return;
            d.ShutdownHandled = true;
        }
        var reason = d.Hv.State.Reason;
        var action = reason switch
        {
            ShutdownReason.Poweroff => d.Config.OnPoweroff,
            ShutdownReason.Reboot => d.Config.OnReboot,
            ShutdownReason.Crash => d.Config.OnCrash,
            ShutdownReason.Watchdog => d.Config.OnWatchdog,
            ShutdownReason.SoftReset => d.Config.OnSoftReset,
            _ => ShutdownAction.Preserve, // suspend: the domain waits for save or resume
        };
        _hv.ConsoleWrite($"d{domId}: shutdown reason {reason.ToString().ToLowerInvariant()}: action {DomainConfig.ActionName(action)}");
        try
        {
            switch (action)
            {
                case ShutdownAction.Destroy:
                    Destroy(d);
                    break;
                case ShutdownAction.Preserve:
                    break;
                case ShutdownAction.CoredumpDestroy:
                    CoreDump(d);
                    Destroy(d);
                    break;
                case ShutdownAction.CoredumpRestart:
                    CoreDump(d);
                    BeginRestart(d, rename: false);
                    break;
                case ShutdownAction.Restart:
                case ShutdownAction.SoftReset:
                    BeginRestart(d, rename: false);
                    break;
                case ShutdownAction.RenameRestart:
                    BeginRestart(d, rename: true);
                    break;
            }
        }
        catch (Exception e)
        {
            _hv.ConsoleWrite($"d{domId}: {DomainConfig.ActionName(action)} failed: {e.Message}");
        }
    }

    /// <summary>Retires the incarnation (destroyed, or kept under a new name for rename-restart),
    /// then builds the next one after <see cref="RestartPause"/> unless xl destroy came first.
    /// No lock is held across the pause.</summary>
    private void BeginRestart(Domain d, bool rename)
    {
        var guest = d.Lineage;
        string name;
        DomainConfig next;
        CancellationToken pause;
        lock (_lifecycle)
        {
            // Destroyed while its shutdown was being handled (or the daemon is stopping): no restart.
            if (_disposed || d.Destroyed || guest.Ended || guest.Current != d) return;
            name = d.Config.Name;
            if (rename)
            {
                // The old domain stays as it is, under a new name; the new one takes the name and a new uuid.
                Rename(d, $"{name}--incoming-{d.DomId}");
                next = CloneConfig(d.Config, name, Guid.NewGuid());
            }
            else
                next = CloneConfig(d.Config, name, d.Config.Uuid);
            var cts = new CancellationTokenSource();
            pause = cts.Token;
            lock (_lock)
            {
                guest.Current = null;
                guest.PendingName = name;
                guest.Pause = cts;
                if (rename) guest.Retired.Add((d.DomId, _time.GetUtcNow()));
            }
            if (!rename) DestroyLocked(d, restarting: true);
        }
        _hv.ConsoleWrite($"d{d.DomId}: {name}: restarting in {RestartPause.TotalSeconds:0.###} s");
        _ = RestartAfterPauseAsync(guest, next, pause);
    }

    private async Task RestartAfterPauseAsync(Lineage guest, DomainConfig next, CancellationToken pause)
    {
        // Cancelled by xl destroy: then the guest has ended, which the check below sees. Forced to
        // yield so the rest never runs inside the destroy that cancelled it.
        await Task.Delay(RestartPause, _time, pause)
            .ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing | ConfigureAwaitOptions.ForceYielding);
        CancellationTokenSource? cts = null;
        try
        {
            lock (_lifecycle)
            {
                lock (_lock) (cts, guest.Pause) = (guest.Pause, null);
                if (guest.Ended || _disposed) return;
                StartLocked(next, paused: false, guest);
            }
        }
        catch (Exception e)
        {
            _hv.ConsoleWrite($"{next.Name}: restart failed: {e.Message}");
            lock (_lifecycle) EndLineageLocked(guest);
        }
        finally { cts?.Dispose(); }
    }

    private static DomainConfig CloneConfig(DomainConfig c, string name, Guid uuid) => new()
    {
        Name = name, Type = c.Type, Uuid = uuid, Kernel = c.Kernel, Ramdisk = c.Ramdisk, Cmdline = c.Cmdline,
        Firmware = c.Firmware, FirmwareOverride = c.FirmwareOverride, TargetMemKb = c.TargetMemKb, MaxMemKb = c.MaxMemKb,
        Vcpus = c.Vcpus, MaxVcpus = c.MaxVcpus, CpusHard = c.CpusHard, CpusSoft = c.CpusSoft,
        OnPoweroff = c.OnPoweroff, OnReboot = c.OnReboot, OnCrash = c.OnCrash, OnWatchdog = c.OnWatchdog,
        OnSoftReset = c.OnSoftReset, CpuWeight = c.CpuWeight, Cap = c.Cap, Pool = c.Pool,
        SourceText = c.SourceText, SourceFile = c.SourceFile,
    };

    /// <summary>The coredump-* actions: the domain's core, in Xen's dump-core format, to $RUNDIR/dump/NAME.core.</summary>
    private void CoreDump(Domain d)
    {
        string dir = Path.Combine(_paths.RunDir, "dump");
        Directory.CreateDirectory(dir);
        WriteCore(d, Path.Combine(dir, d.Config.Name + ".core"));
    }

    /// <summary>xl dump-core: the domain is paused while its core is written, as one moment's state.</summary>
    private void DumpCoreTo(Domain d, string file)
    {
        if (!Path.IsPathFullyQualified(file)) throw new ControlException($"core file {file}: the path must be absolute", 22);
        d.Hv.Pause();
        try { WriteCore(d, file); }
        finally { if (!d.Destroyed) d.Hv.Unpause(); }
    }

    private void WriteCore(Domain d, string file)
    {
        Stream f;
        try { f = File.Create(file); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ControlException($"cannot write core file {file}: {e.Message}", 5);
        }
        using (f)
        lock (d.MemoryUse)
        {
            // xl destroy does not wait for the dump: it is cut short.
            if (d.Destroyed || !DumpCore.Write(f, d.Hv, d.Config.MaxVcpus, _hv.VersionInfo, () => d.Destroyed))
            {
                _hv.ConsoleWrite($"d{d.DomId}: core dump cut short: the domain was destroyed");
                return;
            }
        }
        _hv.ConsoleWrite($"d{d.DomId}: core dumped to {file}");
    }

    /// <summary>Testing and the daemon's signal path: shut a domain down as if it had asked to.</summary>
    internal void ShutdownFromOutside(uint domId, ShutdownReason reason)
    {
        Domain? d;
        lock (_lock) _domains.TryGetValue(domId, out d);
        d?.Hv.Shutdown(reason);
    }

    public void Dispose()
    {
        List<Domain> all;
        List<Lineage> guests;
        lock (_lifecycle)
        {
            lock (_lock)
            {
                if (_disposed) return;
                _disposed = true;
                all = [.. _domains.Values];
                guests = [.. _lineages];
            }
            foreach (var l in guests) EndLineageLocked(l);
            foreach (var d in all) DestroyLocked(d);
        }
        DisposeBackends();
        _hv.DomainStateChanged -= OnDomainStateChanged;
    }
}
