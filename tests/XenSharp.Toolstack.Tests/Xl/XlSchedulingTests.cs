using XenSharp.Toolstack.Tests.Builder;

namespace XenSharp.Toolstack.Tests.Xl;

/// <summary>xl's cpupool and scheduler commands against the daemon's hypervisor (2 pCPUs or more).
/// Each test gives back what it took: its domains, its pool and Pool-0's pCPU 1.</summary>
[Collection("xl")]
public sealed class XlSchedulingTests(XlSession s)
{
    private string Guest(string name, string extra = "")
    {
        File.WriteAllBytes(Path.Combine(s.Work, "guest.elf"), TestImages.Elf(TestImages.HaltLoop, 0x100000));
        string cfg = Path.Combine(s.Work, name + ".cfg");
        File.WriteAllText(cfg, $"name = \"{name}\"\ntype = \"pvh\"\nkernel = \"guest.elf\"\nmemory = 16\nvcpus = 2\n{extra}");
        return cfg;
    }

    private string Ok(params string[] args)
    {
        var (code, o, e) = s.Xl(args);
        Assert.True(code == 0, $"xl {string.Join(' ', args)}: {e}");
        return o;
    }

    private (int Code, string Err) Fails(params string[] args)
    {
        var (code, _, e) = s.Xl(args);
        Assert.NotEqual(0, code);
        return (code, e);
    }

    /// <summary>Pool-0 gives pCPU 1 to a new pool named <paramref name="pool"/>.</summary>
    private void CreatePool(string pool, string sched)
    {
        Ok("cpupool-cpu-remove", "Pool-0", "1");
        Ok("cpupool-create", $"name=\"{pool}\"", $"sched=\"{sched}\"", "cpus=\"1\"");
    }

    private void Cleanup(string pool, params string[] domains)
    {
        foreach (var d in domains) s.Xl("destroy", d);
        s.Xl("cpupool-destroy", pool);
        s.Xl("cpupool-cpu-add", "Pool-0", "1");
    }

    private static string[] Lines(string o) => o.TrimEnd('\n').Split('\n');

    [Fact, Trait("Feature", "CPU Pools"), Trait("Feature", "Credit Scheduler"), Trait("Feature", "xl")]
    public void PoolTakesFreeCpuAndDomainMigratesIntoIt()
    {
        int cpus = int.Parse(Lines(Ok("cpupool-list", "Pool-0"))[1][19..].Trim().Split(' ')[0]);
        Assert.True(cpus >= 2, "the daemon needs two pCPUs or more");
        try
        {
            Ok("create", Guest("poolguest"));
            var (_, err) = Fails("cpupool-create", "name=\"tp\"", "sched=\"credit\"", "cpus=\"1\"");
            Assert.Contains("not free", err);

            CreatePool("tp", "credit");
            Assert.Contains("Pool name \"tp\" already exists", Fails("cpupool-create", "name=\"tp\"").Err);
            Assert.Contains("Pool 'nosuch' does not exist", Fails("cpupool-list", "nosuch").Err);
            Ok("cpupool-migrate", "poolguest", "tp");
            Assert.Contains(Lines(Ok("list", "-c")), l => l.StartsWith("poolguest ") && l.EndsWith(" tp"));

            var list = Lines(Ok("cpupool-list"));
            Assert.Equal("Name               CPUs   Sched     Active   Domain count", list[0]);
            Assert.Contains($"Pool-0             {cpus - 1,3}    credit       y          0", list);
            Assert.Contains("tp                   1    credit       y          1", list);
            Assert.Equal(["Name               CPU list", "tp                 1"], Lines(Ok("cpupool-list", "-c", "tp")));

            // A pool with a domain in it cannot go; its last pCPU stays.
            Fails("cpupool-destroy", "tp");
            Fails("cpupool-cpu-remove", "tp", "1");

            Ok("sched-credit", "-d", "poolguest", "-w", "512", "-c", "50");
            var out1 = Lines(Ok("sched-credit", "-p", "tp"));
            Assert.Equal("Cpupool tp: tslice=30ms ratelimit=1000us migration-delay=0us", out1[0]);
            Assert.Equal("Name                                ID Weight  Cap", out1[1]);
            Assert.Matches(@"^poolguest\s+\d+\s+512\s+50$", out1[2]);
            Assert.Matches(@"^poolguest\s+\d+\s+512\s+50$", Lines(Ok("sched-credit", "-d", "poolguest"))[1]);

            Assert.Equal("Specifying a cpupool or schedparam is not allowed with domain options.",
                Fails("sched-credit", "-p", "tp", "-d", "poolguest").Err.Trim());
            Assert.Equal("Must specify schedparam to set schedule parameter values.", Fails("sched-credit", "-p", "tp", "-t", "10").Err.Trim());
            Assert.Equal("Must specify a domain.", Fails("sched-credit", "-w", "10").Err.Trim());
            Ok("sched-credit", "-s", "-p", "tp", "-t", "10", "-r", "500", "-m", "2000");
            Assert.Equal("Cpupool tp: tslice=10ms ratelimit=500us migration-delay=2000us", Lines(Ok("sched-credit", "-s", "-p", "tp"))[0]);

            Ok("cpupool-rename", "tp", "tp2");
            Assert.Contains(Lines(Ok("cpupool-list")), l => l.StartsWith("tp2 "));
            Ok("cpupool-rename", "tp2", "tp");
            Assert.Contains("unknown cpupool", Fails("cpupool-migrate", "poolguest", "nosuchpool").Err);
        }
        finally { Cleanup("tp", "poolguest"); }
        Assert.Contains($"Pool-0             {cpus,3}    credit       y          0", Lines(Ok("cpupool-list")));
    }

