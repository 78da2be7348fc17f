using System.Security.Cryptography;

namespace XenSharp.Toolstack.Builder;

/// <summary>
/// Kernels unpacked by earlier domain builds. Unpacking a distribution kernel's xz payload (8 MB to a 66 MB ELF) takes
/// about half a second of CPU, on every `xl create` of the same kernel; an entry found here takes a read and two hashes.
/// An entry is the unpacked bytes behind their SHA-256, named by the SHA-256 of the packed file: one damaged or cut
/// short (a full disk, a crash while it was written) fails the check, is removed and unpacked again. Entries are
/// written under a temporary name and renamed, so that builds in several daemons share the directory safely. The
/// least recently used go when the directory holds more than <see cref="MaxBytes"/>. The cache never fails a build: a
/// directory it cannot read or write only makes it unpack as if it were not there.
/// </summary>
public sealed class UnpackedKernelCache(string directory, long maxBytes = UnpackedKernelCache.DefaultMaxBytes)
{
    public const long DefaultMaxBytes = 512L << 20;
    /// <summary>A directory, or <c>off</c>; the daemon's <c>--kernel-cache</c> takes the same.</summary>
    public const string EnvironmentVariable = "XENSHARP_KERNEL_CACHE";
    private const string Suffix = ".elf";
    private const int HashBytes = 32;

    public string Directory { get; } = directory;
    public long MaxBytes { get; } = maxBytes;

    /// <summary>The cache <paramref name="setting"/> names (a directory, or <c>off</c> for none); unset, the one under
    /// /var/cache for the system daemon, else under the user's cache directory.</summary>
    public static UnpackedKernelCache? For(string? setting, bool systemDaemon)
    {
        if (string.Equals(setting, "off", StringComparison.Ordinal)) return null;
        if (!string.IsNullOrEmpty(setting)) return new UnpackedKernelCache(Path.GetFullPath(setting));
        if (systemDaemon) return new UnpackedKernelCache("/var/cache/xensharp/kernels");
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        string root = !string.IsNullOrEmpty(xdg) ? xdg : string.IsNullOrEmpty(home) ? Path.GetTempPath() : Path.Combine(home, ".cache");
        return new UnpackedKernelCache(Path.Combine(root, "xensharp", "kernels"));
    }

    /// <summary>What <paramref name="unpack"/> makes of <paramref name="packed"/>: from the cache when an intact entry
    /// is there, else unpacked now and kept. Errors of <paramref name="unpack"/> reach the caller, and nothing is kept.</summary>
    public byte[] GetOrUnpack(byte[] packed, Func<byte[]> unpack)
    {
        string path = Path.Combine(Directory, Convert.ToHexStringLower(SHA256.HashData(packed)) + Suffix);
        if (TryRead(path) is { } hit) return hit;
        byte[] unpacked = unpack();
        TryKeep(path, unpacked);
        return unpacked;
    }

    private static byte[]? TryRead(string path)
    {
        try
        {
            byte[] entry = File.ReadAllBytes(path);
            if (entry.Length < HashBytes || !SHA256.HashData(entry.AsSpan(HashBytes)).AsSpan().SequenceEqual(entry.AsSpan(0, HashBytes)))
            {
                File.Delete(path);
                return null;
            }
            Touch(path);
            return entry[HashBytes..];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>An entry's time is when it was last used, for the eviction; a cache only readable here is still used.</summary>
    private static void Touch(string path)
    {
        try { File.SetLastWriteTimeUtc(path, DateTime.UtcNow); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }

    private void TryKeep(string path, byte[] unpacked)
    {
        if (unpacked.Length + HashBytes > MaxBytes) return;
        string temp = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            System.IO.Directory.CreateDirectory(Directory);
            using (var f = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                f.Write(SHA256.HashData(unpacked));
                f.Write(unpacked);
            }
            File.Move(temp, path, overwrite: true);
            Evict();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(temp); } catch (Exception d) when (d is IOException or UnauthorizedAccessException) { }
        }
    }

    /// <summary>Removes the least recently used entries beyond <see cref="MaxBytes"/>, and temporary files a build that
    /// died while writing left over an hour ago.</summary>
    private void Evict()
    {
        var dir = new DirectoryInfo(Directory);
        foreach (var t in dir.EnumerateFiles("*.tmp"))
            if (t.LastWriteTimeUtc < DateTime.UtcNow.AddHours(-1)) t.Delete();
        long total = 0;
        foreach (var f in dir.EnumerateFiles("*" + Suffix).OrderByDescending(f => f.LastWriteTimeUtc))
        {
            total += f.Length;
            if (total > MaxBytes) f.Delete();
        }
    }
}
