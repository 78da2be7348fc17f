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
        /// <summary>The aging pass that took the frame's last block (0: it has blocks).</summary>
        public int EmptySince;
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

    /// <summary>Every block decoded so far (for tests of the block compiler).</summary>
    public List<DecodedBlock> Snapshot()
    {
        lock (_lock) return [.. _blocks.Values];
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
        lock (_lock)
        {
            _blocks[new Key(block.Phys, block.Ip, block.Bitness)] = block;
            return AddToFrame(block.Phys >> 12, block, ChunkMask((int)(block.Phys & 0xFFF), length));
        }
    }

    /// <summary>Adds a block whose instructions occupy the 64-byte chunks <paramref name="chunks"/> of its frame (a
    /// block decoded through branches); true when its frame was not a code frame before.</summary>
    public bool Add(DecodedBlock block, ulong chunks)
    {
        lock (_lock)
        {
            _blocks[new Key(block.Phys, block.Ip, block.Bitness)] = block;
            return AddToFrame(block.Phys >> 12, block, chunks);
        }
    }

    /// <summary>Also indexes a block whose instruction ends in another frame under the first
    /// <paramref name="length"/> bytes of that frame, so that a write there drops it too; true when
    /// that frame was not a code frame before.</summary>
    public bool AddTail(DecodedBlock block, ulong gfn, int length)
    {
        lock (_lock) return AddToFrame(gfn, block, ChunkMask(0, length));
    }

    private bool AddToFrame(ulong gfn, DecodedBlock block, ulong chunks)
    {
        bool added = false;
        if (!_byFrame.TryGetValue(gfn, out var f))
        {
            f = new Frame();
            _byFrame[gfn] = f;
            Interlocked.Increment(ref CodeFrameEpoch);
            added = true;
        }
        f.Blocks.Add(block);
        f.EmptySince = 0;
        f.CodeMask |= chunks;
        return added;
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
            b.Drop();
            _blocks.Remove(new Key(b.Phys, b.Ip, b.Bitness));
        }
    }

    /// <summary>Drops the blocks that have not run in aging epoch <paramref name="epoch"/> or later
    /// (<see cref="DecodedBlock.LastRun"/>), except those a live compiled block links to: compiled code enters
    /// them without the run loop, which is where blocks are stamped. A frame stays a code frame, its chunk
    /// mask as it was, until one further pass finds it still empty, so that a write racing with a vCPU still
    /// inside a dropped block ends that block as it always did. The interpreted blocks kept have their run counts
    /// (<see cref="DecodedBlock.Hits"/>) halved. Returns the number of blocks dropped.</summary>
    public int Trim(int epoch)
    {
        lock (_lock)
        {
            var live = new Stack<DecodedBlock>();
            foreach (var b in _blocks.Values)
                if (b.LastRun >= epoch) live.Push(b);
            while (live.TryPop(out var b))
            {
                for (int k = 0; k < b.LinkCount; k++)
                {
                    var next = b.LinkAt(k);
                    if (next is null) continue;
                    // A link to a dropped block only sends compiled code back to the run loop: unlinked, it links again.
                    if (!next.Valid) b.SetLink(k, null);
                    else if (next.LastRun < epoch)
                    {
                        next.LastRun = epoch;
                        live.Push(next);
                    }
                }
            }
            int dropped = 0;
            foreach (var (gfn, f) in _byFrame)
            {
                if (f.Blocks.Count == 0)
                {
                    if (f.EmptySince != 0 && f.EmptySince < epoch) _byFrame.Remove(gfn);
                    continue;
                }
                int kept = 0;
                for (int i = 0; i < f.Blocks.Count; i++)
                {
                    var b = f.Blocks[i];
                    if (b.LastRun >= epoch && b.Valid)
                    {
                        // The interpreter's run count decays by half each period, so that a block is compiled for
                        // how often it runs, not for how long it has been running: an idle guest's wake-up path,
                        // run a few times a second, would otherwise reach the threshold in minutes and keep compiled
                        // code (several KiB a block) that runs no faster cold than the interpreter does.
                        if (b.Compiled is null) b.Hits >>= 1;
                        f.Blocks[kept++] = b;
                        continue;
                    }
                    b.Drop();
                    var key = new Key(b.Phys, b.Ip, b.Bitness);
                    if (_blocks.TryGetValue(key, out var cur) && cur == b) _blocks.Remove(key);
                    dropped++;
                }
                f.Blocks.RemoveRange(kept, f.Blocks.Count - kept);
                if (kept == 0) f.EmptySince = epoch;
            }
            // Let go of the dropped blocks the interpreter's successor shortcuts still name.
            if (dropped > 0)
                foreach (var b in _blocks.Values)
                {
                    if (b.NextFall is { Valid: false }) b.NextFall = null;
                    if (b.NextOther is { Valid: false }) b.NextOther = null;
                }
            if (dropped > _blocks.Count)
            {
                _blocks.TrimExcess();
                _byFrame.TrimExcess();
            }
            return dropped;
        }
    }

    /// <summary>Blocks cached now (tests and diagnostics).</summary>
    public int Count
    {
        get { lock (_lock) return _blocks.Count; }
    }

    public void Clear()
    {
        lock (_lock)
        {
            foreach (var f in _byFrame.Values)
                foreach (var b in f.Blocks) b.Drop();
            _blocks.Clear();
            _byFrame.Clear();
        }
    }
}
