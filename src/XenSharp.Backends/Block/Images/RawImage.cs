using System.Runtime.InteropServices;
using XenSharp.Public;

namespace XenSharp.Backends.Block.Images;

/// <summary>
/// A raw image: a file or block device whose bytes are the disk's. Requests go straight to
/// pread/pwrite with no lock, so any number may be in flight. With O_DIRECT, a buffer the kernel
/// cannot take as it is (not 4 KiB aligned) goes through one aligned bounce buffer.
/// </summary>
internal sealed unsafe class RawImage : IBlockImage
{
    private const int DirectAlignment = 4096;
    private const int BounceSize = 128 * 1024;

    private readonly ImageFile _file;
    private readonly BlockImageOptions _options;
    private readonly long _limit; // a fixed VHD's footer is not part of the disk
    private long _size;
    private readonly object _bounceLock = new();
    private byte* _bounce;

    public RawImage(ImageFile file, BlockImageOptions options, BlockImageFormat format = BlockImageFormat.Raw, long fixedSize = -1)
    {
        _file = file;
        _options = options;
        Format = format;
        _limit = fixedSize;
        _size = fixedSize >= 0 ? fixedSize : FormattedImage.SectorAligned(file.Length);
        SectorSize = file.LogicalBlockSize;
        if (file.Direct)
            _bounce = (byte*)NativeMemory.AlignedAlloc(BounceSize, DirectAlignment);
    }

    public string Name => _file.Path;
    public BlockImageFormat Format { get; }
    public long Size => Volatile.Read(ref _size);
    public int SectorSize { get; }
    public bool ReadOnly => !_file.Writable;
    public bool SupportsDiscard => !ReadOnly;
    public int DiscardGranularity => Math.Max(SectorSize, 4096);

    public int Read(long offset, Span<byte> destination)
    {
        int check = Check(offset, destination.Length, write: false);
        if (check != 0)
            return check;
        try
        {
            if (NeedsBounce(destination))
                return BounceRead(offset, destination);
            int n = _file.ReadAt(offset, destination);
            destination[n..].Clear(); // a file that shrank under us reads zeros, not stale memory
            return 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Fail(e, "read", offset);
        }
    }

    public int Write(long offset, ReadOnlySpan<byte> source)
    {
        int check = Check(offset, source.Length, write: true);
        if (check != 0)
            return check;
        try
        {
            if (NeedsBounce(source))
                return BounceWrite(offset, source);
            _file.WriteAt(offset, source);
            return 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Fail(e, "write", offset);
        }
    }

    public int Flush() => ReadOnly ? 0 : _file.DataSync();

    public int Discard(long offset, long length)
    {
        if (ReadOnly)
            return -Errno.EROFS;
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
            return -Errno.EINVAL;
        _file.PunchHole(offset, length); // advisory: a host that cannot punch keeps the data
        return 0;
    }

    public long RefreshSize()
    {
        if (_limit < 0)
            Volatile.Write(ref _size, FormattedImage.SectorAligned(_file.Length));
        return Size;
    }

    private int Check(long offset, int length, bool write)
    {
        if (write && ReadOnly)
            return -Errno.EROFS;
        if (offset < 0 || (offset | (uint)length) % SectorSize != 0 || offset > Size || length > Size - offset)
            return -Errno.EINVAL;
        return 0;
    }

    private bool NeedsBounce(ReadOnlySpan<byte> buffer)
    {
        if (_bounce == null)
            return false;
        fixed (byte* p = buffer)
            return ((nuint)p | (nuint)buffer.Length) % DirectAlignment != 0;
    }

    private int BounceRead(long offset, Span<byte> destination)
    {
        lock (_bounceLock)
        {
            var bounce = new Span<byte>(_bounce, BounceSize);
            for (int done = 0; done < destination.Length;)
            {
                int chunk = Math.Min(BounceSize, destination.Length - done);
                int aligned = (chunk + DirectAlignment - 1) & ~(DirectAlignment - 1);
                int n = _file.ReadAt(offset + done, bounce[..aligned]);
                bounce[Math.Min(n, chunk)..chunk].Clear();
                bounce[..chunk].CopyTo(destination[done..]);
                done += chunk;
            }
        }
        return 0;
    }

    private int BounceWrite(long offset, ReadOnlySpan<byte> source)
    {
        lock (_bounceLock)
        {
            var bounce = new Span<byte>(_bounce, BounceSize);
            for (int done = 0; done < source.Length;)
            {
                // O_DIRECT lengths need only the device's block size (512 here), not the buffer's 4 KiB alignment.
                int chunk = Math.Min(BounceSize, source.Length - done);
                source.Slice(done, chunk).CopyTo(bounce);
                _file.WriteAt(offset + done, bounce[..chunk]);
                done += chunk;
            }
        }
        return 0;
    }

    private int Fail(Exception e, string what, long offset)
    {
        _options.Log?.Invoke($"{Name}: {what} at {offset} failed: {e.Message}");
        return ImageFile.ErrnoOf(e);
    }

    public void Dispose()
    {
        _file.Dispose();
        lock (_bounceLock)
        {
            if (_bounce != null)
                NativeMemory.AlignedFree(_bounce);
            _bounce = null;
        }
    }
}
