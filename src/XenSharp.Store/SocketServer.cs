using System.Buffers;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace XenSharp.Store;

/// <summary>
/// Listens on the Unix socket (/run/xenstored/socket by default) for host clients such as
/// libxenstore's tools, and serves all of them from one I/O thread over epoll, as Xen's xenstored
/// serves every connection from one poll loop. Sockets are non-blocking: a client that stops
/// reading or sends half a message holds its own bytes, never the thread. An idle client costs a
/// socket and a small object; buffers are taken from a pool only while it has bytes in flight.
/// At most <see cref="XenStoreQuotas.MaxSocketClients"/> clients are served at once; a client
/// beyond that is closed as soon as it is accepted.
/// </summary>
internal sealed class SocketServer : IDisposable
{
    private const ulong ListenerId = 0, WakeId = 1;

    private readonly XenStoreEngine _engine;
    private readonly Socket _listener;
    private readonly int _epoll, _wake;
    private readonly Thread _thread;
    private readonly Dictionary<ulong, SocketConnection> _clients = new(); // I/O thread only
    private ulong _nextId = 2;
    private volatile int _clientCount;
    private volatile bool _stopping;
    private bool _refusing;

    // Connections with output queued (or a close requested) by any thread, flushed by the I/O thread.
    private readonly Lock _dirtyLock = new();
    private List<SocketConnection> _dirty = new(), _flushing = new();
    private bool _woken;

    /// <summary>One receive buffer for every client: a client's unfinished message is copied out
    /// of it into a pooled buffer of its own.</summary>
    private readonly byte[] _scratch = new byte[64 * 1024];

    public string Path { get; }

