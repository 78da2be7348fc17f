using XenSharp.Backends.Block.Images;

namespace XenSharp.Backends.Tests.Block;

/// <summary>The request path allocates nothing once tables are cached: raw always, the formats on allocated data.</summary>
public sealed class AllocationTests
{
    [Theory]
    [InlineData("raw")]
    [InlineData("qcow2")]
    [InlineData("qcow")]
    [InlineData("vpc")]
    public void RequestsOnAllocatedDataAllocateNothing(string format)
    {
        using var dir = new ImageDir();
        dir.WriteRaw("src.raw", 4 << 20, seed: 70);
        string image = format == "raw" ? dir["src.raw"] : dir["a.img"];
        if (format != "raw")
            Qemu.Img(format == "vpc"
                ? ["convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on", dir["src.raw"], image]
                : ["convert", "-f", "raw", "-O", format, dir["src.raw"], image]);
        using var disk = BlockImages.Open(image);
        var buffer = new byte[16384];
        // Write everything once so no request below allocates clusters or blocks, and warm the caches.
        for (long at = 0; at < disk.Size; at += buffer.Length)
            Assert.Equal(0, disk.Write(at, buffer));
        for (long at = 0; at < disk.Size; at += buffer.Length)
            Assert.Equal(0, disk.Read(at, buffer));

        Assert.Equal(0, disk.Flush());
        Requests(disk, buffer); // once more to warm up, then measured

        // The runtime itself may allocate now and then on this thread (tiered compilation installing
        // new code); a per-request allocation would show in every round, so the least round counts.
        long least = long.MaxValue;
        int failures = 0;
        for (int round = 0; round < 5 && least > 0; round++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            failures += Requests(disk, buffer);
            least = Math.Min(least, GC.GetAllocatedBytesForCurrentThread() - before);
        }
        Assert.Equal(0, failures);
        Assert.Equal(0, least);
    }

    /// <summary>Reads, writes and a flush; failures are counted, not asserted, since xunit's asserts allocate.</summary>
    private static int Requests(IBlockImage disk, byte[] buffer)
    {
        int failures = 0;
        for (int i = 0; i < 200; i++)
        {
            long at = (long)(i * 7919 % (disk.Size / 4096)) * 4096;
            int length = Math.Min(buffer.Length, (int)(disk.Size - at));
            failures += disk.Read(at, buffer.AsSpan(0, length)) != 0 ? 1 : 0;
            failures += disk.Write(at, buffer.AsSpan(0, length)) != 0 ? 1 : 0;
        }
        return failures + (disk.Flush() != 0 ? 1 : 0);
    }
}
