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
        var result = ctx.Daemon.Send(new SaveRequest(a.Operands[0], file, a.Has('c') || a.Has('p'), config, a.Has('p')));
        ctx.Err.WriteLine($"Saving to {a.Operands[1]} new xl format (info 0x{SaveFlags:x}/0x0/{config?.Length ?? 0})");
        ctx.Err.WriteLine($"Saved domain {result.DomId} ({result.Name}): {result.Pages} pages, {result.Bytes} bytes");
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
        var result = ctx.Daemon.Send(new RestoreRequest(Path.GetFullPath(file), config, configFile, configDir, a.Has('p')));
        // Only a file the daemon read as xl's format has these flags: say so once it has.
        ctx.Err.WriteLine($"Loading new save file {file} (new xl fmt info 0x{SaveFlags:x}/0x0)");
        ctx.Err.WriteLine($"Restored domain {result.DomId} ({result.Name}): {result.Pages} pages");
        return 0;
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
