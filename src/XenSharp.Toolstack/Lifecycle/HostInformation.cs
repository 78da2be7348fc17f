using System.Diagnostics;
using System.Text.Json;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>What xl list, vcpu-list and info print: the domains as libxl_dominfo and the host as libxl_physinfo.</summary>
public sealed partial class Host
{
    private IReadOnlyList<DomainInfo> List(ListRequest r)
    {
        var all = new List<DomainInfo> { Dom0Info(r.Long) };
        List<Domain> doms;
        lock (_lock) doms = [.. _domains.Values.Where(x => x.Ready).OrderBy(x => x.DomId)];
        // A domain destroyed by another toolstack (Debian's xl) is gone from the hypervisor before this one hears of
        // it: xl list no longer shows it, as getdomaininfo no longer finds it in Xen.
        all.AddRange(doms.Select(d => (d, s: d.Hv.State)).Where(x => !x.s.Gone).Select(x => GuestInfo(x.d, x.s, r.Long)));
        if (r.Domains.Count == 0) return all;
        var picked = new List<DomainInfo>();
        foreach (var want in r.Domains)
        {
            var m = all.FirstOrDefault(x => x.Name == want || x.DomId.ToString() == want)
                ?? throw new ControlException($"{want} is an invalid domain identifier (rc=-6)", 22);
            picked.Add(m);
        }
        return picked;
    }

    /// <summary>Domain-0 is the host itself: its memory is the host's RAM outside the hypervisor's machine
    /// memory, a fixed figure as a Xen dom0's dom0_mem is.</summary>
    private DomainInfo Dom0Info(bool details)
    {
        var p = Process.GetCurrentProcess();
        long dom0Kb = Math.Max(0, HostMemory.Read().TotalKb - (long)(_hv.MachineMemory.Total >> 10));
        return new DomainInfo
        {
            DomId = 0, Name = "Domain-0", Uuid = Guid.Empty, Type = "pv",
            CurrentMemKb = dom0Kb, MaxMemKb = dom0Kb, TargetMemKb = dom0Kb,
            VcpuOnline = _hv.HostCpus, VcpuMaxId = _hv.HostCpus - 1,
            Running = true, CpuTimeNs = (ulong)(p.TotalProcessorTime.Ticks * 100),
            UptimeSeconds = HostMemory.UptimeSeconds(),
            StartTimeUnix = _started.ToUnixTimeSeconds(),
            Config = details ? JsonSerializer.SerializeToElement(new Dictionary<string, object>
            {
                ["c_info"] = new Dictionary<string, object> { ["type"] = "pv", ["name"] = "Domain-0", ["uuid"] = Guid.Empty.ToString() },
                ["b_info"] = new Dictionary<string, object> { ["max_vcpus"] = _hv.HostCpus, ["max_memkb"] = dom0Kb, ["target_memkb"] = dom0Kb },
            }) : null,
        };
    }

    private DomainInfo GuestInfo(Domain d, DomainRunInfo s, bool details)
    {
        return new DomainInfo
        {
            DomId = d.DomId, Name = d.Config.Name, Uuid = d.Config.Uuid, Type = DomainConfig.TypeName(d.Config.Type),
            CurrentMemKb = s.CurrentMemKb, MaxMemKb = d.Config.MaxMemKb, TargetMemKb = d.Config.TargetMemKb,
            // vCPUs the guest has not started yet (waiting for INIT-SIPI) still count, as in Xen.
            VcpuOnline = Math.Max(s.OnlineVcpus, d.Config.Vcpus), VcpuMaxId = d.Config.MaxVcpus - 1,
            Running = s.Running, Blocked = s.Blocked, Paused = s.Paused, Shutdown = s.Shutdown,
            ShutdownReason = (int)s.Reason, Dying = s.Dying, CpuTimeNs = s.CpuTimeNs,
            UptimeSeconds = (DateTimeOffset.UtcNow - d.Started).TotalSeconds,
            StartTimeUnix = d.Started.ToUnixTimeSeconds(),
            Cpupool = CpupoolName(d.DomId),
            NodeAffinity = NodeAffinityText(d.DomId),
            Config = details ? JsonSerializer.SerializeToElement(LibxlJson.DomainConfig(d.Config)) : null,
        };
    }

