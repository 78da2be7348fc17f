using System.Diagnostics;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>Builds tests/native/oracle.c with gcc (once per test run) and runs batches of cases
/// through it on the host CPU.</summary>
internal static class NativeOracle
{
    static readonly Lazy<string> helper = new(Build);

    public static string HelperPath => helper.Value;

    internal static string RepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "XenSharp.slnx")))
            dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
    }

    static string Build()
    {
        string root = RepoRoot();
        string src = Path.Combine(root, "tests", "native", "oracle.c");
        string outDir = Path.Combine(root, "artifacts", "native");
        Directory.CreateDirectory(outDir);
        string exe = Path.Combine(outDir, "oracle");
        if (File.Exists(exe) && File.GetLastWriteTimeUtc(exe) >= File.GetLastWriteTimeUtc(src))
            return exe;
        string tmp = exe + "." + Environment.ProcessId;
        var (code, output) = Run("gcc", ["-O2", "-Wall", "-o", tmp, src], null);
        if (code != 0)
            throw new InvalidOperationException("gcc failed building the oracle helper:\n" + output);
        File.Move(tmp, exe, overwrite: true);
        var (lc, layout) = Run(exe, ["--layout"], null);
        string expected = $"{OracleLayout.InSize} {OracleLayout.OutSize} {OracleLayout.Code} {OracleLayout.Data}";
        if (lc != 0 || layout.Trim() != expected)
            throw new InvalidOperationException($"oracle helper layout '{layout.Trim()}' differs from the harness's '{expected}'");
        return exe;
    }

    static (int, string) Run(string file, string[] args, byte[]? stdin)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o);
    }

    /// <summary>Runs all cases in one helper process.</summary>
    public static OracleResult[] Run(IReadOnlyList<OracleCase> cases)
    {
        var psi = new ProcessStartInfo(HelperPath)
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var writer = Task.Run(() =>
        {
            var buf = new byte[OracleLayout.InSize];
            using var stdin = p.StandardInput.BaseStream;
            foreach (var c in cases)
            {
                c.WriteTo(buf);
                stdin.Write(buf);
            }
        });
        var results = new OracleResult[cases.Count];
        var ob = new byte[OracleLayout.OutSize];
        var stdout = p.StandardOutput.BaseStream;
        for (int i = 0; i < cases.Count; i++)
        {
            if (stdout.ReadAtLeast(ob, ob.Length, throwOnEndOfStream: false) < ob.Length)
            {
                p.WaitForExit();
                throw new InvalidOperationException(
                    $"oracle helper died (status {p.ExitCode}) running {cases[i].Group} case {cases[i].Index}:\n{cases[i].Text}{stderr.Result}");
            }
            results[i] = OracleResult.Read(ob);
        }
        writer.Wait();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"oracle helper exited with {p.ExitCode}: {stderr.Result}");
        return results;
    }
}
