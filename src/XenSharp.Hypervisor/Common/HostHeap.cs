using System.Runtime;
using System.Runtime.InteropServices;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// Gives the host back the process's own memory that domains left behind. A build leaves tens of MiB of large
/// objects (the kernel file and its decompressed image) that only a full collection frees, a destroyed domain's
/// decoded and compiled code goes to the garbage at once, and an idle daemon allocates too little to ever run
/// that collection; the JIT's and the engine's native allocations stay in glibc's arenas once freed. After a
/// domain is built or destroyed a background thread runs one compacting collection that decommits what it frees,
/// then has glibc return its free pages (malloc_trim). Requests arriving while one is pending share it.
/// </summary>
internal static partial class HostHeap
{
    /// <summary>Lets the request's own work (teardown, toolstack clean-up) finish first, so that one trim takes it all.</summary>
    private const int SettleMs = 500;

    private static readonly object s_lock = new();
    private static bool s_pending;
    private static Thread? s_thread;
    private static bool s_mallocTrim = OperatingSystem.IsLinux();

    /// <summary>Asks for a trim soon, on the trimming thread.</summary>
    public static void RequestTrim()
    {
        lock (s_lock)
        {
            s_pending = true;
            if (s_thread is null)
            {
                s_thread = new Thread(Loop) { IsBackground = true, Name = "xen-heap-trim", Priority = ThreadPriority.BelowNormal };
                s_thread.Start();
            }
            Monitor.Pulse(s_lock);
        }
    }

    /// <summary>Collects and decommits now, on the caller's thread.</summary>
    public static void TrimNow()
    {
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        // Aggressive: the collection also returns the free regions' memory to the host instead of keeping it for reuse.
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        if (s_mallocTrim)
        {
            try { malloc_trim(0); }
            catch (EntryPointNotFoundException) { s_mallocTrim = false; } // not glibc
            catch (DllNotFoundException) { s_mallocTrim = false; }
        }
    }

    private static void Loop()
    {
        while (true)
        {
            lock (s_lock)
            {
                while (!s_pending)
                    Monitor.Wait(s_lock);
            }
            Thread.Sleep(SettleMs);
            lock (s_lock)
                s_pending = false;
            TrimNow();
        }
    }

    [LibraryImport("libc")]
    private static partial int malloc_trim(nuint pad);
}
