using System.Runtime.CompilerServices;
using XenSharp.Backends.Rings;
using XenSharp.Backends.Xenbus;
using XenSharp.Dom0;
using XenSharp.Public;
using XenSharp.Public.Io;
using static XenSharp.Public.Io.Blkif;

namespace XenSharp.Backends.Block;

/// <summary>
/// One blkif queue of a device: its ring (one or more granted pages mapped as one), its event channel and,
/// with feature-persistent, its persistently mapped grants. The backend thread takes requests off the ring
/// into I/O slots; the workers answer them here as they finish, in whatever order that is. A
/// WRITE_BARRIER stops the taking: it runs once everything before it is answered, and nothing after it
/// starts until it is.
/// </summary>
internal abstract class BlkifQueue(IDom0Services dom0, IGrantMapping ring, BlkifPersistentGrants? grants) : IDisposable
{
    protected readonly Lock ResponseLock = new();
    private int _inFlight;
    private BlkifSlot? _barrier;
    private volatile bool _barrierRunning;

    /// <summary>Dom0's end of the queue's event channel (0 until bound).</summary>
    public uint Port { get; set; }
    public int RingPages => ring.Pages;
    public abstract uint RingSize { get; }
    public BlkifPersistentGrants? Grants { get; } = grants;
    protected IDom0Services Dom0 { get; } = dom0;
    protected nint RingAddress => ring.Address;

    /// <summary>Takes what the ring holds into slots and submits them (on the backend thread). False when
    /// the slots ran out with requests still waiting: the caller looks again when one is returned.</summary>
    public bool Serve(BlkifIoPool pool)
    {
        if (Volatile.Read(ref _barrier) is { } barrier)
        {
            StartBarrierWhenDrained(pool, barrier);
            return true;
        }
        return TakeRequests(pool);
    }

    protected abstract bool TakeRequests(BlkifIoPool pool);

    /// <summary>Submits a slot <see cref="TakeRequests"/> filled; false when it was a barrier, which ends the taking.</summary>
    protected bool Dispatch(BlkifIoPool pool, BlkifSlot slot)
    {
        slot.Queue = this;
        if (slot.Request.Operation == BLKIF_OP_WRITE_BARRIER)
        {
            Volatile.Write(ref _barrier, slot);
            Interlocked.MemoryBarrier();
            StartBarrierWhenDrained(pool, slot);
            return false;
        }
        Interlocked.Increment(ref _inFlight);
        pool.Submit(slot);
        return true;
    }

    private void StartBarrierWhenDrained(BlkifIoPool pool, BlkifSlot barrier)
    {
        if (_barrierRunning || Volatile.Read(ref _inFlight) != 0) return;
        _barrierRunning = true;
        Interlocked.Increment(ref _inFlight);
        pool.Submit(barrier);
    }

    /// <summary>Answers a finished request on the ring, notifying the frontend if it asked (on a worker).</summary>
    public abstract void Respond(BlkifSlot slot, byte operation, short status);

    /// <summary>The slot's request was answered (on a worker): true when the backend thread has to look at
    /// the ring again (a barrier finished, or one waits and the queue just drained).</summary>
    public bool Finish(BlkifSlot slot)
    {
        bool wasBarrier = ReferenceEquals(slot, Volatile.Read(ref _barrier));
        if (wasBarrier)
        {
            _barrierRunning = false;
            Volatile.Write(ref _barrier, null);
        }
        int left = Interlocked.Decrement(ref _inFlight);
        return wasBarrier || (left == 0 && Volatile.Read(ref _barrier) is not null);
    }

    /// <summary>The ring is going: a barrier still waiting for its queue to drain gives its slot back
    /// unanswered (on the backend thread, the only one that starts barriers).</summary>
    public void AbandonWaitingBarrier(BlkifIoPool pool)
    {
        if (_barrierRunning || Volatile.Read(ref _barrier) is not { } waiting) return;
        Volatile.Write(ref _barrier, null);
        pool.Return(waiting);
    }

    /// <summary>Unmaps the persistent grants and the ring; nothing may be in flight.</summary>
    public void Dispose()
    {
        Grants?.UnmapAll();
        ring.Dispose();
    }
}

/// <summary>A frontend's request layout, turned into the native one on the way in.</summary>
internal interface IBlkifAbi<TReq, TRsp> where TReq : unmanaged where TRsp : unmanaged
{
    static abstract void ToNative(in TReq from, out BlkifRequest to);
    static abstract void Respond(ref TRsp slot, ulong id, byte operation, short status);
}

