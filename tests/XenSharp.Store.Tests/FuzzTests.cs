using static XenSharp.Tests.FuzzSeeds;
using System.Net.Sockets;
using System.Text;
using XenSharp.Store;

namespace XenSharp.Store.Tests;

/// <summary>
/// Seeded random traffic at the socket and ring protocols. Every message gets an error or a reply,
/// or (oversized) the connection closed; the daemon keeps serving a well-behaved client throughout
/// and loses none of its nodes.
/// </summary>
[Trait("Feature", "Toolstack")]
public class FuzzTests
{
    private static readonly string[] Names = ["fz", "a", "b", "device", "vif", "0", "state", "x-y", "@introduceDomain", "data", "_q"];
    private static readonly string[] Words = ["T", "F", "r5", "n0", "b1", "w7", "x9", "0", "1", "65535", "4294967295", "-1", "check", "quota", "print", "", "OK"];

    private static string RandomPath(Random r)
    {
        var sb = new StringBuilder();
        if (r.Next(4) != 0) sb.Append('/');
        int n = r.Next(0, 5);
        for (int i = 0; i < n; i++)
        {
            if (i > 0) sb.Append('/');
            sb.Append(Names[r.Next(Names.Length)]);
        }
        if (r.Next(20) == 0) sb.Append("//");
        if (r.Next(20) == 0) sb.Append(" \u0001");
        return sb.ToString();
    }

    private static byte[] RandomPayload(Random r)
    {
        var b = new List<byte>();
        int parts = r.Next(0, 5);
        for (int i = 0; i < parts; i++)
        {
            switch (r.Next(4))
            {
                case 0: b.AddRange(Encoding.ASCII.GetBytes(RandomPath(r))); break;
                case 1: b.AddRange(Encoding.ASCII.GetBytes(Words[r.Next(Words.Length)])); break;
                case 2:
                    var junk = new byte[r.Next(0, r.Next(10) == 0 ? 4000 : 40)];
                    r.NextBytes(junk);
                    b.AddRange(junk);
                    break;
                case 3: break;
            }
            if (r.Next(5) != 0) b.Add(0);
        }
        if (b.Count > 4096) b.RemoveRange(4096, b.Count - 4096);
        return b.ToArray();
    }

    private static uint RandomType(Random r) =>
        r.Next(10) < 8 ? (uint)r.Next(0, 24) : (uint)r.Next();

    [Fact]
    public void SocketFuzzKeepsServingAWellBehavedClient() => WithSeeds(0x5eed_0001, SocketFuzz);

