using System.Runtime.CompilerServices;
using System.Threading;

namespace XenSharp.Store;

/// <summary>
/// A guest talking over its shared xenstore ring. Requests are copied out of req[] a piece at a
/// time (a message may be larger than the ring); replies and events wait in a private queue until
/// rsp[] has room. The guest's event channel kicks <see cref="Signal"/>, which schedules one pass on
/// the ring worker thread; nothing here blocks or allocates per request.
/// </summary>
internal sealed class RingConnection : Connection
{
    private readonly XenStoreEngine _engine;
    private readonly IXenStoreRing _ring;
    private readonly byte[] _in = new byte[XsdSockmsg.Size + XsWire.PayloadMax];
    private int _inLen;
    private XsdSockmsg _hdr;

    // Pending output: a byte queue [_outStart, _outStart + _outLen) in _out.
    private byte[] _out = new byte[8192];
    private int _outStart, _outLen, _outMessages;
    private int _scheduled;
    private bool _inPump, _notify;

    public RingConnection(XenStoreEngine engine, uint domId, IXenStoreRing ring) : base(domId, privileged: false)
    {
        _engine = engine;
        _ring = ring;
        if (ring.Page.Length < XsWire.InterfaceSize)
            throw new ArgumentException("the xenstore ring page is smaller than struct xenstore_domain_interface");
    }

    public void Start()
    {
        Span<byte> page = _ring.Page;
        Volatile.Write(ref Field(page, XsWire.ServerFeaturesOffset), XsWire.ServerFeatureError);
        Signal();
    }

    private static ref uint Field(Span<byte> page, int offset) => ref Unsafe.As<byte, uint>(ref page[offset]);

    public void Signal()
    {
        if (Closed) return;
        if (Interlocked.Exchange(ref _scheduled, 1) == 0)
            _engine.Rings.Enqueue(this);
    }

    /// <summary>One pass over the ring, on the ring worker thread.</summary>
    public void Service()
    {
        Volatile.Write(ref _scheduled, 0);
        lock (_engine.Lock) Pump();
    }

    /// <summary>Moves replies out and requests in until neither can progress. Store lock held.</summary>
    private void Pump()
    {
        if (Closed) return;
        _inPump = true;
        try
        {
            // A bounded pass, so that one busy guest cannot keep the ring thread from the others.
            for (int budget = 256; !Closed; budget--)
            {
                Flush();
                if (_outMessages >= _engine.Quotas.OutstandingRequests) break; // the guest must read first
                if (budget == 0)
                {
                    Signal(); // more to do: back in the queue behind the others
                    break;
                }
                if (!ReadRequest()) break;
            }
        }
        finally
        {
            _inPump = false;
        }
        if (_notify)
        {
            _notify = false;
            _ring.Notify();
        }
    }

    /// <summary>Copies available request bytes; processes a request once complete. False when no progress.</summary>
    private bool ReadRequest()
    {
        Span<byte> page = _ring.Page;
        uint prod = Volatile.Read(ref Field(page, XsWire.ReqProdOffset));
        uint cons = Field(page, XsWire.ReqConsOffset);
        uint avail = prod - cons;
        if (avail == 0) return false;
        if (avail > XsWire.RingSize)
        {
            Fail(XsWire.ErrorRingIdx);
            return false;
        }
        int need = _inLen < XsdSockmsg.Size ? XsdSockmsg.Size - _inLen : XsdSockmsg.Size + (int)_hdr.Len - _inLen;
        int start = (int)(cons & (XsWire.RingSize - 1));
        int n = Math.Min(need, Math.Min((int)avail, XsWire.RingSize - start));
        page.Slice(XsWire.ReqOffset + start, n).CopyTo(_in.AsSpan(_inLen));
        _inLen += n;
        // The copy must complete before the guest may reuse the space.
        Volatile.Write(ref Field(page, XsWire.ReqConsOffset), cons + (uint)n);
        _notify = true;

        if (_inLen == XsdSockmsg.Size)
        {
            _hdr = XsdSockmsg.Read(_in);
            if (_hdr.Len > XsWire.PayloadMax)
            {
                Fail(XsWire.ErrorProto);
                return false;
            }
        }
        if (_inLen >= XsdSockmsg.Size && _inLen == XsdSockmsg.Size + (int)_hdr.Len)
        {
            _inLen = 0;
            _engine.ProcessLocked(this, _hdr, _in.AsSpan(XsdSockmsg.Size, (int)_hdr.Len));
        }
        return true;
    }

