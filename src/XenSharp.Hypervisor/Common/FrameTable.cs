using Microsoft.Win32.SafeHandles;

namespace XenSharp.Hypervisor.Common;

/// <summary>What a machine frame is used for (the type part of Xen's page_info).</summary>
internal enum FrameType : byte
{
    Free,
    /// <summary>Guest RAM owned by a domain.</summary>
    Ram,
    /// <summary>Xen heap pages shared with a guest: shared_info, grant table frames.</summary>
    XenShared,
}

/// <summary>
/// The host-address caches of one vCPU (its engine's soft TLB and jump cache) as the frame table sees them: a
/// freed frame is reused only once every running cache has flushed since it was freed (Xen's TLB flush clock).
/// </summary>
internal sealed class TranslationCache(Action flush, Action kick)
{
    /// <summary>1 while a pCPU runs the vCPU (guest code or its exits); it flushes before running again.</summary>
    internal int Running;
    /// <summary>The flush clock when the caches were last dropped.</summary>
    internal long FlushedAt;
    /// <summary>The stamp a kick was last sent for, so a waiting frame kicks a vCPU once.</summary>
    internal long KickedFor;
    internal readonly Action Flush = flush;
    /// <summary>Makes the vCPU leave guest code at its next block boundary (and so flush).</summary>
    internal readonly Action Kick = kick;
}

/// <summary>
/// Machine memory: one MAP_NORESERVE reservation cut into 4 KiB frames, MFN = offset / 4096, with an owner, a
/// type and a reference count per frame (Xen's frame table of page_info).
/// <para>
/// The reservation is handed to domains in extents of <see cref="ExtentFrames"/> frames. An extent a domain owns
/// is mapped MAP_SHARED from that domain's own memfd, so another process (a device model, a backend) can map a
/// guest frame with the fd and offset <see cref="TryGetBacking"/> gives. A frame is reused only within its
/// extent, so only by the same domain; an extent whose frames are all free goes back to the pool, its range then
/// replaced by anonymous memory and later by another domain's memfd. Other processes' mappings of the old memfd
/// never see that: they keep its pages, which a freed frame's hole punch has zeroed. Xen-heap frames
/// (shared_info, grant frames) come from the domain's memfd as well: device models map them like RAM, and they
/// live and die with the domain.
/// </para>
/// <para>
/// A freed frame is quarantined until no vCPU's soft TLB or jump cache can still reach it: it is stamped with
/// the flush clock, running vCPUs that have not flushed since are kicked, and it is released (hole punched,
/// so the host gets the memory back and it reads zero) once every running vCPU flushed at or after its stamp.
/// </para>
/// </summary>
internal sealed unsafe partial class FrameTable : IDisposable
{
    public const int PageShift = 12;
    public const int PageSize = 1 << PageShift;
    /// <summary>At most this many extents, so the mappings stay far below vm.max_map_count (65530).</summary>
    private const int MaxExtents = 8192;

    private struct PageInfo
    {
        public ushort Owner;
        public FrameType Type;
        /// <summary>Freed and waiting for the vCPUs' flushes.</summary>
        public bool Quarantined;
        /// <summary>Freed by its owner while still referenced: released when the last reference goes.</summary>
        public bool Orphaned;
        /// <summary>References beyond the owner's: grant mappings, host mappings, vcpu_info registrations.</summary>
        public int Refs;
        /// <summary>Next free frame of the extent plus one (0 ends the list).</summary>
        public uint NextFree;
        /// <summary>What a PV domain uses the frame as (page table level, descriptor page, writable mapping).</summary>
        public PageTypeInfo TypeInfo;
    }

    /// <summary>The memory of one domain (one incarnation of a domid): its memfd and the extents mapped from it.</summary>
    private sealed class Owner(ushort domid, SafeFileHandle fd)
    {
        public readonly ushort DomainId = domid;
        public readonly SafeFileHandle Fd = fd;
        /// <summary>Extent-sized slots of the memfd: the file holds NextSlot of them; freed ones are reused.</summary>
        public int NextSlot;
        public readonly Stack<int> FreeSlots = new();
        /// <summary>Owned extents with a free frame.</summary>
        public readonly List<int> Partial = new();
        public int Extents;
        /// <summary>The domain is gone: the fd closes with its last extent.</summary>
        public bool Closed;
    }

