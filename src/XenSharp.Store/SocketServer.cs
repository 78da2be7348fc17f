using System.Net.Sockets;

namespace XenSharp.Store;

/// <summary>Listens on the Unix socket (/run/xenstored/socket by default) for host clients such as
/// libxenstore's tools. Each client gets its own connection; none can hold up another.</summary>
internal sealed class SocketServer : IDisposable
{
    private readonly XenStoreEngine _engine;
    private readonly Socket _listener;
    private readonly HashSet<SocketConnection> _clients = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _acceptLoop;

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
        _acceptLoop = Task.Run(AcceptLoop);
    }

    private async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket s;
            try { s = await _listener.AcceptAsync(_stop.Token); }
            catch (OperationCanceledException) { return; }
            catch (ObjectDisposedException) { return; }
            catch (SocketException) { continue; }
            var conn = new SocketConnection(_engine, s, Remove);
            lock (_clients) _clients.Add(conn);
            conn.Start();
        }
    }

    private void Remove(SocketConnection c)
    {
        lock (_clients) _clients.Remove(c);
    }

    public int ClientCount
    {
        get { lock (_clients) return _clients.Count; }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        try { _acceptLoop.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
        SocketConnection[] all;
        lock (_clients) all = [.. _clients];
        foreach (SocketConnection c in all) c.Close();
        try { File.Delete(Path); } catch (IOException) { }
    }
}

/// <summary>
/// One socket client (dom0, privileged). A read loop parses requests straight out of its receive
/// buffer; replies and events are appended to an output buffer that a writer drains, so the store
/// lock is never held across socket I/O. A client that stops reading is dropped once its backlog
/// passes the limit; one that floods requests without reading waits until its backlog drains.
/// </summary>
internal sealed class SocketConnection : Connection
{
    private const int HighWater = 256 * 1024;

    private readonly XenStoreEngine _engine;
    private readonly Socket _socket;
    private readonly Action<SocketConnection> _onClosed;
    private readonly byte[] _in = new byte[64 * 1024];
    private readonly Lock _outLock = new();
    private byte[] _out = new byte[16 * 1024];
    private byte[] _spare = new byte[16 * 1024];
    private int _outLen;
    private bool _writing;
    private readonly SemaphoreSlim _drained = new(0);
    private volatile bool _waitingDrain;

    public SocketConnection(XenStoreEngine engine, Socket socket, Action<SocketConnection> onClosed) : base(0, privileged: true)
    {
        _engine = engine;
        _socket = socket;
        _onClosed = onClosed;
    }

    public void Start() => _ = Task.Run(ReadLoop);

    private async Task ReadLoop()
    {
        int have = 0;
        try
        {
            while (!Closed)
            {
                int n = await _socket.ReceiveAsync(_in.AsMemory(have), SocketFlags.None).ConfigureAwait(false);
                if (n == 0) break;
                have += n;
                int used = ProcessAvailable(have);
                if (used < 0) break; // protocol violation
                if (used > 0)
                {
                    Buffer.BlockCopy(_in, used, _in, 0, have - used);
                    have -= used;
                }
                while (!Closed && PendingBytes > HighWater)
                {
                    _waitingDrain = true;
                    if (PendingBytes <= HighWater) break;
                    await _drained.WaitAsync().ConfigureAwait(false);
                }
                _waitingDrain = false;
            }
        }
        catch (SocketException) { }
        catch (ObjectDisposedException) { }
        Close();
    }

    /// <summary>Processes every complete message in the buffer; returns bytes consumed, -1 to drop.</summary>
    private int ProcessAvailable(int have)
    {
        int pos = 0;
        if (have - pos < XsdSockmsg.Size) return 0;
        lock (_engine.Lock)
        {
            while (have - pos >= XsdSockmsg.Size)
            {
                XsdSockmsg h = XsdSockmsg.Read(_in.AsSpan(pos));
                if (h.Len > XsWire.PayloadMax) return -1; // Xen drops such clients
                int total = XsdSockmsg.Size + (int)h.Len;
                if (have - pos < total) break;
                _engine.ProcessLocked(this, h, _in.AsSpan(pos + XsdSockmsg.Size, (int)h.Len));
                pos += total;
                if (Closed) return -1;
            }
        }
        return pos;
    }

    private int PendingBytes
    {
        get { lock (_outLock) return _outLen; }
    }

    public override void Send(XsType type, uint reqId, uint txId, ReadOnlySpan<byte> payload)
    {
        bool startWriter = false, overflow = false;
        lock (_outLock)
        {
            if (Closed) return;
            int size = XsdSockmsg.Size + payload.Length;
            if (_outLen + size > _engine.Quotas.MaxPendingOutputBytes)
            {
                overflow = true;
            }
            else
            {
                if (_outLen + size > _out.Length)
                    Array.Resize(ref _out, Math.Max(_out.Length * 2, _outLen + size));
                var h = new XsdSockmsg { Type = (uint)type, ReqId = reqId, TxId = txId, Len = (uint)payload.Length };
                h.Write(_out.AsSpan(_outLen));
                payload.CopyTo(_out.AsSpan(_outLen + XsdSockmsg.Size));
                _outLen += size;
                if (!_writing) { _writing = true; startWriter = true; }
            }
        }
        if (overflow) { CloseLocked(); return; }
        if (startWriter) _ = Task.Run(WriteLoop);
    }

    private async Task WriteLoop()
    {
        try
        {
            while (true)
            {
                byte[] buf;
                int len;
                lock (_outLock)
                {
                    if (_outLen == 0 || Closed) { _writing = false; break; }
                    buf = _out;
                    len = _outLen;
                    _out = _spare;
                    _spare = buf;
                    _outLen = 0;
                }
                int off = 0;
                while (off < len)
                    off += await _socket.SendAsync(buf.AsMemory(off, len - off), SocketFlags.None).ConfigureAwait(false);
                if (_waitingDrain) _drained.Release();
            }
        }
        catch (SocketException) { Close(); }
        catch (ObjectDisposedException) { Close(); }
        if (_waitingDrain) _drained.Release();
    }

    // Called with the store lock held: just mark and tear down the socket; the read loop finishes up.
    private void CloseLocked()
    {
        Closed = true;
        try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        _socket.Dispose();
        if (_waitingDrain) _drained.Release();
    }

    public override void Close()
    {
        lock (_outLock)
        {
            if (_forgotten) return;
            _forgotten = true;
        }
        CloseLocked();
        _engine.Disconnect(this);
        _onClosed(this);
    }

    private bool _forgotten;
}
