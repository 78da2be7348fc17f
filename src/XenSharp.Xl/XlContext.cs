using System.Diagnostics;
using XenSharp.Toolstack.Control;

namespace XenSharp.Xl;

/// <summary>What every command handler gets: the global options, the output streams and the
/// connection to xensharpd (started on first use when it is not running).</summary>
internal sealed class XlContext(RunPaths paths, TextWriter stdout, TextWriter stderr) : IDisposable
{
    private ControlClient? _client;

    public RunPaths Paths { get; } = paths;
    public TextWriter Out { get; } = stdout;
    public TextWriter Err { get; } = stderr;
    public bool Verbose { get; set; }
    public bool DryRun { get; set; }
    public bool Force { get; set; }

    /// <summary>The shared connection for request/response commands.</summary>
    public ControlClient Daemon => _client ??= Connect();

    /// <summary>A fresh connection (the console takes one over for its byte stream).</summary>
    public ControlClient Connect()
    {
        var c = ControlClient.TryConnect(Paths.XlSocket);
        if (c is not null) return c;
        StartDaemon();
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(60))
        {
            c = ControlClient.TryConnect(Paths.XlSocket);
            if (c is not null) return c;
            Thread.Sleep(50);
        }
        throw new ControlException($"xensharpd did not start; see {Paths.DaemonLog}");
    }

    /// <summary>Connects only when a daemon is already running.</summary>
    public ControlClient? TryConnectExisting() => _client ??= ControlClient.TryConnect(Paths.XlSocket);

    private void StartDaemon()
    {
        Err.WriteLine("xl: starting xensharpd");
        Err.Flush();
        Directory.CreateDirectory(Paths.RunDir);
        string dll = FindDaemon();
        // Detached from xl's session and streams so that it outlives xl and owns no terminal.
        var psi = new ProcessStartInfo("/bin/sh")
        {
            UseShellExecute = false,
            ArgumentList = { "-c", "exec setsid \"$0\" \"$1\" --rundir \"$2\" </dev/null >>\"$3\" 2>&1 &",
                Environment.ProcessPath ?? "dotnet", dll, Paths.RunDir, Paths.DaemonLog },
        };
        using var p = Process.Start(psi) ?? throw new ControlException("cannot start xensharpd");
        p.WaitForExit();
    }

    private static string FindDaemon()
    {
        string? env = Environment.GetEnvironmentVariable("XENSHARPD");
        if (!string.IsNullOrEmpty(env)) return env;
        string here = AppContext.BaseDirectory;
        string[] candidates =
        [
            Path.Combine(here, "xensharpd.dll"),
            Path.Combine(here, "..", "..", "XenSharp.Daemon", Path.GetFileName(Path.TrimEndingDirectorySeparator(here)), "xensharpd.dll"),
            Path.Combine(here, "..", "..", "XenSharp.Daemon", "release", "xensharpd.dll"),
            Path.Combine(here, "..", "..", "XenSharp.Daemon", "debug", "xensharpd.dll"),
        ];
        foreach (var c in candidates)
            if (File.Exists(c)) return Path.GetFullPath(c);
        throw new ControlException("cannot find xensharpd.dll (set XENSHARPD to its path)");
    }

    public void Dispose() => _client?.Dispose();
}
