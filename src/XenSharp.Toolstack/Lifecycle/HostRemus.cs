using System.Diagnostics;
using System.Globalization;
using XenSharp.Public.Hvm;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Save;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// Remus (xl remus, libxl_domain_remus_start) on both hosts. The primary sends a checkpointed stream: the live
/// migration's rounds, then, with the guest suspended, its last pages and state and a checkpoint mark; it resumes the
/// guest and, every interval, suspends it again for the pages dirtied since and its state, and marks the next
/// checkpoint. The backup builds the domain from the first checkpoint and keeps it paused; each later checkpoint is
/// read whole before it is applied, so a stream cut inside one leaves the last complete one. When the stream ends
/// (the primary or its host died, or xl on it went away) the backup unpauses the guest from there: the failover. A PV
/// guest's domain is made a running one only then (its page tables pinned, its vCPUs loaded), as libxc does. An HVM
/// guest's QEMU is stopped and saves its devices' state at every checkpoint, whose libxl part carries it (emulator
/// records before CHECKPOINT_END), and goes on with the guest; the backup keeps the last complete checkpoint's and
/// starts its QEMU from it only at the failover.
/// Disk replication and network buffering are not done: the guest's disks must be shared and what it sent on the
/// network after the last checkpoint is not held back.
/// </summary>
public sealed partial class Host
{
    private void RunRemusSend(MigrateSendRequest r, Domain d, Stream conn)
    {
        var frames = new FrameWriter(conn);
        bool suspended = false, cooperative = HasPvDrivers(d), hvm = HasDeviceModel(d.Config);
        int checkpoint = 0;
        string? dmState = null;
        var paused = new Stopwatch();
        // Each checkpoint starts so: the guest suspended, then its device model stopped with its state saved.
        void Stop()
        {
            Suspend(d);
            suspended = true;
            paused.Restart();
            if (hvm) dmState = SaveDeviceModel(d);
        }
        try
        {
            var info = XenSharp.Hypervisor.XenHypervisor.VersionInfo;
            // An HVM guest's QEMU saves its devices' state at every checkpoint once the guest has stopped (libxl's
            // suspend callback); its records end the checkpoint's libxl part.
            var source = new SaveSource(d.Hv, ConfigForSave(d, r.ConfigText), (uint)info.Major, (uint)info.Minor, (uint)d.Config.TscMode,
                d.Config.MaxVcpus) { Emulator = hvm ? () => DeviceModelRecords(d, dmState!) : null };
            var data = new BufferedStream(new DataFrames(frames), 1 << 20);
            SaveFileWriter.LiveStream live;
            long sent;
            lock (d.MemoryUse)
            {
                if (d.Destroyed) throw new ControlException($"domain {d.DomId} was destroyed");
                live = new SaveFileWriter.LiveStream(data, source);
            }
            using (live)
            {
                lock (d.MemoryUse)
                {
                    live.PreCopy(new LiveOptions(Stop, frames.Progress, () => d.Destroyed)
                    {
                        Pages = PageProgress(frames, d),
                    });
                    sent = live.SendSuspended();
                    live.Checkpoint();
                }
                while (true)
                {
                    data.Flush();
                    // The device model emulates again before the guest runs (libxl__domain_resume).
                    if (hvm)
                    {
                        TryDelete(dmState!);
                        ResumeDeviceModel(d);
                    }
                    d.Hv.ResumeSuspended(cooperative);
                    suspended = false;
                    checkpoint++;
                    frames.Progress(string.Create(CultureInfo.InvariantCulture,
                        $"Checkpoint {checkpoint}: {sent} pages, {live.Total} in all, guest stopped {paused.Elapsed.TotalMilliseconds:0.0} ms"));
                    if (checkpoint == 1)
                        _hv.ConsoleWrite($"d{d.DomId}: {d.Config.Name} protected by Remus: the backup holds its first checkpoint");
                    if (!WaitUnlessDestroyed(d, r.RemusIntervalMs)) break;
                    Stop();
                    lock (d.MemoryUse)
                    {
                        if (d.Destroyed) break;
                        sent = live.SendSuspended();
                        live.Checkpoint();
                    }
                }
            }
            _hv.ConsoleWrite($"d{d.DomId}: destroyed while Remus protected it; the backup takes over");
            TryFrame(frames, "destroyed");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            if (d.Destroyed)
            {
                TryFrame(frames, "destroyed");
                return;
            }
            string why = ControlErrors.Map(e)?.Message ?? e.Message;
            ResumeAfterFailure(d, suspended, cooperative, $"Remus after {checkpoint} checkpoints: {why}");
            try { frames.Write(MigrationFrames.Failed, why); } catch (IOException) { }
        }
        finally
        {
            if (dmState is not null) TryDelete(dmState);
        }
    }

