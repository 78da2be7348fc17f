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
/// Machine memory: one MAP_NORESERVE reservation cut into 4 KiB frames, MFN = offset / 4096, with an
/// owner, a type and a reference count per frame (Xen's frame table of page_info). Frames handed out
/// are always zero: fresh pages were never touched and freed pages are given back with DONTNEED.
/// </summary>
internal sealed unsafe class FrameTable : IDisposable
{
    public const int PageShift = 12;
    public const int PageSize = 1 << PageShift;

    private struct PageInfo
    {
        public ushort Owner;
        public FrameType Type;
        /// <summary>References beyond the owner's: grant mappings, host mappings, vcpu_info registrations.</summary>
        public int Refs;
        /// <summary>Freed by its owner while still referenced: returned to the pool when the last reference goes.</summary>
        public bool Orphaned;
    }

    private readonly object _lock = new();
    private readonly PageInfo[] _pages;
    private readonly Stack<uint> _free = new();
    private uint _highWater;
    private long _allocated;
    private bool _disposed;

    public FrameTable(ulong bytes)
    {
        FrameCount = (uint)(bytes >> PageShift);
        if (FrameCount == 0)
            throw new ArgumentOutOfRangeException(nameof(bytes), "machine memory must hold at least one frame");
        Base = HostMemory.Reserve((ulong)FrameCount << PageShift);
        _pages = new PageInfo[FrameCount];
    }

    public byte* Base { get; }
    public uint FrameCount { get; }
    public long AllocatedFrames => Interlocked.Read(ref _allocated);
    public long FreeFrames => FrameCount - AllocatedFrames;

    public byte* PageAddress(ulong mfn) => Base + (mfn << PageShift);

    /// <summary>Allocates a zeroed frame for <paramref name="owner"/>, or returns false when machine memory is exhausted.</summary>
    public bool TryAllocate(ushort owner, FrameType type, out uint mfn)
    {
        lock (_lock)
        {
            if (_free.Count > 0)
                mfn = _free.Pop();
            else if (_highWater < FrameCount)
                mfn = _highWater++;
            else
            {
                mfn = 0;
                return false;
            }
            _pages[mfn] = new PageInfo { Owner = owner, Type = type };
            _allocated++;
            return true;
        }
    }

    /// <summary>Allocates a zeroed frame whose MFN is below <paramref name="limitMfn"/> (an address_bits
    /// restriction); false when none is free there.</summary>
    public bool TryAllocateBelow(ushort owner, FrameType type, ulong limitMfn, out uint mfn)
    {
        if (limitMfn >= FrameCount)
            return TryAllocate(owner, type, out mfn);
        mfn = 0;
        if (limitMfn == 0)
            return false;
        lock (_lock)
        {
            if (_highWater < limitMfn)
                mfn = _highWater++;
            else
            {
                // Freed frames are kept on a stack: look through it for a low one and put the rest back.
                var skipped = new List<uint>();
                bool found = false;
                while (_free.Count > 0)
                {
                    uint c = _free.Pop();
                    if (c < limitMfn)
                    {
                        mfn = c;
                        found = true;
                        break;
                    }
                    skipped.Add(c);
                }
                for (int i = skipped.Count - 1; i >= 0; i--)
                    _free.Push(skipped[i]);
                if (!found)
                    return false;
            }
            _pages[mfn] = new PageInfo { Owner = owner, Type = type };
            _allocated++;
            return true;
        }
    }

    /// <summary>The owner gives the frame up; it returns to the pool now, or when its last extra reference drops.</summary>
    public void Free(uint mfn)
    {
        lock (_lock)
        {
            ref var p = ref _pages[mfn];
            if (p.Type == FrameType.Free)
                return;
            if (p.Refs > 0)
            {
                p.Orphaned = true;
                return;
            }
            Release(mfn);
        }
    }

    public void AddRef(uint mfn)
    {
        lock (_lock)
            _pages[mfn].Refs++;
    }

    public void Release(uint mfn, bool dropRef)
    {
        lock (_lock)
        {
            ref var p = ref _pages[mfn];
            if (dropRef && p.Refs > 0)
                p.Refs--;
            if (p.Refs == 0 && p.Orphaned)
                Release(mfn);
        }
    }

    private void Release(uint mfn)
    {
        _pages[mfn] = default;
        _allocated--;
        HostMemory.Discard(PageAddress(mfn), PageSize);
        _free.Push(mfn);
    }

    public ushort OwnerOf(uint mfn) { lock (_lock) return _pages[mfn].Owner; }
    public FrameType TypeOf(uint mfn) { lock (_lock) return _pages[mfn].Type; }
    public int RefsOf(uint mfn) { lock (_lock) return _pages[mfn].Refs; }

    /// <summary>Highest MFN ever handed out (XENMEM_maximum_ram_page answers the machine's size).</summary>
    public uint MaxMfn => FrameCount - 1;

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        HostMemory.Release(Base, (ulong)FrameCount << PageShift);
    }
}
