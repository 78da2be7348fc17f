namespace XenSharp.Backends.Block.Images;

/// <summary>The disk image formats a PV disk can be backed by, as xl's disk spec names them in <c>format=</c>.</summary>
public enum BlockImageFormat
{
    Raw,
    Qcow,
    Qcow2,
    Vhd,
}

/// <summary>How to open an image: the <c>format=</c>, <c>access=</c> and <c>direct-io-safe</c> of xl's disk spec.</summary>
public sealed record BlockImageOptions
{
    /// <summary>The format to use; null probes the header.</summary>
    public BlockImageFormat? Format { get; init; }
    public bool ReadOnly { get; init; }
    /// <summary>Open with O_DIRECT where the format and filesystem allow it (raw images only).</summary>
    public bool DirectIo { get; init; }
    /// <summary>Told about every failed request, with the image named (a request fails with an errno, never an exception).</summary>
    public Action<string>? Log { get; init; }
}

/// <summary>
/// A disk image as a block backend uses it: positional reads and writes at byte offsets that are
/// multiples of <see cref="SectorSize"/>, safe to call from many threads at once (one request per
/// call, no allocation on the raw path). Requests return 0 or a negative errno (Linux values, as
/// the blkif response carries them); they never throw.
/// </summary>
public interface IBlockImage : IDisposable
{
    /// <summary>The image's path, as configured; every error names it.</summary>
    string Name { get; }
    BlockImageFormat Format { get; }
    /// <summary>The virtual disk size in bytes.</summary>
    long Size { get; }
    int SectorSize { get; }
    bool ReadOnly { get; }
    /// <summary>Whether <see cref="Discard"/> can free space (the backend's <c>feature-discard</c>).</summary>
    bool SupportsDiscard { get; }
    /// <summary>The unit discards free space in (the backend's <c>discard-granularity</c>): a qcow2 cluster, a host block.</summary>
    int DiscardGranularity { get; }

    int Read(long offset, Span<byte> destination);
    int Write(long offset, ReadOnlySpan<byte> source);
    /// <summary>Makes every completed write durable (fdatasync of the image file).</summary>
    int Flush();
    /// <summary>Gives whole clusters (blocks) of the range back to the host; what they read afterwards is zeros where the format can say so.</summary>
    int Discard(long offset, long length);
    /// <summary>Re-reads the size (a raw file or device that grew: online resize); returns the new size.</summary>
    long RefreshSize();
}

/// <summary>An image that cannot be opened; the message names the image.</summary>
public sealed class BlockImageException : Exception
{
    public string ImagePath { get; }

    public BlockImageException(string path, string message, Exception? inner = null)
        : base($"{path}: {message}", inner) => ImagePath = path;
}

/// <summary>Metadata that points somewhere it must not, met while serving a request: that request fails with EIO.</summary>
internal sealed class ImageCorruptException(string message) : Exception(message);
