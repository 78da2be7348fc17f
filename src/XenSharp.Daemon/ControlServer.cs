using System.Net.Sockets;
using System.Text.Json;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;

namespace XenSharp.Daemon;

/// <summary>
/// The control socket: accepts xl's connections and answers one request per line; a client that
/// sends something unreadable or longer than <see cref="LineChannel.MaxRequestLine"/> is told so
/// and dropped, without disturbing anything else. Each connection is served asynchronously, so a
/// client that sends nothing (or half a line) holds no thread.
/// </summary>
internal sealed class ControlServer : IDisposable
{
    private readonly Socket _listener;
    private readonly Host _host;
    private readonly string _path;
    private readonly CancellationTokenSource _cts = new();
    private readonly Task _accept;
    private const int EMSGSIZE = 90, ENOSYS = 38;

    public ControlServer(string path, Host host)
    {
        _path = path;
        _host = host;
        if (File.Exists(path)) File.Delete(path);
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(path));
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        _listener.Listen(64);
        _accept = Task.Run(AcceptLoop);
    }

    private async Task AcceptLoop()
    {
        while (!_cts.IsCancellationRequested)
        {
            Socket s;
            try { s = await _listener.AcceptAsync(_cts.Token); }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { return; }
            _ = Task.Run(() => Serve(s));
        }
    }

    private async Task Serve(Socket s)
    {
        using var channel = new LineChannel(new NetworkStream(s, ownsSocket: true), LineChannel.MaxRequestLine);
        try
        {
            while (!_cts.IsCancellationRequested)
            {
                ReadOnlyMemory<byte>? line;
                try { line = await channel.ReadLineBytesAsync(_cts.Token); }
                catch (LineTooLongException e)
                {
                    // Whatever follows is not worth reading: answer and hang up.
                    await channel.WriteAsync(ControlResponse.Failure($"xensharpd: {e.Message}", EMSGSIZE), _cts.Token);
                    return;
                }
                if (line is not { } bytes) return;
                ControlRequest? request;
                try { request = ControlJson.ReadRequest(bytes.Span); }
                catch (UnknownRequestException e)
                {
                    // Well framed, so the connection can go on: this request alone is refused.
                    await channel.WriteAsync(ControlResponse.Failure($"xensharpd: {e.Message}", ENOSYS), _cts.Token);
                    continue;
                }
                catch (JsonException e)
                {
                    await channel.WriteAsync(ControlResponse.Failure($"xensharpd: malformed request: {e.Message}", 22), _cts.Token);
                    return;
                }
                if (request is null)
                {
                    await channel.WriteAsync(ControlResponse.Failure("xensharpd: empty request", 22), _cts.Token);
                    return;
                }
                var response = _host.Handle(request);
                await channel.WriteAsync(response, _cts.Token);
                if (request is StopDaemonRequest && response.Ok)
                {
                    _host.RequestStop();
                    return;
                }
                if (request is MigrateSendRequest send && response.Ok)
                {
                    var source = response.Result!.Value.Deserialize<MigrateSendResult>(ControlJson.Options)!;
                    await Task.Run(() => _host.RunMigrateSend(send, source.DomId, channel.Stream, PeerPid(s)));
                    return;
                }
                if (request is MigrateReceiveRequest receive && response.Ok)
                {
                    await Task.Run(() => _host.RunMigrateReceive(receive, channel.Stream, PeerPid(s)));
                    return;
                }
                if (request is ConsoleAttachRequest attach && response.Ok)
                {
                    var target = response.Result!.Value.Deserialize<ConsoleAttachResult>(ControlJson.Options)!;
                    await _host.RunConsoleAsync(target.DomId, channel.Stream, attach.Unpause, _cts.Token);
                    return;
                }
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException or SocketException) { }
    }

    /// <summary>The process at the other end of a connection (SO_PEERCRED), or 0 when the kernel does not say.</summary>
    private static int PeerPid(Socket s)
    {
        const int SOL_SOCKET = 1, SO_PEERCRED = 17;
        Span<byte> cred = stackalloc byte[12]; // struct ucred: pid, uid, gid
        try
        {
            return s.GetRawSocketOption(SOL_SOCKET, SO_PEERCRED, cred) == cred.Length ? BitConverter.ToInt32(cred) : 0;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { return 0; }
    }

    public void Dispose()
    {
        _cts.Cancel();
        _listener.Dispose();
        try { _accept.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
        try { File.Delete(_path); } catch (IOException) { }
    }
}
