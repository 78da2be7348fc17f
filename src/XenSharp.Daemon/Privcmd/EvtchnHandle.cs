using XenSharp.Hypervisor;
using XenSharp.Public;
using static XenSharp.Daemon.Privcmd.PrivcmdProtocol;

namespace XenSharp.Daemon.Privcmd;

/// <summary>
/// A libxenevtchn handle (the role of Linux's /dev/xen/evtchn): Domain-0 ports bound through it belong to it and are
/// closed with it. An event masks its port and writes the 4-byte port number to the handle's pipe, once, until the
/// program unmasks it; an event that arrives meanwhile is remembered and delivered at the unmask.
/// </summary>
internal sealed class EvtchnHandle : IPrivcmdHandle
{
    private readonly XenHypervisor _hv;
    private readonly int _pipe;
    private readonly object _lock = new();
    private readonly Dictionary<uint, Port> _ports = [];
    private bool _closed;

    private sealed class Port
    {
        /// <summary>0 until the bind returned (an event can arrive before that: Xen raises a new interdomain port).</summary>
        public uint Number;
        public bool Masked;
        public bool Pending;
    }

    public EvtchnHandle(XenHypervisor hv, int pipeWriteEnd)
    {
        _hv = hv;
        _pipe = pipeWriteEnd;
        UnixNative.SetNonBlocking(_pipe);
    }

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
                return Bind((Action cb, out uint p) => _hv.Dom0EvtchnBindInterdomain((ushort)a0, (uint)a1, cb, out p));
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
                    _ports.Remove((uint)a0);
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

    private long Bind(Binder bind)
    {
        var port = new Port();
        long rc = bind(() => Raise(port), out uint number);
        if (rc != 0)
            return rc;
        bool deliver;
        lock (_lock)
        {
            if (_closed)
                deliver = false;
            else
            {
                port.Number = number;
                _ports[number] = port;
                deliver = port.Pending;
                port.Pending = false;
                if (deliver)
                    port.Masked = true;
            }
        }
        if (_closed)
        {
            _hv.Dom0EvtchnClose(number);
            return -Errno.EBADF;
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
            if (port.Number == 0 || port.Masked)
            {
                port.Pending = true;
                return;
            }
            port.Masked = true;
            number = port.Number;
        }
        Write(number);
    }

    private void Unmask(ulong portNumber)
    {
        lock (_lock)
        {
            if (portNumber > uint.MaxValue || !_ports.TryGetValue((uint)portNumber, out var port) || !port.Masked)
                return;
            if (!port.Pending)
            {
                port.Masked = false;
                return;
            }
            port.Pending = false; // stays masked: delivered again now
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
            _ports.Clear();
        }
        foreach (uint p in held)
            _hv.Dom0EvtchnClose(p);
        UnixNative.close(_pipe);
    }
}