    private struct Extent
    {
        public Owner? Owner;
        public int Slot;
        /// <summary>Frames allocated or quarantined.</summary>
        public int Used;
        /// <summary>Frames handed out since the extent was mapped; the ones above were never touched.</summary>
        public int Fresh;
        public uint FreeHead;
        public int PartialIndex;
        /// <summary>The page_info of the extent's frames, made when the extent is first claimed: the table costs
        /// what the host's guests use, not what the machine could hold.</summary>
        public PageInfo[]? Pages;
    }

    private readonly object _lock = new();
    private readonly Extent[] _extents;
    private readonly List<int> _freeExtents = new();
    private int _extentHighWater;
    private readonly Dictionary<ushort, Owner> _owners = new();
    private readonly Queue<(uint Mfn, long Stamp)> _quarantine = new();
    private int _quarantined;
    private readonly List<TranslationCache> _caches = new();
    private long _clock;
    /// <summary>The vCPU this thread (a pCPU) runs, between <see cref="Enter"/> and <see cref="Leave"/>.</summary>
    [ThreadStatic] private static TranslationCache? t_running;
    private long _allocated;
    private bool _disposed;

    public FrameTable(ulong bytes)
    {
        FrameCount = (uint)(bytes >> PageShift);
        if (FrameCount == 0)
            throw new ArgumentOutOfRangeException(nameof(bytes), "machine memory must hold at least one frame");
        int frames = 512; // 2 MiB, grown for very large machines
        while ((FrameCount + (uint)frames - 1) / (uint)frames > MaxExtents)
            frames <<= 1;
        ExtentFrames = frames;
        Base = HostMemory.Reserve((ulong)FrameCount << PageShift);
        _extents = new Extent[(FrameCount + (uint)frames - 1) / (uint)frames];
    }

    public byte* Base { get; }
    public uint FrameCount { get; }
    public int ExtentFrames { get; }
    private long ExtentBytes => (long)ExtentFrames << PageShift;
    public long AllocatedFrames => Interlocked.Read(ref _allocated);
    public long FreeFrames => FrameCount - AllocatedFrames;
    /// <summary>Freed frames waiting for the vCPUs' flushes (they still count as allocated).</summary>
    public int QuarantinedFrames => Volatile.Read(ref _quarantined);

    public byte* PageAddress(ulong mfn) => Base + (mfn << PageShift);

    /// <summary>The page_info of a frame in a claimed extent.</summary>
    private ref PageInfo Page(uint mfn) => ref _extents[mfn / (uint)ExtentFrames].Pages![mfn % (uint)ExtentFrames];

    /// <summary>The page_info of any frame; a frame of an extent never claimed is free.</summary>
    private PageInfo PageOrFree(uint mfn) =>
        mfn < FrameCount && _extents[mfn / (uint)ExtentFrames].Pages is { } pages ? pages[mfn % (uint)ExtentFrames] : default;

    private int FramesIn(int extent) => (int)Math.Min((uint)ExtentFrames, FrameCount - (uint)extent * (uint)ExtentFrames);

    /// <summary>Allocates a zeroed frame for <paramref name="owner"/>, or returns false when machine memory is exhausted.</summary>
    public bool TryAllocate(ushort owner, FrameType type, out uint mfn) => TryAllocateBelow(owner, type, ulong.MaxValue, out mfn);

    /// <summary>Allocates a zeroed frame whose MFN is below <paramref name="limitMfn"/> (an address_bits
    /// restriction); false when none is free there.</summary>
    public bool TryAllocateBelow(ushort owner, FrameType type, ulong limitMfn, out uint mfn)
    {
        mfn = 0;
        if (limitMfn == 0)
            return false;
        if (TryAllocateNow(owner, type, limitMfn, out mfn))
            return true;
        // Frames waiting for flushes may be all that is left. On a pCPU between exits this vCPU's own caches can
        // be dropped here; elsewhere (the toolstack) the kicked vCPUs get a moment to flush.
        if (Volatile.Read(ref _quarantined) == 0)
            return false;
        if (t_running is { } self)
        {
            FlushNow(self);
            return TryAllocateNow(owner, type, limitMfn, out mfn);
        }
        for (int i = 0; i < QuarantineWaits && Volatile.Read(ref _quarantined) != 0; i++)
        {
            Thread.Sleep(1);
            if (TryAllocateNow(owner, type, limitMfn, out mfn))
                return true;
        }
        return false;
    }