    private static void SocketFuzz(int seed)
    {
        var r = new Random(seed);
        using var d = new TempDaemon();
        using var good = d.Connect();
        var expected = new Dictionary<string, string>();
        XsTestClient fuzz = d.Connect();
        int replies = 0, closes = 0;
        try
        {
            for (int round = 0; round < 4000; round++)
            {
                uint type = RandomType(r);
                uint txId = r.Next(5) == 0 ? (uint)r.Next(0, 4) : 0;
                uint reqId = (uint)r.Next(1, int.MaxValue);
                byte[] payload = RandomPayload(r);
                int mode = r.Next(40);
                if (mode == 0)
                {
                    // Oversized: Xen drops the client.
                    byte[] msg = XsTestClient.Msg((XsType)type, reqId, txId, []);
                    BitConverter.TryWriteBytes(msg.AsSpan(12), (uint)r.Next(4097, int.MaxValue));
                    fuzz.SendRaw(msg);
                    AssertClosed(fuzz);
                    closes++;
                    fuzz.Dispose();
                    fuzz = d.Connect();
                }
                else if (mode == 1)
                {
                    // Truncated: the client goes away in the middle of a message.
                    byte[] msg = XsTestClient.Msg((XsType)type, reqId, txId, payload);
                    fuzz.SendRaw(msg[..r.Next(1, msg.Length)]);
                    fuzz.Dispose();
                    fuzz = d.Connect();
                }
                else
                {
                    fuzz.SendRaw(XsTestClient.Msg((XsType)type, reqId, txId, payload));
                    // A sentinel request behind it: its reply proves the fuzzed one was answered first.
                    fuzz.SendRaw(XsTestClient.Msg(XsType.GetDomainPath, 0xfeedf00d, 0, XsTestClient.Args("7")));
                    int answered = 0;
                    while (true)
                    {
                        var m = fuzz.ReadMessage();
                        if (m.ReqId == 0xfeedf00d && m.Type == XsType.GetDomainPath) break;
                        if (m.Type == XsType.WatchEvent && m.ReqId == 0) continue;
                        Assert.Equal(reqId, m.ReqId);
                        Assert.True(m.Type == XsType.Error || (uint)m.Type == type, $"reply type {m.Type} to {type}");
                        if (m.Type == XsType.Error)
                            Assert.True(XsWire_IsErrorName(m.Payload), Encoding.ASCII.GetString(m.Payload));
                        answered++;
                    }
                    Assert.Equal(1, answered);
                    replies++;
                }

                if (round % 10 == 0)
                {
                    string key = $"/good/k{round % 97}";
                    string value = $"v{round}";
                    Assert.Equal("OK\0", good.Write(key, value));
                    expected[key] = value;
                    Assert.Equal(value, good.Call(XsType.Read, key));
                }
            }
        }
        finally
        {
            fuzz.Dispose();
        }
        Assert.True(replies > 3000 && closes > 30);
        foreach (var (key, value) in expected)
            Assert.Equal(value, good.Call(XsType.Read, key));
        Assert.Equal(expected.Count, d.Daemon.Directory("/good")!.Length);
    }

    private static bool XsWire_IsErrorName(byte[] p) =>
        p.Length > 1 && p[^1] == 0 && Enum.TryParse(Encoding.ASCII.GetString(p, 0, p.Length - 1), out XsError e) && e != XsError.None;

    private static void AssertClosed(XsTestClient c)
    {
        try
        {
            while (true)
            {
                var m = c.ReadMessage();
                Assert.Equal(XsType.WatchEvent, m.Type); // only events queued earlier may still arrive
            }
        }
        catch (EndOfStreamException) { }
        catch (SocketException) { }
    }

    [Fact]
    public void RingFuzzAnswersOrFlagsTheGuestAndSparesTheRest() => WithSeeds(0x5eed_0002, RingFuzz);

    private static void RingFuzz(int seed)
    {
        var r = new Random(seed);
        using var d = new TempDaemon();
        d.Daemon.Write("/keep/me", "safe");
        for (int guest = 0; guest < 6; guest++)
        {
            uint dom = (uint)(10 + guest);
            GuestClient g = d.Guest(dom);
            for (int i = 0; i < 150; i++)
            {
                uint reqId = (uint)(i + 1);
                uint type = RandomType(r);
                g.WriteBytes(XsTestClient.Msg((XsType)type, reqId, r.Next(6) == 0 ? 1u : 0u, RandomPayload(r)));
                var m = g.TryReadMessage(60_000);
                while (m is { Type: XsType.WatchEvent }) m = g.TryReadMessage(60_000);
                Assert.NotNull(m);
                Assert.Equal(reqId, m.Value.ReqId);
                Assert.True(m.Value.Type == XsType.Error || (uint)m.Value.Type == type);
            }
            // Then a protocol violation: the daemon flags it in the page and stops listening.
            g.WriteBytes(XsTestClient.Msg(XsType.Read, 999, 0, [])[..12]);
            g.WriteBytes(BitConverter.GetBytes(100_000u));
            SpinWait.SpinUntil(() => d.Daemon.GetDomain(dom) is not null && ErrorField(d, dom) != 0, 60_000);
            Assert.Equal(3u, ErrorField(d, dom));   // XENSTORE_ERROR_PROTO
        }
        Assert.Equal("safe", d.Daemon.Read("/keep/me"));
        using var c = d.Connect();
        Assert.Equal("safe", c.Call(XsType.Read, "/keep/me"));
    }

    private static uint ErrorField(TempDaemon d, uint dom) => d.RingOf(dom).Field(2072);
}
