using System.Globalization;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Save;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// xl save and xl restore of a PVH or PV guest, non-live, as libxl does them: the guest is asked to suspend through
/// xenstore (<c>control/shutdown = suspend</c>; it answers with SCHEDOP_shutdown(SHUTDOWN_suspend)), its state is
/// written as Xen's stream (<see cref="SaveFileWriter"/>) and the domain destroyed. Restore checks the file's headers
/// before any domain exists, builds the domain again from the recorded configuration, loads memory and vCPUs,
/// gives the guest fresh event channels for its xenstore and console rings at the saved frames, introduces it to
/// xenstored and unpauses it: the guest's suspend hypercall returns 0 there, which tells it that it resumed in a
/// new domain, and it reconnects its devices.
/// </summary>
public sealed partial class Host
{
    /// <summary>How long a guest has to suspend when asked (libxl waits as long).</summary>
    public static TimeSpan SuspendTimeout { get; set; } = TimeSpan.FromSeconds(60);

    private SaveResult Save(SaveRequest r)
    {
        if (!Path.IsPathFullyQualified(r.File))
            throw new ControlException($"save file {r.File}: the path must be absolute", Errno.EINVAL);
        var d = Resolve(r.Domain);
        CheckSavable(d, "save");

        Suspend(d);
        d.Hv.Pause();
        string config = ConfigForSave(d, r.ConfigText);
        long pages;
        long bytes;
        string? dmState = null;
        try
        {
            // An HVM guest's device model stops and writes its state once the guest has suspended (libxl's
            // domain_suspend_common_guest_suspended), before the stream is written.
            if (HasDeviceModel(d.Config))
                dmState = SaveDeviceModel(d);
            using var f = new FileStream(r.File, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
            lock (d.MemoryUse)
            {
                if (d.Destroyed) throw new ControlException($"domain {d.DomId} was destroyed while it was being saved");
                var info = XenSharp.Hypervisor.XenHypervisor.VersionInfo;
                pages = SaveFileWriter.Write(f, new SaveSource(d.Hv, config, (uint)info.Major, (uint)info.Minor, (uint)d.Config.TscMode,
                    d.Config.MaxVcpus) { Emulator = dmState is null ? null : () => DeviceModelRecords(d, dmState) }, () => d.Destroyed);
            }
            f.Flush(flushToDisk: true);
            bytes = f.Length;
        }
        catch (SaveFileException e)
        {
            // The guest's state cannot be written as a stream (a page table names a frame not its own).
            TryDelete(r.File);
            throw new ControlException($"cannot save domain {d.DomId}: {e.Message}{ResumeAfterFailedSave(d)}", Errno.EINVAL);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or OperationCanceledException)
        {
            TryDelete(r.File);
            throw new ControlException($"cannot write save file {r.File}: {e.Message}{ResumeAfterFailedSave(d)}", Errno.EIO);
        }
        catch (ControlException e)
        {
            // The device model did not save its state (QMP failed, QEMU is gone).
            TryDelete(r.File);
            throw new ControlException($"cannot save domain {d.DomId}: {e.Message}{ResumeAfterFailedSave(d)}", e.Errno);
        }
        catch
        {
            TryDelete(r.File);
            ResumeAfterFailedSave(d);
            throw;
        }
        finally
        {
            if (dmState is not null) TryDelete(dmState);
        }
        _hv.ConsoleWrite($"d{d.DomId}: {d.Config.Name} saved to {r.File}: {pages} pages, {bytes} bytes");
        if (r.Checkpoint)
        {
            // xl save -c: the guest carries on where it was, told its suspend was cancelled (-p: paused); its device
            // model first (libxl__domain_resume).
            if (HasDeviceModel(d.Config)) ResumeDeviceModel(d);
            d.Hv.ResumeSuspended(HasPvDrivers(d));
            if (!r.Paused) d.Hv.Unpause();
        }
        else
            Destroy(d);
        return new SaveResult(d.DomId, d.Config.Name, bytes, pages);
    }

    /// <summary>After a failed save the guest carries on where it was, told its suspend was cancelled (xl's "Failed to
    /// save domain, resuming domain": libxl_domain_resume with suspend_cancel); what to add to the error.</summary>
    private string ResumeAfterFailedSave(Domain d)
    {
        if (d.Destroyed) return "";
        try
        {
            // The device model emulates again first (libxl__domain_resume's dm resume); QEMU that was never stopped
            // takes cont as a no-op.
            if (HasDeviceModel(d.Config)) ResumeDeviceModel(d);
        }
        catch (ControlException e)
        {
            return $"; the domain could not be resumed (its device model: {e.Message})";
        }
        try
        {
            d.Hv.ResumeSuspended(HasPvDrivers(d));
            d.Hv.Unpause();
            _hv.ConsoleWrite($"d{d.DomId}: save failed; the domain resumes");
            return "; the domain was resumed";
        }
        catch (Exception e) when (e is XenSharp.Hypervisor.HypervisorException or NotSupportedException)
        {
            return $"; the domain could not be resumed ({e.Message})";
        }
    }

    /// <summary>The domains xl save, restore and migrate take: PVH and PV, and HVM with its device model (QEMU saves
    /// its devices' state).</summary>
    private static bool IsSavableType(DomainConfig c) => c.Type is DomainType.Pvh or DomainType.Pv || HasDeviceModel(c);

    /// <summary>Refuses what xl save (<paramref name="verb"/> "save") or xl migrate ("migrate") cannot take: a domain of
    /// another type, or one with populate-on-demand memory.</summary>
    private static void CheckSavable(Domain d, string verb)
    {
        if (!IsSavableType(d.Config))
            throw new ControlException($"domain {d.DomId} is {DomainConfig.TypeName(d.Config.Type)} without a device model: XenSharp {verb}s PVH, PV and HVM domains with QEMU", Errno.EOPNOTSUPP);
        if (d.Config.TargetMemKb != d.Config.MaxMemKb)
            throw new ControlException($"domain {d.DomId} has populate-on-demand memory (memory < maxmem), which XenSharp does not {verb} yet", Errno.EOPNOTSUPP);
    }

    /// <summary>Asks the guest to suspend and waits until it has (libxl's domain_suspend_common with the xenstore
    /// protocol). A guest already suspended is taken as it is.</summary>
    private void Suspend(Domain d)
    {
        var request = BeginSuspend(d);
        while (!request.Wait(TimeSpan.FromMilliseconds(50))) { }
    }

    /// <summary>Asks the guest to suspend and returns at once: a live migration sends what the guest dirties on its
    /// way to the stop while <see cref="SuspendRequest.Wait"/> says it has not stopped yet.</summary>
    private SuspendRequest BeginSuspend(Domain d)
    {
        long askedAt = UnixMicros();
        var state = d.Hv.State;
        if (state.Shutdown && state.Reason == ShutdownReason.Suspend) return new SuspendRequest(this, d, null, askedAt);
        if (state.Shutdown)
            throw new ControlException($"domain {d.DomId} has shut down ({state.Reason.ToString().ToLowerInvariant()}); only a running guest can be saved");
        // A guest without PV drivers (no event callback) cannot hear the request: libxl suspends such an HVM guest
        // from outside (xc_domain_shutdown), and it carries on from where it stopped wherever it is restored.
        string? node = HasPvDrivers(d) ? $"{XenstoreLayout.DomainPath(d.DomId)}/control/shutdown" : null;
        if (node is not null) _xs.Write(node, "suspend");
        else d.Hv.Shutdown(ShutdownReason.Suspend);
        return new SuspendRequest(this, d, node, askedAt);
    }

    /// <summary>A request to suspend that the guest has not necessarily answered yet.</summary>
    private sealed class SuspendRequest(Host host, Domain d, string? node, long askedAt)
    {
        private readonly DateTime _deadline = DateTime.UtcNow + SuspendTimeout;

        /// <summary>The last time (microseconds since 1970) the guest was seen running: once it has suspended, the
        /// earliest it can have stopped.</summary>
        public long RunningAt { get; private set; } = askedAt;

        /// <summary>Once it has suspended, when it stopped: the hypervisor's time of its SCHEDOP_shutdown, where a
        /// migration counts its downtime from (QEMU counts from its vm_stop); when the hypervisor does not say, the
        /// first time the daemon heard of it (the report of the state change, or a look at the state).</summary>
        public long StoppedAt { get; private set; }

        /// <summary>When the daemon first heard of the stop.</summary>
        public long HeardAt { get; private set; }

        /// <summary>Waits up to <paramref name="upTo"/> for the guest to suspend: true once it has, false while it
        /// has not; throws when it shut down otherwise, was destroyed, or did not answer in time (the request is
        /// withdrawn then).</summary>
        public bool Wait(TimeSpan upTo)
        {
            var until = DateTime.UtcNow + upTo;
            while (true)
            {
                var state = d.Hv.State;
                if (state.Shutdown)
                {
                    if (state.Reason == ShutdownReason.Suspend)
                    {
                        if (StoppedAt == 0)
                        {
                            long heard = d.StateChangedAt;
                            HeardAt = heard > RunningAt ? heard : UnixMicros();
                            StoppedAt = d.Hv.ShutdownTime is var at and > 0 ? at : HeardAt;
                        }
                        return true;
                    }
                    throw new ControlException($"domain {d.DomId} shut down ({state.Reason.ToString().ToLowerInvariant()}) instead of suspending");
                }
                if (d.Destroyed) throw new ControlException($"domain {d.DomId} was destroyed before it suspended");
                var now = DateTime.UtcNow;
                RunningAt = (now - DateTime.UnixEpoch).Ticks / 10;
                if (now >= _deadline)
                {
                    Withdraw();
                    throw new ControlException(
                        $"guest did not suspend within {SuspendTimeout.TotalSeconds:0} s of control/shutdown = suspend; the request was withdrawn",
                        Errno.ETIMEDOUT);
                }
                if (now >= until) return false;
                // Woken by the domain's state change (the stop is the start of a migration's downtime, and the last
                // pages follow it), or at least every millisecond.
                lock (d.StateSignal)
                    if (!d.Hv.State.Shutdown && !d.Destroyed)
                        Monitor.Wait(d.StateSignal, TimeSpan.FromMilliseconds(1));
            }
        }

        /// <summary>Withdraws the request so the guest does not suspend later with nobody saving it.</summary>
        public void Withdraw()
        {
            if (node is null || d.Hv.State.Shutdown) return;
            try { host._xs.Write(node, ""); } catch (XenSharp.Store.XenStoreException) { }
        }
    }

    /// <summary>Whether the guest hears a request to suspend through xenstore: a PV guest always (its event callback
    /// is not an HVM param), a PVH or HVM guest once it has set its event callback.</summary>
    private static bool HasPvDrivers(Domain d) => d.Config.Type == DomainType.Pv || d.Hv.GetHvmParam(Params.HVM_PARAM_CALLBACK_IRQ) != 0;

    /// <summary>The xl.cfg text the file records: the configuration given to xl save, or the one the domain was
    /// created from with its current name and uuid, which a restore takes again.</summary>
    private static string ConfigForSave(Domain d, string? replacement)
    {
        string text = replacement ?? d.Config.SourceText ?? throw new ControlException($"domain {d.DomId} has no configuration text to record");
        return text.TrimEnd() + "\n\n# Recorded by xl save: the domain's name and uuid when it was saved.\n" +
            $"name = \"{d.Config.Name}\"\nuuid = \"{d.Config.Uuid}\"\n";
    }

    private RestoreResult Restore(RestoreRequest r)
    {
        if (!Path.IsPathFullyQualified(r.File))
            throw new ControlException($"save file {r.File}: the path must be absolute", Errno.EINVAL);
        FileStream f;
        try { f = new FileStream(r.File, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ControlException($"cannot open save file {r.File}: {e.Message}", e is FileNotFoundException or DirectoryNotFoundException ? Errno.ENOENT : Errno.EIO);
        }
        using (f)
            return RestoreFrom(new SaveFileReader(f, r.File), r.File, r.ConfigText, r.ConfigFile, r.ConfigDirectory, r.Paused);
    }

    /// <summary>Restores a domain from a stream: a save file, or a migration's incoming stream (label names it). A
    /// <paramref name="checkpointed"/> stream (Remus) is restored up to its first checkpoint; the reader goes on
    /// with the rest. An <paramref name="incoming"/> migration's domain is NAME--incoming, as xl's receiver makes
    /// it, until <see cref="TakeIncomingName"/>: on a migration to this host NAME is still the sender's.</summary>
    private RestoreResult RestoreFrom(SaveFileReader reader, string label, string? configText, string? configFile, string? configDirectory,
        bool paused, bool checkpointed = false, bool incoming = false)
    {
        var header = reader.ReadHeader();
        string text = configText ?? header.ConfigText;
        if (configText is null && header.ConfigIsJson)
            throw new ControlException($"{label}: the recorded configuration is libxl JSON; give the domain's xl.cfg as CONFIG to restore it", Errno.EOPNOTSUPP);
        var cfg = XlConfigParser.Parse(text, configFile ?? label);
        cfg.Directory = configDirectory;
        var c = DomainConfigReader.Read(cfg, _hv.HostCpus, _hv.Scheduling?.CpuNodes).Config;
        if (!IsSavableType(c))
            throw new ControlException($"{label}: the configuration is of a {DomainConfig.TypeName(c.Type)} domain without a device model; XenSharp restores PVH, PV and HVM domains with QEMU", Errno.EOPNOTSUPP);
        if ((c.Type == DomainType.Pv) != header.Pv)
            throw new ControlException($"{label}: the stream is of an x86 {(header.Pv ? "PV" : "HVM-type")} domain, the configuration of a {DomainConfig.TypeName(c.Type)} one", Errno.EINVAL);
        CheckName(c.Name);
        string? finalName = null;
        if (incoming)
        {
            finalName = c.Name;
            c.Name = IncomingName(finalName);
            CheckName(c.Name);
        }
        c.SourceText = text;
        c.SourceFile = configFile ?? label;
        lock (_lifecycle)
        {
            if (_disposed) throw new ControlException("xensharpd is stopping");
            return RestoreLocked(c, reader, label, paused, checkpointed, finalName);
        }
    }

    /// <summary>xl's names for a migrating guest's two domains while both exist (xl_migrate.c).</summary>
    internal static string IncomingName(string name) => name + "--incoming";
    internal static string MigratedAwayName(string name) => name + "--migratedaway";

    /// <summary>The incoming domain takes the guest's name, once the sender has renamed its own away.</summary>
    private void TakeIncomingName(Domain d)
    {
        if (d.ArrivingAs is { } name && d.Config.Name != name)
            Rename(d, name);
    }

    private RestoreResult RestoreLocked(DomainConfig c, SaveFileReader reader, string label, bool paused, bool checkpointed, string? finalName)
    {
        CheckDisks(c);
        uint domId = AllocateDomId(c, restarting: null, incoming: finalName is not null);
        bool hvm = c.Type == DomainType.Hvm;
        var hvd = _hv.CreateDomain(domId, new Platform.DomainCreateInfo(
            c.Type switch { DomainType.Pv => XenSharp.Hypervisor.DomainKind.Pv, DomainType.Hvm => XenSharp.Hypervisor.DomainKind.Hvm, _ => XenSharp.Hypervisor.DomainKind.Pvh },
            c.Uuid, c.MaxVcpus, c.MaxMemKb, c.Name) { TscMode = c.TscMode, Ssidref = CreateSsidref(c), TimeOffsetSeconds = hvm ? TimeOffset(c) : 0 });
        var dom = new Domain
        {
            DomId = domId, Config = c, Hv = hvd, Started = DateTimeOffset.UtcNow, Lineage = new Lineage(), ArrivingAs = finalName,
        };
        lock (_lock) _domains[domId] = dom;
        try
        {
            PlaceDomain(domId, c, hvd);
            if (hvm)
            {
                // As the HVM build: the platform parameters the hypervisor's devices follow (the context's HPET record
                // maps the HPET again if the saved domain had it).
                hvd.SetHvmParam(Params.HVM_PARAM_HPET_ENABLED, c.Hpet ? 1UL : 0);
                hvd.SetHvmParam(Params.HVM_PARAM_TIMER_MODE, (ulong)c.TimerMode);
                hvd.SetHvmParam(Params.HVM_PARAM_ALTP2M, (ulong)c.Altp2m);
            }
            var restored = reader.Load(hvd, () => dom.Destroyed, checkpointed);
            if (restored.Emulator is not null && !hvm)
                throw new SaveFileException($"{label}: the stream carries device model state, which a {DomainConfig.TypeName(c.Type)} domain has none of");
            MigrationTrace.Mark("target", "stream read");
            if (restored.Pv is { } pv)
            {
                // As the PV build: the rings by MFN in xenstore, their ports in start_info (the guest's console
                // driver reads its port there again; its xenstore port is the one the first build gave it).
                hvd.SetMemoryMap([(0, (ulong)c.TargetMemKb * 1024, 1)]);
                var (storePort, consolePort) = ConnectRings(dom, pv.StorePfn, pv.ConsolePfn, pv.StoreMfn, pv.ConsoleMfn);
                Builder.PvBuilder.SetEventChannels(hvd.Memory, pv.StartInfoPfn, storePort, consolePort, pv.Is32);
                AddDevices(dom);
                _hv.ConsoleWrite($"d{domId}: {c.Name} restored (PV) from {label}: {restored.Pages} pages, {c.MaxVcpus} vCPUs");
                Restored(dom, paused);
                return new RestoreResult(domId, c.Name, restored.Pages);
            }
            if (!restored.Params.TryGetValue(Params.HVM_PARAM_STORE_PFN, out ulong storePfn) ||
                !restored.Params.TryGetValue(Params.HVM_PARAM_CONSOLE_PFN, out ulong consolePfn))
                throw new SaveFileException($"{label}: the HVM params do not say where the xenstore and console rings are");
            if (!hvd.Memory.IsPopulated(storePfn) || !hvd.Memory.IsPopulated(consolePfn))
                throw new SaveFileException($"{label}: the xenstore or console ring's frame (0x{storePfn:x}, 0x{consolePfn:x}) is not among the saved pages");
            if (hvm)
                PrepareHvm(dom, restored, label);
            else
                hvd.SetAcpiSleepControl(Builder.AcpiTables.Pm1aControlPort, Builder.AcpiTables.S5SleepType);
            ConnectRings(dom, storePfn, consolePfn);
            MigrationTrace.Mark("target", "rings connected");
            WarnIfPortsMoved(dom, restored.Params);
            AddDevices(dom);
            MigrationTrace.Mark("target", "devices added");
            // A checkpointed stream's (Remus) QEMU starts only at the failover, from the last complete checkpoint's
            // state (libxl's backup likewise restores the device model when the stream ends).
            if (hvm && !checkpointed)
                StartRestoredDeviceModel(dom, restored.Emulator!);
            _hv.ConsoleWrite($"d{domId}: {c.Name} restored from {label}: {restored.Pages} pages, {c.MaxVcpus} vCPUs");
            Restored(dom, paused);
            return new RestoreResult(domId, c.Name, restored.Pages);
        }
        catch
        {
            Destroy(dom);
            throw;
        }
    }

    /// <summary>An HVM domain's part of the restore before its rings and devices: the device model's state must be in
    /// the stream, the params libxc restores are set again, and the domain gets the memory map and the ACPI port
    /// layout its build gave it (hvmloader does not run again).</summary>
    private static void PrepareHvm(Domain dom, RestoredState restored, string label)
    {
        if (restored.Emulator?.Context is null)
            throw new SaveFileException($"{label}: the stream of an HVM domain carries no device model state (no emulator context record)");
        var c = dom.Config;
        foreach (int p in SaveFileWriter.RestoredParams)
            if (restored.Params.TryGetValue(p, out ulong value) && value != 0)
            {
                try { dom.Hv.SetHvmParam(p, value); }
                catch (XenSharp.Hypervisor.HypervisorException e) { throw new SaveFileException($"{label}: HVM param {p}: {e.Message}"); }
            }
        dom.Hv.SetMemoryMap(Builder.HvmBuilder.Memmap((ulong)(c.TargetMemKb - c.Display.VideoRamKb) * 1024)
            .Select(e => (e.Addr, e.Size, e.Type)).ToList());
        // PM1a control is QEMU's PIIX4, as at the build.
        dom.Hv.ReleaseAcpiSleepControl();
    }

    /// <summary>libxl's restore of the device model: its xenstore keys written back under its directory, its state
    /// in qemu-resume.N for the new QEMU's -incoming, which runs once it has loaded it.</summary>
    private void StartRestoredDeviceModel(Domain dom, EmulatorState emulator)
    {
        string root = DeviceModelXsPath(dom.DomId);
        foreach (var (key, value) in emulator.Xenstore)
            _xs.Write($"{root}/{key}", value);
        string file = DeviceModelRestoreFile(dom.DomId);
        File.WriteAllBytes(file, emulator.Context!);
        try { StartDeviceModel(dom, incoming: file); }
        finally { TryDelete(file); }
    }

    /// <summary>A restored domain runs (unless asked paused) as its lineage's current incarnation.</summary>
    private void Restored(Domain dom, bool paused)
    {
        ApplyExecLabel(dom);
        if (!paused) dom.Hv.Unpause();
        lock (_lock)
        {
            dom.Ready = true;
            dom.Lineage.Current = dom;
            _lineages.Add(dom.Lineage);
        }
    }

    /// <summary>A guest keeps the ports of its xenstore and console rings across a resume (Linux does), so the new
    /// domain's ports must be the saved ones; a fresh domain hands them out in the same order as the first build.</summary>
    private void WarnIfPortsMoved(Domain dom, IReadOnlyDictionary<int, ulong> saved)
    {
        foreach (int p in new[] { Params.HVM_PARAM_STORE_EVTCHN, Params.HVM_PARAM_CONSOLE_EVTCHN })
            if (saved.TryGetValue(p, out ulong was) && was != dom.Hv.GetHvmParam(p))
                _hv.ConsoleWrite(string.Create(CultureInfo.InvariantCulture,
                    $"d{dom.DomId}: HVM param {p}: port {dom.Hv.GetHvmParam(p)} where the saved domain had {was}"));
    }

    private static void TryDelete(string file)
    {
        try { File.Delete(file); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }
}