    /// <summary>Waits a checkpoint interval; false when the domain was destroyed meanwhile.</summary>
    private static bool WaitUnlessDestroyed(Domain d, int ms)
    {
        var until = Stopwatch.StartNew();
        while (until.ElapsedMilliseconds < ms)
        {
            if (d.Destroyed) return false;
            Thread.Sleep((int)Math.Clamp(ms - until.ElapsedMilliseconds, 1, 20));
        }
        return !d.Destroyed;
    }

    /// <summary>The backup's half: the domain from the first checkpoint, paused; every later checkpoint applied once
    /// it is complete; the failover when the stream ends.</summary>
    private void RunRemusReceive(MigrateReceiveRequest r, Stream conn)
    {
        var reader = new SaveFileReader(conn, "Remus stream");
        RestoreResult result;
        try
        {
            result = RestoreFrom(reader, "Remus stream", null, null, r.ConfigDirectory, paused: true, checkpointed: true);
        }
        catch (Exception e) when (ControlErrors.Map(e) is { } failure)
        {
            TryLine(conn, $"error {failure.Errno} {failure.Message.ReplaceLineEndings(" ")}");
            return;
        }
        Domain? d;
        lock (_lock) _domains.TryGetValue(result.DomId, out d);
        if (d is null) return;
        _hv.ConsoleWrite($"d{d.DomId}: Remus backup of {d.Config.Name}: holds checkpoint 1, paused");
        int held = 1;
        bool hvm = HasDeviceModel(d.Config);
        // An HVM domain's device model state as of the last complete checkpoint: its QEMU is started from it at
        // the failover.
        var emulator = reader.FirstCheckpointEmulator;
        string why = "";
        while (true)
        {
            List<SaveFileReader.PendingRecord> records;
            bool ended;
            EmulatorState? next;
            try { (records, ended, next) = reader.ReadCheckpoint(); }
            catch (Exception e) when (e is SaveFileException or IOException or ObjectDisposedException)
            {
                why = e.Message;
                break;
            }
            try
            {
                if (next is not null && !hvm)
                    throw new SaveFileException($"Remus stream: checkpoint {held + 1} carries device model state, which a {DomainConfig.TypeName(d.Config.Type)} domain has none of");
                // Each checkpoint of an HVM domain carries its QEMU's state; a final END with no pages may not.
                if (hvm && next?.Context is null && !(ended && records.Count == 0))
                    throw new SaveFileException($"Remus stream: checkpoint {held + 1} of an HVM domain carries no device model state");
                lock (d.MemoryUse)
                {
                    if (d.Destroyed) break;
                    reader.Apply(d.Hv, records);
                }
                if (next?.Context is not null) emulator = next;
            }
            catch (Exception e) when (e is SaveFileException or XenSharp.Hypervisor.HypervisorException)
            {
                // Half applied: no consistent state is left to resume.
                _hv.ConsoleWrite($"d{d.DomId}: Remus checkpoint {held + 1} cannot be applied ({e.Message}); the backup is destroyed");
                Destroy(d);
                TryLine(conn, $"error 5 checkpoint {held + 1} cannot be applied: {e.Message.ReplaceLineEndings(" ")}");
                return;
            }
            held++;
            if (ended)
            {
                why = "the primary ended the stream";
                break;
            }
        }
        if (d.Destroyed)
        {
            TryLine(conn, "error 3 the backup domain was destroyed");
            return;
        }
        try
        {
            lock (d.MemoryUse)
            {
                // A PV guest is made a running one only now (libxc's stream_complete at the failover): its page
                // tables localised and pinned, its vCPUs loaded, its start_info given the rings' frames and the
                // ports they were connected to at the first checkpoint (each checkpoint brought the primary's).
                if (!d.Destroyed && reader.CompletePv() is { } pv)
                    Builder.PvBuilder.SetEventChannels(d.Hv.Memory, pv.StartInfoPfn, (uint)d.Hv.GetHvmParam(Params.HVM_PARAM_STORE_EVTCHN),
                        (uint)d.Hv.GetHvmParam(Params.HVM_PARAM_CONSOLE_EVTCHN), pv.Is32);
            }
            // An HVM guest's QEMU starts now, loading the last complete checkpoint's device state (-incoming), and the
            // guest runs once it does.
            if (hvm && !d.Destroyed)
                StartRestoredDeviceModel(d, emulator ?? throw new SaveFileException("Remus stream: no device model state for the HVM domain"));
        }
        catch (Exception e) when (e is SaveFileException or XenSharp.Hypervisor.HypervisorException or ControlException or IOException)
        {
            _hv.ConsoleWrite($"d{d.DomId}: Remus failover: checkpoint {held} cannot be started ({e.Message}); the backup is destroyed");
            Destroy(d);
            TryLine(conn, $"error 5 checkpoint {held} cannot be started: {e.Message.ReplaceLineEndings(" ")}");
            return;
        }
        d.Hv.Unpause();
        _hv.ConsoleWrite($"d{d.DomId}: Remus failover: {why}; {d.Config.Name} resumes from checkpoint {held}");
        TryLine(conn, $"failover {d.DomId} {d.Config.Name} {held}");
    }
}
