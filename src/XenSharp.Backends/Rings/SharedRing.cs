using System.Runtime.CompilerServices;
using XenSharp.Public.Io;

namespace XenSharp.Backends.Rings;

/// <summary>What a look at the request side of a ring found.</summary>
public enum RingCheck
{
    /// <summary>Nothing to consume.</summary>
    Empty,
    /// <summary>Requests are waiting.</summary>
    Requests,
    /// <summary>The frontend's req_prod is more than a ring ahead of what was answered: its index is
    /// garbage and the device must stop using the ring.</summary>
    Overflow,
}

/// <summary>
/// The shared page of a ring.h ring (<c>struct X_sring</c>): the four indexes, 48 bytes of header in all
/// with padding, then <see cref="Size"/> entries, each the size of the request/response union.
/// </summary>
public readonly unsafe struct SharedRingLayout<TReq, TRsp> where TReq : unmanaged where TRsp : unmanaged
{
    /// <summary>sizeof(union X_sring_entry).</summary>
    public static int EntrySize => Math.Max(sizeof(TReq), sizeof(TRsp));

    /// <summary>__CONST_RING_SIZE for a ring of <paramref name="bytes"/> (one page: 4096).</summary>
    public static uint Size(int bytes = 4096) => (uint)Ring.Size(bytes, EntrySize);

    /// <summary>SHARED_RING_INIT: both producers at 0, both event indexes at 1.</summary>
    public static void Init(Span<byte> sring)
    {
        sring[..Ring.OffsetRing].Clear();
        Unsafe.As<byte, uint>(ref sring[Ring.OffsetReqEvent]) = 1;
        Unsafe.As<byte, uint>(ref sring[Ring.OffsetRspEvent]) = 1;
    }
}

/// <summary>Shared index access with the barriers ring.h asks for: a producer index is read with
/// acquire semantics before the entries it covers, written with release semantics after them, and
/// the full barrier (mb) sits between publishing an index and reading the other end's event index.</summary>
internal static unsafe class RingIndex
{
    public static uint Read(byte* s, int offset) => Volatile.Read(ref *(uint*)(s + offset));
    public static void Write(byte* s, int offset, uint value) => Volatile.Write(ref *(uint*)(s + offset), value);
}

/// <summary>
/// The backend's end of a ring.h ring (BACK_RING), typed by its request and response structures. Requests
/// are copied out of the shared page before use (the frontend may change them meanwhile); responses are
/// written in place. Nothing allocates per request. One thread uses a ring at a time (the device's I/O
/// thread); the page must stay mapped while it does.
/// </summary>
public sealed unsafe class BackRing<TReq, TRsp> where TReq : unmanaged where TRsp : unmanaged
{
    private readonly byte* _s;
    private readonly uint _mask;
    private uint _reqCons;
    private uint _rspProdPvt;

    /// <summary>BACK_RING_INIT over a shared page of <paramref name="bytes"/> at <paramref name="sring"/>, or
    /// BACK_RING_ATTACH at index <paramref name="start"/> (a ring that was in use before).</summary>
    public BackRing(byte* sring, int bytes = 4096, uint start = 0)
    {
        ArgumentOutOfRangeException.ThrowIfZero((nint)sring);
        Size = SharedRingLayout<TReq, TRsp>.Size(bytes);
        if (Size == 0) throw new ArgumentException($"{bytes} bytes hold no {SharedRingLayout<TReq, TRsp>.EntrySize}-byte entry");
        _s = sring;
        _mask = Size - 1;
        _reqCons = _rspProdPvt = start;
    }

    /// <summary>RING_SIZE: entries in the ring, a power of two.</summary>
    public uint Size { get; }

    /// <summary>Index of the next request to consume (req_cons).</summary>
    public uint RequestConsumer => _reqCons;

    /// <summary>Index of the next response to produce, not yet published (rsp_prod_pvt).</summary>
    public uint ResponseProducer => _rspProdPvt;

    /// <summary>RING_HAS_UNCONSUMED_REQUESTS, with the producer checked: <see cref="RingCheck.Overflow"/>
    /// when req_prod runs more than a ring ahead of the responses (RING_REQUEST_PROD_OVERFLOW).</summary>
    public RingCheck CheckForRequests(out uint count)
    {
        uint prod = RingIndex.Read(_s, Ring.OffsetReqProd);
        count = 0;
        // More than a ring beyond the last response, or behind what was already taken.
        if (unchecked(prod - _rspProdPvt) > Size || unchecked(prod - _reqCons) > Size)
            return RingCheck.Overflow;
        uint req = unchecked(prod - _reqCons);
        uint room = Size - unchecked(_reqCons - _rspProdPvt);
        count = Math.Min(req, room);
        return count == 0 ? RingCheck.Empty : RingCheck.Requests;
    }

    /// <summary>RING_FINAL_CHECK_FOR_REQUESTS: when the ring looks empty, asks the frontend (req_event)
    /// to notify for the next request and looks again, so a request pushed meanwhile is not missed.</summary>
    public RingCheck FinalCheckForRequests(out uint count)
    {
        var r = CheckForRequests(out count);
        if (r != RingCheck.Empty) return r;
        RingIndex.Write(_s, Ring.OffsetReqEvent, unchecked(_reqCons + 1));
        Interlocked.MemoryBarrier();
        return CheckForRequests(out count);
    }

