using System.Diagnostics;
using System.Globalization;
using XenSharp.Public.Hvm;
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
/// guest's domain is made a running one only then (its page tables pinned, its vCPUs loaded), as libxc does.
/// Disk replication and network buffering are not done: the guest's disks must be shared and what it sent on the
/// network after the last checkpoint is not held back.
/// </summary>
public sealed partial class Host
{
    private void RunRemusSend(MigrateSendRequest r, Domain d, Stream conn)
    {
        var frames = new FrameWriter(conn);
        bool suspended = false, cooperative = HasPvDrivers(d);
        int checkpoint = 0;
        try
        {
            var info = XenSharp.Hypervisor.XenHypervisor.VersionInfo;
            var source = new SaveSource(d.Hv, ConfigForSave(d, r.ConfigText), (uint)info.Major, (uint)info.Minor, (uint)d.Config.TscMode,
                d.Config.MaxVcpus);
            var data = new BufferedStream(new DataFrames(frames), 1 << 20);
            SaveFileWriter.LiveStream live;
            long sent;
            var paused = new Stopwatch();
            lock (d.MemoryUse)
            {
                if (d.Destroyed) throw new ControlException($"domain {d.DomId} was destroyed");
                live = new SaveFileWriter.LiveStream(data, source);
            }
            using (live)
            {
                lock (d.MemoryUse)
                {
                    live.PreCopy(new LiveOptions(() => { Suspend(d); suspended = true; paused.Restart(); }, frames.Progress, () => d.Destroyed)
                    {
                        Pages = PageProgress(frames, d),
                    });
                    sent = live.SendSuspended();
                    live.Checkpoint();
                }
                while (true)
                {
                    data.Flush();
                    d.Hv.ResumeSuspended(cooperative);
                    suspended = false;
                    checkpoint++;
                    frames.Progress(string.Create(CultureInfo.InvariantCulture,
                        $"Checkpoint {checkpoint}: {sent} pages, {live.Total} in all, guest stopped {paused.Elapsed.TotalMilliseconds:0.0} ms"));
                    if (checkpoint == 1)
                        _hv.ConsoleWrite($"d{d.DomId}: {d.Config.Name} protected by Remus: the backup holds its first checkpoint");
                    if (!WaitUnlessDestroyed(d, r.RemusIntervalMs)) break;
                    Suspend(d);
                    suspended = true;
                    paused.Restart();
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
        string why = "";
        while (true)
        {
            List<SaveFileReader.PendingRecord> records;
            bool ended;
            try { (records, ended) = reader.ReadCheckpoint(); }
            catch (Exception e) when (e is SaveFileException or IOException or ObjectDisposedException)
            {
                why = e.Message;
                break;
            }
            try
            {
                lock (d.MemoryUse)
                {
                    if (d.Destroyed) break;
                    reader.Apply(d.Hv, records);
                }
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
        }
        catch (Exception e) when (e is SaveFileException or XenSharp.Hypervisor.HypervisorException)
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
