using XenSharp.Hypervisor;
using XenSharp.Public;
using static XenSharp.Daemon.Privcmd.PrivcmdProtocol;

namespace XenSharp.Daemon.Privcmd;

/// <summary>
/// A libxenevtchn handle (the role of Linux's /dev/xen/evtchn): Domain-0 ports bound through it belong to it and are
/// closed with it. An event masks its port and writes the 4-byte port number to the handle's pipe, once, until the
/// program unmasks it; an event that arrives meanwhile is remembered and delivered at the unmask. Mask and pending
/// bits are words in memory the library shares (privcmd.h's PRIVCMD_EVTCHN_*), changed by compare-and-swap on both
/// sides, so that the library unmasks a port nothing raised meanwhile without a request: a device model's vCPU port
/// is unmasked once per ioreq. Whatever the program writes there only changes the delivery of its own ports.
/// </summary>
internal sealed unsafe class EvtchnHandle : IPrivcmdHandle
{
    private const ulong StateBytes = PrivcmdProtocol.EvtchnStatePorts * sizeof(uint);
    private readonly XenHypervisor _hv;
    private readonly int _pipe;
    private readonly uint* _state;
    private readonly object _lock = new();
    private readonly Dictionary<uint, Port> _ports = [];
    private bool _closed;

    private sealed class Port
    {
        /// <summary>0 until the bind returned (an event can arrive before that: Xen raises a new interdomain port).</summary>
        public uint Number;
        /// <summary>Raised before its number was known; delivered once the bind returns.</summary>
        public bool Pending;
        /// <summary>The port's word is the IOREQ server's doorbell (EvtchnDirect): disposed before the word goes.</summary>
        public IDisposable? Doorbell;
    }

    private EvtchnHandle(XenHypervisor hv, int pipeWriteEnd, uint* state)
    {
        _hv = hv;
        _pipe = pipeWriteEnd;
        _state = state;
        UnixNative.SetNonBlocking(_pipe);
    }

    /// <summary>A handle over the library's pipe and its state memfd (sealed against shrinking, so the words never
    /// fault).</summary>
    public static long Open(XenHypervisor hv, int pipeWriteEnd, int stateMemfd, out EvtchnHandle? handle)
    {
        handle = null;
        nint p = UnixNative.MapSealedMemfd(stateMemfd, StateBytes, out int errno);
        if (p == 0)
            return -errno;
        handle = new EvtchnHandle(hv, pipeWriteEnd, (uint*)p);
        return 0;
    }

    /// <summary>The shared word of a port, or null for a port beyond the shared range (which never gets bound).</summary>
    private uint* Word(uint port) => port < PrivcmdProtocol.EvtchnStatePorts ? _state + port : null;

    public unsafe long Handle(in PrivcmdRequest r, ReadOnlySpan<byte> payload, ref PrivcmdReply reply, ref ReplyExtras extras)
    {
        if (!payload.IsEmpty)
            return -Errno.EINVAL;
        ulong a0 = r.Arg[0], a1 = r.Arg[1];
        switch (r.Op)
        {
            case OpEvtchnBindUnbound:
                if (a0 > ushort.MaxValue)
                    return -Errno.EINVAL;
                return Bind((Action cb, out uint p) => _hv.Dom0EvtchnAllocUnbound((ushort)a0, cb, out p));
            case OpEvtchnBindInterdomain:
                if (a0 > ushort.MaxValue || a1 > uint.MaxValue)
                    return -Errno.EINVAL;
                return Bind((Action cb, out uint p) => _hv.Dom0EvtchnBindInterdomain((ushort)a0, (uint)a1, cb, out p), doorbell: true);
            case OpEvtchnBindVirq:
                if (a0 > uint.MaxValue)
                    return -Errno.EINVAL;
                return Bind((Action cb, out uint p) => _hv.Dom0EvtchnBindVirq((uint)a0, cb, out p));
            case OpEvtchnNotify:
                return Owns(a0) ? _hv.Dom0EvtchnSend((uint)a0) : -Errno.ENOTCONN;
            case OpEvtchnUnbind:
            {
                lock (_lock)
                {
                    if (!Owns(a0))
                        return -Errno.ENOTCONN;
                    _ports.Remove((uint)a0, out var gone);
                    gone?.Doorbell?.Dispose();
                    uint* w = Word((uint)a0);
                    if (w != null)
                        Volatile.Write(ref *w, 0);
                }
                return _hv.Dom0EvtchnClose((uint)a0);
            }
            case OpEvtchnUnmask:
                Unmask(a0);
                return 0; // as the evtchn driver, ports this handle does not hold are ignored
            case OpEvtchnRestrict:
                // Restricting a handle to one domain's ports is the deprivileged device model's step; not offered yet.
                return -Errno.EOPNOTSUPP;
            default:
                return -Errno.ENOSYS;
        }
    }