    [Fact, Trait("Feature", "CPU Pools"), Trait("Feature", "xl")]
    public void EmptyCpuListMakesAnEmptyPool()
    {
        try
        {
            Assert.Equal(["Using config file \"command line\"", "cpupool name:   empty", "scheduler:      credit2", "number of cpus: 0"],
                Lines(Ok("cpupool-create", "name=\"empty\"", "sched=\"credit2\"", "cpus=[]")));
            Assert.Contains("empty                0   credit2       y          0", Lines(Ok("cpupool-list")));
            Assert.Equal(["Name               CPU list", "empty              "], Lines(Ok("cpupool-list", "-c", "empty")));
            Ok("cpupool-cpu-remove", "Pool-0", "1");
            Ok("cpupool-cpu-add", "empty", "1");
            Assert.Contains("empty                1   credit2       y          0", Lines(Ok("cpupool-list")));
            Ok("cpupool-cpu-remove", "empty", "1");
        }
        finally { Cleanup("empty"); }
    }

    [Fact, Trait("Feature", "CPU Pools"), Trait("Feature", "RTDS based Scheduler"), Trait("Feature", "xl")]
    public void RtdsPoolFromConfigAndVcpuParameters()
    {
        try
        {
            File.WriteAllText(Path.Combine(s.Work, "rt.pool"), "name = \"rt\"\nsched = \"rtds\"\ncpus = [\"1\"]\n");
            Ok("cpupool-cpu-remove", "Pool-0", "1");
            Assert.Equal([$"Using config file \"{Path.Combine(s.Work, "rt.pool")}\"", "cpupool name:   rt", "scheduler:      rtds", "number of cpus: 1"],
                Lines(Ok("cpupool-create", Path.Combine(s.Work, "rt.pool"))));
            Ok("create", Guest("rtguest", "pool = \"rt\"\n"));
            Assert.Contains("rt                   1      rtds       y          1", Lines(Ok("cpupool-list")));

            // As xl: setting names the vCPUs and gives each a period, a budget and an extratime.
            Assert.Equal("Must specify VCPU.", Fails("sched-rtds", "-d", "rtguest", "-p", "20000", "-b", "5000", "-e", "1").Err.Trim());
            Assert.Equal("Incorrect number of period, budget and extratime",
                Fails("sched-rtds", "-d", "rtguest", "-v", "1", "-p", "20000", "-b", "5000").Err.Trim());
            Assert.Equal("Specifying a cpupool is not allowed with other options.", Fails("sched-rtds", "-c", "rt", "-d", "rtguest").Err.Trim());
            Ok("sched-rtds", "-d", "rtguest", "-v", "1", "-p", "20000", "-b", "5000", "-e", "1");
            var rows = Lines(Ok("sched-rtds", "-d", "rtguest", "-v", "all"));
            Assert.Equal("Name                                ID VCPU    Period    Budget  Extratime", rows[0]);
            Assert.Equal(3, rows.Length);
            Assert.Matches(@"^rtguest\s+\d+\s+1\s+20000\s+5000\s+(yes|no)$", rows[2]);
            Assert.DoesNotMatch(@"\s20000\s", rows[1]);

            Ok("sched-rtds", "-d", "rtguest", "-v", "all", "-p", "30000", "-b", "3000", "-e", "0");
            var pool = Lines(Ok("sched-rtds", "-v", "all"));
            Assert.Equal("Cpupool rt: sched=RTDS", pool[0]);
            Assert.Matches(@"^rtguest\s+\d+\s+0\s+30000\s+3000\s+no$", pool[2]);
            Assert.Matches(@"^rtguest\s+\d+\s+1\s+30000\s+3000\s+no$", pool[3]);

            // A credit command on a domain of an RTDS pool is refused.
            Fails("sched-credit", "-d", "rtguest", "-w", "100");
        }
        finally { Cleanup("rt", "rtguest"); }
    }