    /// <summary>Allocates a whole fresh extent for <paramref name="owner"/>: <see cref="ExtentFrames"/> contiguous
    /// frames, the first aligned to a multiple of 512 (so 2 MiB superpages fit it), for tables Xen maps with
    /// superpages (the compat M2P). False when no whole extent is left.</summary>
    public bool TryAllocateExtent(ushort owner, FrameType type, out uint firstMfn)
    {
        firstMfn = 0;
        lock (_lock)
        {
            if (_disposed || OwnerLocked(owner) is not { } o || !TryClaimExtent(o, ulong.MaxValue, out int e))
                return false;
            int n = FramesIn(e);
            for (int i = 0; i < n; i++)
            {
                uint mfn = TakeFrom(e);
                Page(mfn) = new PageInfo { Owner = owner, Type = type };
                _allocated++;
            }
            firstMfn = (uint)e * (uint)ExtentFrames;
            if (n == ExtentFrames)
                return true;
        }
        // A short last extent cannot hold the superpages: given back.
        for (uint i = 0; i < (uint)FramesIn((int)(firstMfn / (uint)ExtentFrames)); i++)
            Free(firstMfn + i);
        return false;
    }

    /// <summary>How many milliseconds a thread that runs no vCPU waits for quarantined frames before it fails.</summary>
    private const int QuarantineWaits = 1000;

    private bool TryAllocateNow(ushort owner, FrameType type, ulong limitMfn, out uint mfn)
    {
        mfn = 0;
        lock (_lock)
        {
            if (_disposed || OwnerLocked(owner) is not { } o)
                return false;
            if (!TryTakeFrame(o, limitMfn, out mfn))
            {
                // Frames may be waiting only for flushes that already happened.
                if (_quarantined == 0 || ReclaimLocked() == 0 || !TryTakeFrame(o, limitMfn, out mfn))
                    return false;
            }
            Page(mfn) = new PageInfo { Owner = owner, Type = type };
            _allocated++;
            return true;
        }
    }

    private Owner? OwnerLocked(ushort domid)
    {
        if (_owners.TryGetValue(domid, out var o))
            return o;
        if (HostMemory.CreateMemoryFile($"xensharp-d{domid}", out _) is not { } fd)
            return null;
        return _owners[domid] = new Owner(domid, fd);
    }

    private bool TryTakeFrame(Owner o, ulong limitMfn, out uint mfn)
    {
        // Newest partial extent first: it is the likeliest to be in the host's caches.
        for (int i = o.Partial.Count - 1; i >= 0; i--)
        {
            int e = o.Partial[i];
            if ((ulong)e * (ulong)ExtentFrames + (ulong)FramesIn(e) <= limitMfn)
            {
                mfn = TakeFrom(e);
                return true;
            }
        }
        if (TryClaimExtent(o, limitMfn, out int fresh))
        {
            mfn = TakeFrom(fresh);
            return true;
        }
        mfn = 0;
        return false;
    }

    private uint TakeFrom(int e)
    {
        ref var x = ref _extents[e];
        uint mfn;
        if (x.FreeHead != 0)
        {
            mfn = x.FreeHead - 1;
            x.FreeHead = Page(mfn).NextFree;
        }
        else
            mfn = (uint)e * (uint)ExtentFrames + (uint)x.Fresh++;
        if (++x.Used == FramesIn(e))
            RemovePartial(x.Owner!, e);
        return mfn;
    }