    /// <summary>A guest that breaks the ring protocol is told so through the error field and ignored.</summary>
    private void Fail(uint error)
    {
        Volatile.Write(ref Field(_ring.Page, XsWire.ErrorOffset), error);
        _notify = true;
        Close();
        _engine.Disconnect(this);
    }

    public override void Send(XsType type, uint reqId, uint txId, ReadOnlySpan<byte> payload)
    {
        if (Closed) return;
        int size = XsdSockmsg.Size + payload.Length;
        if (type == XsType.WatchEvent && _outLen + size > _engine.Quotas.MaxPendingOutputBytes)
            return; // a guest that never reads loses events, not the daemon's memory
        if (_outStart + _outLen + size > _out.Length)
        {
            byte[] dst = _outLen + size > _out.Length ? new byte[Math.Max(_out.Length * 2, _outLen + size)] : _out;
            Buffer.BlockCopy(_out, _outStart, dst, 0, _outLen);
            _out = dst;
            _outStart = 0;
        }
        var h = new XsdSockmsg { Type = (uint)type, ReqId = reqId, TxId = txId, Len = (uint)payload.Length };
        Span<byte> at = _out.AsSpan(_outStart + _outLen, size);
        h.Write(at);
        payload.CopyTo(at[XsdSockmsg.Size..]);
        _outLen += size;
        _outMessages++;
        if (!_inPump)
        {
            Flush();
            if (_notify) { _notify = false; _ring.Notify(); }
        }
    }

    /// <summary>Writes as much pending output as rsp[] has room for.</summary>
    private void Flush()
    {
        if (_outLen == 0) return;
        Span<byte> page = _ring.Page;
        uint cons = Volatile.Read(ref Field(page, XsWire.RspConsOffset));
        uint prod = Field(page, XsWire.RspProdOffset);
        uint used = prod - cons;
        if (used > XsWire.RingSize)
        {
            Fail(XsWire.ErrorRingIdx);
            return;
        }
        int wrote = 0;
        int free = XsWire.RingSize - (int)used;
        while (free > 0 && _outLen > 0)
        {
            int start = (int)(prod & (XsWire.RingSize - 1));
            int n = Math.Min(Math.Min(free, _outLen), XsWire.RingSize - start);
            _out.AsSpan(_outStart, n).CopyTo(page.Slice(XsWire.RspOffset + start, n));
            CountMessagesSent(_outStart, n);
            _outStart += n;
            _outLen -= n;
            prod += (uint)n;
            free -= n;
            wrote += n;
        }
        if (_outLen == 0) _outStart = 0;
        if (wrote > 0)
        {
            Volatile.Write(ref Field(page, XsWire.RspProdOffset), prod);
            _notify = true;
        }
    }

    // Bytes of the message at the head of the queue not yet on the ring; when a message is fully
    // out, the outstanding count drops.
    private int _headRemaining;

    private void CountMessagesSent(int start, int n)
    {
        while (n > 0)
        {
            if (_headRemaining == 0)
                _headRemaining = XsdSockmsg.Size + (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(_out.AsSpan(start + 12));
            int k = Math.Min(n, _headRemaining);
            _headRemaining -= k;
            n -= k;
            start += k;
            if (_headRemaining == 0) _outMessages--;
        }
    }
}
