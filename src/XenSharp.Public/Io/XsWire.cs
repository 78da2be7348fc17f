using System.Runtime.InteropServices;

namespace XenSharp.Public.Io;

/// <summary>enum xsd_sockmsg_type from xen/include/public/io/xs_wire.h.</summary>
public enum XsdSockmsgType : uint
{
    XS_CONTROL = 0, XS_DEBUG = 0, XS_DIRECTORY = 1, XS_READ = 2, XS_GET_PERMS = 3, XS_WATCH = 4, XS_UNWATCH = 5,
    XS_TRANSACTION_START = 6, XS_TRANSACTION_END = 7, XS_INTRODUCE = 8, XS_RELEASE = 9, XS_GET_DOMAIN_PATH = 10,
    XS_WRITE = 11, XS_MKDIR = 12, XS_RM = 13, XS_SET_PERMS = 14, XS_WATCH_EVENT = 15, XS_ERROR = 16,
    XS_IS_DOMAIN_INTRODUCED = 17, XS_RESUME = 18, XS_SET_TARGET = 19, XS_RESET_WATCHES = 21,
    XS_DIRECTORY_PART = 22, XS_TYPE_COUNT = 23, XS_INVALID = 0xffff,
}

/// <summary>xs_wire.h constants.</summary>
public static class XsWire
{
    public const int XENSTORE_RING_SIZE = 1024, XENSTORE_PAYLOAD_MAX = 4096, XENSTORE_ABS_PATH_MAX = 3072,
        XENSTORE_REL_PATH_MAX = 2048;
    public const uint XENSTORE_SERVER_FEATURE_RECONNECTION = 1, XENSTORE_SERVER_FEATURE_ERROR = 2;
    public const uint XENSTORE_CONNECTED = 0, XENSTORE_RECONNECT = 1;
    public const uint XENSTORE_ERROR_NONE = 0, XENSTORE_ERROR_COMM = 1, XENSTORE_ERROR_RINGIDX = 2,
        XENSTORE_ERROR_PROTO = 3;
    public const int XS_WATCH_PATH = 0, XS_WATCH_TOKEN = 1;

    /// <summary>xsd_errors[]: the error names, in the header's order, with their errno.</summary>
    public static readonly (int Errno, string Name)[] XsdErrors =
    [
        (Errno.EINVAL, "EINVAL"), (Errno.EACCES, "EACCES"), (Errno.EEXIST, "EEXIST"), (Errno.EISDIR, "EISDIR"),
        (Errno.ENOENT, "ENOENT"), (Errno.ENOMEM, "ENOMEM"), (Errno.ENOSPC, "ENOSPC"), (Errno.EIO, "EIO"),
        (Errno.ENOTEMPTY, "ENOTEMPTY"), (Errno.ENOSYS, "ENOSYS"), (Errno.EROFS, "EROFS"), (Errno.EBUSY, "EBUSY"),
        (Errno.EAGAIN, "EAGAIN"), (Errno.EISCONN, "EISCONN"), (Errno.E2BIG, "E2BIG"), (Errno.EPERM, "EPERM"),
    ];
}

/// <summary>struct xsd_sockmsg (16 bytes), followed by len bytes of payload.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XsdSockmsg { public uint Type, ReqId, TxId, Len; }

/// <summary>struct xenstore_domain_interface.</summary>
[StructLayout(LayoutKind.Explicit, Size = 2076)]
public unsafe struct XenstoreDomainInterface
{
    public const int OffsetReq = 0, OffsetRsp = 1024, OffsetReqCons = 2048, OffsetReqProd = 2052,
        OffsetRspCons = 2056, OffsetRspProd = 2060, OffsetServerFeatures = 2064, OffsetConnection = 2068,
        OffsetError = 2072;
    [FieldOffset(0)] public fixed byte Req[1024];
    [FieldOffset(1024)] public fixed byte Rsp[1024];
    [FieldOffset(2048)] public uint ReqCons;
    [FieldOffset(2052)] public uint ReqProd;
    [FieldOffset(2056)] public uint RspCons;
    [FieldOffset(2060)] public uint RspProd;
    [FieldOffset(2064)] public uint ServerFeatures;
    [FieldOffset(2068)] public uint Connection;
    [FieldOffset(2072)] public uint Error;
}
