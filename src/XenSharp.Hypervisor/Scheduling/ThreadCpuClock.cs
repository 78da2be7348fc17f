using System.Runtime.InteropServices;

namespace XenSharp.Hypervisor.Scheduling;

/// <summary>
/// The CPU time the calling host thread has had (CLOCK_THREAD_CPUTIME_ID). A pCPU thread reads it around each slice
/// so that a vCPU is charged what it really ran: time the host took the thread away is steal, not the guest's use.
/// </summary>
internal static partial class ThreadCpuClock
{
    private const int CLOCK_THREAD_CPUTIME_ID = 3;

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Sec;
        public long Nsec;
    }

    [LibraryImport("libc")]
    private static partial int clock_gettime(int clock, out Timespec ts);

    /// <summary>Nanoseconds of CPU time of this thread, or -1 where the host cannot tell.</summary>
    public static long NowNs() => clock_gettime(CLOCK_THREAD_CPUTIME_ID, out var ts) == 0 ? ts.Sec * 1_000_000_000 + ts.Nsec : -1;
}
