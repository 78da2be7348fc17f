using System.Text.Json;
using System.Text.Json.Nodes;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Xl.Commands;

internal static class DomainCommands
{
    public static int Create(XlContext ctx, ParsedArgs a)
    {
        string? file = a.Value('f');
        var vars = new List<string>();
        foreach (var op in a.Operands)
        {
            if (file is null && !op.Contains('=')) file = op;
            else vars.Add(op);
        }
        if (file is null)
            throw new UsageException("a configuration file must be given");
        bool quiet = a.Has('q');
        if (!quiet) ctx.Err.WriteLine($"Parsing config from {file}");

        string text;
        try { text = UserFile.ReadAllText(file); }
        catch (UserFileException e)
        {
            ctx.Err.WriteLine($"Failed to read config file: {file}: {e.Reason}");
            return 1;
        }
        string dir = Path.GetDirectoryName(Path.GetFullPath(file))!;

        // Parsed here too, so that configuration errors need no daemon and dry runs print the result.
        var cfg = XlConfigParser.Parse(text, file);
        cfg.Directory = dir;
        foreach (var v in vars) XlConfigParser.ParseInto(cfg, v, "command line");
        // node: and nodes: name this host's NUMA nodes, which xensharpd reads from the same place.
        var read = DomainConfigReader.Read(cfg, Environment.ProcessorCount, HostNodes.CpuNodes(Environment.ProcessorCount));
        foreach (var w in read.Warnings) ctx.Err.WriteLine(w);

        if (ctx.DryRun || a.Has('n'))
        {
            ctx.Out.WriteLine(LibxlJson.DomainConfig(read.Config).ToJsonString(LibxlJson.Pretty));
            return 0;
        }

        // With -c the domain starts paused and runs once the console is attached, so that a guest
        // which finishes quickly cannot be gone before its output is seen.
        bool attach = a.Has('c');
        var result = ctx.Daemon.Send(new CreateRequest(text, file, dir, vars, a.Has('p') || attach));
        foreach (var w in result.Warnings) ctx.Err.WriteLine(w); // what only the host knows (FLASK off, say)
        if (attach)
            ConsoleCommand.Attach(ctx, result.DomId.ToString(), unpause: !a.Has('p'));
        if (a.Has('F'))
        {
            // Foreground: stay until the domain (this incarnation) is gone.
            while (ctx.Daemon.Send(new ListRequest([], false)).Any(d => d.DomId == result.DomId))
                Thread.Sleep(200);
        }
        return 0;
    }

    public static int List(XlContext ctx, ParsedArgs a)
    {
        bool details = a.Has('l');
        var domains = ctx.Daemon.Send(new ListRequest(a.Operands, details));
        if (details)
        {
            var arr = new JsonArray();
            foreach (var d in domains)
                arr.Add(new JsonObject
                {
                    ["domid"] = d.DomId,
                    ["config"] = d.Config is { } c ? JsonNode.Parse(c.GetRawText()) : new JsonObject(),
                });
            ctx.Out.WriteLine(arr.ToJsonString(LibxlJson.Pretty));
            return 0;
        }
        Formats.List(ctx.Out, domains, verbose: a.Has('v'), context: a.Has('Z'), cpupool: a.Has('c'), numa: a.Has('n'));
        return 0;
    }

    public static int Destroy(XlContext ctx, ParsedArgs a)
    {
        ctx.Daemon.Send(new DestroyRequest(a.Operands[0], a.Has('f') || ctx.Force));
        return 0;
    }

    public static int Shutdown(XlContext ctx, ParsedArgs a) => ShutdownOrReboot(ctx, a, ShutdownKind.Poweroff);
    public static int Reboot(XlContext ctx, ParsedArgs a) => ShutdownOrReboot(ctx, a, ShutdownKind.Reboot);

    private static int ShutdownOrReboot(XlContext ctx, ParsedArgs a, ShutdownKind kind)
    {
        bool all = a.Has('a');
        if (all == (a.Operands.Count > 0))
        {
            if (all) throw new UsageException("-a and a domain are mutually exclusive");
            throw new UsageException("a domain (or -a) must be given");
        }
        var targets = new List<DomainInfo>();
        var listed = ctx.Daemon.Send(new ListRequest(all ? [] : a.Operands, false));
        foreach (var d in listed)
            if (!all || d.DomId != 0) targets.Add(d);
        foreach (var d in targets)
            ctx.Daemon.Send(new ShutdownRequest(d.DomId.ToString(), kind, a.Has('F')));
        if (!a.Has('w')) return 0;

        // Waiting means: until each domain is gone (shutdown) or its incarnation has changed (reboot).
        var pending = targets.ToDictionary(d => d.DomId, d => d.Name);
        ctx.Err.WriteLine($"Waiting for {pending.Count} domains");
        while (pending.Count > 0)
        {
            Thread.Sleep(100);
            var now = ctx.Daemon.Send(new ListRequest([], false));
            foreach (var id in pending.Keys.ToList())
            {
                var d = now.FirstOrDefault(x => x.DomId == id);
                if (d is null || d.Dying || (d.Shutdown && kind == ShutdownKind.Poweroff))
                {
                    ctx.Err.WriteLine($"Domain {id} has been {(kind == ShutdownKind.Reboot ? "rebooted" : "shut down")}, reason code {(d?.ShutdownReason ?? (int)kind)}");
                    pending.Remove(id);
                }
            }
        }
        ctx.Err.WriteLine("All domains have been shut down");
        return 0;
    }

