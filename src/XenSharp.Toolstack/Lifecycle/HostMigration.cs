using System.Buffers.Binary;
using System.Text;
using XenSharp.Public;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Save;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The daemon's halves of xl migrate (libxl_domain_suspend with LIBXL_SUSPEND_LIVE, and libxl's restore from a
/// stream). xl speaks xl's migration protocol with the other host and hands the bytes over: the sender's connection
/// carries <see cref="MigrationFrames"/> (the live stream and progress), then xl's verdict; the receiver's carries the
/// stream in and the restore's outcome and xl's verdict as lines. Whatever fails, the source guest runs on and the
/// receiver keeps no domain.
/// </summary>
public sealed partial class Host
{
    private MigrateSendResult MigrateSendCheck(MigrateSendRequest r)
    {
        if (r.RemusIntervalMs < 0)
            throw new ControlException($"Remus checkpoint interval {r.RemusIntervalMs} ms: it must be positive", Errno.EINVAL);
        var d = Resolve(r.Domain);
        CheckSavable(d, "migrate");
        return new MigrateSendResult(d.DomId, d.Config.Name);
    }

    /// <summary>Sends domain <paramref name="domId"/> live over <paramref name="conn"/> (after a successful
    /// <see cref="MigrateSendRequest"/>), then destroys it or resumes it as xl says. <paramref name="peerPid"/> is xl's
    /// process, whose pipe to the target (<see cref="MigrateSendRequest.TargetFd"/>) takes the stream directly.</summary>
    public void RunMigrateSend(MigrateSendRequest r, uint domId, Stream conn, int peerPid = 0)
    {
        Domain d;
        lock (_lock)
            if (!_domains.TryGetValue(domId, out d!)) return;
        if (r.RemusIntervalMs > 0)
        {
            RunRemusSend(r, d, conn);
            return;
        }
        MigrationTrace.Mark("source", "pre-copy begins");
        var frames = new FrameWriter(conn);
        string name = d.Config.Name;
        bool suspended = false, cooperative = HasPvDrivers(d);
        long stoppedAt = 0, runningAt = 0, sentAt = 0;
        SuspendRequest? request = null;
        FileStream? target = null;
        string? dmState = null;
        DowntimePriority.Scope urgent = default;
        // The stop-and-copy's own path first (the last pages, the hypervisor's log-dirty, pause and HVM context),
        // then the rest of what runs after the stop.
        var warmup = JitWarmup.Start([typeof(SaveFileWriter), typeof(MigrationRecordWriter), typeof(Platform.XenHypervisorPlatform),
            ..JitWarmup.HypervisorTypes("Common.LogDirty", "HostServices", "X86.Vlapic", "X86.HvmPlatform"),
            typeof(XenSharp.Hypervisor.XenHypervisor), typeof(XenstoreLayout), typeof(Host)]);
        try
        {
            var info = XenSharp.Hypervisor.XenHypervisor.VersionInfo;
            // An HVM guest's device model saves its state once the guest has stopped (libxl's suspend callback);
            // its records follow the libxc stream's last pages and state.
            var source = new SaveSource(d.Hv, ConfigForSave(d, r.ConfigText), (uint)info.Major, (uint)info.Minor, (uint)d.Config.TscMode,
                d.Config.MaxVcpus) { Emulator = HasDeviceModel(d.Config) ? () => DeviceModelRecords(d, dmState!) : null };
            target = OpenTargetPipe(r, peerPid, d);
            var data = new BufferedStream(target ?? (Stream)new DataFrames(frames), 1 << 20);
            long pages;
            lock (d.MemoryUse)
            {
                pages = SaveFileWriter.WriteLive(data, source, new LiveOptions(
                    () =>
                    {
                        Suspend(d);
                        suspended = true;
                        if (HasDeviceModel(d.Config))
                            dmState = SaveDeviceModel(d);
                        // It stopped between the last look at it running and the first news of the stop.
                        stoppedAt = request is { StoppedAt: > 0 } ? request.StoppedAt : UnixMicros();
                        runningAt = request?.RunningAt ?? stoppedAt;
                        MigrationTrace.Mark("source", "guest seen running", runningAt);
                        MigrationTrace.Mark("source", "guest stopped", stoppedAt);
                        if (request is { HeardAt: > 0 }) MigrationTrace.Mark("source", "stop heard", request.HeardAt);
                    },
                    frames.Progress,
                    () => d.Destroyed)
                {
                    Pages = PageProgress(frames, d),
                    Backlog = target is null ? null : () => PipeBacklog(target),
                    // What it has not compiled by then is left: it would compete with the downtime for a core and
                    // the runtime's locks.
                    BeforeStop = () =>
                    {
                        warmup.Wait(TimeSpan.FromSeconds(10));
                        warmup.Stop();
                        urgent = DowntimePriority.Raise();
                    },
                    RequestSuspend = () => (request = BeginSuspend(d)).Wait,
                    Sent = () => sentAt = UnixMicros(),
                });
            }
            data.Flush();
            if (sentAt == 0) sentAt = UnixMicros();
            MigrationTrace.Mark("source", "last byte written", sentAt);
            _hv.ConsoleWrite($"d{d.DomId}: {d.Config.Name} sent live: {pages} pages{(target is null ? " through xl" : "")}");
            // When the guest stopped, for xl's downtime figure (sender and its daemon share a clock), and when the
            // last byte went into xl's pipe if it was written here.
            // The domain gives up its name as its last byte goes, as xl renames it NAME--migratedaway once the target
            // is ready: a target on this host may then take NAME one round trip sooner, in the guest's downtime. Any
            // outcome but commit gives it back.
            bool away = false;
            try
            {
                Rename(d, MigratedAwayName(name));
                away = true;
            }
            catch (ControlException e) { _hv.ConsoleWrite($"d{d.DomId}: keeps its name until xl's verdict: {e.Message}"); }
            frames.Write(MigrationFrames.End, $"{pages} {stoppedAt} {(target is null ? 0 : sentAt)}{(away ? " away" : "")}");
            _hv.ConsoleWrite(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"d{d.DomId}: stopped {(sentAt - stoppedAt) / 1e3:0.0} ms before the last byte went (seen running {(sentAt - runningAt) / 1e3:0.0} ms before)"));
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            string why = e is IOException && target is not null
                ? $"the target went away ({e.Message.Split(" : ")[0]})"
                : ControlErrors.Map(e)?.Message ?? e.Message;
            // Asked to suspend but not stopped yet: the request goes, or the guest has stopped meanwhile.
            request?.Withdraw();
            if (!suspended && request is not null && d.Hv.State is { Shutdown: true, Reason: ShutdownReason.Suspend })
                suspended = true;
            ResumeAfterFailure(d, suspended, cooperative, why);
            try { frames.Write(MigrationFrames.Failed, why); } catch (IOException) { }
            return;
        }
        finally
        {
            urgent.Dispose();
            warmup.Stop();
            target?.Dispose();
            if (dmState is not null) TryDelete(dmState);
        }

