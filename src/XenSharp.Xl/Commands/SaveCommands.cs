using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Xl.Commands;

/// <summary>xl save and xl restore (xl_saverestore.c): the daemon suspends, writes and destroys the domain, or
/// builds it again from the file; xl names the files as it sees them and reads a replacement configuration.</summary>
internal static class SaveCommands
{
    public static int Save(XlContext ctx, ParsedArgs a)
    {
        if (a.Operands.Count > 3)
            throw new UsageException("too many arguments");
        string? config = null;
        if (a.Operands.Count == 3 && !TryReadConfig(ctx, a.Operands[2], out config))
            return 1;
        string file = Path.GetFullPath(a.Operands[1]);
        var request = new SaveRequest(a.Operands[0], file, a.Has('c') || a.Has('p'), config, a.Has('p'));
        // On a terminal, a bar that follows the file as the daemon writes it, towards the guest's memory.
        double expected = Console.IsErrorRedirected ? 0
            : ctx.Daemon.Send(new ListRequest([a.Operands[0]], false)).FirstOrDefault()?.MaxMemKb * 1024.0 ?? 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var result = MigrationProgress.Track(ctx.Err, $"Saving domain {a.Operands[0]}", expected,
            () => File.Exists(file) ? new FileInfo(file).Length : null, () => ctx.Daemon.Send(request));
        ctx.Err.WriteLine($"Saving to {a.Operands[1]} new xl format (info 0x{SaveFlags:x}/0x0/{config?.Length ?? 0})");
        ctx.Err.WriteLine($"Saved domain {result.DomId} ({result.Name}): {result.Pages} pages, {result.Bytes} bytes{Rate(result.Bytes, clock)}");
        return 0;
    }

    public static int Restore(XlContext ctx, ParsedArgs a)
    {
        if (a.Operands.Count > 2)
            throw new UsageException("too many arguments");
        string? config = null, configFile = null, configDir = null;
        string file = a.Operands[^1];
        if (a.Operands.Count == 2)
        {
            configFile = a.Operands[0];
            if (!TryReadConfig(ctx, configFile, out config))
                return 1;
            configDir = Path.GetDirectoryName(Path.GetFullPath(configFile));
        }
        string path = Path.GetFullPath(file);
        var request = new RestoreRequest(path, config, configFile, configDir, a.Has('p'));
        long size = File.Exists(path) ? new FileInfo(path).Length : 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var result = MigrationProgress.Track(ctx.Err, $"Restoring {file}", size,
            MigrationProgress.DaemonReadSince(ctx.Paths.PidFile), () => ctx.Daemon.Send(request));
        // Only a file the daemon read as xl's format has these flags: say so once it has.
        ctx.Err.WriteLine($"Loading new save file {file} (new xl fmt info 0x{SaveFlags:x}/0x0)");
        ctx.Err.WriteLine($"Restored domain {result.DomId} ({result.Name}): {result.Pages} pages{Rate(result.Pages * 4096, clock)}");
        return 0;
    }

    private static string Rate(long bytes, System.Diagnostics.Stopwatch clock)
    {
        double s = Math.Max(clock.Elapsed.TotalSeconds, 1e-3);
        return string.Create(System.Globalization.CultureInfo.InvariantCulture, $" in {s:0.00} s, {bytes / s / (1 << 20):0.0} MiB/s");
    }

    /// <summary>xl's mandatory flags for the files it writes (a migration v2 stream).</summary>
    private const uint SaveFlags = 2;

    private static bool TryReadConfig(XlContext ctx, string path, out string? text)
    {
        try
        {
            text = UserFile.ReadAllText(path);
            ctx.Err.WriteLine($"Parsing config from {path}");
            return true;
        }
        catch (UserFileException e)
        {
            ctx.Err.WriteLine($"Failed to read config file: {path}: {e.Reason}");
            text = null;
            return false;
        }
    }
}
