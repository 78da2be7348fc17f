using System.Runtime.InteropServices;
using System.Text;

namespace XenSharp.Toolstack.Config;

/// <summary>A file the user named (a configuration, a kernel, a ramdisk) that cannot be read, with
/// the reason in the words xl uses (strerror's, where there is an errno).</summary>
public sealed class UserFileException(string path, string reason) : IOException($"{path}: {reason}")
{
    public string Path { get; } = path;
    public string Reason { get; } = reason;
}

/// <summary>
/// Reads files the user names. Only regular files are read, whole and up to a limit, so that a
/// directory, a device such as /dev/zero or a FIFO gives a clear error instead of an endless or
/// blocking read.
/// </summary>
public static partial class UserFile
{
    /// <summary>Configurations are small; a larger file is not one.</summary>
    public const long MaxConfigBytes = 16 << 20;

    /// <summary>Kernels and ramdisks: what one array can hold.</summary>
    public const long MaxImageBytes = int.MaxValue - 4096;

    private const int ENOENT = 2, EACCES = 13, ENOTDIR = 20;
    private const uint S_IFMT = 0xF000, S_IFREG = 0x8000, S_IFDIR = 0x4000;

    public static byte[] ReadAllBytes(string path, long limit = MaxImageBytes)
    {
        // struct stat on x86-64 Linux: st_mode at 24, st_size at 48.
        var st = new byte[256];
        if (stat(path, st) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new UserFileException(path, errno switch
            {
                ENOENT or ENOTDIR => "No such file or directory",
                EACCES => "Permission denied",
                _ => Marshal.GetPInvokeErrorMessage(errno),
            });
        }
        uint mode = BitConverter.ToUInt32(st, 24) & S_IFMT;
        if (mode == S_IFDIR) throw new UserFileException(path, "Is a directory");
        if (mode != S_IFREG) throw new UserFileException(path, "not a regular file");
        long size = BitConverter.ToInt64(st, 48);
        if (size > limit) throw new UserFileException(path, $"too large ({size} bytes; at most {limit})");
        try { return File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UserFileException(path, e is UnauthorizedAccessException ? "Permission denied" : e.Message);
        }
    }

    public static string ReadAllText(string path) => Encoding.UTF8.GetString(ReadAllBytes(path, MaxConfigBytes));

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int stat(string path, [Out] byte[] buf);
}
