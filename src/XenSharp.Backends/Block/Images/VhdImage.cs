using System.Buffers.Binary;
using System.Text;
using XenSharp.Public;

namespace XenSharp.Backends.Block.Images;

/// <summary>The VHD footer (Microsoft's Virtual Hard Disk Image Format Specification), also copied at the start of dynamic disks.</summary>
internal sealed class VhdFooter
{
    public const int Length = 512;
    public const uint Fixed = 2, Dynamic = 3, Differencing = 4;
    public static ReadOnlySpan<byte> Cookie => "conectix"u8;

    public long DataOffset;
    public long CurrentSize;
    public uint DiskType;
    public byte[] UniqueId = new byte[16];

    public static VhdFooter? TryParse(ReadOnlySpan<byte> b)
    {
        if (b.Length < Length || !b[..8].SequenceEqual(Cookie) || BinaryPrimitives.ReadUInt32BigEndian(b[64..]) != Checksum(b, 64))
            return null;
        var f = new VhdFooter
        {
            DataOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(b[16..]),
            CurrentSize = (long)BinaryPrimitives.ReadUInt64BigEndian(b[48..]),
            DiskType = BinaryPrimitives.ReadUInt32BigEndian(b[60..]),
        };
        b.Slice(68, 16).CopyTo(f.UniqueId);
        return f;
    }

    /// <summary>The one's complement of the byte sum, skipping the 4-byte checksum field at <paramref name="checksumAt"/>.</summary>
    public static uint Checksum(ReadOnlySpan<byte> b, int checksumAt)
    {
        uint sum = 0;
        for (int i = 0; i < b.Length; i++)
            if (i < checksumAt || i >= checksumAt + 4)
                sum += b[i];
        return ~sum;
    }
}

/// <summary>
/// A VHD image. Fixed disks are raw data followed by the footer (served by <see cref="RawImage"/>);
/// dynamic and differencing disks map 2 MiB (or other) blocks through the BAT, each block preceded
/// by its sector bitmap. A differencing disk reads the sectors its bitmap does not mark from its
/// parent, found through the parent locators. A new block is placed where the footer was: the
/// footer is first rewritten past the block, then the bitmap, then the BAT entry, so a process
/// that dies leaves a valid file (a host crash between flushes may not: VHD has no check to lean on).
/// </summary>
internal sealed class VhdImage : FormattedImage
{
    private const uint Unallocated = 0xFFFFFFFF;
    private const int DynamicHeaderLength = 1024;

    private readonly VhdFooter _footer;
    private readonly byte[] _footerBytes;
    private readonly uint[] _bat;
    private readonly long _batOffset;
    private readonly int _blockSize;
    private readonly int _bitmapSize;
    private readonly bool _differencing;
    private readonly byte[] _bitmap;
    private long _footerAt;

    public override BlockImageFormat Format => BlockImageFormat.Vhd;
    public override bool SupportsDiscard => false;

    public static IBlockImage Open(ImageFile file, BlockImageOptions options, int depth)
    {
        long length = file.Length;
        byte[] footerBytes = new byte[VhdFooter.Length];
        VhdFooter? footer = null;
        if (length >= VhdFooter.Length)
        {
            file.ReadExactly(length - VhdFooter.Length, footerBytes);
            footer = VhdFooter.TryParse(footerBytes);
        }
        if (footer is null)
        {
            // The copy at the start of a dynamic disk is there for when the one at the end is damaged;
            // it is not put back, since the next allocation writes a fresh footer at the end.
            if (length < VhdFooter.Length * 2 || file.ReadAt(0, footerBytes) != VhdFooter.Length ||
                (footer = VhdFooter.TryParse(footerBytes)) is null || footer.DiskType == VhdFooter.Fixed)
                throw new ImageCorruptException("no valid VHD footer (bad cookie or checksum)");
            if (file.Writable)
                throw new ImageCorruptException("the VHD footer at the end is damaged; open read-only");
        }
        if (footer.CurrentSize < 0 || footer.CurrentSize % 512 != 0)
            throw new ImageCorruptException($"VHD size {footer.CurrentSize} is not a whole number of sectors");
        switch (footer.DiskType)
        {
            case VhdFooter.Fixed:
                if (footer.CurrentSize > length - VhdFooter.Length)
                    throw new ImageCorruptException($"fixed VHD of {footer.CurrentSize} bytes is longer than its file");
                return new RawImage(file, options, BlockImageFormat.Vhd, footer.CurrentSize);
            case VhdFooter.Dynamic:
            case VhdFooter.Differencing:
                return new VhdImage(file, options, footer, footerBytes, depth);
            default:
                throw new ImageCorruptException($"VHD disk type {footer.DiskType} is not fixed, dynamic or differencing");
        }
    }

