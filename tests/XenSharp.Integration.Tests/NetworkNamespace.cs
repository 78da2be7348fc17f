using System.Diagnostics;

namespace XenSharp.Integration.Tests;

/// <summary>
/// A network namespace of one test class, so its bridges, switches, DHCP servers and the daemon's vifs never touch
/// the host's network. The daemon is started inside it (<see cref="StartDaemon"/>), so the TAP devices and Xen's
/// hotplug scripts the toolstack runs act there; xl and its console reach the daemon from outside through its Unix
/// sockets. Commands inside run with xl's run directory and the environment given.
/// </summary>
internal sealed class NetworkNamespace : IDisposable
{
    private static readonly TimeSpan CommandLimit = TimeSpan.FromSeconds(60);
    private readonly string _runDir;
    private readonly Dictionary<string, string>? _env;

    public string Name { get; }

    /// <summary>Makes the namespace <c>PREFIX&lt;pid&gt;</c> with its loopback up.</summary>
    public NetworkNamespace(string prefix, string runDir, Dictionary<string, string>? env = null)
    {
        Name = $"{prefix}{Environment.ProcessId}";
        _runDir = runDir;
        _env = env;
        Exec("ip", ["netns", "add", Name], null, TimeSpan.FromSeconds(30)).Check();
        try
        {
            Run("ip", "link", "set", "lo", "up").Check();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>A Linux bridge with the host side's address (CIDR), up.</summary>
    public void AddBridge(string bridge, string address)
    {
        Run("ip", "link", "add", bridge, "type", "bridge").Check();
        Run("ip", "addr", "add", address, "dev", bridge).Check();
        Run("ip", "link", "set", bridge, "up").Check();
    }

    /// <summary>The daemon starts with the first xl command: run that one in here.</summary>
    public void StartDaemon() => Run("dotnet", XlHost.XlDll, "list").Check();

    public XlResult Run(params string[] command) => Run(command, CommandLimit);

    public XlResult Run(string[] command, TimeSpan limit) => Exec("ip", ["netns", "exec", Name, .. command], _runDir, limit, _env);

    /// <summary>A long-running command inside; its standard input stays open until it is disposed.</summary>
    public Process Start(params string[] command)
    {
        var psi = new ProcessStartInfo("ip") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in (string[])["netns", "exec", Name, .. command]) psi.ArgumentList.Add(a);
        foreach (var (k, v) in _env ?? []) psi.Environment[k] = v;
        var p = Process.Start(psi)!;
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    public void WaitForListener(int port)
    {
        for (int i = 0; i < 100; i++)
        {
            if (Run("ss", "-ltn").Stdout.Contains($":{port} ")) return;
            Thread.Sleep(100);
        }
        Assert.Fail($"nothing listens on port {port} in the namespace");
    }

    /// <summary>A node as Xen's xenstore-read sees it, through the daemon's xenstored socket.</summary>
    public static string XenstoreRead(string runDir, string path) =>
        Exec("xenstore-read", [path], runDir, TimeSpan.FromSeconds(30),
            new() { ["XENSTORED_PATH"] = Path.Combine(runDir, "xenstored", "socket") }).Stdout.Trim();

    /// <summary>A host command with xl's run directory (when given) and extra environment.</summary>
    public static XlResult Exec(string file, string[] args, string? runDir, TimeSpan limit, Dictionary<string, string>? env = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (runDir is not null) psi.Environment["XENSHARP_RUNDIR"] = runDir;
        foreach (var (k, v) in env ?? []) psi.Environment[k] = v;
        return XlHost.RunProcess(psi, limit);
    }

    public void Dispose() => Exec("ip", ["netns", "del", Name], null, TimeSpan.FromSeconds(30));
}

internal static class XlResultChecks
{
    public static void Check(this XlResult r) => Assert.True(r.ExitCode == 0, r.ToString());
}
