using System.Runtime.InteropServices;

namespace XenSharp.Toolstack.Platform;

/// <summary>
/// Guest-physical memory held by the toolstack itself: one native allocation per populated
/// frame. It backs domains while no hypervisor is bound and the builder's tests.
/// </summary>
public sealed unsafe class SparseGuestMemory : IGuestPhysicalMemory, IDisposable
{
    private const int PageSize = 4096;
    private readonly Dictionary<ulong, nint> _frames = [];
    private readonly Lock _lock = new();

    public ulong MaxFrames { get; }

    public SparseGuestMemory(ulong maxFrames = ulong.MaxValue) { MaxFrames = maxFrames; }

    public ulong PopulatedFrames { get { lock (_lock) return (ulong)_frames.Count; } }

    public void Populate(ulong gfn, ulong count)
    {
        lock (_lock)
        {
            ulong missing = 0;
            for (ulong i = 0; i < count; i++) if (!_frames.ContainsKey(gfn + i)) missing++;
            if ((ulong)_frames.Count + missing > MaxFrames)
                throw new OutOfMemoryException($"populating {count} frames at gfn {gfn:x} exceeds the domain's {MaxFrames} frames");
            for (ulong i = 0; i < count; i++)
                if (!_frames.ContainsKey(gfn + i))
                    _frames[gfn + i] = (nint)NativeMemory.AllocZeroed(PageSize);
        }
    }

    private readonly HashSet<ulong> _onDemand = [];

    /// <summary>Frames allocated when first written or read (no cache limit is kept here).</summary>
    public void PopulateOnDemand(ulong gfn, ulong count)
    {
        lock (_lock)
            for (ulong i = 0; i < count; i++)
                if (!_frames.ContainsKey(gfn + i))
                    _onDemand.Add(gfn + i);
    }

    public ulong PodTargetPages { get; private set; }
    public void SetPodTarget(ulong targetPages) => PodTargetPages = targetPages;

    public bool IsPopulated(ulong gfn) { lock (_lock) return _frames.ContainsKey(gfn); }

    public ulong MaxGfn { get { lock (_lock) return _frames.Count == 0 ? 0 : _frames.Keys.Max(); } }

    public bool TryReadFrame(ulong gfn, Span<byte> page)
    {
        lock (_lock)
        {
            if (!_frames.TryGetValue(gfn, out nint p)) return false;
            new ReadOnlySpan<byte>((void*)p, PageSize).CopyTo(page);
            return true;
        }
    }

    private byte* Frame(ulong gfn)
    {
        lock (_lock)
        {
            if (!_frames.TryGetValue(gfn, out nint p) && _onDemand.Remove(gfn))
                _frames[gfn] = p = (nint)NativeMemory.AllocZeroed(PageSize);
            if (p == 0)
                throw new ArgumentOutOfRangeException(nameof(gfn), $"guest frame {gfn:x} is not populated");
            return (byte*)p;
        }
    }

    public void Write(ulong gpa, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            int off = (int)(gpa & (PageSize - 1));
            int n = Math.Min(PageSize - off, data.Length);
            data[..n].CopyTo(new Span<byte>(Frame(gpa >> 12) + off, n));
            data = data[n..];
            gpa += (ulong)n;
        }
    }

    public void Read(ulong gpa, Span<byte> data)
    {
        while (!data.IsEmpty)
        {
            int off = (int)(gpa & (PageSize - 1));
            int n = Math.Min(PageSize - off, data.Length);
            new ReadOnlySpan<byte>(Frame(gpa >> 12) + off, n).CopyTo(data);
            data = data[n..];
            gpa += (ulong)n;
        }
    }

    public Span<byte> Page(ulong gfn) => new(Frame(gfn), PageSize);

    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var p in _frames.Values) NativeMemory.Free((void*)p);
            _frames.Clear();
        }
    }
}
