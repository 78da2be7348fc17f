namespace XenSharp.Cpu.Decoding;

/// <summary>
/// Decoded blocks of one domain, keyed by guest-physical address, start RIP and code size, and
/// indexed by guest frame so that a write to a code page drops every block decoded from it.
/// </summary>
internal sealed class BlockCache
{
    private readonly record struct Key(ulong Phys, ulong Ip, int Bitness);

    private readonly Dictionary<Key, DecodedBlock> _blocks = new();
    private readonly Dictionary<ulong, List<DecodedBlock>> _byFrame = new();
    private readonly object _lock = new();

    /// <summary>Bumped when a frame becomes a code frame: vCPUs then drop their writable TLB
    /// entries so that writes to it take the slow path that notices self-modifying code.</summary>
    public long CodeFrameEpoch;

    public DecodedBlock? Lookup(ulong phys, ulong ip, int bitness)
    {
        lock (_lock)
            return _blocks.TryGetValue(new Key(phys, ip, bitness), out var b) ? b : null;
    }

    /// <summary>Adds a block; true when its frame was not a code frame before.</summary>
    public bool Add(DecodedBlock block)
    {
        ulong gfn = block.Phys >> 12;
        lock (_lock)
        {
            _blocks[new Key(block.Phys, block.Ip, block.Bitness)] = block;
            bool added = false;
            if (!_byFrame.TryGetValue(gfn, out var list))
            {
                list = new List<DecodedBlock>();
                _byFrame[gfn] = list;
                Interlocked.Increment(ref CodeFrameEpoch);
                added = true;
            }
            list.Add(block);
            return added;
        }
    }

    public bool IsCodeFrame(ulong gfn)
    {
        lock (_lock) return _byFrame.ContainsKey(gfn);
    }

    /// <summary>Drops all blocks decoded from <paramref name="gfn"/>; true when there were any.</summary>
    public bool InvalidateFrame(ulong gfn)
    {
        lock (_lock)
        {
            if (!_byFrame.Remove(gfn, out var list)) return false;
            foreach (var b in list)
            {
                b.Valid = false;
                _blocks.Remove(new Key(b.Phys, b.Ip, b.Bitness));
            }
            return true;
        }
    }

    public void Clear()
    {
        lock (_lock)
        {
            foreach (var list in _byFrame.Values)
                foreach (var b in list) b.Valid = false;
            _blocks.Clear();
            _byFrame.Clear();
        }
    }
}
