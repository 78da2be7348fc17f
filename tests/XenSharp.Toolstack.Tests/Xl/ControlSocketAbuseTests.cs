using System.Net.Sockets;
using System.Text;

namespace XenSharp.Toolstack.Tests.Xl;

/// <summary>Clients that misbehave on the control socket are dropped alone: xl keeps working.</summary>
[Collection("xl")]
public sealed class ControlSocketAbuseTests(XlSession s)
{
    private Socket Connect()
    {
        var sock = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        sock.Connect(new UnixDomainSocketEndPoint(Path.Combine(s.RunDir, "xl.sock")));
        return sock;
    }

    /// <summary>Reads until the daemon closes the connection (what it answered, if anything).</summary>
    private static string ReadToEnd(Socket sock)
    {
        var all = new MemoryStream();
        var buf = new byte[4096];
        try
        {
            int n;
            while ((n = sock.Receive(buf)) > 0) all.Write(buf, 0, n);
        }
        catch (SocketException) { } // reset after the answer: what was answered is already in
        return Encoding.UTF8.GetString(all.ToArray());
    }

    [Fact]
    public void OversizedGarbageAndStalledRequestsDropOnlyTheirSenders()
    {
        Assert.Equal(0, s.Xl("list").Code); // the daemon runs
        int pid = s.DaemonPid!.Value;

        // Half a request, then silence, from many clients at once.
        var stalled = Enumerable.Range(0, 50).Select(_ => Connect()).ToList();
        foreach (var c in stalled) c.Send("{\"op\":\"li"u8);

        // A line with no end: the daemon stops at its limit and says why.
        using var huge = Connect();
        var flood = Task.Run(() =>
        {
            var chunk = new byte[64 * 1024];
            Array.Fill(chunk, (byte)'x');
            try { for (int i = 0; i < 64; i++) huge.Send(chunk); } // 4 MiB
            catch (SocketException) { } // the daemon hung up: expected
        });
        string answer = ReadToEnd(huge);
        flood.Wait();
        Assert.Contains("\"ok\":false", answer);
        Assert.Contains("longer than 1048576 bytes", answer);

        // Binary garbage with a newline: malformed, dropped.
        using var garbage = Connect();
        garbage.Send([0xff, 0x00, 0x13, 0x37, (byte)'\n']);
        Assert.Contains("malformed request", ReadToEnd(garbage));

        // Everyone else is served while the stalled clients still hold their connections.
        var (code, o, err) = s.Xl("list");
        Assert.True(code == 0, err);
        Assert.Contains("Domain-0", o);
        Assert.Equal(pid, s.DaemonPid);
        foreach (var c in stalled) c.Dispose();
        Assert.Equal(0, s.Xl("list").Code);
    }
}
