namespace XenSharp.Toolstack.Control;

/// <summary>
/// Where the daemon keeps its sockets, logs and pid file: /run/xensharp by default, or
/// $XENSHARP_RUNDIR so that several isolated daemons (tests) can run side by side.
/// </summary>
public sealed class RunPaths
{
    public const string DefaultRunDir = "/run/xensharp";
    public const string EnvironmentVariable = "XENSHARP_RUNDIR";

    public string RunDir { get; }

    public RunPaths(string? runDir = null)
    {
        string? env = Environment.GetEnvironmentVariable(EnvironmentVariable);
        RunDir = Path.GetFullPath(runDir ?? (string.IsNullOrEmpty(env) ? DefaultRunDir : env));
    }

    public bool IsSystem => RunDir == DefaultRunDir;

    /// <summary>The control socket xl talks to.</summary>
    public string XlSocket => Path.Combine(RunDir, "xl.sock");

    /// <summary>xenstored's socket: where the real xenstore clients look under /run, else beside the rest.</summary>
    public string XenstoredSocket => IsSystem ? "/run/xenstored/socket" : Path.Combine(RunDir, "xenstored", "socket");

    /// <summary>Where the drop-in Xen libraries (libxencall, libxenevtchn, ...) reach the daemon's privcmd.</summary>
    public string PrivcmdSocket => Path.Combine(RunDir, "privcmd.sock");

    /// <summary>What Linux's backends show in sysfs (/sys/bus/xen-backend): ./dom0 lays it over /sys/bus for Xen's tools.</summary>
    public string XenBackendSysfs => Path.Combine(RunDir, "sys", "bus", "xen-backend");

    public string PidFile => Path.Combine(RunDir, "xensharpd.pid");
    public string DaemonLog => Path.Combine(RunDir, "xensharpd.log");
    public string ConsoleLogDir => Path.Combine(RunDir, "console");
    public string ConsoleLog(string domainName) => Path.Combine(ConsoleLogDir, domainName + ".log");
}
