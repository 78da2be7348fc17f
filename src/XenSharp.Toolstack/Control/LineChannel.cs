using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace XenSharp.Toolstack.Control;

/// <summary>
/// Newline-framed JSON over a socket stream. Lines are read without read-ahead, so that once a
/// console is attached the rest of the stream belongs to the console untouched.
/// </summary>
public sealed class LineChannel(Stream stream) : IDisposable
{
    /// <summary>Control messages are small; a longer line is a broken peer.</summary>
    public const int MaxLine = 16 << 20;

    public Stream Stream { get; } = stream;

    public async Task<string?> ReadLineAsync(CancellationToken ct = default)
    {
        var buf = new MemoryStream();
        var one = new byte[1];
        while (true)
        {
            int n = await Stream.ReadAsync(one, ct).ConfigureAwait(false);
            if (n == 0) return buf.Length == 0 ? null : throw new IOException("connection closed in the middle of a message");
            if (one[0] == (byte)'\n') return Encoding.UTF8.GetString(buf.GetBuffer(), 0, (int)buf.Length);
            if (buf.Length >= MaxLine) throw new IOException("control message too long");
            buf.WriteByte(one[0]);
        }
    }

    public async Task WriteAsync<T>(T message, CancellationToken ct = default)
    {
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(message, ControlJson.Options);
        var line = new byte[json.Length + 1];
        json.CopyTo(line, 0);
        line[^1] = (byte)'\n';
        await Stream.WriteAsync(line, ct).ConfigureAwait(false);
        await Stream.FlushAsync(ct).ConfigureAwait(false);
    }

    public void Dispose() => Stream.Dispose();
}

/// <summary>xl's side of the control socket.</summary>
public sealed class ControlClient : IDisposable
{
    private readonly Socket _socket;
    private readonly LineChannel _channel;

    private ControlClient(Socket socket)
    {
        _socket = socket;
        _channel = new LineChannel(new NetworkStream(socket, ownsSocket: true));
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
