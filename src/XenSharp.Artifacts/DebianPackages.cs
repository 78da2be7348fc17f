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

    /// <summary>Downloads <paramref name="package"/> into <paramref name="dir"/> and returns the .deb path.</summary>
    public static string Download(string package, string dir)
    {
        Directory.CreateDirectory(dir);
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

    private static string Run(string file, string args, string cwd)
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
