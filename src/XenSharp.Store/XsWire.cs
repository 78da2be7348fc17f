using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace XenSharp.Store;

/// <summary>Message types of xs_wire.h (enum xsd_sockmsg_type).</summary>
public enum XsType : uint
{
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
    TypeCount = 23,
    Invalid = 0xffff,
}

/// <summary>The errors xenstored reports, named as in xs_wire.h's xsd_errors table; values are Linux errnos.</summary>
public enum XsError
{
    None = 0,
    EPERM = 1,
    ENOENT = 2,
    EIO = 5,
    E2BIG = 7,
    EAGAIN = 11,
    ENOMEM = 12,
    EACCES = 13,
    EBUSY = 16,
    EEXIST = 17,
    EISDIR = 21,
    EINVAL = 22,
    ENOSPC = 28,
    EROFS = 30,
    ENOSYS = 38,
    ENOTEMPTY = 39,
    EISCONN = 106,
}

/// <summary>struct xsd_sockmsg: the 16-byte header in front of every message.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct XsdSockmsg
{
    public const int Size = 16;
    public uint Type;
    public uint ReqId;
    public uint TxId;
    public uint Len;

    public static XsdSockmsg Read(ReadOnlySpan<byte> b) => new()
    {
        Type = BinaryPrimitives.ReadUInt32LittleEndian(b),
        ReqId = BinaryPrimitives.ReadUInt32LittleEndian(b[4..]),
        TxId = BinaryPrimitives.ReadUInt32LittleEndian(b[8..]),
        Len = BinaryPrimitives.ReadUInt32LittleEndian(b[12..]),
    };

    public readonly void Write(Span<byte> b)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(b, Type);
        BinaryPrimitives.WriteUInt32LittleEndian(b[4..], ReqId);
        BinaryPrimitives.WriteUInt32LittleEndian(b[8..], TxId);
        BinaryPrimitives.WriteUInt32LittleEndian(b[12..], Len);
    }
}

internal static class XsWire
{
    public const int PayloadMax = 4096;          // XENSTORE_PAYLOAD_MAX
    public const int AbsPathMax = 3072;          // XENSTORE_ABS_PATH_MAX
    public const int RelPathMax = 2048;          // XENSTORE_REL_PATH_MAX
    public const int RingSize = 1024;            // XENSTORE_RING_SIZE

    // Offsets in struct xenstore_domain_interface.
    public const int ReqOffset = 0;
    public const int RspOffset = 1024;
    public const int ReqConsOffset = 2048;
    public const int ReqProdOffset = 2052;
    public const int RspConsOffset = 2056;
    public const int RspProdOffset = 2060;
    public const int ServerFeaturesOffset = 2064;
    public const int ConnectionOffset = 2068;
    public const int ErrorOffset = 2072;
    public const int InterfaceSize = 2076;

    public const uint ServerFeatureReconnection = 1;
    public const uint ServerFeatureError = 2;
    public const uint Connected = 0;
    public const uint Reconnect = 1;
    public const uint ErrorNone = 0;
    public const uint ErrorComm = 1;
    public const uint ErrorRingIdx = 2;
    public const uint ErrorProto = 3;

    private static readonly byte[][] ErrorNames = BuildErrorNames();

    private static byte[][] BuildErrorNames()
    {
        var names = new byte[128][];
        foreach (XsError e in Enum.GetValues<XsError>())
            if (e != XsError.None)
                names[(int)e] = System.Text.Encoding.ASCII.GetBytes(e.ToString() + "\0");
        return names;
    }

    /// <summary>The nul-terminated error name sent in an XS_ERROR reply.</summary>
    public static ReadOnlySpan<byte> ErrorName(XsError e)
    {
        int i = (int)e;
        return (uint)i < ErrorNames.Length && ErrorNames[i] is { } n ? n : ErrorNames[(int)XsError.EINVAL];
    }
}