/// <summary>The native (x86_64) layout.</summary>
internal readonly struct BlkifNativeAbi : IBlkifAbi<BlkifRequest, BlkifResponse>
{
    public static void ToNative(in BlkifRequest from, out BlkifRequest to) => to = from;

    public static void Respond(ref BlkifResponse slot, ulong id, byte operation, short status) =>
        slot = new BlkifResponse { Id = id, Operation = operation, Status = status };
}

/// <summary>The x86_32 layout (protocol x86_32-abi), where uint64_t is 4-aligned.</summary>
internal readonly struct BlkifX86_32Abi : IBlkifAbi<BlkifRequest32, BlkifResponse32>
{
    public static void ToNative(in BlkifRequest32 from, out BlkifRequest to)
    {
        to = default;
        to.Operation = from.Operation;
        to.NrSegments = from.NrSegments;
        to.Handle = from.Handle;
        to.Id = from.Id;
        to.SectorNumber = from.SectorNumber;
        if (from.Operation == BLKIF_OP_INDIRECT)
        {
            ref readonly var i = ref Unsafe.As<BlkifRequest32, BlkifRequestIndirect32>(ref Unsafe.AsRef(in from));
            ref var n = ref Unsafe.As<BlkifRequest, BlkifRequestIndirect>(ref to);
            n.IndirectOp = i.IndirectOp;
            n.NrSegments = i.NrSegments;
            n.Id = i.Id;
            n.SectorNumber = i.SectorNumber;
            n.Handle = i.Handle;
            n.IndirectGrefs = i.IndirectGrefs;
        }
        else if (from.Operation == BLKIF_OP_DISCARD)
        {
            ref readonly var d = ref Unsafe.As<BlkifRequest32, BlkifRequestDiscard32>(ref Unsafe.AsRef(in from));
            ref var n = ref Unsafe.As<BlkifRequest, BlkifRequestDiscard>(ref to);
            n.Flag = d.Flag;
            n.NrSectors = d.NrSectors;
        }
        else
        {
            int nr = Math.Min((int)from.NrSegments, BLKIF_MAX_SEGMENTS_PER_REQUEST);
            for (int i = 0; i < nr; i++) to.Seg[i] = from.Seg[i];
        }
    }

    public static void Respond(ref BlkifResponse32 slot, ulong id, byte operation, short status) =>
        slot = new BlkifResponse32 { Id = id, Operation = operation, Status = status };
}

/// <summary>A queue whose ring holds <typeparamref name="TReq"/>/<typeparamref name="TRsp"/> entries.</summary>
internal sealed unsafe class BlkifQueue<TAbi, TReq, TRsp> : BlkifQueue
    where TAbi : IBlkifAbi<TReq, TRsp> where TReq : unmanaged where TRsp : unmanaged
{
    private readonly BackRing<TReq, TRsp> _ring;

    public BlkifQueue(IDom0Services dom0, IGrantMapping ring, BlkifPersistentGrants? grants) : base(dom0, ring, grants) =>
        _ring = new BackRing<TReq, TRsp>((byte*)ring.Address, ring.Pages * BlkifSlot.PageSize);

    public override uint RingSize => _ring.Size;

    protected override bool TakeRequests(BlkifIoPool pool)
    {
        while (true)
        {
            RingCheck check;
            uint count;
            // rsp_prod_pvt, which bounds what may be taken, moves under the workers' lock.
            lock (ResponseLock)
            {
                check = _ring.CheckForRequests(out count);
                if (check == RingCheck.Empty)
                    check = _ring.FinalCheckForRequests(out count);
            }
            if (check == RingCheck.Overflow)
                throw new BackendDeviceException(Errno.EBADMSG, "the frontend's request producer ran beyond the ring");
            if (check == RingCheck.Empty)
                return true;
            for (uint i = 0; i < count; i++)
            {
                if (!pool.TryRent(out var slot))
                    return false;
                _ring.TakeRequest(out TReq raw);
                TAbi.ToNative(raw, out slot.Request);
                if (!Dispatch(pool, slot))
                    return true;
            }
        }
    }

    public override void Respond(BlkifSlot slot, byte operation, short status)
    {
        bool notify;
        lock (ResponseLock)
        {
            TAbi.Respond(ref _ring.NextResponse(), slot.Request.Id, operation, status);
            notify = _ring.PushResponsesAndCheckNotify();
        }
        if (notify && Port != 0) Dom0.Notify(Port);
    }
}
