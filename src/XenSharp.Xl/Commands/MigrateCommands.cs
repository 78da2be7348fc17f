using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Xl.Commands;

/// <summary>
/// xl migrate and xl migrate-receive (xl_migrate.c): the sender runs <c>SSHCMD HOST xl migrate-receive</c> and speaks
/// xl's migration protocol over its stdin and stdout: the receiver's banner, the stream (xl's header and the libxl
/// stream, written live by the daemon), the receiver's "ready", the sender's permission to go, and the receiver's
/// report with one status byte. Only then does the source domain go; if anything fails before, it runs on.
/// </summary>
internal static partial class MigrateCommands
{
    internal static readonly byte[] Banner = XlMigrationMessages.Banner;
    private static readonly byte[] ReceiverReady = XlMigrationMessages.ReceiverReady;
    private static readonly byte[] PermissionToGo = XlMigrationMessages.PermissionToGo;
    private static readonly byte[] Report = XlMigrationMessages.Report;

    public const char DebugOption = (char)0x100;

    public static int Migrate(XlContext ctx, ParsedArgs a)
    {
        if (a.Operands.Count > 2)
            throw new UsageException("too many arguments");
        string domain = a.Operands[0], host = a.Operands[1];
        string? config = null;
        if (a.Value('C') is { } configFile)
        {
            try { config = UserFile.ReadAllText(configFile); }
            catch (UserFileException e)
            {
                ctx.Err.WriteLine($"Failed to read config file: {configFile}: {e.Reason}");
                return 1;
            }
        }
        bool debug = a.Has(DebugOption);
        string rune = $"exec {a.Value('s') ?? "ssh"} {host} xl migrate-receive{(debug ? " -d" : "")}";
        var psi = new ProcessStartInfo("/bin/sh", ["-c", rune])
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false,
        };
        using var child = Process.Start(psi) ?? throw new ControlException($"cannot run {rune}");
        var toTarget = child.StandardInput.BaseStream;
        var fromTarget = child.StandardOutput.BaseStream;
        WidenPipe(toTarget);
        try
        {
            if (!ReadExpected(fromTarget, Banner))
            {
                ctx.Err.WriteLine("migration sender: the target did not send its banner (is xl migrate-receive there?)");
                return 1;
            }
            using var client = ctx.Connect();
            // The daemon writes the stream into the pipe itself, with no copy through here in the guest's downtime.
            int? targetFd = toTarget is System.IO.Pipes.PipeStream pipe ? (int)pipe.SafePipeHandle.DangerousGetHandle() : null;
            var start = client.Send(new MigrateSendRequest(domain, config, debug, TargetFd: targetFd));
            ctx.Err.WriteLine($"Saving to migration stream new xl format (info 0x2/0x0/{config?.Length ?? 0})");
            var conn = client.Stream;
            var clock = Stopwatch.StartNew();
            long stoppedAt = 0, sentAt = 0;
            bool renamedAway = false;
            if (!MigrationProgress.Run(ctx.Err, "migration sender",
                    progress => SendStream(progress, conn, toTarget, start, out stoppedAt, out sentAt, out renamedAway)))
                return 1;
            if (sentAt == 0) sentAt = UnixMicros(); // the stream came through here: its last byte went just now
            MigrationTrace.Mark("xl migrate", "end of the stream");

            if (!ReadExpected(fromTarget, ReceiverReady))
            {
                ctx.Err.WriteLine("migration sender: Target failed to acknowledge the transfer; the domain runs on here");
                Verdict(conn, "abort");
                return 1;
            }
            MigrationTrace.Mark("xl migrate", "target ready");
            ctx.Err.WriteLine("migration sender: Target has acknowledged transfer.");
            // As xl: the domain gives up its name before the target may start its copy, which takes it (the same
            // name on a migration to this host); a failure from here on gives it back. The daemon has done so as the
            // stream ended, unless it could not.
            string away = renamedAway ? "away" : Verdict(conn, "away");
            if (away != "away")
            {
                ctx.Err.WriteLine($"migration sender: {away}; the domain runs on here");
                Verdict(conn, "abort");
                return 1;
            }
            MigrationTrace.Mark("xl migrate", "renamed away");
            ctx.Err.WriteLine("migration sender: Giving target permission to start.");
            bool reported;
            var status = new byte[1];
            try
            {
                toTarget.Write(PermissionToGo);
                toTarget.Flush();
                reported = ReadExpected(fromTarget, Report) && fromTarget.ReadAtLeast(status, 1, throwOnEndOfStream: false) == 1;
            }
            catch (IOException) { reported = false; }
            if (!reported || status[0] != 0)
            {
                ctx.Err.WriteLine(reported
                    ? $"migration sender: Target reported a failure to start the domain ({status[0]}); the domain runs on here"
                    : "migration sender: Target gave no report after permission to start; the domain runs on here");
                Verdict(conn, "abort");
                return 1;
            }
            MigrationTrace.Mark("xl migrate", "target reports the guest running");
            ctx.Err.WriteLine("migration sender: Target reports successful startup.");
            // Downtime as QEMU's query-migrate counts it: from the guest's stop to the last byte sent; and until the
            // target said it runs the guest.
            double downtime = (sentAt - stoppedAt) / 1e6, resumed = (UnixMicros() - stoppedAt) / 1e6;
            string outcome = Verdict(conn, "commit");
            if (outcome != "destroyed")
            {
                ctx.Err.WriteLine($"migration sender: the source domain was not destroyed ({outcome})");
                return 1;
            }
            ctx.Err.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"migration sender: total {clock.Elapsed.TotalSeconds:0.000} s, downtime {downtime:0.000} s, running at the target after {resumed:0.000} s"));
            ctx.Err.WriteLine("Migration successful.");
            return 0;
        }
        finally
        {
            try { toTarget.Close(); } catch (IOException) { }
            if (!child.WaitForExit(10_000)) child.Kill();
        }
    }

    /// <summary>Copies the daemon's data frames to the target and shows its progress; false when the stream failed
    /// (the daemon has resumed the domain) or the target went away (closing the connection tells the daemon).</summary>
    private static bool SendStream(MigrationProgress progress, Stream conn, Stream toTarget, MigrateSendResult start, out long stoppedAt,
        out long sentAt, out bool renamedAway)
    {
        stoppedAt = sentAt = 0;
        renamedAway = false;
        var head = new byte[5];
        var buffer = new byte[MigrationFrames.MaxData];
        while (true)
        {
            if (conn.ReadAtLeast(head, 5, throwOnEndOfStream: false) < 5)
            {
                progress.WriteLine("migration sender: xensharpd closed the connection");
                return false;
            }
            int length = BinaryPrimitives.ReadInt32LittleEndian(head.AsSpan(1));
            if (length < 0 || length > buffer.Length) throw new ControlException("xensharpd sent a malformed migration frame");
            conn.ReadExactly(buffer, 0, length);
            switch (head[0])
            {
                case MigrationFrames.Data:
                    try { toTarget.Write(buffer, 0, length); }
                    catch (IOException e)
                    {
                        progress.WriteLine($"migration sender: the target went away ({e.Message}); domain {start.DomId} runs on here");
                        conn.Close();
                        return false;
                    }
                    break;
                case MigrationFrames.Progress:
                    progress.Report(Encoding.UTF8.GetString(buffer, 0, length));
                    break;
                case MigrationFrames.End:
                    toTarget.Flush();
                    var end = Encoding.ASCII.GetString(buffer, 0, length).Split(' ');
                    if (end.Length > 1) long.TryParse(end[1], out stoppedAt);
                    if (end.Length > 2) long.TryParse(end[2], out sentAt);
                    renamedAway = end.Length > 3 && end[3] == "away";
                    return true;
                case MigrationFrames.Failed:
                    progress.WriteLine($"migration sender: {Encoding.UTF8.GetString(buffer, 0, length)}; domain {start.DomId} runs on here");
                    return false;
                default:
                    throw new ControlException($"xensharpd sent migration frame kind {head[0]}");
            }
        }
    }

    /// <summary>Lets the pipe to SSHCMD hold the suspended guest's last pages (16 MiB as root, else the
    /// unprivileged 1 MiB), as a TCP connection's buffers would: they leave as fast as the daemon sends them, not 64 KiB
    /// at a time as the other side drains them, which is the guest's downtime. The first pass gains too: on a loaded
    /// host each time the sender waits for the receiver to drain the pipe (and the receiver for the sender to fill it)
    /// costs a wait for a core.</summary>
    private static void WidenPipe(Stream s)
    {
        if (s is not System.IO.Pipes.PipeStream pipe) return;
        int fd = (int)pipe.SafePipeHandle.DangerousGetHandle();
        if (fcntl(fd, F_SETPIPE_SZ, 16 << 20) < 0 && fcntl(fd, F_SETPIPE_SZ, 4 << 20) < 0)
            _ = fcntl(fd, F_SETPIPE_SZ, 1 << 20);
    }

    private const int F_SETPIPE_SZ = 1031; // Linux's F_LINUX_SPECIFIC_BASE + 7

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fcntl(int fd, int cmd, int arg);

    /// <summary>Microseconds since 1970, the clock the daemon's stop time is on.</summary>
    internal static long UnixMicros() => (DateTime.UtcNow - DateTime.UnixEpoch).Ticks / 10;

    private static string Verdict(Stream conn, string verdict)
    {
        try
        {
            conn.Write(Encoding.ASCII.GetBytes(verdict + "\n"));
            conn.Flush();
            var head = new byte[5];
            if (conn.ReadAtLeast(head, 5, throwOnEndOfStream: false) < 5) return "no answer";
            var text = new byte[Math.Clamp(BinaryPrimitives.ReadInt32LittleEndian(head.AsSpan(1)), 0, 4096)];
            conn.ReadExactly(text);
            return Encoding.UTF8.GetString(text);
        }
        catch (IOException e) { return e.Message; }
    }

    public static int MigrateReceive(XlContext ctx, ParsedArgs a)
    {
        if (a.Operands.Count > 0)
            throw new UsageException("too many arguments");
        bool remus = a.Has('r');
        using var stdin = Console.OpenStandardInput();
        using var stdout = Console.OpenStandardOutput();
        stdout.Write(Banner);
        stdout.Flush();
        ctx.Err.WriteLine("migration target: Ready to receive domain.");
        using var client = ctx.Connect();
        // Not for Remus, whose stream ends at the failover: the relay below tells the daemon so.
        int? sourceFd = remus ? null : 0;
        client.Send(new MigrateReceiveRequest(Environment.CurrentDirectory, remus, sourceFd, remus ? null : 1));
        var conn = client.Stream;
        bool direct = false;
        if (sourceFd is not null)
        {
            string? how;
            try { how = ReadLine(conn); }
            catch (IOException) { how = null; }
            if (how is null)
            {
                ctx.Err.WriteLine("migration target: xensharpd closed the connection; nothing was kept");
                return 1;
            }
            direct = how == "direct";
        }

        // One reader of stdin: the stream goes to the daemon until it has the whole domain; what comes after (the
        // sender's permission) is the handshake's. When the daemon reads the stream from stdin itself, nothing here
        // reads stdin until it has answered.
        int restored = 0;
        var after = new BlockingCollection<byte[]>();
        if (direct) after.CompleteAdding();
        var pump = new Thread(() =>
        {
            var buf = new byte[1 << 20];
            try
            {
                int n;
                while ((n = stdin.Read(buf)) > 0)
                {
                    if (Volatile.Read(ref restored) != 0) after.Add(buf[..n]);
                    else conn.Write(buf, 0, n);
                }
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException) { }
            // A Remus stream's end is the failover: the daemon still answers then.
            if (remus) client.ShutdownSend();
            else if (Volatile.Read(ref restored) == 0)
                try { conn.Close(); } catch (IOException) { }
            after.CompleteAdding();
        }) { IsBackground = true, Name = "migrate-receive" };
        if (!direct) pump.Start();

        string? line;
        try { line = ReadLine(conn); }
        catch (Exception e) when (e is IOException or ObjectDisposedException) { line = null; }
        Volatile.Write(ref restored, 1);
        if (remus) return RemusFailover(ctx, line);
        if (line is null || !line.StartsWith("ok ", StringComparison.Ordinal))
        {
            ctx.Err.WriteLine(line is null
                ? "migration target: the stream ended before the domain was complete; nothing was kept"
                : $"migration target: restore failed: {line}");
            return 1;
        }
        MigrationTrace.Mark("xl migrate-receive", "domain restored");
        ctx.Err.WriteLine($"migration target: Transfer complete ({line[3..]}), requesting permission to start domain.");
        if (direct)
        {
            // The daemon speaks with the sender from here.
            string? outcome;
            try { outcome = ReadLine(conn); }
            catch (IOException) { outcome = null; }
            if (outcome == "started")
            {
                ctx.Err.WriteLine("migration target: Domain started successsfully.");
                return 0;
            }
            ctx.Err.WriteLine(outcome is not null && outcome.StartsWith("failed ", StringComparison.Ordinal)
                ? $"migration target: {outcome[7..]}"
                : "migration target: xensharpd closed the connection; the domain is destroyed");
            return 1;
        }
        bool asked;
        try
        {
            stdout.Write(ReceiverReady);
            stdout.Flush();
            asked = true;
        }
        catch (IOException) { asked = false; }

        if (!asked || !ReadExpected(after, PermissionToGo))
        {
            ctx.Err.WriteLine("migration target: Failure, destroying our copy.");
            WriteLine(conn, "destroy");
            return 1;
        }
        MigrationTrace.Mark("xl migrate-receive", "permission to start");
        WriteLine(conn, "unpause");
        string? result = ReadLine(conn);
        MigrationTrace.Mark("xl migrate-receive", $"unpause: {result}");
        bool ok = result == "ok";
        try
        {
            stdout.Write(Report);
            stdout.WriteByte(ok ? (byte)0 : (byte)1);
            stdout.Flush();
        }
        catch (IOException) { ok = false; } // the sender cannot know: it resumes its copy, so ours must not run
        if (!ok && result == "ok")
        {
            WriteLine(conn, "destroy");
            ctx.Err.WriteLine("migration target: the sender did not get our report; destroying our copy.");
        }
        ctx.Err.WriteLine(ok ? "migration target: Domain started successsfully." : $"migration target: unpause failed: {result}");
        return ok ? 0 : 1;
    }

    /// <summary>xl migrate-receive -r once the primary's stream has ended: the daemon has unpaused the backup at its
    /// last checkpoint (xl renames and unpauses it likewise).</summary>
    private static int RemusFailover(XlContext ctx, string? line)
    {
        var f = line?.Split(' ', 4);
        if (f is not { Length: 4 } || f[0] != "failover")
        {
            ctx.Err.WriteLine(line is null
                ? "migration target: the Remus stream ended before the first checkpoint; nothing was kept"
                : $"migration target: Remus failed: {line}");
            return 1;
        }
        ctx.Err.WriteLine($"migration target: Remus Failover for domain {f[1]}");
        ctx.Err.WriteLine($"migration target: {f[2]} resumes from checkpoint {f[3]}");
        return 0;
    }

    internal static bool ReadExpected(Stream s, byte[] expected)
    {
        var got = new byte[expected.Length];
        try { return s.ReadAtLeast(got, got.Length, throwOnEndOfStream: false) == got.Length && got.AsSpan().SequenceEqual(expected); }
        catch (IOException) { return false; }
    }

    private static bool ReadExpected(BlockingCollection<byte[]> chunks, byte[] expected)
    {
        var got = new List<byte>();
        foreach (var chunk in chunks.GetConsumingEnumerable())
        {
            got.AddRange(chunk);
            if (got.Count >= expected.Length) break;
        }
        return got.Count >= expected.Length && got.Take(expected.Length).SequenceEqual(expected);
    }

    private static void WriteLine(Stream conn, string line)
    {
        try { conn.Write(Encoding.ASCII.GetBytes(line + "\n")); conn.Flush(); }
        catch (IOException) { }
    }

    private static string? ReadLine(Stream conn)
    {
        var sb = new StringBuilder();
        var b = new byte[1];
        while (sb.Length < 4096)
        {
            if (conn.Read(b) == 0) return null;
            if (b[0] == '\n') return sb.ToString();
            sb.Append((char)b[0]);
        }
        return null;
    }
}