    [Fact, Trait("Feature", "CPU Pools"), Trait("Feature", "Credit2 Scheduler"), Trait("Feature", "xl")]
    public void Credit2PoolParameters()
    {
        try
        {
            CreatePool("c2", "credit2");
            Ok("create", Guest("c2guest", "pool = \"c2\"\ncpu_weight = 384\n"));
            Ok("sched-credit2", "-s", "-p", "c2", "-r", "700");
            var o = Lines(Ok("sched-credit2", "-p", "c2"));
            Assert.Equal("Cpupool c2: ratelimit=700us", o[0]);
            Assert.Matches(@"^c2guest\s+\d+\s+384\s+0$", o[2]);
            Ok("sched-credit2", "-d", "c2guest", "-w", "1000");
            Assert.Matches(@"^c2guest\s+\d+\s+1000\s+0$", Lines(Ok("sched-credit2", "-d", "c2guest"))[1]);
        }
        finally { Cleanup("c2", "c2guest"); }
    }

    [Fact, Trait("Feature", "Credit Scheduler"), Trait("Feature", "xl")]
    public void AffinityAndWeightFromConfigAndVcpuPin()
    {
        try
        {
            Ok("create", Guest("pinguest", "cpus = \"0\"\ncpu_weight = 128\n"));
            var rows = Lines(Ok("vcpu-list", "pinguest"));
            Assert.All(rows.Skip(1), r => Assert.EndsWith(" 0 / all", r));
            Assert.Matches(@"^pinguest\s+\d+\s+128\s+0$", Lines(Ok("sched-credit", "-d", "pinguest"))[1]);

            // xl's columns: name, ID, VCPU, then CPU with no space before it, state, time, affinities.
            Assert.Equal("Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)", rows[0]);
            Assert.Equal("pinguest", rows[1][..32].TrimEnd());
            Assert.Equal("0", rows[1][39..44].Trim());
            Assert.Equal("0", rows[1][44..49].Trim());
            Assert.Matches(@"^   [r-][b-]- +\d+\.\d  $", rows[1][49..67]);
            Assert.Equal("0 / all", rows[1][67..]);

            Ok("vcpu-pin", "pinguest", "1", "1", "0-1");
            rows = Lines(Ok("vcpu-list", "pinguest"));
            Assert.Matches(@"^pinguest\s+\d+\s+0\s.* 0 / all$", rows[1]);
            Assert.Matches(@"^pinguest\s+\d+\s+1\s.* 1 / all$", rows[2]);
        }
        finally { s.Xl("destroy", "pinguest"); }
    }