    private delegate long Binder(Action onEvent, out uint port);

    private long Bind(Binder bind, bool doorbell = false)
    {
        var port = new Port();
        long rc = bind(() => Raise(port), out uint number);
        if (rc != 0)
            return rc;
        bool deliver = false;
        uint* word = Word(number);
        // The peer is an IOREQ server's vCPU port: the library notifies it through the word (no request, no thread
        // between the device model and the waiting vCPU).
        IDisposable? bell = doorbell && word != null ? _hv.Dom0EvtchnDoorbell(number, (nint)word) : null;
        lock (_lock)
        {
            if (!_closed && word != null)
            {
                port.Number = number;
                port.Doorbell = bell;
                bell = null;
                _ports[number] = port;
                deliver = port.Pending;
                port.Pending = false;
                Volatile.Write(ref *word, (deliver ? PrivcmdProtocol.EvtchnMasked : 0)
                    | (port.Doorbell != null ? PrivcmdProtocol.EvtchnDirect : 0));
            }
        }
        bell?.Dispose();
        if (port.Number == 0)
        {
            _hv.Dom0EvtchnClose(number);
            return _closed ? -Errno.EBADF : -Errno.ENOSPC;
        }
        if (deliver)
            Write(number);
        return number;
    }

    private bool Owns(ulong port)
    {
        lock (_lock)
            return port <= uint.MaxValue && _ports.ContainsKey((uint)port);
    }

    /// <summary>An event on one of the handle's ports (on the notifying thread: it only writes 4 bytes, never blocks).</summary>
    private void Raise(Port port)
    {
        uint number;
        lock (_lock)
        {
            if (_closed)
                return;
            if (port.Number == 0)
            {
                port.Pending = true;
                return;
            }
            number = port.Number;
            if (!Mark(Word(number)!, PrivcmdProtocol.EvtchnPending))
                return;
        }
        Write(number);
    }

    /// <summary>Sets MASKED on an unmasked port (true: write it to the pipe), else <paramref name="whenMasked"/>.</summary>
    private static bool Mark(uint* w, uint whenMasked)
    {
        uint s = Volatile.Read(ref *w);
        while (true)
        {
            bool masked = (s & PrivcmdProtocol.EvtchnMasked) != 0;
            uint next = masked ? s | whenMasked : s | PrivcmdProtocol.EvtchnMasked;
            uint seen = Interlocked.CompareExchange(ref *w, next, s);
            if (seen == s)
                return !masked;
            s = seen;
        }
    }

    private void Unmask(ulong portNumber)
    {
        lock (_lock)
        {
            if (portNumber > uint.MaxValue || !_ports.ContainsKey((uint)portNumber))
                return;
            uint* w = Word((uint)portNumber)!;
            uint s = Volatile.Read(ref *w);
            while (true)
            {
                if ((s & PrivcmdProtocol.EvtchnMasked) == 0)
                    return;
                // Raised while masked: it stays masked and is delivered again now; otherwise the mask goes. The
                // doorbell bits are the library's and the IOREQ server's, and stay.
                bool pending = (s & PrivcmdProtocol.EvtchnPending) != 0;
                uint keep = s & ~(PrivcmdProtocol.EvtchnMasked | PrivcmdProtocol.EvtchnPending);
                uint seen = Interlocked.CompareExchange(ref *w, keep | (pending ? PrivcmdProtocol.EvtchnMasked : 0), s);
                if (seen == s)
                {
                    if (!pending)
                        return;
                    break;
                }
                s = seen;
            }
        }
        Write((uint)portNumber);
    }

    private void Write(uint port)
    {
        Span<byte> bytes = stackalloc byte[sizeof(uint)];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(bytes, port);
        UnixNative.TryWrite(_pipe, bytes);
    }

    public void Dispose()
    {
        uint[] held;
        lock (_lock)
        {
            _closed = true;
            held = [.. _ports.Keys];
            // Before the words are unmapped: nobody reads them after this.
            foreach (var p in _ports.Values)
                p.Doorbell?.Dispose();
            _ports.Clear();
        }
        foreach (uint p in held)
            _hv.Dom0EvtchnClose(p);
        UnixNative.close(_pipe);
        UnixNative.Unmap((nint)_state, StateBytes);
    }
}
