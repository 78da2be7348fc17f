using XenSharp.Dom0;
using static XenSharp.Public.GrantTable;

namespace XenSharp.Backends;

/// <summary>
/// Batched grant operations as backends issue them (the role of Linux's gnttab_batch_copy and gnttab_batch_map):
/// an operation answered GNTST_eagain names a granted frame that is paged out, and the hypervisor has asked the
/// pager for it; it is issued again, alone, after a growing pause, until it gets another answer or
/// <see cref="RetryLimit"/> has passed. Nothing here allocates.
/// </summary>
public static class GrantBatch
{
    /// <summary>How long a paged-out frame is waited for before its operation keeps GNTST_eagain (Linux's backends
    /// give up after about half a minute too).</summary>
    public static TimeSpan RetryLimit { get; set; } = TimeSpan.FromSeconds(30);

    private const int FirstPauseMs = 1, LongestPauseMs = 64;

    /// <summary>GNTTABOP_copy over <paramref name="ops"/>, each with its own status, retrying the paged-out ones (on a
    /// thread that may sleep: the backends' I/O threads and workers).</summary>
    public static void Copy(IDom0Services dom0, Span<GrantCopyOp> ops)
    {
        if (ops.IsEmpty) return;
        dom0.CopyGrants(ops);
        if (!AnyEagain(ops)) return;
        long deadline = Environment.TickCount64 + (long)RetryLimit.TotalMilliseconds;
        int pause = FirstPauseMs;
        for (int i = 0; i < ops.Length; i++)
        {
            while (ops[i].Status == GNTST_eagain && Environment.TickCount64 < deadline)
            {
                Thread.Sleep(pause);
                pause = Math.Min(pause * 2, LongestPauseMs);
                dom0.CopyGrants(ops.Slice(i, 1));
            }
        }
    }

    /// <summary>Maps granted pages at consecutive addresses (a multi-page ring), retrying while one is paged out.</summary>
    public static short MapContiguous(IDom0Services dom0, ushort dom, ReadOnlySpan<uint> refs, bool readOnly, out IGrantMapping? mapping)
    {
        long deadline = Environment.TickCount64 + (long)RetryLimit.TotalMilliseconds;
        int pause = FirstPauseMs;
        while (true)
        {
            short st = dom0.MapGrantRefsContiguous(dom, refs, readOnly, out mapping);
            if (st != GNTST_eagain || Environment.TickCount64 >= deadline) return st;
            Thread.Sleep(pause);
            pause = Math.Min(pause * 2, LongestPauseMs);
        }
    }

    private static bool AnyEagain(ReadOnlySpan<GrantCopyOp> ops)
    {
        foreach (ref readonly var o in ops)
            if (o.Status == GNTST_eagain) return true;
        return false;
    }
}
