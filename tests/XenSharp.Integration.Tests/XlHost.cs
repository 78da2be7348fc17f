using System.Diagnostics;
using System.Text;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Runs the real xl program against its own daemon in a private run directory, as a user types it.
/// Disposing stops that daemon.
/// </summary>
public sealed class XlHost : IDisposable
{
    public string RunDir { get; } = Directory.CreateTempSubdirectory("xensharp-it-").FullName;

    private static readonly string Configuration =
        AppContext.BaseDirectory.Contains("/release/", StringComparison.Ordinal) ? "release" : "debug";

    public static string XlDll => Repository.PathOf("artifacts", "bin", "XenSharp.Xl", Configuration, "xl.dll");

    /// <summary>Makes <c>DIR/bin/xl</c>, a script that runs this xl, and returns <c>DIR/bin</c>: put on PATH by the ssh
    /// stand-ins of migration tests, which run <c>xl migrate-receive</c> as ssh would on the other host.</summary>
    public static string XlCommandDirectory(string dir)
    {
        string bin = Path.Combine(dir, "bin");
        Directory.CreateDirectory(bin);
        string xl = Path.Combine(bin, "xl");
        File.WriteAllText(xl, $"#!/bin/sh\nexec dotnet {XlDll} \"$@\"\n");
        File.SetUnixFileMode(xl, (UnixFileMode)0b111_101_101);
        return bin;
    }

    /// <summary>Extra environment for xl and so for the daemon it starts (e.g. XENSHARP_MACHINE_MEMORY).</summary>
    public Dictionary<string, string> Environment { get; } = [];

    public static string DaemonDll => Repository.PathOf("artifacts", "bin", "XenSharp.Daemon", Configuration, "xensharpd.dll");

    public XlResult Run(params string[] args) => Run(TimeSpan.FromSeconds(60), args);

    public XlResult Run(TimeSpan timeout, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = Repository.Root,
        };
        psi.ArgumentList.Add(XlDll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["XENSHARP_RUNDIR"] = RunDir;
        foreach (var (k, v) in Environment)
            psi.Environment[k] = v;
        return RunProcess(psi, timeout);
    }

    /// <summary>Polls <paramref name="condition"/> until it holds (true) or <paramref name="timeout"/> passes (false).</summary>
    public static bool WaitUntil(Func<bool> condition, TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > until) return false;
            Thread.Sleep(200);
        }
        return true;
    }

    /// <summary>Runs a program of Xen's own userland under ./dom0 against this host's daemon.</summary>
    public XlResult RunDom0(params string[] args) => RunDom0(TimeSpan.FromMinutes(5), args);

    public XlResult RunDom0(TimeSpan timeout, params string[] args) => RunProcess(Dom0StartInfo(args), timeout);

    /// <summary>How ./dom0 starts a program against this host's daemon, all three streams redirected.</summary>
    public ProcessStartInfo Dom0StartInfo(params string[] args)
    {
        var psi = new ProcessStartInfo(Repository.PathOf("dom0"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = Repository.Root,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["XENSHARP_RUNDIR"] = RunDir;
        return psi;
    }

    /// <summary>Runs a prepared process to its end (killed with its children past <paramref name="limit"/>),
    /// stdin closed, both outputs collected.</summary>
    public static XlResult RunProcess(ProcessStartInfo psi, TimeSpan limit)
    {
        using var p = Process.Start(psi)!;
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stdout) stdout.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        p.StandardInput.Close();
        bool exited = p.WaitForExit(limit);
        if (!exited) p.Kill(entireProcessTree: true);
        p.WaitForExit();
        lock (stdout) lock (stderr)
            return new XlResult(exited ? p.ExitCode : -1, stdout.ToString(), stderr.ToString(), !exited);
    }

    public void Dispose()
    {
        try { Run(TimeSpan.FromSeconds(30), "daemon-stop"); } catch { /* best effort */ }
        try { Directory.Delete(RunDir, recursive: true); } catch (IOException) { }
    }
}

public sealed record XlResult(int ExitCode, string Stdout, string Stderr, bool TimedOut)
{
    public override string ToString() =>
        $"exit {ExitCode}{(TimedOut ? " (timed out)" : "")}\n--- stdout\n{Stdout}--- stderr\n{Stderr}";
}
