using System.Runtime.InteropServices;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// Linux futexes on 32-bit words in memory shared with another process (a memfd both map): no FUTEX_PRIVATE_FLAG, so
/// the kernel keys them by the backing file and offset and a wake in one process reaches a waiter in the other.
/// </summary>
internal static unsafe partial class Futex
{
    private const int FUTEX_WAIT = 0, FUTEX_WAKE = 1;

    private static readonly long SysFutex = RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => 202,
        Architecture.Arm64 => 98,
        _ => -1,
    };

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Sec;
        public long Nsec;
    }

    [LibraryImport("libc", EntryPoint = "syscall")]
    private static partial long Syscall(long number, uint* address, int op, uint value, Timespec* timeout, nint address2, uint value3);

    /// <summary>Sleeps while <paramref name="word"/> holds <paramref name="expected"/>, at most
    /// <paramref name="timeoutMs"/>; returns at once when it holds something else (or on a wake, a signal, a fault).</summary>
    public static void Wait(uint* word, uint expected, int timeoutMs)
    {
        if (SysFutex < 0)
        {
            Thread.Sleep(1);
            return;
        }
        var ts = new Timespec { Sec = timeoutMs / 1000, Nsec = timeoutMs % 1000 * 1_000_000L };
        Syscall(SysFutex, word, FUTEX_WAIT, expected, &ts, 0, 0);
    }

    /// <summary>Wakes whoever sleeps on <paramref name="word"/>.</summary>
    public static void Wake(uint* word)
    {
        if (SysFutex >= 0)
            Syscall(SysFutex, word, FUTEX_WAKE, int.MaxValue, null, 0, 0);
    }
}
