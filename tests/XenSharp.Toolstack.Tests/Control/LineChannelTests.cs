using System.Text;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Tests.Control;

/// <summary>The control socket's framing: chunked reads, a bound on a line, and the bytes after a
/// line left for whoever takes the connection next (an attached console).</summary>
public sealed class LineChannelTests
{
    /// <summary>A stream that counts the reads made on it (each one a system call on a socket).</summary>
    private sealed class CountingStream(byte[] data) : Stream
    {
        private readonly MemoryStream _inner = new(data);
        public int Reads;
        public override bool CanRead => true;
        public override bool CanWrite => false;
        public override bool CanSeek => false;
        public override long Length => _inner.Length;
        public override long Position { get => _inner.Position; set => throw new NotSupportedException(); }
        public override int Read(byte[] buffer, int offset, int count) { Reads++; return _inner.Read(buffer, offset, count); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    [Fact]
    public async Task ARequestIsReadInChunksNotByteByByte()
    {
        string request = "{\"op\":\"create\",\"configText\":\"" + new string('x', 1500) + "\"}";
        var stream = new CountingStream(Encoding.UTF8.GetBytes(request + "\n" + request + "\n"));
        using var channel = new LineChannel(stream);
        Assert.Equal(request, await channel.ReadLineAsync());
        Assert.Equal(request, await channel.ReadLineAsync());
        Assert.Null(await channel.ReadLineAsync());
        // Two 1.5 KiB lines fit in one chunk; the last read sees the end of the connection.
        Assert.True(stream.Reads <= 3, $"{stream.Reads} reads for two requests");
    }

    [Fact]
    public async Task BytesAfterALineBelongToTheStream()
    {
        var stream = new MemoryStream(Encoding.UTF8.GetBytes("{\"op\":\"console\"}\nkeys typed at once"));
        using var channel = new LineChannel(stream);
        Assert.Equal("{\"op\":\"console\"}", await channel.ReadLineAsync());
        var rest = new MemoryStream();
        await channel.Stream.CopyToAsync(rest);
        Assert.Equal("keys typed at once", Encoding.UTF8.GetString(rest.ToArray()));
    }

    [Fact]
    public async Task ALineLongerThanTheLimitFailsWithoutReadingTheRest()
    {
        var stream = new CountingStream(new byte[8 << 20]); // 8 MiB without a newline
        using var channel = new LineChannel(stream);
        var e = await Assert.ThrowsAsync<LineTooLongException>(() => channel.ReadLineAsync());
        Assert.Equal(LineChannel.MaxRequestLine, e.Limit);
        Assert.True(stream.Position <= LineChannel.MaxRequestLine + 8192, $"read {stream.Position} bytes");
    }

    [Fact]
    public async Task ALongLineSplitAcrossManyReadsIsWhole()
    {
        string line = new string('y', 300_000);
        using var channel = new LineChannel(new CountingStream(Encoding.UTF8.GetBytes(line + "\nnext\n")));
        Assert.Equal(line, await channel.ReadLineAsync());
        Assert.Equal("next", await channel.ReadLineAsync());
    }
}
