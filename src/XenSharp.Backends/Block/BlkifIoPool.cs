using System.Runtime.InteropServices;
using XenSharp.Dom0;
using XenSharp.Public.Io;

namespace XenSharp.Backends.Block;

/// <summary>
/// One request in flight: the native copy of what the frontend asked, and everything serving it needs,
/// allocated once when the device connects (a page-aligned data buffer, so O_DIRECT images take it as it
/// is, and the grant-copy and segment arrays).
/// </summary>
internal sealed unsafe class BlkifSlot
{
    public const int PageSize = 4096;

    public BlkifSlot(int index, int maxSegments)
    {
        Index = index;
        BufferBytes = maxSegments * PageSize;
        Buffer = (byte*)NativeMemory.AlignedAlloc((nuint)BufferBytes, PageSize);
        Copies = GC.AllocateArray<GrantCopyOp>(maxSegments, pinned: true);
        Segments = GC.AllocateArray<BlkifRequestSegment>(maxSegments, pinned: true);
        Mapped = new nint[maxSegments];
    }

    public readonly int Index;
    public readonly int BufferBytes;
    public byte* Buffer;
    public readonly GrantCopyOp[] Copies;
    public readonly BlkifRequestSegment[] Segments;
    /// <summary>Per segment: the persistently mapped page, or 0 when the segment moves by grant copy.</summary>
    public readonly nint[] Mapped;
    /// <summary>The request as the frontend put it on the ring, in the native layout.</summary>
    public BlkifRequest Request;
    /// <summary>The ring it came from and goes back to.</summary>
    public BlkifQueue? Queue;

    public void Free()
    {
        if (Buffer is not null) NativeMemory.AlignedFree(Buffer);
        Buffer = null;
    }
}

/// <summary>
/// A device's I/O workers: a fixed set of slots and a few threads that serve them, so image I/O never runs
/// on the backend thread and many requests are in flight at once (each completes, and is answered, when its
/// I/O does). The backend thread rents a slot per request it takes off a ring and submits it; with no slot
/// free it leaves the rest on the ring. Nothing here allocates per request.
/// </summary>
internal sealed class BlkifIoPool : IDisposable
{
    private readonly object _gate = new();
    private readonly BlkifSlot[] _slots;
    private readonly int[] _free;
    private int _freeCount;
    private readonly int[] _work;
    private int _workHead, _workCount;
    /// <summary>Requests submitted and not yet served to the end.</summary>
    private int _submitted;
    private readonly Thread[] _threads;
    private readonly Action<BlkifSlot> _serve;
    private bool _stopping;

    public BlkifIoPool(string name, int workers, int slots, int maxSegments, Action<BlkifSlot> serve)
    {
        _serve = serve;
        _slots = new BlkifSlot[slots];
        _free = new int[slots];
        _work = new int[slots];
        for (int i = 0; i < slots; i++)
        {
            _slots[i] = new BlkifSlot(i, maxSegments);
            _free[i] = i;
        }
        _freeCount = slots;
        _threads = new Thread[workers];
        for (int i = 0; i < workers; i++)
        {
            _threads[i] = new Thread(Work) { IsBackground = true, Name = $"{name}-io{i}" };
            _threads[i].Start();
        }
    }

    public int Slots => _slots.Length;

    /// <summary>Slots rented and not yet returned.</summary>
    public int InFlight
    {
        get { lock (_gate) return _slots.Length - _freeCount; }
    }

    public bool TryRent(out BlkifSlot slot)
    {
        lock (_gate)
        {
            if (_freeCount == 0)
            {
                slot = null!;
                return false;
            }
            slot = _slots[_free[--_freeCount]];
            return true;
        }
    }

    /// <summary>Hands a rented slot to a worker.</summary>
    public void Submit(BlkifSlot slot)
    {
        lock (_gate)
        {
            _work[(_workHead + _workCount) % _work.Length] = slot.Index;
            _workCount++;
            _submitted++;
            Monitor.Pulse(_gate);
        }
    }

    /// <summary>A slot whose request was answered.</summary>
    public void Return(BlkifSlot slot)
    {
        slot.Queue = null;
        lock (_gate)
        {
            _free[_freeCount++] = slot.Index;
            if (_freeCount == _slots.Length) Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Waits until every submitted request is answered. Unlike <see cref="Drain"/>, a barrier still
    /// waiting for its queue (rented, not submitted) does not count: it has not touched the image yet.</summary>
    public void WaitForSubmitted()
    {
        lock (_gate)
            while (_submitted != 0)
                Monitor.Wait(_gate);
    }

    /// <summary>Waits until every rented slot is back: every request taken is answered.</summary>
    public void Drain()
    {
        lock (_gate)
            while (_freeCount != _slots.Length)
                Monitor.Wait(_gate);
    }

    private void Work()
    {
        while (true)
        {
            BlkifSlot slot;
            lock (_gate)
            {
                while (_workCount == 0 && !_stopping) Monitor.Wait(_gate);
                if (_workCount == 0) return;
                slot = _slots[_work[_workHead]];
                _workHead = (_workHead + 1) % _work.Length;
                _workCount--;
            }
            try { _serve(slot); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // The serve callback answers every request it is given; this only reports a bug in it.
                System.Console.Error.WriteLine($"xensharpd: {Thread.CurrentThread.Name}: {e.GetType().Name}: {e.Message}");
            }
            finally
            {
                lock (_gate)
                    if (--_submitted == 0) Monitor.PulseAll(_gate);
            }
        }
    }

    /// <summary>Finishes what was submitted, stops the workers and frees the slots' buffers.</summary>
    public void Dispose()
    {
        Drain();
        lock (_gate)
        {
            _stopping = true;
            Monitor.PulseAll(_gate);
        }
        foreach (var t in _threads) t.Join();
        foreach (var s in _slots) s.Free();
    }
}
