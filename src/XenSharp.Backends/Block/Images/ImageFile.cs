using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using XenSharp.Public;

namespace XenSharp.Backends.Block.Images;

/// <summary>
/// One open image file or block device: positional I/O (pread/pwrite through <see cref="RandomAccess"/>,
/// so any number of threads may use it at once), fdatasync, hole punching and the device size.
/// </summary>
internal sealed partial class ImageFile : IDisposable
{
    private const int ORdOnly = 0, ORdWr = 2, OCloExec = 0x80000, ODirect = 0x4000;
    private const int FallocKeepSize = 1, FallocPunchHole = 2;
    private const ulong BlkGetSize64 = 0x80081272, BlkSszGet = 0x1268;

    public SafeFileHandle Handle { get; }
    public string Path { get; }
    public bool Writable { get; }
    public bool Direct { get; }
    public bool IsBlockDevice { get; }

    private ImageFile(SafeFileHandle handle, string path, bool writable, bool direct, bool blockDevice)
    {
        Handle = handle;
        Path = path;
        Writable = writable;
        Direct = direct;
        IsBlockDevice = blockDevice;
    }

    public static ImageFile Open(string path, bool writable, bool direct)
    {
        SafeFileHandle handle;
        bool isDirect = false;
        if (direct)
        {
            int fd = open(path, (writable ? ORdWr : ORdOnly) | OCloExec | ODirect);
            if (fd >= 0)
            {
                handle = new SafeFileHandle(fd, ownsHandle: true);
                isDirect = true;
            }
            else
                handle = OpenBuffered(path, writable); // tmpfs and friends refuse O_DIRECT: buffered is still correct
        }
        else
            handle = OpenBuffered(path, writable);

        bool blockDevice = RandomAccess.GetLength(handle) == 0 && ioctl(handle, BlkGetSize64, out ulong _) == 0;
        return new ImageFile(handle, path, writable, isDirect, blockDevice);
    }

    private static SafeFileHandle OpenBuffered(string path, bool writable) =>
        File.OpenHandle(path, FileMode.Open, writable ? FileAccess.ReadWrite : FileAccess.Read, FileShare.ReadWrite);

    /// <summary>The file's length, or a block device's size.</summary>
    public long Length
    {
        get
        {
            if (IsBlockDevice)
                return ioctl(Handle, BlkGetSize64, out ulong size) == 0 ? (long)size : 0;
            return RandomAccess.GetLength(Handle);
        }
    }

    /// <summary>The sector size requests must be aligned to: a block device's logical block size, else 512.</summary>
    public int LogicalBlockSize =>
        IsBlockDevice && ioctl(Handle, BlkSszGet, out int size) == 0 && size is >= 512 and <= 65536 ? size : 512;

    /// <summary>Reads up to the end of the file; returns the bytes read.</summary>
    public int ReadAt(long offset, Span<byte> buffer)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = RandomAccess.Read(Handle, buffer[total..], offset + total);
            if (n <= 0)
                break;
            total += n;
        }
        return total;
    }

    /// <summary>Reads exactly <paramref name="buffer"/>'s length or reports the metadata as corrupt.</summary>
    public void ReadExactly(long offset, Span<byte> buffer)
    {
        if (offset < 0 || ReadAt(offset, buffer) != buffer.Length)
            throw new ImageCorruptException($"read of {buffer.Length} bytes at {offset} goes past the end of the file");
    }

    public void WriteAt(long offset, ReadOnlySpan<byte> data) => RandomAccess.Write(Handle, data, offset);

    public int DataSync()
    {
        if (fdatasync(Handle) == 0)
            return 0;
        int errno = Marshal.GetLastPInvokeError();
        return -(errno == 0 ? Errno.EIO : errno);
    }

    /// <summary>Frees the host space of a range (it reads as zeros afterwards); false where the host cannot.</summary>
    public bool PunchHole(long offset, long length) =>
        length > 0 && fallocate(Handle, FallocPunchHole | FallocKeepSize, offset, length) == 0;

    public void Dispose() => Handle.Dispose();

    /// <summary>Maps a host I/O failure to the errno a request answers with.</summary>
    public static int ErrnoOf(Exception e) => e switch
    {
        IOException io when (io.HResult & 0xFFFF) == 28 || io.HResult == unchecked((int)0x80070070) => -Errno.ENOSPC,
        _ => -Errno.EIO,
    };

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fdatasync(SafeFileHandle fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fallocate(SafeFileHandle fd, int mode, long offset, long length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ioctl(SafeFileHandle fd, ulong request, out ulong value);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ioctl(SafeFileHandle fd, ulong request, out int value);
}
