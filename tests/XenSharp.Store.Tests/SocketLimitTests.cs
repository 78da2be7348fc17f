using System.Net.Sockets;

namespace XenSharp.Store.Tests;

/// <summary>Counts threads and memory of this process: nothing else may run meanwhile.</summary>
[CollectionDefinition("process counters", DisableParallelization = true)]
public sealed class ProcessCountersCollection;

/// <summary>What host clients of the socket cost, and the limit on how many are served.</summary>
[Collection("process counters")]
public sealed class SocketLimitTests
{
    private static int Threads() =>
        int.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith("Threads:", StringComparison.Ordinal))[8..].Trim());

    private static long ManagedBytes() => GC.GetTotalMemory(forceFullCollection: true);

    private static Socket Open(string path)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        s.Connect(new UnixDomainSocketEndPoint(path));
        return s;
    }

    /// <summary>Waits (without a time budget worth asserting) until the server has seen <paramref name="count"/> clients.</summary>
    private static void WaitForClients(TempDaemon d, int count)
    {
        for (int i = 0; i < 6000 && d.Daemon.SocketClientCount != count; i++) Thread.Sleep(10);
        Assert.Equal(count, d.Daemon.SocketClientCount);
    }

    [Fact]
    public void IdleClientsHoldNoThreadAndLittleMemoryAndAreForgottenWhenTheyClose()
    {
        const int N = 2000;
        using var d = new TempDaemon();
        d.Daemon.Write("/test/value", "served");
        Assert.Equal("served\n", d.Tool("xenstore-read", "/test/value").Out);
        int threads0 = Threads();
        long bytes0 = ManagedBytes();

        var idle = new List<Socket>(N);
        for (int i = 0; i < N; i++) idle.Add(Open(d.SocketPath));
        WaitForClients(d, N);
        int threadsOpen = Threads();
        long bytesOpen = ManagedBytes();
        // A thread per client would be N more; a 64 KiB buffer per client 128 MiB more.
        Assert.True(threadsOpen - threads0 < 16, $"{threadsOpen - threads0} more threads with {N} idle clients");
        Assert.True(bytesOpen - bytes0 < N * 4096L, $"{(bytesOpen - bytes0) / N} bytes per idle client");

        // Everyone else is still served.
        var (exit, o, e) = d.Tool("xenstore-read", "/test/value");
        Assert.True(exit == 0, e);
        Assert.Equal("served\n", o);

        foreach (Socket s in idle) s.Dispose();
        idle.Clear();
        WaitForClients(d, 0);
        Assert.True(Threads() - threads0 < 16);
        Assert.True(ManagedBytes() - bytes0 < 2 << 20, $"{ManagedBytes() - bytes0} bytes kept after the clients left");
    }

    [Fact]
    public void AClientBeyondTheLimitIsClosedAndTheOthersAreServed()
    {
        using var d = new TempDaemon(new XenStoreQuotas { MaxSocketClients = 4 });
        d.Daemon.Write("/test/value", "served");
        var clients = Enumerable.Range(0, 4).Select(_ => d.Connect()).ToList();
        WaitForClients(d, 4);

        using var extra = Open(d.SocketPath);
        extra.ReceiveTimeout = 60_000; // a guard against hanging when the client is kept: not a measure
        Assert.Equal(0, extra.Receive(new byte[16])); // closed at once: end of stream
        Assert.Equal(4, d.Daemon.SocketClientCount);
        foreach (var c in clients) Assert.Equal("served", c.Call(XsType.Read, "/test/value"));

        // A place freed is a place for the next client.
        clients[0].Dispose();
        WaitForClients(d, 3);
        var (exit, o, e) = d.Tool("xenstore-read", "/test/value");
        Assert.True(exit == 0, e);
        Assert.Equal("served\n", o);
        foreach (var c in clients.Skip(1)) c.Dispose();
    }

    [Fact]
    public void HalfAMessageHoldsOnlyItsSender()
    {
        using var d = new TempDaemon();
        d.Daemon.Write("/test/value", "served");
        // Many clients each send a header announcing a payload that never comes.
        var stalled = Enumerable.Range(0, 200).Select(_ => d.Connect()).ToList();
        byte[] header = XsTestClient.Msg(XsType.Write, 1, 0, new byte[4000])[..20];
        foreach (var c in stalled) c.SendRaw(header);
        using var ok = d.Connect();
        Assert.Equal("served", ok.Call(XsType.Read, "/test/value"));
        Assert.Equal("served\n", d.Tool("xenstore-read", "/test/value").Out);
        foreach (var c in stalled) c.Dispose();
    }
}