    [Fact, Trait("Feature", "NUMA scheduler affinity"), Trait("Feature", "xl")]
    public void InfoAndListShowTheNumaTopology()
    {
        var info = Lines(Ok("info", "-n"));
        int cpus = int.Parse(info.Single(l => l.StartsWith("nr_cpus ")).Split(':')[1]);
        int nodes = int.Parse(info.Single(l => l.StartsWith("nr_nodes ")).Split(':')[1]);
        // After physinfo (free_cpus), before xen_major: the cpu table, the (empty) device table, the node table.
        int t = Array.IndexOf(info, "cpu_topology           :");
        Assert.StartsWith("free_cpus ", info[t - 1]);
        Assert.Equal("cpu:    core    socket     node", info[t + 1]);
        for (int c = 0; c < cpus; c++)
            Assert.Matches($@"^{c,3}:    {c,4}     +\d+     +\d+$", info[t + 2 + c]);
        Assert.Equal(["device topology        :", "device           node", "numa_info              :",
            "node:    memsize    memfree    distances"], info[(t + 2 + cpus)..(t + 6 + cpus)]);
        for (int n = 0; n < nodes; n++)
            Assert.Matches($@"^{n,4}:    +\d+     +\d+      \d+(,\d+)*$", info[t + 6 + cpus + n]);
        Assert.StartsWith("xen_major ", info[t + 6 + cpus + nodes]);
        Assert.DoesNotContain("cpu_topology           :", Lines(Ok("info")));
        try
        {
            Ok("create", Guest("numaguest", "cpus = \"nodes:0\"\n"));
            var list = Lines(Ok("list", "-n"));
            Assert.EndsWith("Time(s) NODE Affinity", list[0]);
            Assert.Matches(nodes == 1 ? @"^numaguest\s.* all$" : @"^numaguest\s.* 0$", list.Single(l => l.StartsWith("numaguest ")));
            Assert.Contains($"node {nodes} does not exist", Fails("vcpu-pin", "numaguest", "all", $"node:{nodes}").Err);
        }
        finally { s.Xl("destroy", "numaguest"); }
    }

    [Fact, Trait("Feature", "CPU Pools"), Trait("Feature", "xl")]
    public void NumaSplitNamesPoolsAfterTheirNodes()
    {
        try
        {
            CreatePool("other", "credit");
            Fails("cpupool-numa-split");
        }
        finally { Cleanup("other"); }
        try
        {
            Ok("cpupool-numa-split");
            var rows = Lines(Ok("cpupool-list")).Skip(1).ToList();
            Assert.StartsWith("Pool-node0 ", rows[0]);
            Assert.All(rows, r => Assert.Matches(@"^Pool-node\d+\s+\d+\s+credit\s+y\s+\d+$", r));
        }
        finally
        {
            var freed = new List<string>();
            foreach (var row in Lines(Ok("cpupool-list")).Skip(1).Select(r => r.Split(' ')[0]).Where(n => n != "Pool-node0"))
            {
                foreach (var cpu in Lines(Ok("cpupool-list", "-c", row))[1][19..].Split(','))
                {
                    s.Xl("cpupool-cpu-remove", row, cpu);
                    freed.Add(cpu);
                }
                s.Xl("cpupool-destroy", row);
            }
            s.Xl("cpupool-rename", "Pool-node0", "Pool-0");
            foreach (var cpu in freed) s.Xl("cpupool-cpu-add", "Pool-0", cpu);
        }
        Assert.Matches(@"^Pool-0\s+\d+\s+credit\s+y\s+0$", Lines(Ok("cpupool-list"))[1]);
    }
}
