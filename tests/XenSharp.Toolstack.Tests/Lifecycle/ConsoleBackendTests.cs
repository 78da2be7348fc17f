using System.Buffers.Binary;
using System.Text;
using XenSharp.Backends;
using XenSharp.Backends.Console;

namespace XenSharp.Toolstack.Tests.Lifecycle;

/// <summary>The console backend against a frontend written here, following xencons_interface.</summary>
public sealed class ConsoleBackendTests : IDisposable
{
    private sealed class Page : ISharedPage
    {
        public readonly byte[] Bytes = new byte[4096];
        Span<byte> ISharedPage.Page => Bytes;
    }

    private readonly Page _page = new();
    private readonly string _log = Path.Combine(Path.GetTempPath(), $"xs-console-{Guid.NewGuid():N}.log");
    private int _notifies;
    private readonly ConsoleBackend _backend;

    public ConsoleBackendTests() => _backend = new ConsoleBackend("g", _page, () => Interlocked.Increment(ref _notifies), _log);

    public void Dispose()
    {
        _backend.Dispose();
        File.Delete(_log);
    }

    private uint Get(int off) => BinaryPrimitives.ReadUInt32LittleEndian(_page.Bytes.AsSpan(off));
    private void Set(int off, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(_page.Bytes.AsSpan(off), v);

    /// <summary>What hvc_xen does: copy into out[], advance out_prod, notify.</summary>
    private void GuestWrites(string s)
    {
        uint prod = Get(3084);
        foreach (byte b in Encoding.ASCII.GetBytes(s)) _page.Bytes[1024 + (int)(prod++ & 2047)] = b;
        Set(3084, prod);
        _backend.OnGuestEvent();
    }

    [Fact]
    public void OutputGoesToTheLogAndPendingOutputToTheNextClient()
    {
        GuestWrites("Linux version 6.1\n");
        Assert.Equal(Get(3084), Get(3080)); // out_cons caught up
        var client = new MemoryStream();
        Assert.True(_backend.Attach(client));
        GuestWrites("login: ");
        // The client is written on its own task.
        Wait.Until(() => client.Length >= 24);
        Assert.Equal("Linux version 6.1\nlogin: ", Encoding.ASCII.GetString(client.ToArray()));
        Assert.Equal("Linux version 6.1\nlogin: ", File.ReadAllText(_log));
        Assert.True(_notifies > 0);
        Assert.False(_backend.Attach(new MemoryStream())); // one client at a time
    }

    /// <summary>A client that takes nothing until <see cref="Gate"/> opens (a descheduled xl console).</summary>
    private sealed class StalledClient : MemoryStream
    {
        public readonly ManualResetEventSlim Gate = new(false);

        public override void Write(byte[] buffer, int offset, int count) { Gate.Wait(); base.Write(buffer, offset, count); }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken ct)
        {
            Gate.Wait(ct);
            lock (this) base.Write(buffer, offset, count);
            return Task.CompletedTask;
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default)
        {
            Gate.Wait(ct);
            lock (this) base.Write(buffer.Span);
            return ValueTask.CompletedTask;
        }

        public string Text() { lock (this) return Encoding.ASCII.GetString(ToArray()); }
    }

    [Fact]
    public void AStalledClientGetsABootsWorthOfSmallWritesInOrder()
    {
        var client = new StalledClient();
        Assert.True(_backend.Attach(client));
        var expected = new StringBuilder();
        for (int i = 0; i < 3000; i++)
        {
            string line = $"[{i,5}] line\n";
            GuestWrites(line);
            expected.Append(line);
        }
        client.Gate.Set();
        Wait.Until(() => client.Text().Length >= expected.Length);
        Assert.Equal(expected.ToString(), client.Text());
    }

    /// <summary>A guest that writes and powers off at once: the I/O thread's drain of its first output may still be under
    /// way when the console ends (its final drain, then the end of the client's stream). The client gets that output
    /// too, before the rest.</summary>
    [Fact]
    public void OutputDrainedWhileTheConsoleEndsReachesTheClientFirst()
    {
        var client = new MemoryStream();
        Assert.True(_backend.Attach(client));
        using var inDrain = new ManualResetEventSlim(false);
        using var release = new ManualResetEventSlim(false);
        int calls = 0;
        _backend.LogWritten = () =>
        {
            if (Interlocked.Increment(ref calls) != 1) return;
            inDrain.Set();
            release.Wait();
        };
        // The I/O thread takes the first output and is held there, as a descheduled thread would be.
        var io = Task.Run(() => GuestWrites("first\n"));
        Assert.True(inDrain.Wait(TimeSpan.FromSeconds(10)));
        // The guest writes its last line and goes: the toolstack's final drain and the console's end.
        uint prod = Get(3084);
        foreach (byte b in "last\n"u8) _page.Bytes[1024 + (int)(prod++ & 2047)] = b;
        Set(3084, prod);
        var end = Task.Run(() => { _backend.OnGuestEvent(); _backend.Dispose(); });
        Assert.False(end.Wait(TimeSpan.FromMilliseconds(200)), "the console ended while a drain was under way");
        release.Set();
        Assert.True(io.Wait(TimeSpan.FromSeconds(10)) && end.Wait(TimeSpan.FromSeconds(10)));
        Assert.True(Wait.Until(() => !client.CanRead)); // closed once everything queued was written
        Assert.Equal("first\nlast\n", Encoding.ASCII.GetString(client.ToArray()));
    }

    [Fact]
    public void OutputWrapsAroundTheRing()
    {
        Set(3080, 2040); Set(3084, 2040);
        GuestWrites("0123456789abcdef");
        Assert.Equal("0123456789abcdef", File.ReadAllText(_log));
        Assert.Equal(2056u, Get(3080));
    }

    [Fact]
    public void InputFillsTheInRingUpToItsSize()
    {
        Assert.Equal(3, _backend.WriteInput("ls\n"u8));
        Assert.Equal(3u, Get(3076));
        Assert.Equal("ls\n", Encoding.ASCII.GetString(_page.Bytes, 0, 3));
        Assert.Equal(1021, _backend.WriteInput(new byte[2000]));
        Assert.Equal(0, _backend.WriteInput("x"u8));
        Set(3072, 10); // the guest consumed 10
        Assert.Equal(10, _backend.WriteInput(new byte[20]));
    }

    [Fact]
    public void GarbageIndicesFromTheGuestAreDroppedNotFollowed()
    {
        Set(3080, 0); Set(3084, 100000);
        _backend.OnGuestEvent();
        Assert.Equal(100000u, Get(3080));
        Assert.Equal(0, new FileInfo(_log).Length);
    }
}
