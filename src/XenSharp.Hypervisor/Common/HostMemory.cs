using System.Runtime.InteropServices;

namespace XenSharp.Hypervisor.Common;

/// <summary>The few libc calls machine memory needs: a lazily backed reservation and returning pages to the host.</summary>
internal static unsafe partial class HostMemory
{
    private const int PROT_READ = 1, PROT_WRITE = 2, MAP_PRIVATE = 0x02, MAP_ANONYMOUS = 0x20, MAP_NORESERVE = 0x4000;
    private const int MADV_DONTNEED = 4;

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int madvise(nint addr, nuint length, int advice);

    public static byte* Reserve(ulong bytes)
    {
        nint p = mmap(0, (nuint)bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == -1)
            throw new OutOfMemoryException($"cannot reserve {bytes >> 20} MiB of machine memory (errno {Marshal.GetLastPInvokeError()})");
        return (byte*)p;
    }

    public static void Release(byte* p, ulong bytes) => munmap((nint)p, (nuint)bytes);

    /// <summary>Gives the pages back to the host; they read as zero when touched again.</summary>
    public static void Discard(byte* p, ulong bytes) => madvise((nint)p, (nuint)bytes, MADV_DONTNEED);
}
