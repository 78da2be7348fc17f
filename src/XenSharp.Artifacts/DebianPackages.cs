using System.Diagnostics;

namespace XenSharp.Artifacts;

/// <summary>Fetches Debian packages with apt-get download and unpacks them with dpkg-deb.</summary>
internal static class DebianPackages
{
    /// <summary>The concrete package a metapackage such as linux-image-amd64 depends on.</summary>
    public static string ResolveDependency(string metapackage, string prefix)
    {
        var output = Run("apt-cache", $"depends {metapackage}", Environment.CurrentDirectory);
        foreach (var line in output.Split('\n'))
        {
            var t = line.Trim();
            if (t.StartsWith("Depends: ") && t[9..].StartsWith(prefix))
                return t[9..].Trim();
        }
        throw new ArtifactException($"apt-cache does not know what {metapackage} depends on (is apt's package list present? try 'apt-get update')");
    }

    public static string Version(string package)
    {
        var output = Run("apt-cache", $"policy {package}", Environment.CurrentDirectory);
        foreach (var line in output.Split('\n'))
            if (line.Trim().StartsWith("Candidate: "))
                return line.Trim()["Candidate: ".Length..];
        throw new ArtifactException($"apt-cache has no candidate version of {package}");
    }

    /// <summary>
    /// The packages <paramref name="roots"/> need, following Depends and Pre-Depends (the first of
    /// alternatives, the first provider of a virtual package) but not into <paramref name="skip"/>.
    /// </summary>
    public static IReadOnlyList<string> Closure(IEnumerable<string> roots, IReadOnlySet<string> skip)
    {
        // One recursive apt-cache call lists every package that could be reached; the walk that
        // leaves out skip happens here.
        var output = Run("apt-cache",
            "depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances " + string.Join(' ', roots),
            Environment.CurrentDirectory);
        var graph = DependencyGraph(output);
        var seen = new List<string>();
        var queue = new Queue<string>(roots);
        while (queue.TryDequeue(out var p))
        {
            if (skip.Contains(p) || seen.Contains(p)) continue;
            if (!graph.TryGetValue(p, out var deps))
                throw new ArtifactException($"apt-cache knows no package {p} (is apt's package list present? try 'apt-get update')");
            seen.Add(p);
            foreach (var d in deps) queue.Enqueue(d);
        }
        return seen;
    }

    /// <summary>Each package in apt-cache depends output with the one choice taken for each of its
    /// dependencies: the first alternative, the first provider of a virtual package.</summary>
    internal static Dictionary<string, List<string>> DependencyGraph(string output)
    {
        var graph = new Dictionary<string, List<string>>();
        var lines = output.Split('\n');
        for (var i = 0; i < lines.Length; i++)
        {
            if (lines[i].Length == 0 || lines[i][0] == ' ') continue;
            var end = i + 1;
            while (end < lines.Length && lines[end].StartsWith(' ')) end++;
            graph[lines[i].Trim()] = FirstChoices(lines[(i + 1)..end]).ToList();
            i = end - 1;
        }
        return graph;
    }

    /// <summary>The dependencies in one package's apt-cache depends lines, one choice for each.</summary>
    private static IEnumerable<string> FirstChoices(string[] lines)
    {
        var skipNext = false;
        for (var i = 0; i < lines.Length; i++)
        {
            // "  Depends: x", or " |Depends: x" when the next dependency is an alternative to it.
            var line = lines[i];
            var alternative = line.StartsWith(" |");
            if (!alternative && (!line.StartsWith("  ") || line.StartsWith("   "))) continue;
            var t = line[2..];
            if (!t.StartsWith("Depends: ") && !t.StartsWith("PreDepends: ")) continue;
            var take = !skipNext;
            skipNext = alternative;
            if (!take) continue;
            var name = t[(t.IndexOf(' ') + 1)..].Trim();
            if (name.StartsWith('<'))
            {
                // A virtual package: its providers follow, indented further.
                var provider = i + 1 < lines.Length && lines[i + 1].StartsWith("    ") ? lines[i + 1].Trim() : null;
                if (provider is null && alternative) { skipNext = false; continue; } // try the next choice
                name = provider ?? throw new ArtifactException($"nothing provides {name}");
            }
            var colon = name.IndexOf(':');
            yield return colon < 0 ? name : name[..colon];
        }
    }

    /// <summary>Downloads the packages not already in <paramref name="dir"/> with one apt-get call and
    /// returns each package's .deb.</summary>
    public static IReadOnlyList<string> DownloadAll(IReadOnlyList<string> packages, string dir)
    {
        Directory.CreateDirectory(dir);
        string? Cached(string p) => Directory.GetFiles(dir, $"{p}_*.deb").OrderByDescending(File.GetLastWriteTimeUtc).FirstOrDefault();
        var missing = packages.Where(p => Cached(p) is null).ToList();
        if (missing.Count > 0)
        {
            try { Run("apt-get", "download -q " + string.Join(' ', missing), dir); }
            catch (ArtifactException first)
            {
                try { Run("apt-get", "update -qq", dir); }
                catch (ArtifactException) { throw first; }
                Run("apt-get", "download -q " + string.Join(' ', missing), dir);
            }
        }
        return packages.Select(p => Cached(p) ?? throw new ArtifactException($"apt-get download {p} left no .deb in {dir}")).ToList();
    }

    /// <summary>Downloads <paramref name="package"/> into <paramref name="dir"/>, unless a .deb of it is
    /// there already, and returns the .deb path.</summary>
    public static string Download(string package, string dir)
    {
        Directory.CreateDirectory(dir);
        var cached = Directory.GetFiles(dir, $"{package}_*.deb");
        if (cached.Length > 0) return cached.OrderByDescending(File.GetLastWriteTimeUtc).First();
        try
        {
            Run("apt-get", $"download -q {package}", dir);
        }
        catch (ArtifactException first)
        {
            // A fresh machine may have no package lists yet.
            try { Run("apt-get", "update -qq", dir); }
            catch (ArtifactException) { throw first; }
            Run("apt-get", $"download -q {package}", dir);
        }
        var debs = Directory.GetFiles(dir, $"{package}_*.deb");
        if (debs.Length == 0)
            throw new ArtifactException($"apt-get download {package} left no .deb in {dir}");
        return debs.OrderByDescending(File.GetLastWriteTimeUtc).First();
    }

    public static void Extract(string deb, string dir)
    {
        Directory.CreateDirectory(dir);
        Run("dpkg-deb", $"-x {deb} {dir}", dir);
    }

    public static string Run(string file, string args, string cwd)
    {
        var psi = new ProcessStartInfo(file, args)
        {
            WorkingDirectory = cwd,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        Process p;
        try
        {
            p = Process.Start(psi) ?? throw new ArtifactException($"cannot start {file}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new ArtifactException($"cannot run {file}: {e.Message} (this needs a Debian host with apt)");
        }
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new ArtifactException($"{file} {args} failed ({p.ExitCode}): {stderr.Result.Trim()}");
        return stdout;
    }
}

public sealed class ArtifactException(string message) : Exception(message);
