using XenSharp.Toolstack.Config;
using XenSharp.Backends.Xenbus;
using XenSharp.Hypervisor;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using XenSharp.Store;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>A domain that shut down meets its on_* action (destroy, preserve, restart, rename-restart,
/// coredump-*), as xl's domain death handling does; a restart is the next incarnation of its <see cref="Lineage"/>.</summary>
public sealed partial class Host
{
    private void OnDomainStateChanged(uint domId)
    {
        // Runs on a thread pool thread: whatever fails, the daemon carries on. A migration waiting for the guest's
        // stop hears first.
        if (Find(domId) is { } d)
        {
            d.StateChangedAt = UnixMicros();
            lock (d.StateSignal) Monitor.PulseAll(d.StateSignal);
        }
        try { _xs.DomainShutDown(); }
        catch (Exception e) when (e is XenSharp.Store.XenStoreException or ObjectDisposedException) { }
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
                    BeginRestart(d, rename: false);
                    break;
                case ShutdownAction.SoftReset:
                    SoftReset(d);
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
                next = d.Config.CopyAs(name, Guid.NewGuid());
            }
            else
                next = d.Config.CopyAs(name, d.Config.Uuid);
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


    /// <summary>
    /// on_soft_reset="soft-reset" (xl's default), as libxl's soft reset: the domain's backends let go of it (its
    /// console, store connection and PV devices go, with its xenstore directories), the hypervisor resets it in place
    /// (XEN_DOMCTL_soft_reset: memory and vCPU state kept, event channels closed), and it is connected again, its
    /// rings where they were, on fresh event channels named in its HVM params, its devices added again. A device model
    /// keeps running through it, its emulated hardware as it was (libxl saves QEMU's state and restores it in a new
    /// QEMU, to the same effect). A domain the hypervisor will not reset (PV, as on Xen) is destroyed, as libxl's
    /// failed soft reset leaves it.
    /// </summary>
    private void SoftReset(Domain d)
    {
        lock (_lifecycle)
        {
            if (_disposed || d.Destroyed) return;
            var hvd = d.Hv;
            hvd.Pause();
            d.PrimaryConsole?.Dispose();
            d.PrimaryConsole = null;
            StopQdiskBackend(d.DomId);
            RemoveNics(d);
            BackendRegistry? b;
            lock (_lock) b = _backends;
            b?.RemoveDevicesOf(d.DomId);
            d.StoreChannel?.Dispose();
            d.StoreChannel = null;
            try
            {
                DeviceLayout.RemoveBackends(_xs, d.DomId);
                if (d.Store is not null) _xs.Release(d.DomId);
                d.Store = null;
                XenstoreLayout.Remove(_xs, d.DomId, null);
            }
            catch (XenStoreException) { }
            try { hvd.SoftReset(); }
            catch (Exception e) when (e is HypervisorException or NotSupportedException)
            {
                _hv.ConsoleWrite($"d{d.DomId}: soft reset failed: {e.Message}: destroying the domain");
                DestroyLocked(d);
                return;
            }
            lock (_lock) d.ShutdownHandled = false;
            ConnectRings(d, hvd.GetHvmParam(Params.HVM_PARAM_STORE_PFN), hvd.GetHvmParam(Params.HVM_PARAM_CONSOLE_PFN));
            AddDevices(d);
            _hv.ConsoleWrite($"d{d.DomId}: {d.Config.Name}: soft reset");
            hvd.Unpause();
        }
    }

    /// <summary>Testing and the daemon's signal path: shut a domain down as if it had asked to.</summary>
    internal void ShutdownFromOutside(uint domId, ShutdownReason reason)
    {
        Domain? d;
        lock (_lock) _domains.TryGetValue(domId, out d);
        d?.Hv.Shutdown(reason);
    }
}