    public static int Pause(XlContext ctx, ParsedArgs a) { ctx.Daemon.Send(new PauseRequest(a.Operands[0])); return 0; }
    public static int Unpause(XlContext ctx, ParsedArgs a) { ctx.Daemon.Send(new UnpauseRequest(a.Operands[0])); return 0; }

    public static int Rename(XlContext ctx, ParsedArgs a)
    {
        ctx.Daemon.Send(new RenameRequest(a.Operands[0], a.Operands[1]));
        return 0;
    }

    public static int DomId(XlContext ctx, ParsedArgs a)
    {
        var d = ctx.Daemon.Send(new ListRequest([], false)).FirstOrDefault(x => x.Name == a.Operands[0]);
        if (d is null)
        {
            ctx.Err.WriteLine($"Can't get domid of domain name '{a.Operands[0]}', maybe this domain does not exist.");
            return 1;
        }
        ctx.Out.WriteLine(d.DomId);
        return 0;
    }

    public static int DomName(XlContext ctx, ParsedArgs a)
    {
        if (!uint.TryParse(a.Operands[0], out uint id))
        {
            ctx.Err.WriteLine($"Invalid domain id.");
            return 1;
        }
        var d = ctx.Daemon.Send(new ListRequest([], false)).FirstOrDefault(x => x.DomId == id);
        if (d is null)
        {
            ctx.Err.WriteLine($"Can't get domain name of domain id '{id}', maybe this domain does not exist.");
            return 1;
        }
        ctx.Out.WriteLine(d.Name);
        return 0;
    }

    public static int MemSet(XlContext ctx, ParsedArgs a)
    {
        long kb = ParseMemory(a.Operands[1]);
        ctx.Daemon.Send(new MemSetRequest(a.Operands[0], kb));
        return 0;
    }

    public static int MemMax(XlContext ctx, ParsedArgs a)
    {
        long kb = ParseMemory(a.Operands[1]);
        ctx.Daemon.Send(new MemMaxRequest(a.Operands[0], kb));
        return 0;
    }

    /// <summary>xl's memory sizes: a number with an optional b/k/m/g/t suffix, megabytes by default.</summary>
    internal static long ParseMemory(string s)
    {
        string num = s;
        long mulBytes = 1024 * 1024;
        char last = s.Length > 0 ? char.ToLowerInvariant(s[^1]) : '\0';
        switch (last)
        {
            case 'b': mulBytes = 1; num = s[..^1]; break;
            case 'k': mulBytes = 1024; num = s[..^1]; break;
            case 'm': mulBytes = 1024 * 1024; num = s[..^1]; break;
            case 'g': mulBytes = 1L << 30; num = s[..^1]; break;
            case 't': mulBytes = 1L << 40; num = s[..^1]; break;
        }
        if (!long.TryParse(num, out long v) || v < 0)
            throw new UsageException($"invalid memory size: {s}");
        return v * mulBytes / 1024;
    }

    /// <summary>xl vncviewer (libxl_vncviewer_exec): runs $VNCVIEWER or vncviewer on LISTEN:DISPLAY, giving it the password
    /// on its standard input with --autopass.</summary>
    public static int VncViewer(XlContext ctx, ParsedArgs a)
    {
        var vnc = ctx.Daemon.Send(new VncDisplayRequest(a.Operands[0]));
        string viewer = Environment.GetEnvironmentVariable("VNCVIEWER") is { Length: > 0 } v ? v : "vncviewer";
        var psi = new System.Diagnostics.ProcessStartInfo(viewer) { UseShellExecute = false };
        psi.ArgumentList.Add($"{vnc.Listen}:{vnc.Port - 5900}");
        bool autopass = a.Has('a') && vnc.Password is not null;
        if (autopass)
        {
            psi.ArgumentList.Add("-autopass");
            psi.RedirectStandardInput = true;
        }
        System.Diagnostics.Process? p;
        try { p = System.Diagnostics.Process.Start(psi); }
        catch (System.ComponentModel.Win32Exception e)
        {
            ctx.Err.WriteLine($"xl: unable to exec {viewer}: {e.Message}");
            return 1;
        }
        if (p is null) return 1;
        if (autopass)
        {
            p.StandardInput.WriteLine(vnc.Password);
            p.StandardInput.Close();
        }
        p.WaitForExit();
        return p.ExitCode;
    }

    public static int Sysrq(XlContext ctx, ParsedArgs a)
    {
        if (a.Operands[1].Length != 1)
        {
            ctx.Err.WriteLine("Error: sysrq arg must be a single character.");
            return 1;
        }
        ctx.Daemon.Send(new SysrqRequest(a.Operands[0], a.Operands[1][0]));
        return 0;
    }

    public static int DumpCore(XlContext ctx, ParsedArgs a)
    {
        // The daemon writes the file: it gets the path as this xl sees it.
        ctx.Daemon.Send(new DumpCoreRequest(a.Operands[0], Path.GetFullPath(a.Operands[1])));
        return 0;
    }

    public static int Trigger(XlContext ctx, ParsedArgs a)
    {
        int vcpu = 0;
        if (a.Operands.Count > 2 && !int.TryParse(a.Operands[2], out vcpu))
            throw new UsageException($"invalid VCPU: {a.Operands[2]}");
        ctx.Daemon.Send(new TriggerRequest(a.Operands[0], a.Operands[1], vcpu));
        return 0;
    }

    public static int Uptime(XlContext ctx, ParsedArgs a)
    {
        var domains = ctx.Daemon.Send(new ListRequest(a.Operands, false));
        Formats.Uptime(ctx.Out, domains, shortForm: a.Has('s'));
        return 0;
    }
}
