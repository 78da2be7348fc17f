using System.Diagnostics;
using System.Text.Json;
using XenSharp.Backends.Console;
using XenSharp.Public;
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
/// This file holds the domain table and building and destroying its domains; the other concerns
/// are files of their own: <c>HostRequests.cs</c> (the request → handler table),
/// <c>HostDomainControl.cs</c>, <c>HostInformation.cs</c>, <c>HostConsoles.cs</c>,
/// <c>HostShutdownActions.cs</c>, <c>HostCoreDumps.cs</c> and <c>HostScheduling.cs</c>.
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

    /// <summary>A client's stop request has been answered: the daemon may now stop.</summary>
    public void RequestStop() => ThreadPool.QueueUserWorkItem(_ => StopRequested?.Invoke());

    /// <summary>The pause before each restart, as xl sleeps before it recreates a domain (2 s there).
    /// Without it a guest that crashes as it boots restarts as fast as domains can be built; one
    /// second bounds that to a restart a second and still lets a reboot come back promptly.</summary>
    public static readonly TimeSpan RestartPause = TimeSpan.FromSeconds(1);

    /// <summary>How long the domid of an incarnation that was restarted still names its guest for
    /// xl destroy: long enough for a destroy that read the domid just before the restart, short
    /// enough that a stale domid soon names nothing, as in Xen.</summary>
    public static readonly TimeSpan RetiredDomIdKept = TimeSpan.FromSeconds(30);

    /// <summary>Where packed kernels' unpacked ELFs are kept between builds (the daemon's --kernel-cache); none
    /// unpacks every build's kernel.</summary>
    public UnpackedKernelCache? KernelCache { get; init; }

    public Host(IHypervisor hv, XenStored xs, RunPaths paths, TimeProvider? time = null, ConsoleLogLimits? consoleLogs = null)
    {
        _hv = hv;
        _xs = xs;
        _paths = paths;
        _time = time ?? TimeProvider.System;
        _consoleLogs = consoleLogs ?? ConsoleLogLimits.Default;
        XenstoreLayout.WriteDom0(xs);
        PublishCpupoolNames();
        _hv.DomainStateChanged += OnDomainStateChanged;
        WatchForeignDomains();
        _hv.ConsoleWrite($"Xen version {_hv.Version} (XenSharp)");
        _hv.ConsoleWrite($"Command line: {string.Join(' ', Environment.GetCommandLineArgs().Skip(1))}");
        _hv.ConsoleWrite($"xensharpd: run directory {paths.RunDir}, {_hv.HostCpus} pCPUs");
        _sysfs = new BackendSysfs(() => { lock (_lock) return _backends; }, paths.XenBackendSysfs);
    }

    private readonly BackendSysfs _sysfs;

    public IReadOnlyCollection<uint> DomainIds { get { lock (_lock) return [.. _domains.Keys]; } }

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

    /// <summary>A host file name holds at most this many bytes (Linux's NAME_MAX); the console log is NAME.log.</summary>
    private const int NameMax = 255;

    /// <summary>Refuses a name no domain can have: empty, with a path separator or control character, or too
    /// long for the file its console is logged to.</summary>
    private void CheckName(string name)
    {
        if (string.IsNullOrEmpty(name) || !ValidName.IsMatch(name))
            throw new ControlException($"invalid domain name `{name}'");
        int bytes = System.Text.Encoding.UTF8.GetByteCount(Path.GetFileName(_paths.ConsoleLog(name)));
        if (bytes > NameMax)
            throw new ControlException(
                $"domain name of {name.Length} characters is too long: its console log file name would be {bytes} bytes, " +
                $"more than the host's {NameMax}: {ErrnoText.Describe(Errno.ENAMETOOLONG)}", Errno.ENAMETOOLONG);
    }

    private CreateResult Create(CreateRequest r)
    {
        var cfg = XlConfigParser.Parse(r.ConfigText, r.ConfigFile);
        cfg.Directory = r.ConfigDirectory;
        foreach (var o in r.Overrides) XlConfigParser.ParseInto(cfg, o, "command line");
        var read = DomainConfigReader.Read(cfg, _hv.HostCpus, _hv.Scheduling?.CpuNodes);
        var d = read.Config;
        CheckName(d.Name);
        // What xl save records and a restore builds again: the file with the command line's settings after it.
        d.SourceText = r.Overrides.Count == 0 ? r.ConfigText
            : r.ConfigText.TrimEnd() + "\n\n# Given on xl create's command line.\n" + string.Join("\n", r.Overrides) + "\n";
        d.SourceFile = r.ConfigFile;
        var dom = Start(d, r.Paused);
        // xl prints the configuration's warnings itself; these are the ones only the host can give.
        return new CreateResult(dom.DomId, d.Name, [.. SecurityLabelWarnings(d)]);
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

    /// <summary>rtc_timeoffset, plus the host's offset from UTC now with localtime=1 (libxl's build_pre).</summary>
    private static long TimeOffset(DomainConfig c) =>
        c.RtcTimeoffset + (c.Localtime ? (long)TimeZoneInfo.Local.GetUtcOffset(DateTime.UtcNow).TotalSeconds : 0);

    /// <summary>Under <see cref="_lifecycle"/>: builds a domain, the first incarnation of a new
    /// guest or, with <paramref name="restarting"/>, the next one of that guest.</summary>
    private Domain StartLocked(DomainConfig c, bool paused, Lineage? restarting = null)
    {
        uint domId = AllocateDomId(c, restarting);

        bool hvmFirmware = c.Type == DomainType.Hvm && c.FirmwareOverride is null;
        if (c.TscMode == TscMode.NativeParavirt)
            throw new ControlException("TSC Mode native_paravirt (a.k.a PVRDTSCP) has been removed");
        CheckDisks(c);

        // A PV guest's bootloader chooses its kernel, ramdisk and command line from its disk, at every boot.
        string image;
        byte[] kernel;
        byte[]? ramdisk;
        string cmdline = c.Cmdline;
        if (c.Type == DomainType.Pv && c.Bootloader is not null)
        {
            string outputDir = Path.Combine(_paths.RunDir, $"bootloader.{domId}.d");
            try
            {
                var boot = Bootloader.Run(c, outputDir);
                image = $"{c.Bootloader}:{c.Disks[0].Target}";
                kernel = ReadImage(boot.Kernel, "kernel");
                ramdisk = boot.Ramdisk is null ? null : ReadImage(boot.Ramdisk, "ramdisk");
                cmdline = boot.Args ?? "";
            }
            finally
            {
                try { Directory.Delete(outputDir, recursive: true); } catch (IOException) { }
            }
        }
        else
        {
            image = c.Type == DomainType.Hvm ? c.FirmwareOverride ?? HvmloaderPath : c.Kernel!;
            kernel = ReadImage(image, c.Type == DomainType.Hvm ? hvmFirmware ? "hvmloader" : "firmware_override" : "kernel");
            ramdisk = c.Ramdisk is null ? null : ReadImage(c.Ramdisk, "ramdisk");
        }
        byte[]? systemFirmware = hvmFirmware ? ReadImage(SystemFirmwarePath(c), "bios") : null;
        var kind = c.Type switch
        {
            DomainType.Hvm => XenSharp.Hypervisor.DomainKind.Hvm,
            DomainType.Pv => XenSharp.Hypervisor.DomainKind.Pv,
            _ => XenSharp.Hypervisor.DomainKind.Pvh,
        };
        var hvd = _hv.CreateDomain(domId, new DomainCreateInfo(kind,
            c.Uuid, c.MaxVcpus, c.MaxMemKb, c.Name) { TscMode = c.TscMode, TimeOffsetSeconds = TimeOffset(c), Ssidref = CreateSsidref(c) });
        var dom = new Domain { DomId = domId, Config = c, Hv = hvd, Started = DateTimeOffset.UtcNow, Lineage = restarting ?? new Lineage() };
        lock (_lock) _domains[domId] = dom;
        try
        {
            PlaceDomain(domId, c, hvd);
            if (c.Type == DomainType.Pv)
            {
                BuildPv(dom, kernel, image, ramdisk, cmdline, paused);
                return dom;
            }
            if (c.Type == DomainType.Hvm)
            {
                // As libxl's HVM build: the platform parameters the hypervisor's devices follow.
                hvd.SetHvmParam(Params.HVM_PARAM_HPET_ENABLED, c.Hpet ? 1UL : 0);
                hvd.SetHvmParam(Params.HVM_PARAM_TIMER_MODE, (ulong)c.TimerMode);
            }
            // As libxl's hvm_set_conf_params for HVM and PVH alike.
            hvd.SetHvmParam(Params.HVM_PARAM_ALTP2M, (ulong)c.Altp2m);
            // The vm_event rings' pages, among the special pages both builders populate (as libxc's HVM build).
            hvd.SetHvmParam(Params.HVM_PARAM_PAGING_RING_PFN, PvhLayout.SpecialPfn(PvhLayout.SpecialPaging));
            hvd.SetHvmParam(Params.HVM_PARAM_MONITOR_RING_PFN, PvhLayout.SpecialPfn(PvhLayout.SpecialAccess));
            hvd.SetHvmParam(Params.HVM_PARAM_SHARING_RING_PFN, PvhLayout.SpecialPfn(PvhLayout.SpecialSharing));

            if (hvmFirmware)
            {
                BuildHvm(dom, kernel, image, systemFirmware!, paused);
                return dom;
            }

            var spec = new PvhBuildSpec(kernel, image, ramdisk, c.Cmdline, (ulong)c.TargetMemKb * 1024,
                c.Vcpus, c.MaxVcpus, (ulong)c.MaxMemKb * 1024) { KernelCache = KernelCache };
            if (c.PvShim)
            {
                // As libxl's pvshim: the shim is the PVH domain's kernel, with its own command line; the PV kernel
                // (with the guest's command line) and its ramdisk are the start info's modules.
                string shim = c.PvShimPath ?? PvShimPath;
                spec = spec with
                {
                    Kernel = ReadImage(shim, "pvshim"),
                    KernelName = shim,
                    Ramdisk = null,
                    Cmdline = (c.PvShimCmdline ?? PvShimDefaultCmdline) + (c.PvShimExtra is { } x ? " " + x : ""),
                    Modules = ramdisk is null ? [new PvhModule(kernel, c.Cmdline)] : [new PvhModule(kernel, c.Cmdline), new PvhModule(ramdisk)],
                };
            }
            var built = PvhBuilder.Build(spec, hvd.Memory);
            hvd.SetVcpuContext(0, built.Registers, built.SpecialRegisters);
            hvd.SetMemoryMap(built.Memmap.Select(e => (e.Addr, e.Size, e.Type)).ToList());
            // With a device model the PM1a control port is QEMU's (PIIX4), as in Xen; otherwise ours, as our FADT says.
            if (HasDeviceModel(c))
                hvd.ReleaseAcpiSleepControl();
            else
                hvd.SetAcpiSleepControl(AcpiTables.Pm1aControlPort, AcpiTables.S5SleepType);
            hvd.SetOnlineVcpus(c.Vcpus);

            ConnectRings(dom, built.XenstorePfn, built.ConsolePfn);
            AddDevices(dom);
            if (HasDeviceModel(c))
                StartDeviceModel(dom);
            _hv.ConsoleWrite($"d{domId}: {c.Name} built: entry 0x{built.Entry:x}, start info 0x{built.StartInfoAddress:x}, {c.TargetMemKb / 1024} MiB, {c.Vcpus}/{c.MaxVcpus} vCPUs");
            Launch(dom, paused);
            return dom;
        }
        catch
        {
            Destroy(dom);
            throw;
        }
    }

    /// <summary>Builds a PV guest (<see cref="PvBuilder"/>): its rings are named in start_info by MFN and event
    /// channel, as libxl arranges for PV guests.</summary>
    private void BuildPv(Domain dom, byte[] kernel, string image, byte[]? ramdisk, string cmdline, bool paused)
    {
        var c = dom.Config;
        var hvd = dom.Hv;
        var pv = hvd.Pv ?? throw new ControlException("the hypervisor did not make a PV domain");
        var built = PvBuilder.Build(new PvBuildSpec(kernel, image, ramdisk, cmdline, (ulong)c.TargetMemKb * 1024) { KernelCache = KernelCache }, hvd.Memory, pv);
        hvd.SetVcpuContext(0, built.Registers, built.SpecialRegisters);
        hvd.SetMemoryMap([(0, (ulong)c.TargetMemKb * 1024, 1)]);
        hvd.SetOnlineVcpus(c.Vcpus);
        var (storePort, consolePort) = ConnectRings(dom, built.XenstorePfn, built.ConsolePfn, built.XenstoreMfn, built.ConsoleMfn);
        PvBuilder.SetEventChannels(hvd.Memory, built.StartInfoPfn, storePort, consolePort, built.Compat);
        AddDevices(dom);
        _hv.ConsoleWrite($"d{dom.DomId}: {c.Name} built (PV): entry 0x{built.Entry:x}, start info 0x{built.StartInfoVirt:x}, {c.TargetMemKb / 1024} MiB, {c.Vcpus}/{c.MaxVcpus} vCPUs");
        Launch(dom, paused);
    }

    /// <summary>Builds an HVM domain that boots from Xen's firmware (<see cref="HvmBuilder"/>): hvmloader with SeaBIOS as
    /// its module, then its device model, which must serve the domain before hvmloader's first PCI access.</summary>
    private void BuildHvm(Domain dom, byte[] hvmloader, string image, byte[] systemFirmware, bool paused)
    {
        var c = dom.Config;
        var hvd = dom.Hv;
        // The graphics card's memory comes out of the target: QEMU populates it itself (libxl's video_memkb).
        var built = HvmBuilder.Build(new HvmBuildSpec(hvmloader, image, systemFirmware,
            (ulong)(c.TargetMemKb - c.Display.VideoRamKb) * 1024, c.Vcpus, c.MaxVcpus), hvd.Memory);
        hvd.SetVcpuContext(0, built.Registers, built.SpecialRegisters);
        hvd.SetMemoryMap(built.Memmap.Select(e => (e.Addr, e.Size, e.Type)).ToList());
        // hvmloader's DSDT puts PM1a_CNT at 0xB004, which QEMU's PIIX4 serves: a guest's S5 reaches Xen as QEMU's
        // XEN_DMOP_remote_shutdown, as on Xen.
        hvd.ReleaseAcpiSleepControl();
        hvd.SetOnlineVcpus(c.Vcpus);
        ConnectRings(dom, built.XenstorePfn, built.ConsolePfn);
        AddDevices(dom);
        StartDeviceModel(dom);
        _hv.ConsoleWrite($"d{dom.DomId}: {c.Name} built (HVM): hvmloader entry 0x{built.Entry:x}, firmware at 0x{built.FirmwareAddress:x}, {c.TargetMemKb / 1024} MiB, {c.Vcpus}/{c.MaxVcpus} vCPUs");
        Launch(dom, paused);
    }

    /// <summary>Debian's xen-shim (xen-utils-4.17), libxl's default pvshim_path, or $XENSHARP_PVSHIM.</summary>
    private static string PvShimPath =>
        Environment.GetEnvironmentVariable("XENSHARP_PVSHIM") is { Length: > 0 } p ? p : "/usr/lib/xen-4.17/boot/xen-shim";

    /// <summary>libxl's default pvshim_cmdline.</summary>
    private const string PvShimDefaultCmdline = "pv-shim console=xen,pv";

    /// <summary>Debian's hvmloader (xen-utils-4.17), or $XENSHARP_HVMLOADER.</summary>
    private static string HvmloaderPath =>
        Environment.GetEnvironmentVariable("XENSHARP_HVMLOADER") is { Length: > 0 } p ? p : "/usr/lib/xen-4.17/boot/hvmloader";

    /// <summary>The file libxl loads as hvmloader's "firmware" module: bios_path_override, or for bios="ovmf" Debian's
    /// OVMF (or $XENSHARP_OVMF), else Debian's SeaBIOS (or $XENSHARP_SEABIOS), the paths Debian's libxl names.</summary>
    private static string SystemFirmwarePath(DomainConfig c) =>
        c.BiosPathOverride ?? (c.Bios == "ovmf"
            ? Environment.GetEnvironmentVariable("XENSHARP_OVMF") is { Length: > 0 } o ? o : "/usr/share/ovmf/OVMF.fd"
            : Environment.GetEnvironmentVariable("XENSHARP_SEABIOS") is { Length: > 0 } p ? p : "/usr/share/seabios/bios-256k.bin");

    /// <summary>A built domain starts (unless asked paused) and becomes its lineage's current incarnation.</summary>
    private void Launch(Domain dom, bool paused)
    {
        ApplyExecLabel(dom);
        if (!paused) dom.Hv.Unpause();
        lock (_lock)
        {
            dom.Ready = true;
            dom.Lineage.Current = dom;
            dom.Lineage.PendingName = null;
            _lineages.Add(dom.Lineage);
        }
    }

    /// <summary>A free domid for a new domain of <paramref name="c"/>, whose name and uuid must be free too (the uuid
    /// not for a domain migrating in, which is the same guest as the one leaving on a migration to this host).</summary>
    private uint AllocateDomId(DomainConfig c, Lineage? restarting, bool incoming = false)
    {
        lock (_lock)
        {
            if (NameTakenLocked(c.Name, restarting: restarting))
                throw new ControlException($"domain with name \"{c.Name}\" already exists.");
            if (!incoming && _domains.Values.Any(x => x.Config.Uuid == c.Uuid))
                throw new ControlException($"domain with uuid {c.Uuid} already exists.");
            // Domids that still name a restarted guest are not handed out again meanwhile.
            var now = _time.GetUtcNow();
            // Domains a Domain-0 program made hold their ids too.
            while (_domains.ContainsKey(_nextDomId) || _nextDomId == 0 || _nextDomId >= 0x7FF0
                   || _lineages.Any(l => l.Retains(_nextDomId, now, RetiredDomIdKept)) || _hv.HasDomain(_nextDomId))
                _nextDomId = _nextDomId >= 0x7FF0 ? 1 : _nextDomId + 1;
            return _nextDomId++;
        }
    }

    /// <summary>The pool, the affinities and the NUMA placement, which come before the memory, as in libxl's build_pre.</summary>
    private void PlaceDomain(uint domId, DomainConfig c, IHypervisorDomain hvd)
    {
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
    }

    /// <summary>The xenstore ring and the console ring with their event channels (fresh ports in the guest, named
    /// in its HVM params), xenstored's introduction of the domain and its xenstore directories.</summary>
    /// <summary>Connects xenstore and the primary console to the guest's ring pages; a PV guest's ring-refs in xenstore
    /// are MFNs. Returns the guest's ports.</summary>
    private (uint Store, uint Console) ConnectRings(Domain dom, ulong storePfn, ulong consolePfn, ulong? storeRef = null, ulong? consoleRef = null)
    {
        var hvd = dom.Hv;
        uint storePort = hvd.AllocUnboundPort(0);
        uint consolePort = hvd.AllocUnboundPort(0);
        hvd.SetHvmParam(Params.HVM_PARAM_STORE_PFN, storePfn);
        hvd.SetHvmParam(Params.HVM_PARAM_STORE_EVTCHN, storePort);
        hvd.SetHvmParam(Params.HVM_PARAM_CONSOLE_PFN, consolePfn);
        hvd.SetHvmParam(Params.HVM_PARAM_CONSOLE_EVTCHN, consolePort);
        // The reserved grants, so that Domain-0 programs (a C xenstored, xenconsoled) can reach the rings by grant.
        hvd.SeedGrantEntry(GrantTable.GNTTAB_RESERVED_CONSOLE, GrantTable.GTF_permit_access, 0, consolePfn);
        hvd.SeedGrantEntry(GrantTable.GNTTAB_RESERVED_XENSTORE, GrantTable.GTF_permit_access, 0, storePfn);

        var storePage = new GuestPage(hvd.Memory, storePfn);
        dom.Store = _xs.Introduce(dom.DomId, storePage, storePfn, storePort);
        var storeDomain = dom.Store;
        dom.StoreChannel = hvd.BindInterdomain(storePort, () => storeDomain.Signal());
        var storeChannel = dom.StoreChannel;
        storePage.SetNotify(storeChannel.Notify);

        ConnectPrimaryConsole(dom, consolePfn, consolePort);

        XenstoreLayout.WriteDomain(_xs, dom.DomId, dom.Config,
            new XenstoreLayout.Rings(storePort, storeRef ?? storePfn, consolePort, consoleRef ?? consolePfn), dom.Started);
        return (storePort, consolePort);
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
        bool vmShared;
        lock (_lock)
        {
            if (d.Destroyed) return;
            d.Destroyed = true;
            _domains.Remove(d.DomId);
            // A guest migrating to this host is two domains of one uuid for a moment: /vm/UUID stays for the other.
            vmShared = _domains.Values.Any(x => x.Config.Uuid == d.Config.Uuid);
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
        ReleaseOutsideParts(d);
        DisconnectDevices(d);
        d.StoreChannel?.Dispose();
        try
        {
            if (d.Store is not null || d.BuiltOutside) _xs.Release(d.DomId);
            XenstoreLayout.Remove(_xs, d.DomId, vmShared ? null : d.Config.Uuid);
        }
        catch (XenStoreException) { }
        ReleaseForeignRing(d.DomId);
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
        _sysfs.Dispose();
        UnwatchForeignDomains();
        DisposeBackends();
        _hv.DomainStateChanged -= OnDomainStateChanged;
    }
}
