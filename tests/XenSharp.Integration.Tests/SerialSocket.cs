using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace XenSharp.Integration.Tests;

/// <summary>
/// An HVM guest's serial port as QEMU serves it on a Unix socket (xl.cfg <c>serial = "unix:PATH,server=on,wait=off"</c>):
/// what the guest writes is kept, and command lines are typed at its shell. Connect right after <c>xl create</c>; QEMU
/// drops what the guest writes while no client is connected.
/// </summary>
internal sealed class SerialSocket : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly OutputLog _out = new();
    private volatile bool _closed;

    public SerialSocket(string path, TimeSpan limit)
    {
        Assert.True(XlHost.WaitUntil(() =>
        {
            try
            {
                _socket.Connect(new UnixDomainSocketEndPoint(path));
                return true;
            }
            catch (SocketException) { return false; }
        }, limit), $"QEMU's serial socket {path} did not accept a connection");
        new Thread(Pump) { IsBackground = true, Name = "serial" }.Start();
    }

    private void Pump()
    {
        var buf = new byte[4096];
        try
        {
            int n;
            while ((n = _socket.Receive(buf)) > 0)
                _out.Append(Encoding.UTF8.GetString(buf, 0, n));
        }
        catch (SocketException) { }
        catch (ObjectDisposedException) { }
        _closed = true;
        _out.Pulse();
    }

    /// <summary>Everything the guest wrote so far.</summary>
    public string Text => _out.Text;

    public string WaitFor(string text, TimeSpan limit)
    {
        string? got = _out.TryWaitFor(text, limit, () => _closed);
        if (got is null)
            Assert.Fail($"\"{text}\" did not appear on the serial port within {limit}; output:\n{_out.Tail()}");
        return got;
    }

    /// <summary>Types a command line and waits for <paramref name="expect"/>, typing it once more if the shell swallowed
    /// it while asking the terminal for its cursor position.</summary>
    public string Ask(string command, string expect, TimeSpan? limit = null)
    {
        Thread.Sleep(1000);
        for (int attempt = 0; ; attempt++)
        {
            Send(command + "\r");
            try { return WaitFor(expect, limit ?? TimeSpan.FromSeconds(attempt == 0 ? 60 : 120)); }
            catch (Xunit.Sdk.FailException) when (attempt == 0) { Send("\u0015"); }
        }
    }

    public void Send(string keys) => _socket.Send(Encoding.UTF8.GetBytes(keys));

    public void Dispose()
    {
        _closed = true;
        _socket.Dispose();
    }
}

/// <summary>A QMP client of an HVM domain's QEMU, on the socket libxl gives it (<c>qmp-libxl-DOMID</c>).</summary>
internal sealed class QmpClient : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly StreamReader _reader;
    private readonly NetworkStream _stream;

    public QmpClient(string path)
    {
        _socket.Connect(new UnixDomainSocketEndPoint(path));
        _stream = new NetworkStream(_socket, ownsSocket: false);
        _reader = new StreamReader(_stream, Encoding.UTF8);
        Assert.Contains("\"QMP\"", _reader.ReadLine() ?? "");
        Execute("qmp_capabilities");
    }

    /// <summary>Runs a command and returns its "return" value; events in between are skipped.</summary>
    public JsonNode? Execute(string command)
    {
        byte[] line = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new { execute = command }) + "\n");
        _stream.Write(line);
        while (true)
        {
            var reply = JsonNode.Parse(_reader.ReadLine() ?? throw new IOException("QMP closed the connection"))!;
            if (reply["error"] is { } error)
                throw new InvalidOperationException($"QMP {command}: {error.ToJsonString()}");
            if (reply.AsObject().TryGetPropertyValue("return", out var value))
                return value;
        }
    }

    public void Dispose()
    {
        _reader.Dispose();
        _stream.Dispose();
        _socket.Dispose();
    }
}
