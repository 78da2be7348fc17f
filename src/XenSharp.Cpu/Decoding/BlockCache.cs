namespace XenSharp.Cpu.Decoding;

/// <summary>
/// Decoded blocks of one domain, keyed by guest-physical address, start RIP and code size, and
/// indexed by guest frame so that a write to a code page drops every block decoded from it.
/// </summary>
internal sealed class BlockCache
{
    private readonly record struct Key(ulong Phys, ulong Ip, int Bitness);

    private sealed class Frame
    {
        public readonly List<DecodedBlock> Blocks = new();
        /// <summary>One bit per 64-byte chunk of the frame that holds decoded instructions.</summary>
        public ulong CodeMask;
    }

    private readonly Dictionary<Key, DecodedBlock> _blocks = new();
    private readonly Dictionary<ulong, Frame> _byFrame = new();
    private readonly object _lock = new();

    /// <summary>Bumped when a frame becomes a code frame.</summary>
    public long CodeFrameEpoch;

    public DecodedBlock? Lookup(ulong phys, ulong ip, int bitness)
    {
        lock (_lock)
            return _blocks.TryGetValue(new Key(phys, ip, bitness), out var b) ? b : null;
    }

    private static ulong ChunkMask(int offset, int length)
    {
        int first = offset >> 6, last = Math.Min(4095, offset + Math.Max(length, 1) - 1) >> 6;
        ulong m = 0;
        for (int c = first; c <= last; c++) m |= 1UL << c;
        return m;
    }

    /// <summary>Adds a block covering <paramref name="length"/> bytes; true when its frame was not a
    /// code frame before.</summary>
    public bool Add(DecodedBlock block, int length)
    {
        ulong gfn = block.Phys >> 12;
        lock (_lock)
        {
            _blocks[new Key(block.Phys, block.Ip, block.Bitness)] = block;
            bool added = false;
            if (!_byFrame.TryGetValue(gfn, out var f))
            {
                f = new Frame();
                _byFrame[gfn] = f;
                Interlocked.Increment(ref CodeFrameEpoch);
                added = true;
            }
            f.Blocks.Add(block);
            f.CodeMask |= ChunkMask((int)(block.Phys & 0xFFF), length);
            return added;
        }
    }

    public bool IsCodeFrame(ulong gfn)
    {
        lock (_lock) return _byFrame.ContainsKey(gfn);
    }

    /// <summary>A write of <paramref name="size"/> bytes at <paramref name="offset"/> in frame
    /// <paramref name="gfn"/> happened: drops the frame's blocks when it touched decoded bytes.
    /// Returns true when blocks were dropped.</summary>
    public bool OnWrite(ulong gfn, int offset, int size)
    {
        lock (_lock)
        {
            if (!_byFrame.TryGetValue(gfn, out var f)) return false;
            if ((f.CodeMask & ChunkMask(offset, size)) == 0) return false;
            DropFrame(gfn, f);
            return true;
        }
    }

    /// <summary>Drops all blocks decoded from <paramref name="gfn"/>; true when there were any.</summary>
    public bool InvalidateFrame(ulong gfn)
    {
        lock (_lock)
        {
            if (!_byFrame.TryGetValue(gfn, out var f)) return false;
            DropFrame(gfn, f);
            return true;
        }
    }

    private void DropFrame(ulong gfn, Frame f)
    {
        _byFrame.Remove(gfn);
        foreach (var b in f.Blocks)
        {
            b.Valid = false;
            _blocks.Remove(new Key(b.Phys, b.Ip, b.Bitness));
        }
    }

    public void Clear()
    {
        lock (_lock)
        {
            foreach (var f in _byFrame.Values)
                foreach (var b in f.Blocks) b.Valid = false;
            _blocks.Clear();
            _byFrame.Clear();
        }
    }
}
