using System.Runtime.InteropServices;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// Runs the thread that carries a guest's downtime (the source's stop-and-copy, the target's start once the state has
/// arrived) ahead of the host's other work, as Xen's dom0 outweighs the guests in the scheduler: on a busy host the
/// stopped guest otherwise waits for the runtime's background compilation, other guests' vCPUs and other processes to
/// give up a core. A nice value below 0 needs CAP_SYS_NICE; without it the thread keeps its priority.
/// </summary>
internal static partial class DowntimePriority
{
    /// <summary>CFS weighs a thread at nice -10 about nine times one at 0: it preempts them when it wakes, without
    /// taking a real-time class that a runaway thread could starve the host with.</summary>
    private const int Nice = -10;

    private const int PRIO_PROCESS = 0;

    /// <summary>Raises the calling thread until the scope is disposed, on the same thread.</summary>
    public static Scope Raise()
    {
        int tid = gettid();
        Marshal.SetLastPInvokeError(0);
        int old = getpriority(PRIO_PROCESS, tid);
        if ((old == -1 && Marshal.GetLastPInvokeError() != 0) || old <= Nice)
            return default;
        return setpriority(PRIO_PROCESS, tid, Nice) == 0 ? new Scope(tid, old) : default;
    }

    /// <summary>Gives the thread back its priority; nothing when it was not raised.</summary>
    public readonly struct Scope(int tid, int old) : IDisposable
    {
        public void Dispose()
        {
            if (tid != 0) setpriority(PRIO_PROCESS, tid, old);
        }
    }

    [LibraryImport("libc")]
    private static partial int gettid();

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getpriority(int which, int who);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int setpriority(int which, int who, int prio);
}