    public SocketServer(XenStoreEngine engine, string path)
    {
        _engine = engine;
        Path = path;
        string? dir = System.IO.Path.GetDirectoryName(path);
        if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
        if (File.Exists(path)) File.Delete(path); // a stale socket from an earlier run
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(path));
        _listener.Listen(128);
        _listener.Blocking = false;
        _epoll = Epoll.Create();
        _wake = Epoll.CreateEventFd();
        Epoll.Add(_epoll, _wake, Epoll.In, WakeId);
        Epoll.Add(_epoll, (int)_listener.SafeHandle.DangerousGetHandle(), Epoll.In, ListenerId);
        _thread = new Thread(Run) { IsBackground = true, Name = "xenstored sockets" };
        _thread.Start();
    }

    public int ClientCount => _clientCount;

    internal bool OnIoThread => Environment.CurrentManagedThreadId == _thread.ManagedThreadId;

    private void Run()
    {
        var events = new Epoll.EventBuffer(256);
        while (!_stopping)
        {
            int n = events.Wait(_epoll);
            for (int i = 0; i < n && !_stopping; i++)
            {
                ulong id = events.Data(i);
                uint ev = events.Events(i);
                if (id == WakeId) Epoll.DrainEventFd(_wake);
                else if (id == ListenerId) AcceptAll();
                else if (_clients.TryGetValue(id, out SocketConnection? c)) Serve(c, ev);
            }
            FlushDirty();
        }
    }

    private void AcceptAll()
    {
        while (_listener.Poll(0, SelectMode.SelectRead))
        {
            Socket s;
            try { s = _listener.Accept(); }
            catch (SocketException) { return; } // the client gave up meanwhile, or out of descriptors
            if (_clients.Count >= _engine.Quotas.MaxSocketClients)
            {
                if (!_refusing)
                    Console.Error.WriteLine($"xenstored: {_clients.Count} socket clients connected, refusing more (limit {_engine.Quotas.MaxSocketClients})");
                _refusing = true;
                s.Dispose();
                continue;
            }
            _refusing = false;
            s.Blocking = false;
            var conn = new SocketConnection(_engine, this, s, _nextId++);
            try { Epoll.Add(_epoll, conn.Fd, Epoll.In, conn.Id); }
            catch (IOException ex)
            {
                Console.Error.WriteLine($"xenstored: cannot serve a client: {ex.Message}");
                conn.Release();
                continue;
            }
            conn.Interest = Epoll.In;
            _clients.Add(conn.Id, conn);
            _clientCount = _clients.Count;
        }
    }

    private void Serve(SocketConnection c, uint ev)
    {
        try
        {
            if ((ev & Epoll.Out) != 0) c.Flush();
            if (!c.Closed && (ev & (Epoll.In | Epoll.Hup | Epoll.Err)) != 0) c.Receive(_scratch);
            if (!c.Closed) c.Flush();
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            Console.Error.WriteLine($"xenstored: dropping a client after an internal error: {ex}");
            c.RequestClose();
        }
        Settle(c);
    }

    /// <summary>After a client's turn: forget it if it is closed, else register what it waits for.
    /// Nothing a client does may end the I/O thread.</summary>
    private void Settle(SocketConnection c)
    {
        if (!c.Closed)
        {
            try
            {
                UpdateInterest(c);
                return;
            }
            catch (IOException ex)
            {
                Console.Error.WriteLine($"xenstored: dropping a client: {ex.Message}");
                c.RequestClose();
            }
        }
        Finish(c);
    }

    /// <summary>Called by a connection when it gets output to send or must be closed (once until it
    /// is flushed); from the I/O thread it is picked up at the end of the current round, from
    /// elsewhere (the ring worker, the toolstack) it wakes the thread.</summary>
    internal void MarkDirty(SocketConnection c)
    {
        bool wake;
        lock (_dirtyLock)
        {
            _dirty.Add(c);
            wake = !_woken && !OnIoThread;
            if (wake) _woken = true;
        }
        if (wake) Epoll.SignalEventFd(_wake);
    }

    private void FlushDirty()
    {
        List<SocketConnection> work;
        lock (_dirtyLock)
        {
            work = _dirty;
            _dirty = _flushing;
            _flushing = work;
            _woken = false;
        }
        foreach (SocketConnection c in work)
        {
            c.Dequeue();
            if (!_clients.ContainsKey(c.Id)) continue; // already finished
            try { if (!c.Closed) c.Flush(); }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                Console.Error.WriteLine($"xenstored: dropping a client after an internal error: {ex}");
                c.RequestClose();
            }
            Settle(c);
        }
        work.Clear();
    }

    /// <summary>Reads while the client keeps up with its replies; waits for writability while output is queued.</summary>
    private void UpdateInterest(SocketConnection c)
    {
        uint want = (c.Backlogged ? 0 : Epoll.In) | (c.HasOutput ? Epoll.Out : 0);
        if (want == c.Interest) return;
        Epoll.Modify(_epoll, c.Fd, want, c.Id);
        c.Interest = want;
    }

    /// <summary>Forgets a closed client: its socket (and with it its epoll registration), its
    /// buffers, its watches and transactions.</summary>
    private void Finish(SocketConnection c)
    {
        if (!_clients.Remove(c.Id)) return;
        _clientCount = _clients.Count;
        c.Release();
        _engine.Disconnect(c);
    }

    public void Dispose()
    {
        _stopping = true;
        Epoll.SignalEventFd(_wake);
        _thread.Join(TimeSpan.FromSeconds(5));
        try { _listener.Shutdown(SocketShutdown.Both); } catch (SocketException) { }
        _listener.Dispose();
        foreach (SocketConnection c in _clients.Values.ToArray())
        {
            c.RequestClose();
            Finish(c);
        }
        Epoll.Close(_epoll);
        Epoll.Close(_wake);
        try { File.Delete(Path); } catch (IOException) { }
    }
}

/// <summary>
/// One socket client (dom0, privileged). The server's I/O thread parses its requests out of the
/// shared receive buffer and processes each batch under the store lock; replies and watch events
/// are queued in a pooled output buffer and sent without blocking. A client whose queued output
/// passes <see cref="XenStoreQuotas.MaxPendingOutputBytes"/> is dropped; one that floods requests
/// without reading is not read from until its backlog drains below <see cref="HighWater"/>.
/// </summary>
internal sealed class SocketConnection : Connection
{
    private const int HighWater = 256 * 1024;
    private const int MaxMessage = XsdSockmsg.Size + XsWire.PayloadMax;

    private readonly XenStoreEngine _engine;
    private readonly SocketServer _server;
    private readonly Socket _socket;
    private readonly Lock _outLock = new();
    private byte[]? _out;          // pooled while output is queued
    private int _outStart, _outLen;
    private byte[]? _partial;      // pooled while an unfinished message waits for the rest
    private int _partialLen;

    public SocketConnection(XenStoreEngine engine, SocketServer server, Socket socket, ulong id) : base(0, privileged: true)
    {
        _engine = engine;
        _server = server;
        _socket = socket;
        Id = id;
        Fd = (int)socket.SafeHandle.DangerousGetHandle();
    }

