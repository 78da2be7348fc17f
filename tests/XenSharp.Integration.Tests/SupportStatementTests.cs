using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

/// <summary>
/// docs/SUPPORT.md is honest: every feature it marks Supported, Tech Preview or Experimental has
/// at least one test tagged [Trait("Feature", heading)], and every such tag names a real feature.
/// </summary>
public partial class SupportStatementTests
{
    private static readonly string[] ClaimedLabels = ["Supported", "Tech Preview", "Experimental", "Deprecated"];

    [GeneratedRegex(@"^#{2,4} (?<name>.+?)\s*$")]
    private static partial Regex Heading();

    [GeneratedRegex(@"^    Status(?<qual>[^:]*):\s*(?<label>.+?)\s*$")]
    private static partial Regex StatusLine();

    [GeneratedRegex(@"Trait\(\s*""Feature""\s*,\s*""(?<name>[^""]+)""\s*\)")]
    private static partial Regex FeatureTrait();

    /// <summary>Every heading of the Feature Support part: features and the sections that group them.</summary>
    internal static HashSet<string> ReadHeadings() =>
        File.ReadLines(Repository.PathOf("docs", "SUPPORT.md"))
            .TakeWhile(l => !l.StartsWith("# Format and definitions"))
            .Select(l => Heading().Match(l))
            .Where(m => m.Success)
            .Select(m => m.Groups["name"].Value)
            .ToHashSet();

    internal static Dictionary<string, List<string>> ReadStatuses()
    {
        var statuses = new Dictionary<string, List<string>>();
        string? feature = null;
        foreach (var line in File.ReadLines(Repository.PathOf("docs", "SUPPORT.md")))
        {
            if (line.StartsWith("# Format and definitions")) break;
            var h = Heading().Match(line);
            if (h.Success) { feature = h.Groups["name"].Value; continue; }
            var s = StatusLine().Match(line);
            if (s.Success && feature is not null)
            {
                if (!statuses.TryGetValue(feature, out var list)) statuses[feature] = list = [];
                list.Add(s.Groups["label"].Value);
            }
        }
        return statuses;
    }

    private static HashSet<string> TaggedFeatures() =>
        Directory.EnumerateFiles(Repository.PathOf("tests"), "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains("/obj/") && !f.Contains("/bin/") && !f.EndsWith(nameof(SupportStatementTests) + ".cs"))
            .SelectMany(f => FeatureTrait().Matches(File.ReadAllText(f)).Select(m => m.Groups["name"].Value))
            .ToHashSet();

    [Fact]
    public void EveryStatusUsesAKnownLabel()
    {
        var known = ClaimedLabels.Append("Not implemented").ToHashSet();
        var statuses = ReadStatuses();
        Assert.NotEmpty(statuses);
        var bad = statuses.SelectMany(kv => kv.Value.Where(l => !known.Any(k => l == k || l.StartsWith(k + ", "))).Select(l => $"{kv.Key}: {l}")).ToList();
        Assert.True(bad.Count == 0, "unknown status labels: " + string.Join("; ", bad));
    }

    private static bool IsClaim(string label) => ClaimedLabels.Any(k => label == k || label.StartsWith(k + ", "));

    [Fact]
    public void EveryClaimedFeatureHasATaggedTest()
    {
        var tagged = TaggedFeatures();
        var untested = ReadStatuses()
            .Where(kv => kv.Value.Any(IsClaim))
            .Select(kv => kv.Key)
            .Where(f => !tagged.Contains(f))
            .ToList();
        Assert.True(untested.Count == 0, "claimed in docs/SUPPORT.md without a tagged test: " + string.Join(", ", untested));
    }

    [Fact]
    public void EveryFeatureTagNamesAFeatureOfTheStatement()
    {
        var features = ReadHeadings();
        var unknown = TaggedFeatures().Where(t => !features.Contains(t)).ToList();
        Assert.True(unknown.Count == 0, "tests tagged with features docs/SUPPORT.md does not list: " + string.Join(", ", unknown));
    }

    [Fact]
    public void TheStatementListsEveryFeatureOfXen414()
    {
        // The feature headings of Xen 4.14's statement that XenSharp answers for.
        string[] sample = ["x86/PVH", "x86/HVM", "xl", "Credit Scheduler", "Credit2 Scheduler", "RTDS based Scheduler",
            "ARINC653 Scheduler", "Null Scheduler", "CPU Pools", "PV Console (xenconsoled)", "Blkback", "Netback", "Argo: Inter-domain message delivery by hypercall",
            "XSM & FLASK", "Dynamic memory control", "Hypervisor 'debug keys'"];
        var features = ReadStatuses().Keys.ToHashSet();
        Assert.All(sample, f => Assert.Contains(f, features));
        Assert.True(features.Count >= 100, $"only {features.Count} features listed");
    }
}
