using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/sched.h.</summary>
public static class Sched
{
    public const int SCHEDOP_yield = 0, SCHEDOP_block = 1, SCHEDOP_shutdown = 2, SCHEDOP_poll = 3,
        SCHEDOP_remote_shutdown = 4, SCHEDOP_shutdown_code = 5, SCHEDOP_watchdog = 6, SCHEDOP_pin_override = 7;
    public const uint SHUTDOWN_poweroff = 0, SHUTDOWN_reboot = 1, SHUTDOWN_suspend = 2, SHUTDOWN_crash = 3,
        SHUTDOWN_watchdog = 4, SHUTDOWN_soft_reset = 5, SHUTDOWN_MAX = 5;
}

/// <summary>SHUTDOWN_*: why a domain shut down, as the hypervisor records it and the toolstack acts on it
/// (libxl_shutdown_reason has the same values).</summary>
public enum ShutdownReason : uint
{
    Poweroff = Sched.SHUTDOWN_poweroff, Reboot = Sched.SHUTDOWN_reboot, Suspend = Sched.SHUTDOWN_suspend,
    Crash = Sched.SHUTDOWN_crash, Watchdog = Sched.SHUTDOWN_watchdog, SoftReset = Sched.SHUTDOWN_soft_reset,
}

[StructLayout(LayoutKind.Sequential)]
public struct SchedShutdown { public uint Reason; }

[StructLayout(LayoutKind.Sequential)]
public struct SchedPoll { public ulong Ports; public uint NrPorts; public ulong Timeout; }

[StructLayout(LayoutKind.Sequential)]
public struct SchedRemoteShutdown { public ushort DomainId; public uint Reason; }

[StructLayout(LayoutKind.Sequential)]
public struct SchedWatchdog { public uint Id; public uint Timeout; }
