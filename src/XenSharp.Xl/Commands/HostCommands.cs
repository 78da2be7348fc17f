using XenSharp.Toolstack.Control;

namespace XenSharp.Xl.Commands;

internal static class HostCommands
{
    public static int Info(XlContext ctx, ParsedArgs a)
    {
        Formats.Info(ctx.Out, ctx.Daemon.Send(new InfoRequest()), numa: a.Has('n'));
        return 0;
    }

    public static int Dmesg(XlContext ctx, ParsedArgs a)
    {
        ctx.Out.Write(ctx.Daemon.Send(new DmesgRequest(a.Has('c'))));
        return 0;
    }

    public static int DebugKeys(XlContext ctx, ParsedArgs a)
    {
        ctx.Daemon.Send(new DebugKeysRequest(a.Operands[0]));
        return 0;
    }

    public static int Top(XlContext ctx, ParsedArgs a)
    {
        bool batch = a.Has('b') || Console.IsOutputRedirected;
        int iterations = a.Value('i') is { } its ? int.Parse(its) : (batch ? 1 : int.MaxValue);
        double delay = a.Value('d') is { } ds ? double.Parse(ds, System.Globalization.CultureInfo.InvariantCulture) : 3;
        var lastCpu = new Dictionary<uint, ulong>();
        var lastTime = DateTime.UtcNow;
        for (int i = 0; i < iterations; i++)
        {
            var h = ctx.Daemon.Send(new InfoRequest());
            var doms = ctx.Daemon.Send(new ListRequest([], false));
            var now = DateTime.UtcNow;
            double wall = (now - lastTime).TotalSeconds;
            var pct = new Dictionary<uint, double>();
            foreach (var d in doms)
                pct[d.DomId] = lastCpu.TryGetValue(d.DomId, out var prev) && wall > 0
                    ? (d.CpuTimeNs - prev) / 1e9 / wall * 100 : 0;
            lastCpu = doms.ToDictionary(d => d.DomId, d => d.CpuTimeNs);
            lastTime = now;
            if (!batch) ctx.Out.Write("\x1b[H\x1b[2J");
            Formats.Top(ctx.Out, h, doms, pct);
            ctx.Out.Flush();
            if (i + 1 >= iterations) break;
            var until = DateTime.UtcNow.AddSeconds(delay);
            while (DateTime.UtcNow < until)
            {
                if (!batch && Console.KeyAvailable && char.ToLowerInvariant(Console.ReadKey(true).KeyChar) == 'q')
                    return 0;
                Thread.Sleep(50);
            }
        }
        return 0;
    }

    public static int DaemonStop(XlContext ctx, ParsedArgs a)
    {
        var c = ctx.TryConnectExisting();
        if (c is null)
        {
            ctx.Err.WriteLine("xl: xensharpd is not running");
            return 0;
        }
        c.Send(new StopDaemonRequest());
        // The daemon answers, then tears down; wait until its socket is gone.
        for (int i = 0; i < 600 && File.Exists(ctx.Paths.XlSocket); i++) Thread.Sleep(50);
        ctx.Err.WriteLine("xl: xensharpd stopped");
        return 0;
    }

    public static int HelpCommand(XlContext ctx, ParsedArgs a)
    {
        Help.Print(ctx.Out, a.Operands.Count > 0 ? a.Operands[0] : null);
        return 0;
    }
}
