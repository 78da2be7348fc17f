namespace XenSharp.Backends.Block.Images;

/// <summary>
/// A bounded cache of metadata tables (qcow2 L2 tables and refcount blocks, qcow L2 tables) keyed by
/// their file offset, each slot a preallocated buffer, evicting the least recently used. Writers
/// update a slot and write the changed bytes to the file themselves; one that holds changes back
/// writes them in <see cref="BeforeEvict"/>, so eviction itself never writes. Slots are found through
/// an index by offset, since every mapped request looks one up (128 slots for qcow2's 64 KiB
/// clusters). Not thread-safe: its image's lock guards it.
/// </summary>
internal sealed class MetadataCache
{
    private readonly ImageFile _file;
    private readonly byte[][] _slots;
    private readonly long[] _offsets;
    private readonly long[] _used;
    private readonly Dictionary<long, int> _index; // offset -> slot, for the slots holding a table
    private long _clock;

    public int TableSize { get; }

    /// <summary>Called before a cached table is dropped, for an owner that holds changes to it back.</summary>
    public Action? BeforeEvict { get; set; }

    public MetadataCache(ImageFile file, int tableSize, int slots)
    {
        _file = file;
        TableSize = tableSize;
        _slots = new byte[slots][];
        _offsets = new long[slots];
        _used = new long[slots];
        _index = new Dictionary<long, int>(slots);
        for (int i = 0; i < slots; i++)
        {
            _slots[i] = new byte[tableSize];
            _offsets[i] = -1;
        }
    }

    /// <summary>The table at <paramref name="offset"/>, read from the file on a miss.</summary>
    public byte[] Get(long offset)
    {
        int slot = Find(offset);
        if (slot >= 0)
        {
            _used[slot] = ++_clock;
            return _slots[slot];
        }
        slot = Victim();
        Forget(slot);
        _file.ReadExactly(offset, _slots[slot]);
        Remember(slot, offset);
        return _slots[slot];
    }

    /// <summary>A slot for a table just written at <paramref name="offset"/>, filled from <paramref name="content"/>.</summary>
    public byte[] Put(long offset, ReadOnlySpan<byte> content)
    {
        int slot = Find(offset);
        if (slot < 0)
        {
            slot = Victim();
            Forget(slot);
        }
        content.CopyTo(_slots[slot]);
        Remember(slot, offset);
        return _slots[slot];
    }

    public void Invalidate(long offset)
    {
        int slot = Find(offset);
        if (slot >= 0)
            Forget(slot);
    }

    private int Find(long offset) => _index.TryGetValue(offset, out int slot) ? slot : -1;

    private void Forget(int slot)
    {
        if (_offsets[slot] >= 0)
            _index.Remove(_offsets[slot]);
        _offsets[slot] = -1;
    }

    private void Remember(int slot, long offset)
    {
        _offsets[slot] = offset;
        _index[offset] = slot;
        _used[slot] = ++_clock;
    }

    private int Victim()
    {
        int best = 0;
        for (int i = 0; i < _offsets.Length; i++)
        {
            if (_offsets[i] < 0)
                return i;
            if (_used[i] < _used[best])
                best = i;
        }
        BeforeEvict?.Invoke();
        return best;
    }
}