    public ulong Id { get; }
    public int Fd { get; }
    /// <summary>The epoll events registered for the socket (I/O thread only).</summary>
    public uint Interest;
    /// <summary>In the server's dirty list; set and cleared under the output lock, so that output
    /// queued after the I/O thread took the list marks the connection again.</summary>
    private bool Queued;

    public void Dequeue()
    {
        lock (_outLock) Queued = false;
    }

    public bool HasOutput { get { lock (_outLock) return _outLen > _outStart; } }
    public bool Backlogged { get { lock (_outLock) return _outLen - _outStart > HighWater; } }

    /// <summary>Takes what the socket has (once per readiness, so that every client gets its turn)
    /// and processes every complete message. I/O thread only.</summary>
    public void Receive(byte[] scratch)
    {
        int have = _partialLen;
        if (have > 0) _partial.AsSpan(0, have).CopyTo(scratch);
        int n = _socket.Receive(scratch.AsSpan(have), SocketFlags.None, out SocketError err);
        if (err == SocketError.WouldBlock) return;
        if (err != SocketError.Success || n == 0)
        {
            RequestClose();
            return;
        }
        have += n;
        int used = ProcessAvailable(scratch, have);
        if (used < 0)
        {
            RequestClose(); // a protocol violation: Xen drops such clients
            return;
        }
        int rest = have - used;
        if (rest > 0)
        {
            _partial ??= ArrayPool<byte>.Shared.Rent(MaxMessage);
            scratch.AsSpan(used, rest).CopyTo(_partial);
        }
        else if (_partial is not null)
        {
            ArrayPool<byte>.Shared.Return(_partial);
            _partial = null;
        }
        _partialLen = rest;
    }

    /// <summary>Processes every complete message in the buffer; returns bytes consumed, -1 to drop.</summary>
    private int ProcessAvailable(byte[] buf, int have)
    {
        int pos = 0;
        if (have < XsdSockmsg.Size) return 0;
        lock (_engine.Lock)
        {
            while (have - pos >= XsdSockmsg.Size)
            {
                XsdSockmsg h = XsdSockmsg.Read(buf.AsSpan(pos));
                if (h.Len > XsWire.PayloadMax) return -1;
                int total = XsdSockmsg.Size + (int)h.Len;
                if (have - pos < total) break;
                _engine.ProcessLocked(this, h, buf.AsSpan(pos + XsdSockmsg.Size, (int)h.Len));
                pos += total;
                if (Closed) return -1;
            }
        }
        return pos;
    }

    public override void Send(XsType type, uint reqId, uint txId, ReadOnlySpan<byte> payload)
    {
        bool mark;
        lock (_outLock)
        {
            if (Closed) return;
            int size = XsdSockmsg.Size + payload.Length;
            int pending = _outLen - _outStart;
            if (pending + size > _engine.Quotas.MaxPendingOutputBytes)
            {
                Closed = true; // a client this far behind is stuck: drop it
                mark = !Queued;
                Queued = true;
            }
            else
            {
                Reserve(size);
                var h = new XsdSockmsg { Type = (uint)type, ReqId = reqId, TxId = txId, Len = (uint)payload.Length };
                h.Write(_out.AsSpan(_outLen));
                payload.CopyTo(_out.AsSpan(_outLen + XsdSockmsg.Size));
                _outLen += size;
                mark = !Queued;
                Queued = true;
            }
        }
        if (mark) _server.MarkDirty(this);
    }

    /// <summary>Room for <paramref name="size"/> more bytes: a pooled buffer, grown by doubling,
    /// its sent bytes moved out of the way first.</summary>
    private void Reserve(int size)
    {
        if (_out is null)
        {
            _out = ArrayPool<byte>.Shared.Rent(Math.Max(size, 4096));
            return;
        }
        if (_outLen + size <= _out.Length) return;
        int pending = _outLen - _outStart;
        byte[] target = pending + size <= _out.Length ? _out : ArrayPool<byte>.Shared.Rent(Math.Max(_out.Length * 2, pending + size));
        Buffer.BlockCopy(_out, _outStart, target, 0, pending);
        if (!ReferenceEquals(target, _out)) ArrayPool<byte>.Shared.Return(_out);
        _out = target;
        _outStart = 0;
        _outLen = pending;
    }

