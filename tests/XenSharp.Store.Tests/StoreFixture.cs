using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using XenSharp.Store;

namespace XenSharp.Store.Tests;

/// <summary>A daemon on a private socket path, torn down after the test.</summary>
public sealed class TempDaemon : IDisposable
{
    public readonly XenStored Daemon;
    public readonly string Dir;
    public readonly string SocketPath;

    public TempDaemon(XenStoreQuotas? quotas = null)
    {
        Dir = Path.Combine(Path.GetTempPath(), "xs-test-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Dir);
        SocketPath = Path.Combine(Dir, "socket");
        Daemon = new XenStored(quotas);
        Daemon.Start(SocketPath);
    }

    private readonly List<TestRing> _rings = new();
    private readonly Dictionary<uint, TestRing> _ringOf = new();

    public TestRing RingOf(uint domId) => _ringOf[domId];

    public XsTestClient Connect() => new(SocketPath);

    /// <summary>Introduces a guest domain with a ring in native memory and returns its client side.</summary>
    public GuestClient Guest(uint domId)
    {
        var ring = new TestRing();
        _rings.Add(ring);
        _ringOf[domId] = ring;
        XenStoreDomain dom = Daemon.Introduce(domId, ring);
        return new GuestClient(ring, dom);
    }

    public TestRing NewRing()
    {
        var ring = new TestRing();
        _rings.Add(ring);
        return ring;
    }

    /// <summary>Runs one of Debian's xenstore-* tools (or a program by its full path) against this daemon.</summary>
    public (int Exit, string Out, string Err) Tool(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool.StartsWith('/') ? tool : "/usr/bin/" + tool)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.Environment["XENSTORED_PATH"] = SocketPath;
        using var p = Process.Start(psi)!;
        Task<string> o = p.StandardOutput.ReadToEndAsync();
        Task<string> e = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(30_000))
        {
            p.Kill();
            throw new TimeoutException($"{tool} did not finish");
        }
        return (p.ExitCode, o.Result, e.Result);
    }

    public Process StartTool(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo("/usr/bin/" + tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args) psi.ArgumentList.Add(a);
        psi.Environment["XENSTORED_PATH"] = SocketPath;
        return Process.Start(psi)!;
    }

    public void Dispose()
    {
        Daemon.Dispose();
        // Rings outlive the daemon: released domains never touch their page again.
        foreach (TestRing r in _rings) r.Dispose();
        try { Directory.Delete(Dir, true); } catch (IOException) { }
    }
}

/// <summary>A raw xs_wire client over the socket, as libxenstore would speak it.</summary>
public sealed class XsTestClient : IDisposable
{
    private readonly Socket _s;
    private uint _reqId;
    public readonly Queue<(string Path, string Token)> Events = new();

    public XsTestClient(string path)
    {
        _s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _s.Connect(new UnixDomainSocketEndPoint(path));
        _s.ReceiveTimeout = 10_000;
    }

    public Socket Socket => _s;

    public static byte[] Msg(XsType type, uint reqId, uint txId, byte[] payload)
    {
        var b = new byte[16 + payload.Length];
        BitConverter.TryWriteBytes(b.AsSpan(0), (uint)type);
        BitConverter.TryWriteBytes(b.AsSpan(4), reqId);
        BitConverter.TryWriteBytes(b.AsSpan(8), txId);
        BitConverter.TryWriteBytes(b.AsSpan(12), (uint)payload.Length);
        payload.CopyTo(b, 16);
        return b;
    }

    public static byte[] Args(params string[] args) => Encoding.ASCII.GetBytes(string.Concat(args.Select(a => a + "\0")));

    public void SendRaw(byte[] bytes) => _s.Send(bytes);

    /// <summary>Sends a request and returns the reply (type, payload); watch events seen meanwhile are queued.</summary>
    public (XsType Type, byte[] Payload) Request(XsType type, byte[] payload, uint txId = 0)
    {
        uint id = ++_reqId;
        _s.Send(Msg(type, id, txId, payload));
        while (true)
        {
            var (t, rid, p) = ReadMessage();
            if (t == XsType.WatchEvent) { QueueEvent(p); continue; }
            Assert.Equal(id, rid);
            return (t, p);
        }
    }

    private void QueueEvent(byte[] p)
    {
        string[] parts = Encoding.ASCII.GetString(p).Split('\0');
        Events.Enqueue((parts[0], parts[1]));
    }

    public (string Path, string Token) NextEvent()
    {
        if (Events.Count > 0) return Events.Dequeue();
        var (t, _, p) = ReadMessage();
        Assert.Equal(XsType.WatchEvent, t);
        QueueEvent(p);
        return Events.Dequeue();
    }

    public (XsType Type, uint ReqId, byte[] Payload) ReadMessage()
    {
        byte[] h = ReadExactly(16);
        var type = (XsType)BitConverter.ToUInt32(h, 0);
        uint rid = BitConverter.ToUInt32(h, 4);
        int len = (int)BitConverter.ToUInt32(h, 12);
        return (type, rid, ReadExactly(len));
    }

    private byte[] ReadExactly(int n)
    {
        var b = new byte[n];
        int got = 0;
        while (got < n)
        {
            int r = _s.Receive(b, got, n - got, SocketFlags.None);
            if (r == 0) throw new EndOfStreamException("daemon closed the connection");
            got += r;
        }
        return b;
    }

    // Conveniences returning the reply as text, or "ERR:<name>".
    public string Call(XsType type, params string[] args) => Text(Request(type, Args(args)));
    public string CallTx(uint tx, XsType type, params string[] args) => Text(Request(type, Args(args), tx));

    public string Write(string path, string value, uint tx = 0) =>
        Text(Request(XsType.Write, [.. Encoding.ASCII.GetBytes(path + "\0"), .. Encoding.ASCII.GetBytes(value)], tx));

    public static string Text((XsType Type, byte[] Payload) r) =>
        r.Type == XsType.Error ? "ERR:" + Encoding.ASCII.GetString(r.Payload).TrimEnd('\0') : Encoding.ASCII.GetString(r.Payload);

    public void Dispose() => _s.Dispose();
}