    private IReadOnlyList<VcpuInfoEntry> VcpuList(VcpuListRequest r)
    {
        var result = new List<VcpuInfoEntry>();
        var names = r.Domains.Count == 0 ? null : r.Domains;
        bool Wanted(uint id, string name) => names is null || names.Contains(name) || names.Contains(id.ToString());
        if (Wanted(0, "Domain-0"))
            for (int i = 0; i < _hv.HostCpus; i++)
                result.Add(new VcpuInfoEntry("Domain-0", 0, i, i, true, true, false, 0, "all", "all"));
        List<Domain> doms;
        lock (_lock) doms = [.. _domains.Values.OrderBy(x => x.DomId)];
        if (names is not null)
            foreach (var n in names)
                if (n != "Domain-0" && n != "0" && !doms.Any(d => d.Config.Name == n || d.DomId.ToString() == n))
                    throw new ControlException($"{n} is an invalid domain identifier (rc=-6)", 22);
        foreach (var d in doms.Where(d => Wanted(d.DomId, d.Config.Name)))
            foreach (var v in d.Hv.Vcpus)
            {
                string hard = v.Hard is { } h ? XenSharp.Hypervisor.CpuList.Format(h, _hv.HostCpus) : Affinity(d.Config.CpusHard, v.Vcpu);
                string soft = v.Soft is { } so ? XenSharp.Hypervisor.CpuList.Format(so, _hv.HostCpus) : Affinity(d.Config.CpusSoft, v.Vcpu);
                result.Add(new VcpuInfoEntry(d.Config.Name, d.DomId, v.Vcpu, v.Cpu, v.Online, v.Running, v.Blocked, v.CpuTimeNs, hard, soft));
            }
        return result;
    }

    private static string Affinity(IReadOnlyList<CpuMap>? maps, int vcpu) =>
        maps is null ? "all" : (maps.Count == 1 ? maps[0] : vcpu < maps.Count ? maps[vcpu] : null)?.ToString() ?? "all";

    private HostInfo Info()
    {
        var (total, free) = _hv.MachineMemory;
        var uname = HostMemory.Uname();
        string[] ver = _hv.Version.Split('.', 3);
        var (topology, nodes) = NumaTables();
        int nrNodes = Math.Max(1, topology.Select(t => t.Node).Distinct().Count());
        return new HostInfo
        {
            Host = Environment.MachineName,
            Release = uname.Release,
            Version = uname.Version,
            Machine = "x86_64",
            NrCpus = _hv.OnlineHostCpus,
            MaxCpuId = _hv.HostCpus - 1,
            NrNodes = nrNodes,
            CoresPerSocket = Math.Max(1, _hv.HostCpus / nrNodes),
            ThreadsPerCore = 1,
            CpuMhz = HostMemory.CpuMhz(),
            HwCaps = "00000000:00000000:00000000:00000000:00000000:00000000:00000000:00000000",
            VirtCaps = "hvm hap gnttab-v1 gnttab-v2",
            // physinfo: the hypervisor's machine memory and what no domain holds of it, not the host's.
            TotalMemoryMb = (long)(total >> 20),
            FreeMemoryMb = (long)(free >> 20),
            FreeCpus = 0,
            XenMajor = int.Parse(ver[0]),
            XenMinor = int.Parse(ver[1]),
            XenExtra = "." + ver[2],
            XenVersion = _hv.Version,
            XenCaps = _hv.Capabilities,
            XenScheduler = "credit",
            XenPagesize = 4096,
            Platform = "virt_start=0xffff800000000000",
            XenChangeset = "",
            XenCommandline = "",
            CcCompiler = $".NET {Environment.Version}",
            CcCompileBy = "xensharp",
            CcCompileDomain = "",
            CcCompileDate = File.GetLastWriteTimeUtc(typeof(Host).Assembly.Location).ToString("ddd MMM d HH:mm:ss UTC yyyy"),
            BuildId = typeof(Host).Assembly.ManifestModule.ModuleVersionId.ToString("N"),
            XendConfigFormat = "4",
            CpuTopology = topology,
            NumaNodes = nodes,
        };
    }
}
