using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/hypfs.h: the hypervisor file system of __HYPERVISOR_hypfs_op.</summary>
public static class Hypfs
{
    public const int XEN_HYPFS_VERSION = 1;
    public const int XEN_HYPFS_MAX_PATHLEN = 1024;

    public const byte XEN_HYPFS_TYPE_DIR = 0, XEN_HYPFS_TYPE_BLOB = 1, XEN_HYPFS_TYPE_STRING = 2,
        XEN_HYPFS_TYPE_UINT = 3, XEN_HYPFS_TYPE_INT = 4, XEN_HYPFS_TYPE_BOOL = 5;
    public const byte XEN_HYPFS_ENC_PLAIN = 0, XEN_HYPFS_ENC_GZIP = 1;

    public const uint XEN_HYPFS_OP_get_version = 0, XEN_HYPFS_OP_read = 1, XEN_HYPFS_OP_write_contents = 2;

    /// <summary>offsetof(struct xen_hypfs_dirlistentry, name): the direntry, then off_next.</summary>
    public const int DirlistNameOffset = 14;
}

/// <summary>struct xen_hypfs_direntry.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenHypfsDirentry
{
    public byte Type;
    public byte Encoding;
    public ushort Pad;
    public uint ContentLen;
    public uint MaxWriteLen;
}
