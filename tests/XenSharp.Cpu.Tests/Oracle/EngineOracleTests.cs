using System.Text;
using Xunit.Abstractions;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>
/// The differential tester: every instruction group's generated cases run on the host CPU
/// (tests/native/oracle.c) and in the engine, and must end in the same state. The seed and
/// case count come from XENSHARP_ORACLE_SEED / XENSHARP_ORACLE_CASES; README.md beside this
/// file explains reproducing a failure and the long run.
/// </summary>
public class EngineOracleTests(ITestOutputHelper output)
{
    /// <summary>Groups left out of the default run, each with the engine defect that fails it.</summary>
    internal static readonly Dictionary<string, string> Excluded = new()
    {
    };

    /// <summary>How the engine runs each case: interpreted only, or with every block compiled
    /// before its first run (the block compiler must agree with the host just as the interpreter does).</summary>
    public enum Mode { Interpreter, Jit }

    static readonly Mode[] modes = [Mode.Interpreter, Mode.Jit];

    static List<string> GroupNames()
    {
        var names = new List<string>();
        foreach (var g in InstructionGroups.All)
            if (OracleSettings.HostSupports(g) && (!Excluded.ContainsKey(g.Name) || Environment.GetEnvironmentVariable("XENSHARP_ORACLE_ALL") == "1"))
                names.Add(g.Name);
        return names;
    }

    public static TheoryData<string, Mode> Groups()
    {
        var d = new TheoryData<string, Mode>();
        foreach (var mode in modes)
            foreach (var name in GroupNames())
                d.Add(name, mode);
        return d;
    }

    public static TheoryData<string, Mode> Directed()
    {
        var d = new TheoryData<string, Mode>();
        foreach (var mode in modes)
            foreach (var n in DirectedCases.Names)
                if (DirectedCases.Group(n) is not string g || !Excluded.ContainsKey(g) || Environment.GetEnvironmentVariable("XENSHARP_ORACLE_ALL") == "1")
                    d.Add(n, mode);
        return d;
    }

    [Theory, MemberData(nameof(Directed)), Trait("Feature", "x86 instruction emulation")]
    public void Engine_agrees_with_host_on_directed_case(string name, Mode mode)
    {
        var c = DirectedCases.Build(name, OracleSettings.Seed);
        var host = NativeOracle.Run([c])[0];
        using var machine = new GuestMachine();
        var factory = EngineFactory(mode);
        var engine = machine.Run(c, factory);
        var diff = OracleComparer.Compare(c, host, engine);
        if (diff != null && KnownEngineDefects.Match(c, host, engine, v => Rerun(machine, v, factory)) is string why)
        {
            output.WriteLine($"oracle: differs by the known engine defect: {why}");
            return;
        }
        Assert.True(diff == null, $"{name} (host stopped with {OracleComparer.VectorName(host.Vector)}):\n{c.Text}{diff}");
    }

    internal static ICpuEngine CreateEngine(IGuestMemory memory) => new X86Engine(memory, jit: JitSettings.Off);

    internal static Func<IGuestMemory, ICpuEngine> EngineFactory(Mode mode) => mode == Mode.Jit
        ? memory => new X86Engine(memory, jit: JitSettings.Eager)
        : CreateEngine;

