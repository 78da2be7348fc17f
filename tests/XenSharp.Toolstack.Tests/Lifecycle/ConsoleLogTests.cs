using System.Buffers.Binary;
using System.Text;
using XenSharp.Backends;
using XenSharp.Backends.Console;

namespace XenSharp.Toolstack.Tests.Lifecycle;

/// <summary>A guest that floods its console: the log stays bounded, rotates, and keeps the newest output.</summary>
public sealed class ConsoleLogTests : IDisposable
{
    private sealed class Page : ISharedPage
    {
        public readonly byte[] Bytes = new byte[4096];
        Span<byte> ISharedPage.Page => Bytes;
    }

    private readonly string _dir = Directory.CreateTempSubdirectory("xs-console-log").FullName;
    private readonly Page _page = new();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>hvc_xen's way: fill out[] as far as the ring allows, advance out_prod, notify.</summary>
    private static void Flood(ConsoleBackend backend, Page page, int lines)
    {
        var pending = new StringBuilder();
        for (int i = 0; i < lines; i++)
        {
            pending.Append($"flood line {i:D6}\n");
            if (pending.Length < 2000 && i < lines - 1) continue;
            uint prod = BinaryPrimitives.ReadUInt32LittleEndian(page.Bytes.AsSpan(3084));
            foreach (byte b in Encoding.ASCII.GetBytes(pending.ToString())) page.Bytes[1024 + (int)(prod++ & 2047)] = b;
            BinaryPrimitives.WriteUInt32LittleEndian(page.Bytes.AsSpan(3084), prod);
            backend.OnGuestEvent();
            pending.Clear();
        }
    }

    [Fact]
    public void AFloodedLogStaysUnderItsBoundAndKeepsTheNewestOutput()
    {
        string log = Path.Combine(_dir, "flood.log");
        var limits = new ConsoleLogLimits(64 * 1024, 2);
        using var backend = new ConsoleBackend("flood", _page, () => { }, log, limits);
        var client = new MemoryStream();
        Flood(backend, _page, 50_000); // 900 KiB, fourteen times the bound
        Assert.True(backend.Attach(client)); // xl console after the flood

        Assert.True(new FileInfo(log).Length <= limits.MaxBytes);
        Assert.True(new FileInfo(log + ".1").Length <= limits.MaxBytes);
        Assert.True(new FileInfo(log + ".2").Length <= limits.MaxBytes);
        Assert.False(File.Exists(log + ".3"));
        Assert.EndsWith("flood line 049999\n", File.ReadAllText(log));
        // The rotated files hold what came just before, in order.
        string all = File.ReadAllText(log + ".2") + File.ReadAllText(log + ".1") + File.ReadAllText(log);
        int first = int.Parse(all.AsSpan(11, 6));
        var expected = new StringBuilder();
        for (int i = first; i < 50_000; i++) expected.Append($"flood line {i:D6}\n");
        Assert.Equal(expected.ToString(), all);
        Assert.True(all.Length > 2 * limits.MaxBytes, "rotation keeps the older logs");

        // The console still works: the attached client gets what the guest writes next.
        Flood(backend, _page, 1);
        Wait.Until(() => Encoding.ASCII.GetString(client.ToArray()).Contains("flood line 000000\n"));
        Assert.EndsWith("flood line 049999\nflood line 000000\n", Encoding.ASCII.GetString(client.ToArray()));
    }

    [Fact]
    public void WithoutRotatedFilesTheLogStartsOver()
    {
        string log = Path.Combine(_dir, "norot.log");
        using var backend = new ConsoleBackend("norot", _page, () => { }, log, new ConsoleLogLimits(16 * 1024, 0));
        Flood(backend, _page, 10_000);
        Assert.True(new FileInfo(log).Length <= 16 * 1024);
        Assert.False(File.Exists(log + ".1"));
        Assert.EndsWith("flood line 009999\n", File.ReadAllText(log));
    }

    [Fact]
    public void ReopenAfterAnExternalRotationWritesAFreshFile()
    {
        string log = Path.Combine(_dir, "hup.log");
        using var backend = new ConsoleBackend("hup", _page, () => { }, log);
        Flood(backend, _page, 1);
        File.Move(log, log + ".old"); // what logrotate does before sending SIGHUP
        ConsoleLog.ReopenAll();
        Flood(backend, _page, 2);
        Assert.Equal("flood line 000000\n", File.ReadAllText(log + ".old"));
        Assert.Equal("flood line 000000\nflood line 000001\n", File.ReadAllText(log));
    }
}
