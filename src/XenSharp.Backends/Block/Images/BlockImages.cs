using System.Buffers.Binary;

namespace XenSharp.Backends.Block.Images;

/// <summary>
/// Opens disk images: honours xl's <c>format=</c> or recognises the format by its header, opens
/// backing files (relative to the image's directory) read-only, and names the image in every
/// error. A new format is a class implementing <see cref="IBlockImage"/> (usually through
/// <see cref="FormattedImage"/>) plus a line in <see cref="Probe"/> and <see cref="OpenAs"/>.
/// </summary>
public static class BlockImages
{
    private const int MaxChainDepth = 16;

    /// <summary>Parses xl's <c>format=</c> value; null or empty means "probe".</summary>
    public static BlockImageFormat? ParseFormat(string? format) =>
        string.IsNullOrEmpty(format) ? null
        : TryParseFormat(format, out var f) ? f
        : throw new ArgumentException($"disk format '{format}' is not supported (raw, qcow, qcow2, vhd)");

    private static bool TryParseFormat(string format, out BlockImageFormat parsed)
    {
        BlockImageFormat? f = format.ToLowerInvariant() switch
        {
            "raw" => BlockImageFormat.Raw,
            "qcow" => BlockImageFormat.Qcow,
            "qcow2" => BlockImageFormat.Qcow2,
            "vhd" or "vpc" => BlockImageFormat.Vhd,
            _ => null,
        };
        parsed = f.GetValueOrDefault();
        return f.HasValue;
    }

    /// <summary>Opens an image; throws <see cref="BlockImageException"/> naming it if it cannot be used.</summary>
    public static IBlockImage Open(string path, BlockImageOptions? options = null) =>
        Open(path, options ?? new BlockImageOptions(), 0);

    internal static IBlockImage Open(string path, BlockImageOptions options, int depth)
    {
        if (depth > MaxChainDepth)
            throw new BlockImageException(path, $"backing chain deeper than {MaxChainDepth} images (a loop?)");
        ImageFile file;
        try
        {
            file = ImageFile.Open(path, !options.ReadOnly, direct: false); // headers are read buffered
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new BlockImageException(path, e.Message, e);
        }
        try
        {
            var format = options.Format ?? Probe(file);
            return OpenAs(file, format, options, depth);
        }
        catch (Exception e) when (e is ImageCorruptException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            file.Dispose();
            throw new BlockImageException(path, e.Message, e);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>The format a file's header says it is; raw when no header is recognised.</summary>
    internal static BlockImageFormat Probe(ImageFile file)
    {
        Span<byte> head = stackalloc byte[8];
        int n = file.ReadAt(0, head);
        if (n >= 8 && BinaryPrimitives.ReadUInt32BigEndian(head) == Qcow2Header.Magic)
            return BinaryPrimitives.ReadUInt32BigEndian(head[4..]) == 1 ? BlockImageFormat.Qcow : BlockImageFormat.Qcow2;
        if (n >= 8 && head.SequenceEqual(VhdFooter.Cookie))
            return BlockImageFormat.Vhd;
        long length = file.Length;
        if (length >= VhdFooter.Length && file.ReadAt(length - VhdFooter.Length, head) == 8 && head.SequenceEqual(VhdFooter.Cookie))
            return BlockImageFormat.Vhd;
        return BlockImageFormat.Raw;
    }

    private static IBlockImage OpenAs(ImageFile file, BlockImageFormat format, BlockImageOptions options, int depth)
    {
        switch (format)
        {
            case BlockImageFormat.Raw:
                if (!options.DirectIo)
                    return new RawImage(file, options);
                // Only raw data goes through O_DIRECT, which wants aligned buffers and offsets.
                var direct = ImageFile.Open(file.Path, file.Writable, direct: true);
                file.Dispose();
                return new RawImage(direct, options);
            case BlockImageFormat.Qcow2:
            {
                byte[] first = new byte[Math.Min(file.Length, 1 << 21)];
                int n = file.ReadAt(0, first);
                var header = Qcow2Header.Parse(first.AsSpan(0, n), file.Length);
                var backing = OpenBacking(file.Path, header.BackingFile, header.BackingFormat, options, depth);
                try
                {
                    return new Qcow2Image(file, options, header, backing);
                }
                catch
                {
                    backing?.Dispose();
                    throw;
                }
            }
            case BlockImageFormat.Qcow:
            {
                var header = QcowHeader.Read(file);
                var backing = OpenBacking(file.Path, header.BackingFile, null, options, depth);
                try
                {
                    return new QcowImage(file, options, header, backing);
                }
                catch
                {
                    backing?.Dispose();
                    throw;
                }
            }
            case BlockImageFormat.Vhd:
                return VhdImage.Open(file, options, depth);
            default:
                throw new ArgumentException($"unknown format {format}");
        }
    }

    /// <summary>A backing file, opened read-only: its name is relative to the directory of the image naming it.</summary>
    internal static IBlockImage? OpenBacking(string imagePath, string? backingName, string? backingFormat, BlockImageOptions options, int depth)
    {
        if (string.IsNullOrEmpty(backingName))
            return null;
        if (backingName.StartsWith("json:", StringComparison.Ordinal) || backingName.Contains("://", StringComparison.Ordinal))
            throw new ImageCorruptException($"backing file '{backingName}' is not a plain file name");
        if (backingName.Contains('\0'))
            throw new ImageCorruptException($"backing file name '{backingName.Replace('\0', '?')}' contains a NUL byte");
        string path = Path.IsPathRooted(backingName)
            ? backingName
            : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(imagePath)) ?? "/", backingName);
        // The format comes from the image's own header: one it does not name properly is damage, not a caller's error.
        BlockImageFormat? format = null;
        if (!string.IsNullOrEmpty(backingFormat))
            format = TryParseFormat(backingFormat, out var f) ? f
                : throw new ImageCorruptException($"backing file format '{backingFormat}' is not supported (raw, qcow, qcow2, vhd)");
        try
        {
            return Open(path, options with { Format = format, ReadOnly = true, DirectIo = false }, depth + 1);
        }
        catch (BlockImageException e)
        {
            throw new ImageCorruptException($"backing file: {e.Message}");
        }
    }
}