    [Theory, MemberData(nameof(Groups)), Trait("Feature", "x86 instruction emulation")]
    public void Engine_agrees_with_host(string group, Mode mode)
    {
        var g = InstructionGroups.All.Single(x => x.Name == group);
        int seed = OracleSettings.Seed;
        int n = OracleSettings.CasesPerGroup(GroupNames().Count);
        // Compiling every block of every case costs far more than interpreting it: the default run
        // gives the compiled mode an eighth of the cases (an explicit XENSHARP_ORACLE_CASES gives it all).
        if (mode == Mode.Jit && Environment.GetEnvironmentVariable("XENSHARP_ORACLE_CASES") == null) n = Math.Max(50, n / 8);
        var indices = OracleSettings.OnlyCase is int only ? [only] : Enumerable.Range(0, n).ToArray();
        output.WriteLine($"oracle: group {group} ({mode}), seed {seed}, {indices.Length} cases");

        var (failures, known) = Run(g, seed, indices, EngineFactory(mode));
        foreach (var (why, count) in known)
            output.WriteLine($"oracle: {count} cases differ by the known engine defect: {why}");
        // Known defects must not make a group vacuous: most of its cases still have to agree.
        int agreed = indices.Length - failures.Count - known.Values.Sum();
        output.WriteLine($"oracle: {agreed} of {indices.Length} cases agree");
        if (indices.Length >= 50)
            Assert.True(agreed * 10 >= indices.Length, $"group {group}: only {agreed} of {indices.Length} cases were compared and agree "
                + "(the rest hit known engine defects); exclude the group instead");
        if (failures.Count == 0) return;
        var sb = new StringBuilder();
        sb.Append($"{failures.Count} of {indices.Length} cases of group {group} ({mode}) differ (seed {seed}; "
            + $"reproduce one with XENSHARP_ORACLE_SEED={seed} XENSHARP_ORACLE_CASE=<index>)\n");
        sb.Append("first differences: " + string.Join(", ", failures.GroupBy(f => f.Kind).OrderByDescending(x => x.Count())
            .Select(x => $"{x.Key} ×{x.Count()}")) + "\n");
        foreach (var f in failures.Take(4)) sb.Append(f.Report);
        string all = Path.Combine(NativeOracle.RepoRoot(), "artifacts", "oracle", $"{group}-{mode}-{seed}.txt");
        Directory.CreateDirectory(Path.GetDirectoryName(all)!);
        File.WriteAllText(all, string.Concat(failures.Select(f => f.Report)));
        sb.Append($"all {failures.Count} differences: {all}\n");
        Assert.Fail(sb.ToString());
    }

    static (OracleResult, OracleResult) Rerun(GuestMachine machine, OracleCase variant, Func<IGuestMemory, ICpuEngine> factory) =>
        (NativeOracle.Run([variant])[0], machine.Run(variant, factory));

    internal static (List<(string Kind, string Report)> Failures, Dictionary<string, int> Known) Run(InstructionGroup g, int seed, int[] indices,
        Func<IGuestMemory, ICpuEngine>? factory = null)
    {
        factory ??= CreateEngine;
        var cases = indices.Select(i => CaseGenerator.Generate(g, seed, i)).ToArray();
        var host = NativeOracle.Run(cases);
        var failures = new List<(string, string)>();
        var known = new Dictionary<string, int>();
        using var machine = new GuestMachine();
        for (int i = 0; i < cases.Length; i++)
        {
            if (host[i].Vector == OracleLayout.Timeout) continue; // cannot happen with forward-only branches
            OracleResult engine;
            try
            {
                engine = machine.Run(cases[i], factory);
            }
            catch (Exception e)
            {
                engine = new OracleResult { EngineError = e.GetType().Name + ": " + e.Message };
            }
            var diff = OracleComparer.Compare(cases[i], host[i], engine);
            if (diff == null) continue;
            if (KnownEngineDefects.Match(cases[i], host[i], engine, v => Rerun(machine, v, factory)) is string why)
            {
                known[why] = known.GetValueOrDefault(why) + 1;
                continue;
            }
            string first = diff.TrimStart().Split('\n')[0];
            string kind = first.StartsWith("vector:", StringComparison.Ordinal) || first.StartsWith("engine:", StringComparison.Ordinal)
                ? first.Split(" at rip")[0].Split(" (Fx")[0] : first.Split(':')[0];
            string mx = cases[i].UsesFx ? $", initial MXCSR {BitConverter.ToUInt32(cases[i].Fx, 24):x4}" : "";
            failures.Add((kind, $"case {cases[i].Index} (host stopped with {OracleComparer.VectorName(host[i].Vector)}{mx}):\n{cases[i].Text}{diff}\n"));
        }
        return (failures, known);
    }
}
