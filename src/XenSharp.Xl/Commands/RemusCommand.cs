using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using XenSharp.Toolstack.Control;

namespace XenSharp.Xl.Commands;

/// <summary>
/// xl remus (xl_migrate.c's main_remus): the backup host runs <c>SSHCMD HOST xl migrate-receive -r</c>; after its
/// banner the daemon sends the checkpointed stream (the live migration, then a checkpoint every <c>-i</c> ms), which
/// xl relays to the backup until the primary domain is destroyed (the backup takes over), the backup fails (the guest
/// runs on here) or this host dies (the backup takes over). XenSharp buffers neither network output nor disk writes,
/// so, as libxl asks, <c>-n -d</c> and the unsafe mode <c>-F</c> must be given; <c>-u</c> is accepted (the stream is
/// never compressed); COLO (<c>-c</c>, <c>-p</c>) is not supported.
/// </summary>
internal static class RemusCommand
{
    public static int Remus(XlContext ctx, ParsedArgs a)
    {
        if (a.Operands.Count > 2)
            throw new UsageException("too many arguments");
        string domain = a.Operands[0], host = a.Operands[1];
        int interval = 200;
        if (a.Value('i') is { } text && (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out interval) || interval <= 0))
        {
            ctx.Err.WriteLine($"Remus: invalid checkpoint interval '{text}' (milliseconds, more than 0)");
            return 1;
        }
        if (a.Has('c') || a.Has('p'))
        {
            ctx.Err.WriteLine("COLO: not supported by XenSharp");
            return 1;
        }
        bool blackhole = a.Has('b'), netbuf = !a.Has('n'), diskbuf = !a.Has('d');
        if (!a.Has('F') && (blackhole || !netbuf || !diskbuf))
        {
            ctx.Err.WriteLine("Unsafe mode must be enabled to replicate to /dev/null,disable network buffering and disk replication");
            return 1;
        }
        if (netbuf)
        {
            ctx.Err.WriteLine("Remus: No support for network buffering (XenSharp cannot hold back a guest's network output; run with -n -F)");
            return 1;
        }
        if (diskbuf)
        {
            ctx.Err.WriteLine("Remus: No support for disk replication (XenSharp has no DRBD; run with -d -F, the guest's disks shared by both hosts)");
            return 1;
        }

        Process? child = null;
        Stream toTarget = Stream.Null, fromTarget = Stream.Null;
        try
        {
            if (!blackhole)
            {
                string ssh = a.Value('s') ?? "ssh";
                string rune = ssh.Length == 0 ? host : $"exec {ssh} {host} xl migrate-receive -r{(a.Has('e') ? " -e" : "")}";
                var psi = new ProcessStartInfo("/bin/sh", ["-c", rune])
                {
                    RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false,
                };
                child = Process.Start(psi) ?? throw new ControlException($"cannot run {rune}");
                toTarget = child.StandardInput.BaseStream;
                fromTarget = child.StandardOutput.BaseStream;
                if (!MigrateCommands.ReadExpected(fromTarget, MigrateCommands.Banner))
                {
                    ctx.Err.WriteLine("Remus: the backup did not send its banner (is xl migrate-receive there?)");
                    return 1;
                }
            }
            using var client = ctx.Connect();
            var start = client.Send(new MigrateSendRequest(domain, null, false, interval));
            return MigrationProgress.Run(ctx.Err, "Remus", progress => Relay(progress, client.Stream, toTarget, start));
        }
        finally
        {
            // The backup sees its stream end: without the primary's word it fails over, as with a dead primary.
            try { toTarget.Close(); } catch (IOException) { }
            if (child is not null)
            {
                if (!child.WaitForExit(30_000)) child.Kill();
                child.Dispose();
            }
        }
    }

    private static int Relay(MigrationProgress progress, Stream conn, Stream toTarget, MigrateSendResult start)
    {
        var head = new byte[5];
        var buffer = new byte[MigrationFrames.MaxData];
        while (true)
        {
            int length;
            try
            {
                if (conn.ReadAtLeast(head, 5, throwOnEndOfStream: false) < 5)
                    throw new EndOfStreamException("end of stream");
                length = BinaryPrimitives.ReadInt32LittleEndian(head.AsSpan(1));
                if (length < 0 || length > buffer.Length) throw new ControlException("xensharpd sent a malformed migration frame");
                conn.ReadExactly(buffer, 0, length);
            }
            catch (IOException e)
            {
                // This host's daemon died (or its host): the backup sees the stream end and fails over.
                progress.Done();
                progress.WriteLine($"Remus: xensharpd closed the connection ({e.Message}); the backup takes over");
                return 1;
            }
            string message = head[0] == MigrationFrames.Data ? "" : Encoding.UTF8.GetString(buffer, 0, length);
            switch (head[0])
            {
                case MigrationFrames.Data:
                    try { toTarget.Write(buffer, 0, length); }
                    catch (IOException e)
                    {
                        progress.Done();
                        progress.WriteLine($"Remus: the backup went away ({e.Message})");
                        progress.WriteLine("Remus: Backup failed? resuming domain at primary.");
                        conn.Close();
                        return 1;
                    }
                    break;
                case MigrationFrames.Progress:
                    toTarget.Flush();
                    progress.Report(message);
                    break;
                case MigrationFrames.Outcome:
                    progress.Done();
                    progress.WriteLine("Remus: Primary domain has been destroyed.");
                    return 0;
                case MigrationFrames.Failed:
                    progress.Done();
                    progress.WriteLine($"Remus: {message}");
                    progress.WriteLine($"Remus: Backup failed? resuming domain at primary (domain {start.DomId}).");
                    return 1;
                default:
                    throw new ControlException($"xensharpd sent migration frame kind {head[0]}");
            }
        }
    }
}