    private VhdImage(ImageFile file, BlockImageOptions options, VhdFooter footer, byte[] footerBytes, int depth)
        : base(file, options)
    {
        _footer = footer;
        _footerBytes = footerBytes;
        Size = footer.CurrentSize;
        long length = file.Length;
        _footerAt = length - VhdFooter.Length;
        _differencing = footer.DiskType == VhdFooter.Differencing;

        byte[] h = new byte[DynamicHeaderLength];
        if (footer.DataOffset < VhdFooter.Length || footer.DataOffset > length - DynamicHeaderLength)
            throw new ImageCorruptException($"dynamic header at {footer.DataOffset} is outside the file");
        file.ReadExactly(footer.DataOffset, h);
        if (!h.AsSpan(0, 8).SequenceEqual("cxsparse"u8) || BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(36)) != VhdFooter.Checksum(h, 36))
            throw new ImageCorruptException("bad dynamic disk header (cookie or checksum)");
        _batOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(16));
        uint entries = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(28));
        uint blockSize = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(32));
        if (blockSize < 512 || blockSize > 256u << 20 || (blockSize & (blockSize - 1)) != 0)
            throw new ImageCorruptException($"VHD block size {blockSize} is not a power of two from 512 bytes to 256 MiB");
        _blockSize = (int)blockSize;
        if ((ulong)entries * blockSize < (ulong)Size || entries > (1u << 24))
            throw new ImageCorruptException($"BAT of {entries} entries does not cover the disk");
        if (_batOffset < VhdFooter.Length || _batOffset > length - entries * 4L)
            throw new ImageCorruptException($"BAT at {_batOffset} is outside the file");
        _bitmapSize = ((_blockSize / 512 / 8) + 511) & ~511;
        _bitmap = new byte[_bitmapSize];

        int used = (int)((Size + _blockSize - 1) / _blockSize);
        _bat = new uint[used];
        byte[] bat = new byte[used * 4];
        file.ReadExactly(_batOffset, bat);
        for (int i = 0; i < used; i++)
        {
            _bat[i] = BinaryPrimitives.ReadUInt32BigEndian(bat.AsSpan(i * 4));
            if (_bat[i] != Unallocated && ((long)_bat[i] * 512 < VhdFooter.Length ||
                (long)_bat[i] * 512 + _bitmapSize + _blockSize > _footerAt))
                throw new ImageCorruptException($"BAT entry {i} points at sector {_bat[i]}, past the end of the file");
        }
        if (_differencing)
            Backing = OpenParent(file, h, options, depth);
    }

    private static IBlockImage OpenParent(ImageFile file, byte[] header, BlockImageOptions options, int depth)
    {
        var parentId = header.AsSpan(40, 16).ToArray();
        string dir = Path.GetDirectoryName(Path.GetFullPath(file.Path)) ?? "/";
        var names = new List<string>();
        for (int i = 0; i < 8; i++)
        {
            var entry = header.AsSpan(576 + i * 24, 24);
            uint code = BinaryPrimitives.ReadUInt32BigEndian(entry);
            int dataLength = (int)BinaryPrimitives.ReadUInt32BigEndian(entry[8..]);
            long dataOffset = (long)BinaryPrimitives.ReadUInt64BigEndian(entry[16..]);
            if (code == 0 || dataLength <= 0 || dataLength > 4096)
                continue;
            byte[] data = new byte[dataLength];
            if (file.ReadAt(dataOffset, data) != data.Length)
                continue;
            string? name = code switch
            {
                0x57327275 or 0x57326B75 => Encoding.Unicode.GetString(data).TrimEnd('\0').Replace('\\', '/'), // W2ru, W2ku
                0x4D616358 => Uri.UnescapeDataString(Encoding.UTF8.GetString(data).TrimEnd('\0')).Replace("file://", ""), // MacX
                _ => null,
            };
            if (!string.IsNullOrEmpty(name))
                names.Add(name.StartsWith("./", StringComparison.Ordinal) ? name[2..] : name);
        }
        string unicodeName = Encoding.BigEndianUnicode.GetString(header, 64, 512).TrimEnd('\0');
        if (unicodeName.Length > 0)
            names.Add(unicodeName);

        foreach (string name in names)
        {
            string candidate = Path.IsPathRooted(name) ? name : Path.Combine(dir, name);
            if (!System.IO.File.Exists(candidate))
                continue;
            var parent = BlockImages.Open(candidate, options with { Format = null, ReadOnly = true, DirectIo = false }, depth + 1);
            if (parent is VhdImage vhd && !vhd._footer.UniqueId.AsSpan().SequenceEqual(parentId) ||
                parent is RawImage { Format: BlockImageFormat.Vhd } && !ParentIdMatches(candidate, parentId))
            {
                parent.Dispose();
                throw new ImageCorruptException($"parent {candidate} has a different unique id than the differencing disk expects");
            }
            return parent;
        }
        throw new ImageCorruptException($"parent of the differencing disk not found (tried {string.Join(", ", names)})");
    }

    private static bool ParentIdMatches(string parentPath, byte[] id)
    {
        using var file = ImageFile.Open(parentPath, writable: false, direct: false);
        byte[] footer = new byte[VhdFooter.Length];
        file.ReadExactly(file.Length - VhdFooter.Length, footer);
        return VhdFooter.TryParse(footer) is { } f && f.UniqueId.AsSpan().SequenceEqual(id);
    }

    protected override int ReadCore(long offset, Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            long blockIndex = offset / _blockSize;
            int inBlock = (int)(offset % _blockSize);
            int n = Math.Min(_blockSize - inBlock, destination.Length);
            var part = destination[..n];
            uint sector = _bat[blockIndex];
            if (sector == Unallocated)
            {
                int r = _differencing ? ReadBacking(offset, part) : Zero(part);
                if (r != 0)
                    return r;
            }
            else if (!_differencing)
                ReadData(sector, inBlock, part);
            else
            {
                // Runs of sectors present here or not, as the block's bitmap marks them.
                long blockStart = (long)sector * 512;
                File.ReadExactly(blockStart, _bitmap);
                int first = inBlock / 512, count = n / 512;
                for (int s = 0; s < count;)
                {
                    bool here = BitSet(first + s);
                    int run = 1;
                    while (s + run < count && BitSet(first + s + run) == here)
                        run++;
                    var runPart = part.Slice(s * 512, run * 512);
                    if (here)
                        ReadData(sector, inBlock + s * 512, runPart);
                    else
                    {
                        int r = ReadBacking(offset + s * 512, runPart);
                        if (r != 0)
                            return r;
                    }
                    s += run;
                }
            }
            offset += n;
            destination = destination[n..];
        }
        return 0;
    }

    private static int Zero(Span<byte> part)
    {
        part.Clear();
        return 0;
    }

    private bool BitSet(int sector) => (_bitmap[sector >> 3] & (0x80 >> (sector & 7))) != 0;

    private void ReadData(uint sector, int inBlock, Span<byte> destination) =>
        File.ReadExactly((long)sector * 512 + _bitmapSize + inBlock, destination);

    protected override int WriteCore(long offset, ReadOnlySpan<byte> source)
    {
        while (!source.IsEmpty)
        {
            long blockIndex = offset / _blockSize;
            int inBlock = (int)(offset % _blockSize);
            int n = Math.Min(_blockSize - inBlock, source.Length);
            uint sector = _bat[blockIndex];
            if (sector == Unallocated)
                sector = AllocateBlock(blockIndex);
            File.WriteAt((long)sector * 512 + _bitmapSize + inBlock, source[..n]);
            if (_differencing)
                MarkPresent(sector, inBlock / 512, n / 512);
            offset += n;
            source = source[n..];
        }
        return 0;
    }

    private uint AllocateBlock(long blockIndex)
    {
        long blockStart = _footerAt;
        if (blockStart / 512 >= Unallocated)
            throw new IOException("VHD file would exceed the BAT's 2 TiB sector range");
        long newFooterAt = blockStart + _bitmapSize + _blockSize;
        File.WriteAt(newFooterAt, _footerBytes);
        // A dynamic disk marks every sector of a new block present (its data is the file's hole: zeros);
        // a differencing disk marks none, so the parent shows through until a sector is written. The
        // bitmap covers the old footer.
        _bitmap.AsSpan().Fill(_differencing ? (byte)0 : (byte)0xFF);
        File.WriteAt(blockStart, _bitmap);
        _footerAt = newFooterAt;
        uint sector = (uint)(blockStart / 512);
        _bat[blockIndex] = sector;
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, sector);
        File.WriteAt(_batOffset + blockIndex * 4, bytes);
        return sector;
    }

    private void MarkPresent(uint sector, int first, int count)
    {
        long blockStart = (long)sector * 512;
        File.ReadExactly(blockStart, _bitmap);
        for (int s = first; s < first + count; s++)
            _bitmap[s >> 3] |= (byte)(0x80 >> (s & 7));
        int from = first >> 3, to = (first + count - 1) >> 3;
        File.WriteAt(blockStart + from, _bitmap.AsSpan(from, to - from + 1));
    }
}