        // xl's verdict: "away" (the target has the guest; the domain gives up its name, as xl renames it to
        // NAME--migratedaway before letting the target start its copy, which on this host takes NAME), then "commit"
        // (the target runs it) or anything else, or nothing (the domain takes its name back and runs on).
        string? verdict = null;
        while (true)
        {
            verdict = null;
            try { verdict = ReadLine(conn); }
            catch (IOException) { }
            if (verdict != "away") break;
            try
            {
                Rename(d, MigratedAwayName(name));
                TryFrame(frames, "away");
            }
            catch (ControlException e)
            {
                TryFrame(frames, $"cannot rename the domain away: {e.Message}");
            }
        }
        if (verdict == "commit")
        {
            Destroy(d);
            TryFrame(frames, "destroyed");
        }
        else
        {
            if (d.Config.Name != name)
                try { Rename(d, name); }
                catch (ControlException e) { _hv.ConsoleWrite($"d{d.DomId}: keeps the name {d.Config.Name}: {e.Message}"); }
            ResumeAfterFailure(d, suspended, cooperative, "the receiver did not take the guest");
            TryFrame(frames, "resumed");
        }
    }

    private static long UnixMicros() => (DateTime.UtcNow - DateTime.UnixEpoch).Ticks / 10;

    /// <summary>xl's pipe to the target, opened through /proc as the peer process's descriptor (the stream's bytes
    /// then reach the target with one copy, and no process but this one needs a CPU in the guest's downtime); null
    /// when xl named none or it cannot be opened (another pid namespace, not a pipe): data frames carry the stream.</summary>
    private FileStream? OpenTargetPipe(MigrateSendRequest r, int peerPid, Domain d)
    {
        if (r.TargetFd is not { } fd || fd < 0 || peerPid <= 0) return null;
        string path = $"/proc/{peerPid}/fd/{fd}";
        try
        {
            // Only a pipe: the descriptor is xl's to name, but not a file to write over.
            if (new FileInfo(path).LinkTarget is not { } link || !link.StartsWith("pipe:", StringComparison.Ordinal))
                return null;
            return OpenPipe(path, FileAccess.Write) is { } handle ? new FileStream(handle, FileAccess.Write, bufferSize: 0) : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            _hv.ConsoleWrite($"d{d.DomId}: cannot write to xl's pipe {path} ({e.Message}); the stream goes through xl");
            return null;
        }
    }

    /// <summary>The bytes in xl's pipe to the target that SSHCMD has not read yet (FIONREAD, which a pipe answers at
    /// either end); 0 when it cannot be asked.</summary>
    private static unsafe long PipeBacklog(FileStream pipe)
    {
        int queued = 0;
        return ioctl((int)pipe.SafeFileHandle.DangerousGetHandle(), FIONREAD, &queued) == 0 ? queued : 0;
    }

    private const ulong FIONREAD = 0x541B;

    /// <summary>Opens a pipe through /proc without waiting: a pipe opened for writing whose reader has gone (ENXIO)
    /// would otherwise block until another reader comes, which none will. Blocking again once open. Null when it
    /// cannot be opened.</summary>
    private static Microsoft.Win32.SafeHandles.SafeFileHandle? OpenPipe(string path, FileAccess access)
    {
        const int O_RDONLY = 0, O_WRONLY = 1, O_NONBLOCK = 0x800, O_CLOEXEC = 0x80000, F_GETFL = 3, F_SETFL = 4;
        int fd = open(path, (access == FileAccess.Read ? O_RDONLY : O_WRONLY) | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) return null;
        int flags = fcntl(fd, F_GETFL, 0);
        if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
        {
            close(fd);
            return null;
        }
        return new Microsoft.Win32.SafeHandles.SafeFileHandle(fd, ownsHandle: true);
    }

    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true)]
    private static partial int fcntl(int fd, int cmd, int arg);

    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);

    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int ioctl(int fd, ulong request, int* arg);

    /// <summary>Progress within a round for xl's progress bar, a few times a second: "~Iteration I: SENT of N
    /// pages" (the first round's N is the guest's memory, which the pages sent approach).</summary>
    private static Action<int, long, long> PageProgress(FrameWriter frames, Domain d)
    {
        var since = System.Diagnostics.Stopwatch.StartNew();
        return (round, sent, of) =>
        {
            if (since.ElapsedMilliseconds < 100 && sent < of) return;
            since.Restart();
            if (round == 0) of = Math.Max(sent, (long)(d.Config.MaxMemKb / 4));
            frames.Progress($"~Iteration {round}: {sent} of {of} pages");
        };
    }

    private void ResumeAfterFailure(Domain d, bool suspended, bool cooperative, string why)
    {
        _hv.ConsoleWrite($"d{d.DomId}: migration failed ({why}); the domain runs on here");
        if (!suspended || d.Destroyed) return;
        // The device model emulates again before the guest runs (libxl__domain_resume).
        if (HasDeviceModel(d.Config))
            try { ResumeDeviceModel(d); }
            catch (ControlException e) { _hv.ConsoleWrite($"d{d.DomId}: cannot resume its device model: {e.Message}"); }
        try { d.Hv.ResumeSuspended(cooperative); }
        catch (XenSharp.Hypervisor.HypervisorException e) { _hv.ConsoleWrite($"d{d.DomId}: cannot resume: {e.Message}"); }
    }

    private static void TryFrame(FrameWriter frames, string outcome)
    {
        try { frames.Write(MigrationFrames.Outcome, outcome); } catch (IOException) { }
    }

    /// <summary>Restores a domain from the stream on <paramref name="conn"/> (after a successful
    /// <see cref="MigrateReceiveRequest"/>), paused; unpauses it when xl says so, else destroys it.
    /// <paramref name="peerPid"/> is xl's process, whose pipe from the sender (<see cref="MigrateReceiveRequest.SourceFd"/>)
    /// gives the stream directly.</summary>
    public void RunMigrateReceive(MigrateReceiveRequest r, Stream conn, int peerPid = 0)
    {
        if (r.Remus)
        {
            RunRemusReceive(r, conn);
            return;
        }
        // From the state's arrival to the unpause, this thread is the guest's downtime.
        DowntimePriority.Scope urgent = default;
        try { Receive(r, conn, peerPid, () => urgent = DowntimePriority.Raise()); }
        finally { urgent.Dispose(); }
    }

    private void Receive(MigrateReceiveRequest r, Stream conn, int peerPid, Action stateArrives)
    {
        RestoreResult result;
        FileStream? source = null, reply = null;
        try
        {
            if (r.SourceFd is not null)
            {
                source = OpenPeerPipe(r.SourceFd.Value, peerPid, FileAccess.Read);
                reply = source is null || r.ReplyFd is null ? null : OpenPeerPipe(r.ReplyFd.Value, peerPid, FileAccess.Write);
                if (reply is null)
                {
                    source?.Dispose();
                    source = null;
                }
                if (!TryLine(conn, source is null ? "relay" : "direct"))
                {
                    source?.Dispose();
                    reply?.Dispose();
                    return;
                }
            }
            // The backends run before the stream ends, as a host's do before a domain arrives: their start is not
            // part of the guest's downtime; nor is the compilation of what runs in it, which stops when it begins.
            _ = Backends;
            // What runs once the state arrives, in that order: the context and params loaded, the vCPUs brought up
            // (a daemon's first domain starts its pCPU threads), the rings, xenstore and console connected, the
            // devices, the rename and unpause; then the rest.
            var warmup = JitWarmup.Start([typeof(SaveFileReader), typeof(MigrationRecordReader), typeof(Platform.XenHypervisorPlatform),
                ..JitWarmup.HypervisorTypes("X86.Vlapic", "X86.HvmPlatform", "Common.Vcpu", "HostServices", "Scheduling.Pcpu",
                    "Scheduling.Cpupools", "Scheduling.CreditScheduler", "Scheduling.Credit2Scheduler", "Common.EventChannels",
                    "Common.GrantTable", "Dom0Services"),
                typeof(XenSharp.Hypervisor.XenHypervisor), typeof(XenstoreLayout), typeof(DeviceLayout),
                ..typeof(XenSharp.Store.XenStored).Assembly.GetTypes(), ..typeof(XenSharp.Backends.Console.PrimaryConsole).Assembly.GetTypes()
                    .Where(t => t.Namespace == typeof(XenSharp.Backends.Console.PrimaryConsole).Namespace), typeof(Host)]);
            _hv.StartPcpus();
            MigrationTrace.Mark("target", "restore begins");
            var reader = new SaveFileReader(source ?? conn, "migration stream")
            {
                OnState = () =>
                {
                    warmup.Stop();
                    stateArrives();
                    MigrationTrace.Mark("target", "state arrives");
                },
            };
            try { result = RestoreFrom(reader, "migration stream", null, null, r.ConfigDirectory, paused: true, incoming: true); }
            finally { warmup.Stop(); }
        }
        catch (Exception e) when (ControlErrors.Map(e) is { } failure)
        {
            source?.Dispose();
            reply?.Dispose();
            TryLine(conn, $"error {failure.Errno} {failure.Message.ReplaceLineEndings(" ")}");
            return;
        }
        Domain? d;
        lock (_lock) _domains.TryGetValue(result.DomId, out d);
        if (source is not null && reply is not null)
        {
            using (source)
            using (reply)
                if (d is not null) FinishReceiveDirect(d, result, conn, source, reply);
            return;
        }
        if (d is null) return;
        string? verdict = null;
        MigrationTrace.Mark("target", "domain restored, paused");
        if (TryLine(conn, $"ok {result.DomId} {result.Name}"))
            try { verdict = ReadLine(conn); }
            catch (IOException) { }
        MigrationTrace.Mark("target", $"verdict {verdict}");
        if (verdict == "unpause")
        {
            try { TakeIncomingName(d); }
            catch (ControlException e)
            {
                _hv.ConsoleWrite($"d{d.DomId}: cannot take the name {d.ArrivingAs}: {e.Message}; the domain is destroyed");
                Destroy(d);
                TryLine(conn, $"error {e.Errno} {e.Message.ReplaceLineEndings(" ")}");
                return;
            }
            d.Hv.Unpause();
            MigrationTrace.Mark("target", "unpaused");
            // xl may yet take it back, when its report could not reach the sender (which then resumes its copy).
            string? after = null;
            if (TryLine(conn, "ok"))
                try { after = ReadLine(conn); }
                catch (IOException) { }
            if (after == "destroy")
            {
                _hv.ConsoleWrite($"d{d.DomId}: the sender never heard that the domain started here; it is destroyed");
                Destroy(d);
            }
        }
        else
        {
            _hv.ConsoleWrite($"d{d.DomId}: incoming migration abandoned; the domain is destroyed");
            Destroy(d);
            TryLine(conn, "destroyed");
        }
    }

    /// <summary>
    /// The rest of xl's protocol at the receiving end (xl_migrate.c's migrate_receive), spoken here when the stream came
    /// straight from xl's pipe: "ready" to the sender, its permission, the domain renamed NAME and unpaused, the report
    /// (status 0, or 1 when it could not be started); xl hears <c>started</c> or <c>failed MESSAGE</c>. Whatever fails
    /// before the report has reached the sender leaves no domain here: the sender resumes its copy then.
    /// </summary>
    private void FinishReceiveDirect(Domain d, RestoreResult result, Stream conn, Stream fromSender, Stream toSender)
    {
        TryLine(conn, $"ok {result.DomId} {result.Name}");
        string? failure = null;
        try
        {
            toSender.Write(XlMigrationMessages.ReceiverReady);
            if (!ReadExpected(fromSender, XlMigrationMessages.PermissionToGo))
                failure = "Failure, destroying our copy.";
        }
        catch (IOException) { failure = "Failure, destroying our copy."; }
        if (failure is not null)
        {
            Destroy(d);
            TryLine(conn, $"failed {failure}");
            return;
        }
        MigrationTrace.Mark("target", "permission to start");
        byte status = 0;
        try { TakeIncomingName(d); }
        catch (ControlException e)
        {
            _hv.ConsoleWrite($"d{d.DomId}: cannot take the name {d.ArrivingAs}: {e.Message}; the domain is destroyed");
            Destroy(d);
            status = 1;
            failure = $"unpause failed: error {e.Errno} {e.Message.ReplaceLineEndings(" ")}";
        }
        if (status == 0)
        {
            d.Hv.Unpause();
            MigrationTrace.Mark("target", "unpaused");
        }
        try
        {
            Span<byte> report = stackalloc byte[XlMigrationMessages.Report.Length + 1];
            XlMigrationMessages.Report.CopyTo(report);
            report[^1] = status;
            toSender.Write(report);
        }
        catch (IOException)
        {
            if (status == 0)
            {
                // The sender cannot know: it resumes its copy, so this one must not run.
                _hv.ConsoleWrite($"d{d.DomId}: the sender never heard that the domain started here; it is destroyed");
                Destroy(d);
                failure = "the sender did not get our report; destroying our copy.";
            }
        }
        TryLine(conn, failure is null ? "started" : $"failed {failure}");
    }

    private static bool ReadExpected(Stream s, byte[] expected)
    {
        var got = new byte[expected.Length];
        try { return s.ReadAtLeast(got, got.Length, throwOnEndOfStream: false) == got.Length && got.AsSpan().SequenceEqual(expected); }
        catch (IOException) { return false; }
    }

    /// <summary>One of xl's pipes to and from SSHCMD, opened through /proc as the peer's descriptor <paramref name="fd"/>;
    /// null when it cannot be (not a pipe, another pid namespace).</summary>
    private FileStream? OpenPeerPipe(int fd, int peerPid, FileAccess access)
    {
        if (fd < 0 || peerPid <= 0) return null;
        string path = $"/proc/{peerPid}/fd/{fd}";
        try
        {
            if (new FileInfo(path).LinkTarget is not { } link || !link.StartsWith("pipe:", StringComparison.Ordinal))
                return null;
            // Unbuffered: nothing past the stream's END may be taken before the sender's permission is read.
            return OpenPipe(path, access) is { } handle ? new FileStream(handle, access, bufferSize: 0) : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            _hv.ConsoleWrite($"cannot read xl's pipe {path} ({e.Message}); the stream comes through xl");
            return null;
        }
    }

    private static bool TryLine(Stream conn, string line)
    {
        try
        {
            conn.Write(Encoding.UTF8.GetBytes(line + "\n"));
            conn.Flush();
            return true;
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException) { return false; }
    }

    /// <summary>One short line from the raw connection, or null at its end.</summary>
    private static string? ReadLine(Stream conn)
    {
        var sb = new StringBuilder();
        Span<byte> b = stackalloc byte[1];
        while (sb.Length < 256)
        {
            if (conn.Read(b) == 0) return null;
            if (b[0] == '\n') return sb.ToString();
            sb.Append((char)b[0]);
        }
        return null;
    }

    private sealed class FrameWriter(Stream conn)
    {
        private readonly Lock _lock = new();

        public void Write(byte kind, ReadOnlySpan<byte> payload)
        {
            Span<byte> head = stackalloc byte[5];
            head[0] = kind;
            BinaryPrimitives.WriteInt32LittleEndian(head[1..], payload.Length);
            lock (_lock)
            {
                conn.Write(head);
                conn.Write(payload);
                if (kind != MigrationFrames.Data) conn.Flush();
            }
        }

        public void Write(byte kind, string text) => Write(kind, Encoding.UTF8.GetBytes(text));
        public void Progress(string line) => Write(MigrationFrames.Progress, line);
    }

    /// <summary>The stream's bytes as data frames.</summary>
    private sealed class DataFrames(FrameWriter frames) : Stream
    {
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
        public override void Write(ReadOnlySpan<byte> buffer)
        {
            // Frames of at most MigrationFrames.MaxData bytes, which xl reads into one buffer.
            for (int i = 0; i < buffer.Length; i += MigrationFrames.MaxData)
                frames.Write(MigrationFrames.Data, buffer[i..Math.Min(buffer.Length, i + MigrationFrames.MaxData)]);
        }
        public override void Flush() { }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }
}