    /// <summary>Sends what is queued until the socket would block. I/O thread only.</summary>
    public void Flush()
    {
        lock (_outLock)
        {
            while (_outLen > _outStart)
            {
                int n = _socket.Send(_out.AsSpan(_outStart, _outLen - _outStart), SocketFlags.None, out SocketError err);
                if (err == SocketError.WouldBlock) return;
                if (err != SocketError.Success)
                {
                    Closed = true;
                    return;
                }
                _outStart += n;
            }
            if (_out is not null)
            {
                ArrayPool<byte>.Shared.Return(_out);
                _out = null;
            }
            _outStart = _outLen = 0;
        }
    }

    /// <summary>Marks the connection closed; the I/O thread forgets it.</summary>
    public void RequestClose()
    {
        bool mark;
        lock (_outLock)
        {
            Closed = true;
            mark = !Queued;
            Queued = true;
        }
        if (mark) _server.MarkDirty(this);
    }

    public override void Close() => RequestClose();

    /// <summary>Closes the socket and returns the buffers. I/O thread (or the stopped server) only.</summary>
    public void Release()
    {
        lock (_outLock)
        {
            Closed = true;
            if (_out is not null) ArrayPool<byte>.Shared.Return(_out);
            _out = null;
            _outStart = _outLen = 0;
        }
        if (_partial is not null) ArrayPool<byte>.Shared.Return(_partial);
        _partial = null;
        _partialLen = 0;
        _socket.Dispose();
    }
}

/// <summary>The few Linux calls the socket loop needs: epoll and an eventfd to wake it.</summary>
internal static partial class Epoll
{
    public const uint In = 0x001, Out = 0x004, Err = 0x008, Hup = 0x010;
    private const int CtlAdd = 1, CtlMod = 3;
    private const int CloExec = 0x80000, NonBlock = 0x800;
    private const int EINTR = 4;

    // struct epoll_event is packed on x86-64 (12 bytes) and naturally aligned elsewhere (16).
    private static readonly int Stride = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 12 : 16;
    private static readonly int DataOffset = Stride == 12 ? 4 : 8;

    public static int Create() => Check(epoll_create1(CloExec), "epoll_create1");

    public static int CreateEventFd() => Check(eventfd(0, CloExec | NonBlock), "eventfd");

    public static unsafe void Add(int epfd, int fd, uint events, ulong data) => Ctl(epfd, CtlAdd, fd, events, data);

    public static unsafe void Modify(int epfd, int fd, uint events, ulong data) => Ctl(epfd, CtlMod, fd, events, data);

    private static unsafe void Ctl(int epfd, int op, int fd, uint events, ulong data)
    {
        byte* ev = stackalloc byte[16];
        *(uint*)ev = events;
        *(ulong*)(ev + DataOffset) = data;
        Check(epoll_ctl(epfd, op, fd, ev), "epoll_ctl");
    }

    public static unsafe void SignalEventFd(int fd)
    {
        ulong one = 1;
        _ = write(fd, &one, 8); // EAGAIN only when the counter is already huge: it is signalled
    }

    public static unsafe void DrainEventFd(int fd)
    {
        ulong value;
        _ = read(fd, &value, 8);
    }

    public static void Close(int fd) => _ = close(fd);

    private static int Check(int r, string what) =>
        r >= 0 ? r : throw new IOException($"xenstored: {what} failed: errno {Marshal.GetLastPInvokeError()}");

    /// <summary>A native array of epoll_event filled by <see cref="Wait"/>; lives as long as the loop.</summary>
    public sealed unsafe class EventBuffer(int capacity)
    {
        private readonly byte[] _bytes = GC.AllocateArray<byte>(capacity * Stride, pinned: true);

        public int Wait(int epfd)
        {
            fixed (byte* p = _bytes)
            {
                int n = epoll_wait(epfd, p, capacity, -1);
                if (n >= 0) return n;
                return Marshal.GetLastPInvokeError() == EINTR ? 0 : Check(n, "epoll_wait");
            }
        }

        public uint Events(int i) => MemoryMarshal.Read<uint>(_bytes.AsSpan(i * Stride));
        public ulong Data(int i) => MemoryMarshal.Read<ulong>(_bytes.AsSpan(i * Stride + DataOffset));
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_create1(int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int epoll_ctl(int epfd, int op, int fd, byte* ev);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int epoll_wait(int epfd, byte* events, int maxEvents, int timeout);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int eventfd(uint initval, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint write(int fd, void* buf, nint count);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint read(int fd, void* buf, nint count);

    [LibraryImport("libc")]
    private static partial int close(int fd);
}
