namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>Seed and case count, from XENSHARP_ORACLE_SEED / XENSHARP_ORACLE_CASES (see README.md).</summary>
internal static class OracleSettings
{
    public const int DefaultSeed = 1_403_2026;
    public const int DefaultCases = 20_000;

    public static int Seed => int.TryParse(Environment.GetEnvironmentVariable("XENSHARP_ORACLE_SEED"), out var s) ? s : DefaultSeed;

    public static int TotalCases => int.TryParse(Environment.GetEnvironmentVariable("XENSHARP_ORACLE_CASES"), out var n) && n > 0 ? n : DefaultCases;

    /// <summary>XENSHARP_ORACLE_CASE=INDEX runs just that case of each group (to reproduce one failure).</summary>
    public static int? OnlyCase => int.TryParse(Environment.GetEnvironmentVariable("XENSHARP_ORACLE_CASE"), out var i) ? i : null;

    public static int CasesPerGroup(int groups) => Math.Max(1, TotalCases / groups);

    static readonly Lazy<HashSet<string>> hostFlags = new(() =>
    {
        foreach (var line in File.ReadLines("/proc/cpuinfo"))
            if (line.StartsWith("flags", StringComparison.Ordinal))
                return line[(line.IndexOf(':') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries).ToHashSet();
        return [];
    });

    /// <summary>True when the host CPU has every feature the group needs (checked at run time).</summary>
    public static bool HostSupports(InstructionGroup g) => g.HostFeatures.All(hostFlags.Value.Contains);
}
