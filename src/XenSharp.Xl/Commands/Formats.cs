using System.Globalization;
using XenSharp.Toolstack.Control;

namespace XenSharp.Xl.Commands;

/// <summary>The text layouts of xl's listings, column for column.</summary>
internal static class Formats
{
    private const string ShutdownReasonLetters = "-rscwS";

    public static void List(TextWriter w, IReadOnlyList<DomainInfo> domains, bool verbose, bool context, bool cpupool, bool numa)
    {
        var header = "Name                                        ID   Mem VCPUs\tState\tTime(s)";
        if (verbose) header += "   UUID                            Reason-Code\tSecurity Label";
        if (context && !verbose) header += "   Security Label";
        if (cpupool) header += "         Cpupool";
        if (numa) header += " NODE Affinity";
        w.WriteLine(header);
        foreach (var d in domains)
        {
            int reason = d.Shutdown ? d.ShutdownReason : 0;
            char reasonLetter = reason >= 0 && reason < ShutdownReasonLetters.Length ? ShutdownReasonLetters[reason] : '?';
            var line = string.Format(CultureInfo.InvariantCulture, "{0,-40} {1,5} {2,5} {3,5}     {4}{5}{6}{7}{8}{9}  {10,8:F1}",
                d.Name, d.DomId, d.CurrentMemKb / 1024, d.VcpuOnline,
                d.Running ? 'r' : '-', d.Blocked ? 'b' : '-', d.Paused ? 'p' : '-', d.Shutdown ? 's' : '-',
                reasonLetter, d.Dying ? 'd' : '-', d.CpuTimeNs / 1e9);
            if (verbose)
            {
                line += " " + d.Uuid.ToString();
                line += d.Shutdown ? $" {d.ShutdownReason,8:x}" : $" {"-",8}";
            }
            if (verbose || context) line += $" {d.SsidLabel ?? "-",16}";
            if (cpupool) line += $" {d.Cpupool,16}";
            if (numa) line += " " + d.NodeAffinity;
            w.WriteLine(line);
        }
    }

    public static string UptimeText(double seconds, bool shortForm)
    {
        long s = (long)seconds;
        long days = s / 86400, hours = s / 3600 % 24, mins = s / 60 % 60, secs = s % 60;
        if (shortForm)
        {
            return days > 0
                ? $"{days} day{(days == 1 ? "" : "s")}, {hours,2}:{mins:00}"
                : $"{hours,2}:{mins:00}";
        }
        return days > 0
            ? $"{days} day{(days == 1 ? "" : "s")}, {hours,2}:{mins:00}:{secs:00}"
            : $"{hours,2}:{mins:00}:{secs:00}";
    }

    public static void Uptime(TextWriter w, IReadOnlyList<DomainInfo> domains, bool shortForm)
    {
        if (!shortForm) w.WriteLine($"{"Name",-33} {"ID",4} Uptime");
        foreach (var d in domains)
        {
            if (shortForm)
                w.WriteLine($"{DateTime.Now:HH:mm:ss} up {UptimeText(d.UptimeSeconds, true)}, {d.Name} ({d.DomId})");
            else
                w.WriteLine($"{d.Name,-33} {d.DomId,4} {UptimeText(d.UptimeSeconds, false)}");
        }
    }

    public static void VcpuList(TextWriter w, IReadOnlyList<VcpuInfoEntry> vcpus)
    {
        w.WriteLine($"{"Name",-32} {"ID",5} {"VCPU",5} {"CPU",5} {"State",5} {"Time(s)",9} Affinity (Hard / Soft)");
        foreach (var v in vcpus)
        {
            string state = v.Online ? $"{(v.Running ? 'r' : '-')}{(v.Blocked ? 'b' : '-')}-" : "--p";
            string cpu = v.Online && v.Cpu >= 0 ? v.Cpu.ToString() : "-";
            // As xl prints it: no space between the VCPU and CPU columns of a row, though the header has one.
            w.WriteLine(string.Format(CultureInfo.InvariantCulture, "{0,-32} {1,5} {2,5}{3,5} {4,5} {5,9:F1}  {6} / {7}",
                v.Name, v.DomId, v.Vcpu, cpu, state, v.CpuTimeNs / 1e9, v.Hard, v.Soft));
        }
    }

