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
    private readonly Thread _acceptLoop;

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
        _acceptLoop = new Thread(AcceptLoop) { IsBackground = true, Name = "xenstored accept" };
        _acceptLoop.Start();
    }

    private void AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket s;
            try { s = _listener.Accept(); }
            catch (ObjectDisposedException) { return; }
            catch (SocketException) when (!_stop.IsCancellationRequested) { continue; }
            catch (SocketException) { return; }
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
        try { _listener.Shutdown(SocketShutdown.Both); } catch (SocketException) { }
        _listener.Dispose();
        _acceptLoop.Join(TimeSpan.FromSeconds(5));
        SocketConnection[] all;
        lock (_clients) all = [.. _clients];
        foreach (SocketConnection c in all) c.Close();
        try { File.Delete(Path); } catch (IOException) { }
    }
}

/// <summary>
/// One socket client (dom0, privileged). Its own reader thread parses requests straight out of the
/// receive buffer and, after each batch, sends the replies queued in its output buffer; watch
/// events that arrive while it waits go out through a writer thread started on first need. The
/// store lock is never held across socket I/O, and no client depends on another's
/// progress or on the thread pool. A client that stops reading is dropped once its backlog passes
/// the limit; one that floods requests without reading waits until its backlog drains.
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
    private readonly AutoResetEvent _outReady = new(false);
    private bool _sending, _inBatch, _writerStarted;
    private readonly AutoResetEvent _drained = new(false);
    private bool _forgotten;

    public SocketConnection(XenStoreEngine engine, Socket socket, Action<SocketConnection> onClosed) : base(0, privileged: true)
    {
        _engine = engine;
        _socket = socket;
        _onClosed = onClosed;
    }

    public void Start() => new Thread(ReadLoop) { IsBackground = true, Name = "xenstored client" }.Start();

    private void ReadLoop()
    {
        int have = 0;
        try
        {
            while (!Closed)
            {
                int n = _socket.Receive(_in, have, _in.Length - have, SocketFlags.None);
                if (n == 0) break;
                have += n;
                lock (_outLock) _inBatch = true;
                int used = ProcessAvailable(have);
                lock (_outLock) _inBatch = false;
                if (used < 0) break; // protocol violation
                Drain();
                if (used > 0)
                {
                    Buffer.BlockCopy(_in, used, _in, 0, have - used);
                    have -= used;
                }
                while (!Closed && PendingBytes > HighWater)
                    _drained.WaitOne(1000);
            }
        }
        catch (SocketException) { }
        catch (ObjectDisposedException) { }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            Console.Error.WriteLine($"xenstored: dropping a client after an internal error: {ex}");
        }
        Close();
    }

    /// <summary>Processes every complete message in the buffer; returns bytes consumed, -1 to drop.</summary>
    private int ProcessAvailable(int have)
    {
        int pos = 0;
        if (have < XsdSockmsg.Size) return 0;
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
        bool wake;
        lock (_outLock)
        {
            if (Closed) return;
            int size = XsdSockmsg.Size + payload.Length;
            if (_outLen + size > _engine.Quotas.MaxPendingOutputBytes)
            {
                Shutdown(); // a client this far behind is stuck: drop it
                return;
            }
            if (_outLen + size > _out.Length)
                Array.Resize(ref _out, Math.Max(_out.Length * 2, _outLen + size));
            var h = new XsdSockmsg { Type = (uint)type, ReqId = reqId, TxId = txId, Len = (uint)payload.Length };
            h.Write(_out.AsSpan(_outLen));
            payload.CopyTo(_out.AsSpan(_outLen + XsdSockmsg.Size));
            _outLen += size;
            // Replies to this client's own requests are sent by its reader right after the batch;
            // the writer thread is only woken for events that arrive while the reader waits.
            wake = !_sending && !_inBatch;
            // Short-lived clients (most xenstore-* tools) never need the writer thread.
            if (wake && !_writerStarted)
            {
                _writerStarted = true;
                new Thread(WriteLoop) { IsBackground = true, Name = "xenstored client out" }.Start();
            }
        }
        if (wake) _outReady.Set();
    }

    /// <summary>Sends whatever is queued unless another thread is already sending (it will pick
    /// up what was added meanwhile). Never called with the store lock held.</summary>
    private void Drain()
    {
        while (true)
        {
            byte[] buf;
            int len;
            lock (_outLock)
            {
                if (_sending || _outLen == 0 || Closed) return;
                buf = _out;
                len = _outLen;
                _out = _spare;
                _spare = buf;
                _outLen = 0;
                _sending = true;
            }
            try
            {
                int off = 0;
                while (off < len)
                    off += _socket.Send(buf, off, len - off, SocketFlags.None);
            }
            finally
            {
                lock (_outLock) _sending = false;
                _drained.Set();
            }
        }
    }

    private void WriteLoop()
    {
        try
        {
            while (!Closed)
            {
                _outReady.WaitOne();
                Drain();
            }
        }
        catch (SocketException) { Close(); }
        catch (ObjectDisposedException) { Close(); }
        _drained.Set();
    }

    // Marks the connection closed and tears down the socket, which ends both threads.
    private void Shutdown()
    {
        Closed = true;
        try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        _socket.Dispose();
        _outReady.Set();
        _drained.Set();
    }

    public override void Close()
    {
        lock (_outLock)
        {
            if (_forgotten) return;
            _forgotten = true;
            Shutdown();
        }
        _engine.Disconnect(this);
        _onClosed(this);
    }
}
