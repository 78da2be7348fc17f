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
        var seen = new List<string>();
        var queue = new Queue<string>(roots);
        while (queue.Count > 0)
        {
            var batch = new List<string>();
            while (queue.TryDequeue(out var p))
                if (!skip.Contains(p) && !seen.Contains(p) && !batch.Contains(p)) batch.Add(p);
            if (batch.Count == 0) break;
            seen.AddRange(batch);
            var output = Run("apt-cache",
                "depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances " + string.Join(' ', batch),
                Environment.CurrentDirectory);
            foreach (var dep in FirstChoices(output)) queue.Enqueue(dep);
        }
        return seen;
    }

    /// <summary>The dependencies in apt-cache depends output, one choice for each.</summary>
    private static IEnumerable<string> FirstChoices(string output)
    {
        var lines = output.Split('\n');
        var skipNext = false;
        for (var i = 0; i < lines.Length; i++)
        {
            var t = lines[i].TrimStart();
            var indent = lines[i].Length - t.Length;
            if (indent != 2) continue;
            var alternative = t.StartsWith('|');
            if (alternative) t = t[1..];
            if (!t.StartsWith("Depends: ") && !t.StartsWith("PreDepends: ")) continue;
            var take = !skipNext;
            skipNext = alternative;
            if (!take) continue;
            var name = t[(t.IndexOf(' ') + 1)..].Trim();
            if (name.StartsWith('<'))
            {
                // A virtual package: its providers follow, indented further.
                var provider = i + 1 < lines.Length && lines[i + 1].StartsWith("    ") ? lines[i + 1].Trim() : null;
                if (provider is null) throw new ArtifactException($"nothing provides {name}");
                name = provider;
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