    public static void Info(TextWriter w, HostInfo h, bool numa = false)
    {
        void P(string k, object v) => w.WriteLine($"{k,-23}: {Convert.ToString(v, CultureInfo.InvariantCulture)}");
        P("host", h.Host);
        P("release", h.Release);
        P("version", h.Version);
        P("machine", h.Machine);
        P("nr_cpus", h.NrCpus);
        P("max_cpu_id", h.MaxCpuId);
        P("nr_nodes", h.NrNodes);
        P("cores_per_socket", h.CoresPerSocket);
        P("threads_per_core", h.ThreadsPerCore);
        P("cpu_mhz", h.CpuMhz);
        P("hw_caps", h.HwCaps);
        P("virt_caps", h.VirtCaps);
        P("total_memory", h.TotalMemoryMb);
        P("free_memory", h.FreeMemoryMb);
        P("sharing_freed_memory", h.SharingFreedMemoryMb);
        P("sharing_used_memory", h.SharingUsedMemoryMb);
        P("outstanding_claims", h.OutstandingClaimsMb);
        P("free_cpus", h.FreeCpus);
        if (numa) NumaTopology(w, h);
        P("xen_major", h.XenMajor);
        P("xen_minor", h.XenMinor);
        P("xen_extra", h.XenExtra);
        P("xen_version", h.XenVersion);
        P("xen_caps", h.XenCaps);
        P("xen_scheduler", h.XenScheduler);
        P("xen_pagesize", h.XenPagesize);
        P("platform_params", h.Platform);
        P("xen_changeset", h.XenChangeset);
        P("xen_commandline", h.XenCommandline);
        P("cc_compiler", h.CcCompiler);
        P("cc_compile_by", h.CcCompileBy);
        P("cc_compile_domain", h.CcCompileDomain);
        P("cc_compile_date", h.CcCompileDate);
        P("build_id", h.BuildId);
        P("xend_config_format", h.XendConfigFormat);
    }

    /// <summary>xl info -n's tables: each CPU's core, socket and node; the PCI devices' nodes (none here); each node's memory (MiB) and distances.</summary>
    private static void NumaTopology(TextWriter w, HostInfo h)
    {
        w.WriteLine("cpu_topology           :");
        w.WriteLine("cpu:    core    socket     node");
        foreach (var c in h.CpuTopology)
            w.WriteLine($"{c.Cpu,3}:    {c.Core,4}     {c.Socket,4}     {c.Node,4}");
        w.WriteLine("device topology        :");
        w.WriteLine("device           node");
        w.WriteLine("numa_info              :");
        w.WriteLine("node:    memsize    memfree    distances");
        foreach (var n in h.NumaNodes)
            w.WriteLine($"{n.Node,4}:    {n.MemSizeBytes >> 20,6}     {n.MemFreeBytes >> 20,6}      {string.Join(',', n.Distances)}");
    }

    /// <summary>xentop's screen.</summary>
    public static void Top(TextWriter w, HostInfo h, IReadOnlyList<DomainInfo> domains, IReadOnlyDictionary<uint, double> cpuPercent)
    {
        int running = domains.Count(d => d.Running), blocked = domains.Count(d => d.Blocked),
            paused = domains.Count(d => d.Paused), crashed = domains.Count(d => d.Shutdown && d.ShutdownReason == 3),
            dying = domains.Count(d => d.Dying), shutdown = domains.Count(d => d.Shutdown && d.ShutdownReason != 3);
        w.WriteLine($"xentop - {DateTime.Now:HH:mm:ss}   Xen {h.XenVersion}");
        w.WriteLine($"{domains.Count} domains: {running} running, {blocked} blocked, {paused} paused, {crashed} crashed, {dying} dying, {shutdown} shutdown ");
        long usedKb = domains.Sum(d => d.CurrentMemKb);
        w.WriteLine($"Mem: {h.TotalMemoryMb * 1024}k total, {usedKb}k used, {h.FreeMemoryMb * 1024}k free    CPUs: {h.NrCpus} @ {h.CpuMhz}MHz");
        w.WriteLine("      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT SSID");
        foreach (var d in domains)
        {
            string state = $"{(d.Dying ? 'd' : '-')}{(d.Shutdown ? 's' : '-')}{(d.Blocked ? 'b' : '-')}{(d.ShutdownReason == 3 && d.Shutdown ? 'c' : '-')}{(d.Running ? 'r' : '-')}{(d.Paused ? 'p' : '-')}";
            double memPct = h.TotalMemoryMb > 0 ? 100.0 * d.CurrentMemKb / (h.TotalMemoryMb * 1024) : 0;
            string maxMem = d.DomId == 0 ? "no limit" : d.MaxMemKb.ToString();
            string maxPct = d.DomId == 0 ? "n/a" : (h.TotalMemoryMb > 0 ? (100.0 * d.MaxMemKb / (h.TotalMemoryMb * 1024)).ToString("F1", CultureInfo.InvariantCulture) : "0.0");
            w.WriteLine(string.Format(CultureInfo.InvariantCulture,
                "{0,10} {1,6} {2,10} {3,6:F1} {4,10} {5,6:F1} {6,10} {7,9} {8,5} {9,4} {10,8} {11,8} {12,4} {13,8} {14,8} {15,8} {16,10} {17,10} {18,4}",
                d.Name, state, (ulong)(d.CpuTimeNs / 1e9), cpuPercent.GetValueOrDefault(d.DomId), d.CurrentMemKb, memPct, maxMem, maxPct,
                d.VcpuOnline, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
        }
    }
}
