using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace XenSharp.Toolstack.Control;

/// <summary>
/// Newline-framed JSON over a socket stream, read in chunks. Bytes read past a line stay in the
/// channel's buffer and <see cref="Stream"/> hands them out first, so that once a console is
/// attached the rest of the connection belongs to the console untouched.
/// </summary>
public sealed class LineChannel : IDisposable
{
    /// <summary>
    /// The longest request the daemon reads. The largest request is xl create carrying its xl.cfg
    /// (a few KiB even for a large domain); 1 MiB leaves two orders of magnitude of room while a
    /// client that never sends a newline costs the daemon at most this much.
    /// </summary>
    public const int MaxRequestLine = 1 << 20;

    /// <summary>The longest response xl reads: xl list -l of many domains, each with its
    /// configuration in JSON, is far longer than any request.</summary>
    public const int MaxResponseLine = 16 << 20;

    private const int ChunkSize = 4096;

    private readonly Stream _inner;
    private readonly int _maxLine;
    private byte[] _buf = new byte[ChunkSize];
    private int _start, _end;

    public LineChannel(Stream stream, int maxLine = MaxRequestLine)
    {
        _inner = stream;
        _maxLine = maxLine;
        Stream = new ChannelStream(this);
    }

    /// <summary>The connection after the lines read so far: buffered bytes first, then the socket.</summary>
    public Stream Stream { get; }

    /// <summary>The next line as text, or null at a clean end of the connection.</summary>
    public async Task<string?> ReadLineAsync(CancellationToken ct = default)
    {
        ReadOnlyMemory<byte>? line = await ReadLineBytesAsync(ct).ConfigureAwait(false);
        return line is { } l ? Encoding.UTF8.GetString(l.Span) : null;
    }

    /// <summary>
    /// The next line without its newline, valid until the next read; null at a clean end of the
    /// connection. A line longer than the channel's limit throws <see cref="LineTooLongException"/>.
    /// </summary>
    public async ValueTask<ReadOnlyMemory<byte>?> ReadLineBytesAsync(CancellationToken ct = default)
    {
        int scanned = 0; // bytes after _start already known to hold no newline
        while (true)
        {
            int nl = Array.IndexOf(_buf, (byte)'\n', _start + scanned, _end - _start - scanned);
            if (nl >= 0)
            {
                if (nl - _start > _maxLine) throw new LineTooLongException(_maxLine);
                var line = new ReadOnlyMemory<byte>(_buf, _start, nl - _start);
                _start = nl + 1;
                return line;
            }
            scanned = _end - _start;
            if (scanned > _maxLine) throw new LineTooLongException(_maxLine);
            MakeRoom();
            int n = await _inner.ReadAsync(_buf.AsMemory(_end), ct).ConfigureAwait(false);
            if (n == 0)
            {
                if (_end == _start) return null;
                throw new IOException("connection closed in the middle of a message");
            }
            _end += n;
        }
    }

    /// <summary>Ensures a chunk of free space after the data: moves the data to the front, and
    /// grows the buffer only for a line that is longer than it (never past the limit plus a chunk).</summary>
    private void MakeRoom()
    {
        int have = _end - _start;
        if (_start == _end) _start = _end = 0;
        if (_buf.Length - _end >= ChunkSize / 4) return;
        if (_buf.Length - have < ChunkSize / 4)
        {
            var bigger = new byte[Math.Min(_buf.Length * 2, _maxLine + ChunkSize)];
            Buffer.BlockCopy(_buf, _start, bigger, 0, have);
            _buf = bigger;
        }
        else Buffer.BlockCopy(_buf, _start, _buf, 0, have);
        _start = 0;
        _end = have;
    }

    /// <summary>Bytes already read past the last line, handed out before the socket's.</summary>
    private int ReadBuffered(Span<byte> destination)
    {
        int n = Math.Min(destination.Length, _end - _start);
        _buf.AsSpan(_start, n).CopyTo(destination);
        _start += n;
        return n;
    }

