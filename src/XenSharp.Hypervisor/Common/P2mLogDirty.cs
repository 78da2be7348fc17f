using System.Numerics;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// Log-dirty mode (Xen's paging_log_dirty_*): while on, every write to a guest frame sets its bit in a bitmap that
/// XEN_DOMCTL_SHADOW_OP_PEEK reads and CLEAN reads and clears. Writes are seen where they get a host address: the
/// engine asks <see cref="GetPage"/> for a write on a soft-TLB miss, and it keeps no writable entry for a page
/// whose bit is clear (<see cref="GetPageForWriteCache"/>), so CLEAN drops the vCPUs' writable entries and the next
/// write to each page comes back here, as Xen write-protects the p2m. Hypervisor and backend writes (copies to the
/// guest, grant and foreign mappings) mark the page themselves. With log-dirty off this costs one null check per
/// write miss.
/// </summary>
internal sealed unsafe partial class P2m
{
    // One bit per gfn up to MaxGfn; null while log-dirty is off.
    private ulong[]? _dirty;
    private long _dirtyCount, _faultCount;
    // One past the highest bitmap word ever set: the bitmap covers all 16M gfns, a guest's RAM a small part of them.
    private int _dirtyWords;

    public bool LogDirty => Volatile.Read(ref _dirty) is not null;

    // Domains in log-dirty mode, process-wide: lets paths that would have to find a frame's owner first (the PV
    // MMU's writes) skip the search while no domain is.
    private static int s_logDirtyDomains;
    public static bool AnyLogDirty => Volatile.Read(ref s_logDirtyDomains) != 0;

    /// <summary>Writes seen since the last CLEAN (stats.fault_count), and pages newly dirtied (stats.dirty_count).</summary>
    public (uint Faults, uint Dirtied) LogDirtyStats => ((uint)Interlocked.Read(ref _faultCount), (uint)Interlocked.Read(ref _dirtyCount));

    /// <summary>Sets <paramref name="gfn"/>'s bit when log-dirty is on (paging_mark_dirty); any thread.</summary>
    public void MarkDirty(ulong gfn)
    {
        var bits = Volatile.Read(ref _dirty);
        if (bits is null || gfn > MaxGfn)
            return;
        Interlocked.Increment(ref _faultCount);
        ulong bit = 1UL << (int)(gfn & 63);
        ref ulong word = ref bits[gfn >> 6];
        if ((Volatile.Read(ref word) & bit) == 0 && (Interlocked.Or(ref word, bit) & bit) == 0)
        {
            Interlocked.Increment(ref _dirtyCount);
            int words = (int)(gfn >> 6) + 1, seen;
            while (words > (seen = Volatile.Read(ref _dirtyWords)) && Interlocked.CompareExchange(ref _dirtyWords, words, seen) != seen) { }
        }
    }

    /// <summary>Whether <paramref name="gfn"/> has been written since the last CLEAN (true with log-dirty off).</summary>
    public bool IsDirty(ulong gfn)
    {
        var bits = Volatile.Read(ref _dirty);
        return bits is null || (gfn <= MaxGfn && (Volatile.Read(ref bits[gfn >> 6]) & (1UL << (int)(gfn & 63))) != 0);
    }

    /// <summary>The engine's question before it keeps a page writable after a read: only when the page is already
    /// dirty (or log-dirty is off), so that the first write after a CLEAN is seen. A shared page is not unshared by
    /// a read: it stays read-only until its first write.</summary>
    public byte* GetPageForWriteCache(ulong gfn) => IsDirty(gfn) ? GetPage(gfn, true, mayUnshare: false) : null;

    /// <summary>Turns log-dirty on with every bit clear. The caller drops the vCPUs' writable translations.</summary>
    public void EnableLogDirty()
    {
        lock (_lock)
        {
            Interlocked.Exchange(ref _faultCount, 0);
            Interlocked.Exchange(ref _dirtyCount, 0);
            if (_dirty is null)
                Interlocked.Increment(ref s_logDirtyDomains);
            Volatile.Write(ref _dirtyWords, 0);
            Volatile.Write(ref _dirty, new ulong[(MaxGfn + 1) / 64]);
        }
    }

    public void DisableLogDirty()
    {
        lock (_lock)
        {
            if (_dirty is not null)
                Interlocked.Decrement(ref s_logDirtyDomains);
            Volatile.Write(ref _dirty, null);
        }
    }

    /// <summary>PEEK (<paramref name="clean"/> false) or CLEAN: copies the bits of the first
    /// <c>output.Length * 64</c> gfns into <paramref name="output"/> and, for CLEAN, clears every bit and the stats.
    /// Returns the stats as they were. With writable translations dropped by the caller in the same pause, no
    /// write falls between the copy and the clear unseen.</summary>
    public (uint Faults, uint Dirtied) ReadDirty(Span<ulong> output, bool clean)
    {
        lock (_lock)
        {
            var bits = _dirty ?? throw new InvalidOperationException("log-dirty mode is off");
            // Only the words up to the highest ever set can hold a bit, and most of those are zero: an atomic exchange
            // of every word of the 2 MiB bitmap was the largest cost of a stop-and-copy.
            int top = Volatile.Read(ref _dirtyWords);
            int n = Math.Min(output.Length, top);
            for (int i = 0; i < n; i++)
            {
                ulong w = Volatile.Read(ref bits[i]);
                output[i] = clean && w != 0 ? Interlocked.Exchange(ref bits[i], 0) : w;
            }
            output[n..].Clear();
            if (clean)
                for (int i = n; i < top; i++)
                    if (bits[i] != 0) Volatile.Write(ref bits[i], 0);
            var stats = LogDirtyStats;
            if (clean)
            {
                Interlocked.Exchange(ref _faultCount, 0);
                Interlocked.Exchange(ref _dirtyCount, 0);
            }
            return stats;
        }
    }

    /// <summary>Number of set bits in a bitmap <see cref="ReadDirty"/> filled.</summary>
    public static long CountDirty(ReadOnlySpan<ulong> bitmap)
    {
        long n = 0;
        foreach (ulong w in bitmap) n += BitOperations.PopCount(w);
        return n;
    }
}