    /// <summary>For a backend that needs more requests than wait (a frame that takes several receive slots): asks
    /// the frontend to notify at its next request (req_event = req_prod + 1) and looks again, so requests pushed
    /// meanwhile are not missed.</summary>
    public RingCheck NotifyOnMoreRequests(out uint count)
    {
        RingIndex.Write(_s, Ring.OffsetReqEvent, unchecked(RingIndex.Read(_s, Ring.OffsetReqProd) + 1));
        Interlocked.MemoryBarrier();
        return CheckForRequests(out count);
    }

    /// <summary>The request at req_cons, copied, without consuming it (netback looks at a packet's size before it
    /// decides to take it). The caller has seen it in a count from <see cref="CheckForRequests"/>.</summary>
    public void PeekRequest(out TReq request) => request = *(TReq*)Entry(_reqCons);

    /// <summary>RING_COPY_REQUEST and req_cons++: the caller has seen the request in a count from
    /// <see cref="CheckForRequests"/>.</summary>
    public void TakeRequest(out TReq request)
    {
        request = *(TReq*)Entry(_reqCons);
        _reqCons = unchecked(_reqCons + 1);
    }

    /// <summary>RING_GET_RESPONSE at rsp_prod_pvt and rsp_prod_pvt++: the slot to fill in place. It is
    /// published by <see cref="PushResponsesAndCheckNotify"/>.</summary>
    public ref TRsp NextResponse()
    {
        ref TRsp r = ref *(TRsp*)Entry(_rspProdPvt);
        _rspProdPvt = unchecked(_rspProdPvt + 1);
        return ref r;
    }

    /// <summary>Writes a response and advances rsp_prod_pvt.</summary>
    public void PutResponse(in TRsp response) => NextResponse() = response;

    /// <summary>RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publishes rsp_prod; true when the frontend's
    /// rsp_event lies in the published range, i.e. it asked to be notified.</summary>
    public bool PushResponsesAndCheckNotify()
    {
        uint old = RingIndex.Read(_s, Ring.OffsetRspProd);
        uint now = _rspProdPvt;
        RingIndex.Write(_s, Ring.OffsetRspProd, now);
        Interlocked.MemoryBarrier();
        return Ring.NeedNotify(old, now, RingIndex.Read(_s, Ring.OffsetRspEvent));
    }

    private byte* Entry(uint idx) => _s + Ring.OffsetRing + (nint)((idx & _mask) * (uint)SharedRingLayout<TReq, TRsp>.EntrySize);
}

/// <summary>
/// The frontend's end of a ring.h ring (FRONT_RING): the other half of <see cref="BackRing{TReq,TRsp}"/>,
/// for tests and in-process frontends.
/// </summary>
public sealed unsafe class FrontRing<TReq, TRsp> where TReq : unmanaged where TRsp : unmanaged
{
    private readonly byte* _s;
    private readonly uint _mask;
    private uint _reqProdPvt;
    private uint _rspCons;

    /// <summary>FRONT_RING_INIT (FRONT_RING_ATTACH at <paramref name="start"/>); the shared page must have been
    /// set up with <see cref="SharedRingLayout{TReq,TRsp}.Init"/>.</summary>
    public FrontRing(byte* sring, int bytes = 4096, uint start = 0)
    {
        Size = SharedRingLayout<TReq, TRsp>.Size(bytes);
        if (Size == 0) throw new ArgumentException($"{bytes} bytes hold no {SharedRingLayout<TReq, TRsp>.EntrySize}-byte entry");
        _s = sring;
        _mask = Size - 1;
        _reqProdPvt = _rspCons = start;
    }

    public uint Size { get; }

    /// <summary>RING_FREE_REQUESTS.</summary>
    public uint FreeRequests => Size - unchecked(_reqProdPvt - _rspCons);

    /// <summary>RING_GET_REQUEST at req_prod_pvt and req_prod_pvt++.</summary>
    public ref TReq NextRequest()
    {
        ref TReq r = ref *(TReq*)Entry(_reqProdPvt);
        _reqProdPvt = unchecked(_reqProdPvt + 1);
        return ref r;
    }

    /// <summary>RING_PUSH_REQUESTS_AND_CHECK_NOTIFY.</summary>
    public bool PushRequestsAndCheckNotify()
    {
        uint old = RingIndex.Read(_s, Ring.OffsetReqProd);
        uint now = _reqProdPvt;
        RingIndex.Write(_s, Ring.OffsetReqProd, now);
        Interlocked.MemoryBarrier();
        return Ring.NeedNotify(old, now, RingIndex.Read(_s, Ring.OffsetReqEvent));
    }

    /// <summary>Takes the next published response, if any (RING_HAS_UNCONSUMED_RESPONSES, RING_GET_RESPONSE).</summary>
    public bool TryTakeResponse(out TRsp response)
    {
        if (RingIndex.Read(_s, Ring.OffsetRspProd) == _rspCons)
        {
            response = default;
            return false;
        }
        response = *(TRsp*)Entry(_rspCons);
        _rspCons = unchecked(_rspCons + 1);
        return true;
    }

    /// <summary>RING_FINAL_CHECK_FOR_RESPONSES: true when responses wait; otherwise rsp_event is set
    /// so the backend notifies for the next one.</summary>
    public bool FinalCheckForResponses()
    {
        if (RingIndex.Read(_s, Ring.OffsetRspProd) != _rspCons) return true;
        RingIndex.Write(_s, Ring.OffsetRspEvent, unchecked(_rspCons + 1));
        Interlocked.MemoryBarrier();
        return RingIndex.Read(_s, Ring.OffsetRspProd) != _rspCons;
    }

    private byte* Entry(uint idx) => _s + Ring.OffsetRing + (nint)((idx & _mask) * (uint)SharedRingLayout<TReq, TRsp>.EntrySize);
}
