using System.IO.Compression;
using XenSharp.Toolstack.Builder;

namespace XenSharp.Toolstack.Tests.Builder;

[Trait("Feature", "x86/PVH"), Trait("Feature", "Direct-boot kernel image format")]
public sealed class UnpackedKernelCacheTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "xs-kcache-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    private static byte[] Gzip(byte[] data)
    {
        var o = new MemoryStream();
        using (var g = new GZipStream(o, CompressionLevel.Optimal, leaveOpen: true)) g.Write(data);
        return o.ToArray();
    }

    private static byte[] Kernel(int seed, out byte[] elf)
    {
        var code = Enumerable.Range(0, 5000).Select(i => (byte)(i * seed + 3)).ToArray();
        elf = TestImages.Elf(code, 0x100000);
        return TestImages.BzImage(Gzip(elf), elf.Length);
    }

    private string Entry() => Assert.Single(Directory.GetFiles(_dir, "*.elf"));

    [Fact]
    public void ASecondBuildOfTheSameKernelTakesItsElfFromTheCache()
    {
        var cache = new UnpackedKernelCache(_dir);
        var bz = Kernel(7, out var elf);
        Assert.Equal(elf, PvhBuilder.LoadKernel(bz, "vmlinuz", cache).Data);
        int unpacked = 0;
        var again = cache.GetOrUnpack(bz, () => { unpacked++; return [1, 2, 3]; });
        Assert.Equal(0, unpacked);
        Assert.Equal(elf, again);
        Assert.Equal(elf, PvhBuilder.LoadKernel(bz, "vmlinuz", cache).Data);

        // Another kernel is another entry.
        var other = Kernel(11, out var otherElf);
        Assert.Equal(otherElf, PvhBuilder.LoadKernel(other, "vmlinuz", cache).Data);
        Assert.Equal(2, Directory.GetFiles(_dir, "*.elf").Length);
    }

    [Theory]
    [InlineData("flip")]
    [InlineData("truncate")]
    [InlineData("empty")]
    public void ADamagedEntryIsUnpackedAgainAndReplaced(string damage)
    {
        var cache = new UnpackedKernelCache(_dir);
        var bz = Kernel(5, out var elf);
        PvhBuilder.LoadKernel(bz, "vmlinuz", cache);
        string entry = Entry();
        var bytes = File.ReadAllBytes(entry);
        switch (damage)
        {
            case "flip": bytes[bytes.Length / 2] ^= 0x40; break;
            case "truncate": bytes = bytes[..(bytes.Length - 100)]; break;
            default: bytes = []; break;
        }
        File.WriteAllBytes(entry, bytes);

        Assert.Equal(elf, PvhBuilder.LoadKernel(bz, "vmlinuz", cache).Data);
        int unpacked = 0;
        Assert.Equal(elf, cache.GetOrUnpack(bz, () => { unpacked++; return elf; }));
        Assert.Equal(0, unpacked);
    }

    [Fact]
    public void TheLeastRecentlyUsedEntriesGoBeyondTheLimit()
    {
        var bzs = Enumerable.Range(0, 3).Select(i => Kernel(3 + 2 * i, out _)).ToArray();
        // Each entry is its 32-byte hash and about 5 KiB of ELF: two fit, three do not.
        long one = TestImages.Elf(new byte[5000], 0x100000).Length + 32;
        var cache = new UnpackedKernelCache(_dir, maxBytes: 2 * one + one / 2);
        PvhBuilder.LoadKernel(bzs[0], "k0", cache);
        PvhBuilder.LoadKernel(bzs[1], "k1", cache);
        foreach (var f in Directory.GetFiles(_dir)) File.SetLastWriteTimeUtc(f, DateTime.UtcNow.AddMinutes(-10));
        // k0 is used again, so k1 is now the least recently used.
        PvhBuilder.LoadKernel(bzs[0], "k0", cache);
        PvhBuilder.LoadKernel(bzs[2], "k2", cache);
        Assert.Equal(2, Directory.GetFiles(_dir, "*.elf").Length);
        int unpacked = 0;
        cache.GetOrUnpack(bzs[0], () => { unpacked++; return []; });
        cache.GetOrUnpack(bzs[2], () => { unpacked++; return []; });
        Assert.Equal(0, unpacked);
        cache.GetOrUnpack(bzs[1], () => { unpacked++; return [9]; });
        Assert.Equal(1, unpacked);
    }

    [Fact]
    public void ACacheItCannotWriteOnlyUnpacksAsIfAbsent()
    {
        Directory.CreateDirectory(_dir);
        string file = Path.Combine(_dir, "a-file");
        File.WriteAllText(file, "not a directory");
        var cache = new UnpackedKernelCache(Path.Combine(file, "kernels"));
        var bz = Kernel(9, out var elf);
        Assert.Equal(elf, PvhBuilder.LoadKernel(bz, "vmlinuz", cache).Data);
        Assert.Equal(elf, PvhBuilder.LoadKernel(bz, "vmlinuz", cache).Data);
    }

    [Fact]
    public void AKernelThatDoesNotUnpackLeavesNothingBehind()
    {
        var cache = new UnpackedKernelCache(_dir);
        var bz = Kernel(13, out _);
        bz[^20] ^= 0xFF; // inside the gzip payload's deflate data or its CRC
        Assert.Throws<DomainBuildException>(() => PvhBuilder.LoadKernel(bz, "vmlinuz", cache));
        Assert.False(Directory.Exists(_dir) && Directory.EnumerateFileSystemEntries(_dir).Any());
    }

    [Fact]
    public void AnElfKernelIsNotCached()
    {
        var cache = new UnpackedKernelCache(_dir);
        var elf = TestImages.Elf(new byte[100], 0x100000);
        Assert.Equal(elf, PvhBuilder.LoadKernel(elf, "vmlinux", cache).Data);
        Assert.False(Directory.Exists(_dir));
    }

    [Fact]
    public void TheSettingNamesTheDirectoryOrTurnsTheCacheOff()
    {
        Assert.Null(UnpackedKernelCache.For("off", systemDaemon: true));
        Assert.Equal(_dir, UnpackedKernelCache.For(_dir, systemDaemon: false)!.Directory);
        Assert.Equal("/var/cache/xensharp/kernels", UnpackedKernelCache.For(null, systemDaemon: true)!.Directory);
        Assert.EndsWith(Path.Combine("xensharp", "kernels"), UnpackedKernelCache.For("", systemDaemon: false)!.Directory);
    }
}
