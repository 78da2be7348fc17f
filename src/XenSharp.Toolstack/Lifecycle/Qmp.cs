using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// A QEMU Machine Protocol client on a device model's QMP socket, as libxl's libxl_qmp talks to it: the greeting,
/// <c>qmp_capabilities</c>, then one command at a time, each answered by a <c>return</c> or an <c>error</c>
/// (asynchronous events in between are skipped). QEMU serves one client at a time on the socket.
/// </summary>
public sealed class Qmp : IDisposable
{
    private readonly Socket _socket;
    private readonly StreamReader _reader;
    private readonly NetworkStream _stream;

    private Qmp(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        _reader = new StreamReader(_stream, Encoding.UTF8);
    }

    /// <summary>Connects to <paramref name="path"/> and negotiates capabilities; a QEMU that does not answer within
    /// <paramref name="timeout"/> fails with <see cref="ControlException"/>.</summary>
    public static Qmp Connect(string path, TimeSpan timeout)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
        {
            ReceiveTimeout = (int)timeout.TotalMilliseconds,
            SendTimeout = (int)timeout.TotalMilliseconds,
        };
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(path));
            var qmp = new Qmp(socket);
            if (qmp.ReadMessage() is not { } greeting || greeting["QMP"] is null)
                throw new ControlException($"QMP {path}: no greeting");
            qmp.Execute("qmp_capabilities");
            return qmp;
        }
        catch (Exception e) when (e is SocketException or IOException)
        {
            socket.Dispose();
            throw new ControlException($"QMP {path}: {e.Message}");
        }
    }

    /// <summary>Runs <paramref name="command"/> and returns its <c>return</c> value; QEMU's error fails with its class
    /// and description.</summary>
    public JsonNode? Execute(string command, JsonObject? arguments = null)
    {
        var request = new JsonObject { ["execute"] = command };
        if (arguments is not null) request["arguments"] = arguments;
        byte[] bytes = Encoding.UTF8.GetBytes(request.ToJsonString() + "\n");
        try
        {
            _stream.Write(bytes);
            while (ReadMessage() is { } reply)
            {
                if (reply["event"] is not null) continue;
                if (reply["error"] is { } error)
                    throw new ControlException($"QMP {command}: {error["class"]}: {error["desc"]}");
                return reply["return"];
            }
        }
        catch (Exception e) when (e is SocketException or IOException)
        {
            throw new ControlException($"QMP {command}: {e.Message}");
        }
        throw new ControlException($"QMP {command}: QEMU closed the connection");
    }

    private JsonObject? ReadMessage()
    {
        string? line = _reader.ReadLine();
        if (line is null) return null;
        try { return JsonNode.Parse(line) as JsonObject ?? throw new ControlException("QMP: a reply that is not an object"); }
        catch (JsonException e) { throw new ControlException($"QMP: unreadable reply: {e.Message}"); }
    }

    public void Dispose()
    {
        _reader.Dispose();
        _stream.Dispose();
        _socket.Dispose();
    }
}
