using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// The libc calls machine memory needs: the address-space reservation, memfds that back guest memory, mapping
/// them into the reservation, and returning their pages to the host.
/// </summary>
internal static unsafe partial class HostMemory
{
    private const int PROT_READ = 1, PROT_WRITE = 2;
    private const int MAP_SHARED = 0x01, MAP_PRIVATE = 0x02, MAP_FIXED = 0x10, MAP_ANONYMOUS = 0x20, MAP_NORESERVE = 0x4000;
    private const uint MFD_CLOEXEC = 1;
    private const int FALLOC_FL_KEEP_SIZE = 1, FALLOC_FL_PUNCH_HOLE = 2;
    private const int EINTR = 4;

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int memfd_create(string name, uint flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ftruncate(int fd, long length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fallocate(int fd, int mode, long offset, long len);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fstat(int fd, byte* buf);

    [LibraryImport("libc", SetLastError = true)]
    private static partial long lseek(int fd, long offset, int whence);

    private const int SEEK_DATA = 3;

    public static byte* Reserve(ulong bytes)
    {
        nint p = mmap(0, (nuint)bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == -1)
            throw new OutOfMemoryException($"cannot reserve {bytes >> 20} MiB of machine memory (errno {Marshal.GetLastPInvokeError()})");
        return (byte*)p;
    }

    public static void Release(byte* p, ulong bytes) => munmap((nint)p, (nuint)bytes);

    /// <summary>A new, empty memfd (close-on-exec), or null with the errno when the host refuses one.</summary>
    public static SafeFileHandle? CreateMemoryFile(string name, out int errno)
    {
        int fd = memfd_create(name, MFD_CLOEXEC);
        errno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
        return fd < 0 ? null : new SafeFileHandle(fd, ownsHandle: true);
    }

    public static bool SetFileSize(SafeFileHandle fd, long bytes) => ftruncate((int)fd.DangerousGetHandle(), bytes) == 0;

    /// <summary>Maps [offset, offset+bytes) of <paramref name="fd"/> shared at <paramref name="at"/>, replacing what was there.</summary>
    public static bool MapFileAt(byte* at, ulong bytes, SafeFileHandle fd, long offset) =>
        mmap((nint)at, (nuint)bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE,
            (int)fd.DangerousGetHandle(), (nint)offset) == (nint)at;

    /// <summary>Puts fresh private anonymous memory at <paramref name="at"/>, dropping the file mapping that was there
    /// (other processes' mappings of that file are not affected).</summary>
    public static bool MapAnonymousAt(byte* at, ulong bytes) =>
        mmap((nint)at, (nuint)bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == (nint)at;

    /// <summary>Frees a file range's pages (FALLOC_FL_PUNCH_HOLE): every mapping of it, in any process, reads zeroes
    /// afterwards and the host has the memory back. Returns the errno, 0 on success.</summary>
    public static int PunchHole(SafeFileHandle fd, long offset, long bytes)
    {
        while (true)
        {
            if (fallocate((int)fd.DangerousGetHandle(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes) == 0)
                return 0;
            int e = Marshal.GetLastPInvokeError();
            if (e != EINTR)
                return e;
        }
    }

    /// <summary>The file holds a page at <paramref name="offset"/> (SEEK_DATA): false for a hole, which a read
    /// through a shared mapping would fill with a newly allocated zero page.</summary>
    public static bool HasData(SafeFileHandle fd, long offset) => lseek((int)fd.DangerousGetHandle(), offset, SEEK_DATA) == offset;

    /// <summary>Bytes of host memory the file holds (st_blocks * 512), or -1.</summary>
    public static long AllocatedBytes(SafeFileHandle fd)
    {
        // struct stat on x86_64 (and the generic layout of arm64) has st_blocks at offset 64 of 144 bytes.
        byte* st = stackalloc byte[256];
        if (fstat((int)fd.DangerousGetHandle(), st) != 0)
            return -1;
        return *(long*)(st + 64) * 512;
    }
}