    public async Task WriteAsync<T>(T message, CancellationToken ct = default)
    {
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(message, ControlJson.Options);
        var line = new byte[json.Length + 1];
        json.CopyTo(line, 0);
        line[^1] = (byte)'\n';
        await _inner.WriteAsync(line, ct).ConfigureAwait(false);
        await _inner.FlushAsync(ct).ConfigureAwait(false);
    }

    public void Dispose() => _inner.Dispose();

    /// <summary>The connection as a stream: reads drain the channel's buffer, then go to the socket.</summary>
    private sealed class ChannelStream(LineChannel channel) : Stream
    {
        public override bool CanRead => true;
        public override bool CanWrite => true;
        public override bool CanSeek => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer) =>
            channel._start < channel._end ? channel.ReadBuffered(buffer) : channel._inner.Read(buffer);

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken ct) =>
            ReadAsync(buffer.AsMemory(offset, count), ct).AsTask();

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default) =>
            channel._start < channel._end ? ValueTask.FromResult(channel.ReadBuffered(buffer.Span)) : channel._inner.ReadAsync(buffer, ct);

        public override void Write(byte[] buffer, int offset, int count) => channel._inner.Write(buffer, offset, count);
        public override void Write(ReadOnlySpan<byte> buffer) => channel._inner.Write(buffer);
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken ct) => channel._inner.WriteAsync(buffer, offset, count, ct);
        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default) => channel._inner.WriteAsync(buffer, ct);
        public override void Flush() => channel._inner.Flush();
        public override Task FlushAsync(CancellationToken ct) => channel._inner.FlushAsync(ct);
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing) channel._inner.Dispose();
            base.Dispose(disposing);
        }
    }
}

/// <summary>A peer sent a line longer than the channel accepts.</summary>
public sealed class LineTooLongException(int limit) : IOException($"control message longer than {limit} bytes")
{
    public int Limit { get; } = limit;
}

/// <summary>xl's side of the control socket.</summary>
public sealed class ControlClient : IDisposable
{
    private readonly Socket _socket;
    private readonly LineChannel _channel;

    private ControlClient(Socket socket)
    {
        _socket = socket;
        _channel = new LineChannel(new NetworkStream(socket, ownsSocket: true), LineChannel.MaxResponseLine);
    }

    /// <summary>Connects, or returns null when no daemon listens at <paramref name="socketPath"/>.</summary>
    public static ControlClient? TryConnect(string socketPath)
    {
        if (!File.Exists(socketPath)) return null;
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Connect(new UnixDomainSocketEndPoint(socketPath));
            return new ControlClient(s);
        }
        catch (SocketException)
        {
            s.Dispose();
            return null;
        }
    }

    public Stream Stream => _channel.Stream;

    /// <summary>Ends what xl sends while it still reads the daemon's answers (xl migrate-receive -r: the stream has
    /// ended).</summary>
    public void ShutdownSend()
    {
        try { _socket.Shutdown(SocketShutdown.Send); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    public TResult Send<TResult>(ControlRequest<TResult> request) => SendAsync(request).GetAwaiter().GetResult();

    public async Task<TResult> SendAsync<TResult>(ControlRequest<TResult> request, CancellationToken ct = default)
    {
        await _channel.WriteAsync<ControlRequest>(request, ct).ConfigureAwait(false);
        string line = await _channel.ReadLineAsync(ct).ConfigureAwait(false)
            ?? throw new ControlException("xensharpd closed the connection");
        var response = JsonSerializer.Deserialize<ControlResponse>(line, ControlJson.Options)
            ?? throw new ControlException("xensharpd sent an empty response");
        if (!response.Ok) throw new ControlException(response.Error ?? "unknown error", response.Errno);
        if (response.Result is not { } r) return default!;
        return r.Deserialize<TResult>(ControlJson.Options)!;
    }

    public void Dispose() => _channel.Dispose();
}