    /// <summary>Maps a pool extent below the limit from the owner's memfd.</summary>
    private bool TryClaimExtent(Owner o, ulong limitMfn, out int e)
    {
        e = -1;
        for (int i = _freeExtents.Count - 1; i >= 0; i--)
            if ((ulong)_freeExtents[i] * (ulong)ExtentFrames + (ulong)FramesIn(_freeExtents[i]) <= limitMfn)
            {
                e = _freeExtents[i];
                _freeExtents.RemoveAt(i);
                break;
            }
        bool fromHighWater = false;
        if (e < 0)
        {
            if (_extentHighWater >= _extents.Length
                || (ulong)_extentHighWater * (ulong)ExtentFrames + (ulong)FramesIn(_extentHighWater) > limitMfn)
                return false;
            e = _extentHighWater++;
            fromHighWater = true;
        }
        int slot;
        if (o.FreeSlots.Count > 0)
            slot = o.FreeSlots.Pop();
        else
        {
            slot = o.NextSlot;
            if (!HostMemory.SetFileSize(o.Fd, (slot + 1) * ExtentBytes))
            {
                Unclaim(e, fromHighWater);
                return false;
            }
            o.NextSlot++;
        }
        ulong bytes = (ulong)FramesIn(e) << PageShift;
        if (!HostMemory.MapFileAt(PageAddress((ulong)e * (ulong)ExtentFrames), bytes, o.Fd, slot * ExtentBytes))
        {
            o.FreeSlots.Push(slot);
            Unclaim(e, fromHighWater);
            return false;
        }
        _extents[e] = new Extent { Owner = o, Slot = slot, PartialIndex = o.Partial.Count, Pages = _extents[e].Pages ?? new PageInfo[ExtentFrames] };
        o.Partial.Add(e);
        o.Extents++;
        return true;
    }

    private void Unclaim(int e, bool fromHighWater)
    {
        if (fromHighWater)
            _extentHighWater--;
        else
            _freeExtents.Add(e);
    }

    private static void AddPartial(Owner o, int e, ref Extent x)
    {
        x.PartialIndex = o.Partial.Count;
        o.Partial.Add(e);
    }

    private void RemovePartial(Owner o, int e)
    {
        int i = _extents[e].PartialIndex;
        int last = o.Partial[^1];
        o.Partial[i] = last;
        _extents[last].PartialIndex = i;
        o.Partial.RemoveAt(o.Partial.Count - 1);
        _extents[e].PartialIndex = -1;
    }

    /// <summary>The owner gives the frame up; it is released once no vCPU can reach it and its last extra reference drops.</summary>
    public void Free(uint mfn)
    {
        lock (_lock)
        {
            ref var p = ref Page(mfn);
            if (p.Type == FrameType.Free || p.Quarantined)
                return;
            if (p.Refs > 0)
            {
                p.Orphaned = true;
                return;
            }
            Quarantine(mfn);
        }
    }

    public void AddRef(uint mfn)
    {
        lock (_lock)
            Page(mfn).Refs++;
    }

    public void Release(uint mfn, bool dropRef)
    {
        lock (_lock)
        {
            ref var p = ref Page(mfn);
            if (dropRef && p.Refs > 0)
                p.Refs--;
            if (p.Refs == 0 && p.Orphaned)
                Quarantine(mfn);
        }
    }

    private void Quarantine(uint mfn)
    {
        ref var p = ref Page(mfn);
        p.Orphaned = false;
        p.Quarantined = true;
        // The stamp follows every removal of the frame from a p2m: a vCPU that flushes after reading a clock at
        // or past it cannot find the frame again.
        _quarantine.Enqueue((mfn, Interlocked.Increment(ref _clock)));
        _quarantined++;
        if (_deferReclaim == 0)
            ReclaimLocked();
    }

    private int _deferReclaim;

    /// <summary>Until disposed, frames freed wait in quarantine and are released together at the end: a domain's
    /// teardown then returns whole extents to the host at once, rather than most of its pages one system call each.</summary>
    public IDisposable DeferReclaim()
    {
        lock (_lock) _deferReclaim++;
        return new ReclaimScope(this);
    }

