using System.Globalization;
using XenSharp.Public;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Xl.Commands;

internal static class BlockCommands
{
    /// <summary>xl's block-list columns: Vdev, BE, handle, state, evt-ch, ring-ref, BE-path.</summary>
    private const string Row = "{0,-5} {1,-3} {2,-6} {3,-5} {4,-6} {5,-8} {6,-30}";

    /// <summary>xl block-attach: the spec's components, as separate arguments or one, form one disk specification.</summary>
    public static int Attach(XlContext ctx, ParsedArgs a)
    {
        string spec = string.Join(',', a.Operands.Skip(1));
        if (ctx.DryRun) return 0;
        ctx.Daemon.Send(new BlockAttachRequest(a.Operands[0], spec, Environment.CurrentDirectory));
        return 0;
    }

    public static int Detach(XlContext ctx, ParsedArgs a)
    {
        ctx.Daemon.Send(new BlockDetachRequest(a.Operands[0], a.Operands[1]));
        return 0;
    }

    /// <summary>xl block-list: one table over the named domains; a name that is no domain is reported and skipped, as xl does.</summary>
    public static int List(XlContext ctx, ParsedArgs a)
    {
        ctx.Out.WriteLine(string.Format(CultureInfo.InvariantCulture, Row,
            "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"));
        foreach (string domain in a.Operands)
        {
            IReadOnlyList<DiskInfoEntry> disks;
            try { disks = ctx.Daemon.Send(new BlockListRequest(domain)); }
            catch (ControlException e) when (e.Errno == Errno.EINVAL)
            {
                ctx.Err.WriteLine($"{domain} is an invalid domain identifier");
                continue;
            }
            foreach (var d in disks)
                ctx.Out.WriteLine(string.Format(CultureInfo.InvariantCulture, Row,
                    d.Vdev, d.BackendId, d.FrontendId, d.State, d.EventChannel, d.RingRef, d.BackendPath));
        }
        return 0;
    }

    /// <summary>xl cd-insert: the target is read as xl reads it, the last part of
    /// "vdev=V,access=r,devtype=cdrom,target=T"; a raw file must exist, as xl checks with stat.</summary>
    public static int CdInsert(XlContext ctx, ParsedArgs a)
    {
        string vdev = a.Operands[1], target = a.Operands[2];
        DiskSpec disk;
        try { disk = DiskSpec.Parse($"vdev={vdev},access=r,devtype=cdrom,target={target}"); }
        catch (FormatException e)
        {
            ctx.Err.WriteLine(e.Message);
            return 1;
        }
        string? path = disk.Target is { } t ? Path.GetFullPath(t) : null;
        if (path is not null && disk.Format == DiskFormat.Raw && !Path.Exists(path))
        {
            ctx.Err.WriteLine($"Cannot stat file: {path}");
            return 1;
        }
        if (ctx.DryRun) return 0;
        ctx.Daemon.Send(new CdInsertRequest(a.Operands[0], disk.Vdev, path, DiskSpec.FormatName(disk.Format), Environment.CurrentDirectory));
        return 0;
    }

    /// <summary>xl cd-eject: cd-insert of nothing.</summary>
    public static int CdEject(XlContext ctx, ParsedArgs a)
    {
        if (ctx.DryRun) return 0;
        ctx.Daemon.Send(new CdInsertRequest(a.Operands[0], a.Operands[1], null, null, Environment.CurrentDirectory));
        return 0;
    }
}
