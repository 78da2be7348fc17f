using System.Globalization;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Xl.Commands;

/// <summary>xl's scheduler and cpupool commands (xl_sched.c, xl_cpupool.c).</summary>
internal static class SchedCommands
{
    public static int SchedCredit(XlContext ctx, ParsedArgs a) => Credit(ctx, a, "credit");
    public static int SchedCredit2(XlContext ctx, ParsedArgs a) => Credit(ctx, a, "credit2");

    private static int? Int(ParsedArgs a, char opt, string what)
    {
        if (a.Value(opt) is not { } v) return null;
        string t = v.EndsWith("ms") ? v[..^2] : v.EndsWith("us") ? v[..^2] : v;
        return int.TryParse(t, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n >= 0
            ? n : throw new UsageException($"invalid {what} '{v}'");
    }

    private static int Credit(XlContext ctx, ParsedArgs a, string sched)
    {
        string? dom = a.Value('d'), pool = a.Value('p');
        int? weight = Int(a, 'w', "weight"), cap = Int(a, 'c', "cap");
        int? tslice = sched == "credit" ? Int(a, 't', "time slice") : null, ratelimit = Int(a, 'r', "rate limit");
        int? migrationDelay = sched == "credit" ? Int(a, 'm', "migration delay") : null;
        bool poolParams = a.Has('s');
        bool domainOptions = dom is not null || weight is not null || cap is not null;
        // xl's own checks and messages (main_sched_credit / main_sched_credit2).
        string? error = sched == "credit"
            ? (pool is not null || poolParams) && domainOptions ? "Specifying a cpupool or schedparam is not allowed with domain options."
            : dom is null && (weight is not null || cap is not null) ? "Must specify a domain."
            : !poolParams && (tslice is not null || ratelimit is not null || migrationDelay is not null) ? "Must specify schedparam to set schedule parameter values."
            : null
            : pool is not null && domainOptions ? "Specifying a cpupool is not allowed with other options."
            : dom is null && (weight is not null || cap is not null) ? "Must specify a domain."
            : null;
        if (error is not null)
        {
            ctx.Err.WriteLine(error);
            return 1;
        }
        if (sched == "credit2")
        {
            // credit2's -s wins over the domain options, and without -s a rate limit is not looked at.
            if (poolParams)
                (dom, weight, cap) = (null, null, null);
            else
                ratelimit = null;
        }
        var res = ctx.Daemon.Send(new SchedCreditRequest(sched, dom, weight, cap, pool, poolParams, tslice, ratelimit, migrationDelay));
        bool setting = weight is not null || cap is not null || tslice is not null || ratelimit is not null || migrationDelay is not null;
        if (setting) return 0;
        foreach (var p in res.Pools)
        {
            if (p.Name.Length > 0)
                ctx.Out.WriteLine(sched == "credit"
                    ? $"Cpupool {p.Name}: tslice={p.TsliceMs}ms ratelimit={p.RatelimitUs}us migration-delay={p.MigrationDelayUs}us"
                    : $"Cpupool {p.Name}: ratelimit={p.RatelimitUs}us");
            if (poolParams) continue;
            ctx.Out.WriteLine($"{"Name",-33} {"ID",4} {"Weight",6} {"Cap",4}");
            foreach (var d in p.Domains)
                ctx.Out.WriteLine($"{d.Name,-33} {d.DomId,4} {d.Weight,6} {d.Cap,4}");
        }
        return 0;
    }

    public static int SchedRtds(XlContext ctx, ParsedArgs a)
    {
        string? dom = a.Value('d'), pool = a.Value('c');
        var vcpuArgs = a.Values('v').ToList();
        bool all = vcpuArgs.Contains("all");
        var vcpus = new List<int>();
        foreach (var v in vcpuArgs.Where(v => v != "all"))
            vcpus.Add(int.TryParse(v, out int n) && n >= 0 ? n : throw new UsageException($"Invalid vcpu `{v}'"));
        long Long(string v, string what) => long.TryParse(v, out long n) && n > 0 ? n : throw new UsageException($"Invalid {what} `{v}'");
        var periods = a.Values('p').Select(v => Long(v, "period")).ToList();
        var budgets = a.Values('b').Select(v => Long(v, "budget")).ToList();
        var extraArgs = a.Values('e').ToList();
        bool setting = periods.Count + budgets.Count + extraArgs.Count > 0;
        // xl's own checks and messages (main_sched_rtds): setting names its vCPUs (or all) and gives each a
        // period, a budget and an extratime.
        string? error = extraArgs.Any(e => e is not ("0" or "1")) ? "Invalid extratime."
            : pool is not null && (dom is not null || setting || vcpuArgs.Count > 0) ? "Specifying a cpupool is not allowed with other options."
            : dom is null && (setting || vcpus.Count > 0) ? "Missing parameters."
            : dom is not null && vcpuArgs.Count == 0 && setting ? "Must specify VCPU."
            : vcpus.Count > 0 && all ? "Incorrect VCPU IDs."
            : (budgets.Count > 0 && vcpus.Count > budgets.Count) || (periods.Count > 0 && vcpus.Count > periods.Count)
              || (extraArgs.Count > 0 && vcpus.Count > extraArgs.Count) || periods.Count != budgets.Count || periods.Count != extraArgs.Count
                ? "Incorrect number of period, budget and extratime"
            : null;
        if (error is not null)
        {
            ctx.Err.WriteLine(error);
            return 1;
        }
        var extras = extraArgs.Select(e => e == "1").ToList();
        var res = ctx.Daemon.Send(new SchedRtdsRequest(dom, pool, vcpus, periods, budgets, extras, all));
        if (setting) return 0;
        bool perVcpu = all || vcpus.Count > 0;
        foreach (var p in res.Pools)
        {
            if (p.Name.Length > 0) ctx.Out.WriteLine($"Cpupool {p.Name}: sched=RTDS");
            ctx.Out.WriteLine(perVcpu
                ? $"{"Name",-33} {"ID",4} {"VCPU",4} {"Period",9} {"Budget",9} {"Extratime",10}"
                : $"{"Name",-33} {"ID",4} {"Period",9} {"Budget",9} {"Extratime",10}");
            foreach (var d in p.Domains)
                ctx.Out.WriteLine(perVcpu
                    ? $"{d.Name,-33} {d.DomId,4} {d.Vcpu,4} {d.PeriodUs,9} {d.BudgetUs,9} {(d.Extratime ? "yes" : "no"),10}"
                    : $"{d.Name,-33} {d.DomId,4} {d.PeriodUs,9} {d.BudgetUs,9} {(d.Extratime ? "yes" : "no"),10}");
        }
        return 0;
    }

    public static int CpupoolList(XlContext ctx, ParsedArgs a)
    {
        var pools = ctx.Daemon.Send(new CpupoolListRequest(a.Operands.Count > 0 ? a.Operands[0] : null));
        bool cpus = a.Has('c');
        ctx.Out.WriteLine(cpus ? $"{"Name",-19}CPU list" : $"{"Name",-19}CPUs   Sched     Active   Domain count");
        foreach (var p in pools)
            ctx.Out.WriteLine(cpus ? $"{p.Name,-19}{p.Cpus}" : $"{p.Name,-19}{p.CpuCount,3} {p.Scheduler,9}       y       {p.Domains,4}");
        return 0;
    }

    public static int CpupoolCreate(XlContext ctx, ParsedArgs a)
    {
        string? file = a.Value('f');
        var vars = new List<string>();
        foreach (var o in a.Operands)
            if (o.Contains('=')) vars.Add(o);
            else if (file is null) file = o;
            else throw new UsageException($"unexpected argument '{o}'");
        string text = "";
        string name = "command line";
        if (file is not null)
        {
            try { text = UserFile.ReadAllText(file); }
            catch (UserFileException e)
            {
                ctx.Err.WriteLine($"Failed to read config file: {file}: {e.Reason}");
                return 1;
            }
            name = file;
        }
        text += "\n" + string.Join("\n", vars) + "\n";
        var cfg = XlConfigParser.Parse(text, name);
        // Without name=, xl names the pool after its configuration file.
        string? poolName = cfg.GetString("name") ?? (file is not null ? Path.GetFileName(file) : null);
        if (poolName is null)
        {
            ctx.Err.WriteLine("Missing cpupool name!");
            return 1;
        }
        string? cpus = cfg.GetStringList("cpus") is { } c ? string.Join(',', c) : null;
        string? nodes = cfg.GetStringList("nodes") is { } n ? string.Join(',', n) : null;
        string? sched = cfg.GetString("sched");
        if (ctx.DryRun || a.Has('n'))
        {
            sched ??= ctx.Daemon.Send(new CpupoolListRequest(null)).First(p => p.PoolId == 0).Scheduler;
            PrintPool(ctx, name, poolName, sched, cpus is null ? (nodes is null ? 1 : -1) : CountCpus(cpus));
            return 0;
        }
        var made = ctx.Daemon.Send(new CpupoolCreateRequest(poolName, sched, cpus, nodes));
        PrintPool(ctx, name, poolName, made.Scheduler, made.CpuCount);
        return 0;
    }

    /// <summary>What xl cpupool-create says about the pool it makes.</summary>
    private static void PrintPool(XlContext ctx, string source, string pool, string sched, int cpus)
    {
        ctx.Out.WriteLine($"Using config file \"{source}\"");
        ctx.Out.WriteLine($"cpupool name:   {pool}");
        ctx.Out.WriteLine($"scheduler:      {sched}");
        ctx.Out.WriteLine(cpus < 0 ? "number of cpus: (those of the nodes that are free)" : $"number of cpus: {cpus}");
    }

    /// <summary>How many pCPUs a list such as "1,3-5" names.</summary>
    private static int CountCpus(string list)
    {
        int count = 0;
        foreach (var part in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var ends = part.Split('-');
            count += ends.Length == 2 && int.TryParse(ends[0], out int lo) && int.TryParse(ends[1], out int hi) && hi >= lo ? hi - lo + 1 : 1;
        }
        return count;
    }

    public static int CpupoolDestroy(XlContext ctx, ParsedArgs a)
    {
        ctx.Daemon.Send(new CpupoolDestroyRequest(a.Operands[0]));
        return 0;
    }

    public static int CpupoolRename(XlContext ctx, ParsedArgs a)
    {
        ctx.Daemon.Send(new CpupoolRenameRequest(a.Operands[0], a.Operands[1]));
        return 0;
    }

    public static int CpupoolCpuAdd(XlContext ctx, ParsedArgs a)
    {
        ctx.Daemon.Send(new CpupoolCpuRequest(a.Operands[0], a.Operands[1], true));
        return 0;
    }

    public static int CpupoolCpuRemove(XlContext ctx, ParsedArgs a)
    {
        ctx.Daemon.Send(new CpupoolCpuRequest(a.Operands[0], a.Operands[1], false));
        return 0;
    }

    public static int CpupoolMigrate(XlContext ctx, ParsedArgs a)
    {
        ctx.Daemon.Send(new CpupoolMigrateRequest(a.Operands[0], a.Operands[1]));
        return 0;
    }

    public static int CpupoolNumaSplit(XlContext ctx, ParsedArgs a)
    {
        ctx.Daemon.Send(new CpupoolNumaSplitRequest());
        return 0;
    }
}