    private sealed class ReclaimScope(FrameTable table) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
            lock (table._lock)
                if (--table._deferReclaim == 0)
                    table.ReclaimLocked();
        }
    }

    /// <summary>Releases the quarantined frames no running vCPU can reach any more; kicks the running vCPUs
    /// that hold the rest back. Returns how many were released.</summary>
    public int Reclaim()
    {
        lock (_lock)
            return ReclaimLocked();
    }

    private int ReclaimLocked()
    {
        if (_quarantine.Count == 0)
            return 0;
        long safe = Interlocked.Read(ref _clock);
        foreach (var c in _caches)
            if (Volatile.Read(ref c.Running) != 0)
                safe = Math.Min(safe, Volatile.Read(ref c.FlushedAt));
        int released = 0;
        while (_quarantine.TryPeek(out var q) && q.Stamp <= safe)
        {
            _quarantine.Dequeue();
            _quarantined--;
            ReleaseFrame(q.Mfn);
            released++;
        }
        PunchReleased();
        if (_quarantine.TryPeek(out var oldest))
            foreach (var c in _caches)
                if (Volatile.Read(ref c.Running) != 0 && Volatile.Read(ref c.FlushedAt) < oldest.Stamp && c.KickedFor < oldest.Stamp)
                {
                    c.KickedFor = oldest.Stamp;
                    c.Kick();
                }
        return released;
    }

    private void ReleaseFrame(uint mfn)
    {
        Page(mfn) = default;
        _allocated--;
        int e = (int)(mfn / (uint)ExtentFrames);
        ref var x = ref _extents[e];
        var o = x.Owner!;
        if (--x.Used == 0)
        {
            ReturnExtent(e);
            return;
        }
        // Punched before the lock is let go (PunchReleased), so before anyone can allocate the frame again.
        _punch.Add((o, e, FileOffset(in x, mfn)));
        Page(mfn).NextFree = x.FreeHead;
        x.FreeHead = mfn + 1;
        if (x.PartialIndex < 0)
            AddPartial(o, e, ref x);
    }

    /// <summary>Frames released from extents still in use, whose pages the memfd still holds.</summary>
    private readonly List<(Owner Owner, int Extent, long Offset)> _punch = new();

    /// <summary>Punches out the pages of the frames just released: each hole reads as zero to every mapping and gives
    /// the host the memory back. Adjacent pages go in one call; an extent emptied meanwhile was punched whole.</summary>
    private void PunchReleased()
    {
        if (_punch.Count == 0)
            return;
        if (_punch.Count > 1)
            _punch.Sort((a, b) => a.Owner.DomainId != b.Owner.DomainId ? a.Owner.DomainId.CompareTo(b.Owner.DomainId) : a.Offset.CompareTo(b.Offset));
        Owner? runOwner = null;
        long runStart = 0, runEnd = 0;
        foreach (var (o, e, offset) in _punch)
        {
            if (_extents[e].Owner != o)
                continue;
            if (o == runOwner && offset == runEnd)
            {
                runEnd += PageSize;
                continue;
            }
            if (runOwner is not null)
                HostMemory.PunchHole(runOwner.Fd, runStart, runEnd - runStart);
            (runOwner, runStart, runEnd) = (o, offset, offset + PageSize);
        }
        if (runOwner is not null)
            HostMemory.PunchHole(runOwner.Fd, runStart, runEnd - runStart);
        _punch.Clear();
    }

    /// <summary>An extent with no frame in use: its slot of the memfd is emptied and its range goes back to the pool.</summary>
    private void ReturnExtent(int e)
    {
        ref var x = ref _extents[e];
        var o = x.Owner!;
        if (x.PartialIndex >= 0)
            RemovePartial(o, e);
        HostMemory.PunchHole(o.Fd, x.Slot * ExtentBytes, ExtentBytes);
        HostMemory.MapAnonymousAt(PageAddress((ulong)e * (ulong)ExtentFrames), (ulong)FramesIn(e) << PageShift);
        o.FreeSlots.Push(x.Slot);
        x = default;
        x.PartialIndex = -1;
        _freeExtents.Add(e);
        if (--o.Extents == 0 && o.Closed)
            o.Fd.Dispose();
    }

    private long FileOffset(in Extent x, uint mfn) => x.Slot * ExtentBytes + ((long)(mfn % (uint)ExtentFrames) << PageShift);

    /// <summary>Zeroes a frame its owner keeps (a PoD cache frame) by punching its page out of the memfd.</summary>
    public void Scrub(uint mfn)
    {
        lock (_lock)
        {
            ref var x = ref _extents[mfn / (uint)ExtentFrames];
            if (x.Owner is { } o && Page(mfn).Type != FrameType.Free)
                HostMemory.PunchHole(o.Fd, FileOffset(in x, mfn), PageSize);
        }
    }

    /// <summary>Where an allocated frame lives: its domain's memfd and the offset in it, for another process to
    /// mmap (MAP_SHARED). False for a free or quarantined frame.</summary>
    public bool TryGetBacking(uint mfn, out SafeFileHandle fd, out long offset)
    {
        lock (_lock)
        {
            fd = null!;
            offset = 0;
            if (PageOrFree(mfn) is { Type: FrameType.Free } or { Quarantined: true })
                return false;
            ref var x = ref _extents[mfn / (uint)ExtentFrames];
            fd = x.Owner!.Fd;
            offset = FileOffset(in x, mfn);
            return true;
        }
    }

    /// <summary>Copies a frame out without giving a never-written page host memory (a read through the shared
    /// mapping would allocate it; a hole is copied as zeroes).</summary>
    public void CopyOut(uint mfn, Span<byte> page)
    {
        lock (_lock)
        {
            ref var x = ref _extents[mfn / (uint)ExtentFrames];
            if (x.Owner is { } o && !HostMemory.HasData(o.Fd, FileOffset(in x, mfn)))
            {
                page[..PageSize].Clear();
                return;
            }
        }
        new ReadOnlySpan<byte>(PageAddress(mfn), PageSize).CopyTo(page);
    }

    /// <summary>The memfd backing the current domain <paramref name="domid"/>, or null when it has no memory.</summary>
    public SafeFileHandle? MemoryFileOf(ushort domid)
    {
        lock (_lock)
            return _owners.TryGetValue(domid, out var o) ? o.Fd : null;
    }

    /// <summary>Host memory the domain's memfd holds, in bytes (0 when it has none).</summary>
    public long BackedBytes(ushort domid)
    {
        lock (_lock)
            return _owners.TryGetValue(domid, out var o) ? Math.Max(0, HostMemory.AllocatedBytes(o.Fd)) : 0;
    }

    /// <summary>The domain is destroyed: frames allocated for its domid from now on belong to a new memfd, and the
    /// old one closes when its last frame is released.</summary>
    public void CloseOwner(ushort domid)
    {
        lock (_lock)
        {
            if (!_owners.Remove(domid, out var o))
                return;
            o.Closed = true;
            if (o.Extents == 0)
                o.Fd.Dispose();
        }
    }

    // The flush clock, as the pCPUs drive it.

    public void Register(TranslationCache c)
    {
        lock (_lock)
        {
            c.FlushedAt = Interlocked.Read(ref _clock);
            _caches.Add(c);
        }
    }

    public void Unregister(TranslationCache c)
    {
        lock (_lock)
        {
            _caches.Remove(c);
            ReclaimLocked();
        }
    }

    /// <summary>A pCPU starts running the vCPU: flushes its caches first when frames were freed since it last did.</summary>
    public void Enter(TranslationCache c)
    {
        // A full barrier before reading the clock: a reclaim that saw the vCPU not running stamped its frames
        // before this, so the read below sees them and the flush drops them.
        Interlocked.Exchange(ref c.Running, 1);
        t_running = c;
        Sync(c);
    }

    /// <summary>Between exits (nothing of the hypervisor holds guest pointers then): flushes when the clock moved.</summary>
    public void Sync(TranslationCache c)
    {
        if (Interlocked.Read(ref _clock) != c.FlushedAt)
            FlushNow(c);
    }

    private void FlushNow(TranslationCache c)
    {
        long now = Interlocked.Read(ref _clock);
        c.Flush();
        Volatile.Write(ref c.FlushedAt, now);
        if (Volatile.Read(ref _quarantined) != 0)
            Reclaim();
    }

    /// <summary>The pCPU stopped running the vCPU; it flushes on its next <see cref="Enter"/> if it must.</summary>
    public void Leave(TranslationCache c)
    {
        t_running = null;
        Volatile.Write(ref c.Running, 0);
        if (Volatile.Read(ref _quarantined) != 0)
            Reclaim();
    }

    public ushort OwnerOf(uint mfn) { lock (_lock) return PageOrFree(mfn).Owner; }
    public FrameType TypeOf(uint mfn) { lock (_lock) return PageOrFree(mfn).Type; }
    public int RefsOf(uint mfn) { lock (_lock) return PageOrFree(mfn).Refs; }

    /// <summary>Highest MFN ever handed out (XENMEM_maximum_ram_page answers the machine's size).</summary>
    public uint MaxMfn => FrameCount - 1;

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
                return;
            _disposed = true;
            HostMemory.Release(Base, (ulong)FrameCount << PageShift);
            foreach (var x in _extents)
                x.Owner?.Fd.Dispose();
            foreach (var o in _owners.Values)
                o.Fd.Dispose();
        }
    }
}
