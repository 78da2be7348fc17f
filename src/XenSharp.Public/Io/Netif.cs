using System.Runtime.InteropServices;

namespace XenSharp.Public.Io;

/// <summary>
/// xen/include/public/io/netif.h: the PV network protocol (netfront ↔ netback). Two rings per queue: the
/// transmit ring carries the guest's packets to the backend (<see cref="NetifTxRequest"/>, one slot per granted
/// fragment, <see cref="NETTXF_more_data"/> chaining the slots of a packet, <see cref="NETTXF_extra_info"/>
/// followed by <see cref="NetifExtraInfo"/> slots); the receive ring lends the backend granted pages to copy
/// the host's packets into (<see cref="NetifRxRequest"/>, answered with <see cref="NetifRxResponse"/>).
/// </summary>
public static class Netif
{
    /// <summary>Slots a packet may always use (XEN_NETIF_NR_SLOTS_MIN); a backend may drop packets using more.</summary>
    public const int XEN_NETIF_NR_SLOTS_MIN = 18;

    /// <summary>The largest packet the transmit protocol can describe (its first slot's 16-bit size).</summary>
    public const int XEN_NETIF_MAX_TX_SIZE = 0xFFFF;

    public const ushort NETTXF_csum_blank = 1 << 0, NETTXF_data_validated = 1 << 1, NETTXF_more_data = 1 << 2,
        NETTXF_extra_info = 1 << 3;

    public const byte XEN_NETIF_EXTRA_TYPE_NONE = 0, XEN_NETIF_EXTRA_TYPE_GSO = 1, XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2,
        XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3, XEN_NETIF_EXTRA_TYPE_HASH = 4, XEN_NETIF_EXTRA_TYPE_MAX = 5;

    public const byte XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0;

    public const byte XEN_NETIF_GSO_TYPE_NONE = 0, XEN_NETIF_GSO_TYPE_TCPV4 = 1, XEN_NETIF_GSO_TYPE_TCPV6 = 2;

    public const ushort NETRXF_data_validated = 1 << 0, NETRXF_csum_blank = 1 << 1, NETRXF_more_data = 1 << 2,
        NETRXF_extra_info = 1 << 3, NETRXF_gso_prefix = 1 << 4;

    public const short NETIF_RSP_DROPPED = -2, NETIF_RSP_ERROR = -1, NETIF_RSP_OKAY = 0,
        /// <summary>The answer to a slot that held extra info rather than data.</summary>
        NETIF_RSP_NULL = 1;

    // ---- the control ring (feature-ctrl-ring; ctrl-ring-ref, event-channel-ctrl) ----

    public const ushort XEN_NETIF_CTRL_TYPE_INVALID = 0, XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS = 1,
        XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS = 2, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY = 3,
        XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE = 4, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE = 5,
        XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING = 6, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM = 7,
        XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE = 8, XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING = 9,
        XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING = 10;

    public const uint XEN_NETIF_CTRL_STATUS_SUCCESS = 0, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED = 1,
        XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER = 2, XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW = 3;

    public const uint XEN_NETIF_CTRL_HASH_TYPE_IPV4 = 1 << 0, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP = 1 << 1,
        XEN_NETIF_CTRL_HASH_TYPE_IPV6 = 1 << 2, XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP = 1 << 3;

    public const uint XEN_NETIF_CTRL_HASH_ALGORITHM_NONE = 0, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ = 1;
}

/// <summary>struct xen_netif_ctrl_request.</summary>
[StructLayout(LayoutKind.Explicit, Size = 16)]
public struct NetifCtrlRequest
{
    [FieldOffset(0)] public ushort Id;
    [FieldOffset(2)] public ushort Type;
    [FieldOffset(4)] public uint Data0;
    [FieldOffset(8)] public uint Data1;
    [FieldOffset(12)] public uint Data2;
}

/// <summary>struct xen_netif_ctrl_response.</summary>
[StructLayout(LayoutKind.Explicit, Size = 12)]
public struct NetifCtrlResponse
{
    [FieldOffset(0)] public ushort Id;
    [FieldOffset(2)] public ushort Type;
    [FieldOffset(4)] public uint Status;
    [FieldOffset(8)] public uint Data;
}

/// <summary>struct netif_tx_request: one granted fragment of a packet. The first slot's <see cref="Size"/> is the
/// whole packet's; each further slot's is its own.</summary>
[StructLayout(LayoutKind.Explicit, Size = 12)]
public struct NetifTxRequest
{
    [FieldOffset(0)] public uint Gref;
    [FieldOffset(4)] public ushort Offset;
    [FieldOffset(6)] public ushort Flags;
    [FieldOffset(8)] public ushort Id;
    [FieldOffset(10)] public ushort Size;
}

/// <summary>struct netif_extra_info: a slot after one flagged NETTXF_extra_info (GSO, multicast, hash). It
/// shares the ring entry of a <see cref="NetifTxRequest"/>.</summary>
[StructLayout(LayoutKind.Explicit, Size = 8)]
public struct NetifExtraInfo
{
    [FieldOffset(0)] public byte Type;
    [FieldOffset(1)] public byte Flags;
    /// <summary>u.gso.size: the segment size.</summary>
    [FieldOffset(2)] public ushort GsoSize;
    /// <summary>u.gso.type: XEN_NETIF_GSO_TYPE_*.</summary>
    [FieldOffset(4)] public byte GsoType;
    [FieldOffset(5)] public byte GsoPad;
    [FieldOffset(6)] public ushort GsoFeatures;
}

/// <summary>struct netif_tx_response.</summary>
[StructLayout(LayoutKind.Explicit, Size = 4)]
public struct NetifTxResponse
{
    [FieldOffset(0)] public ushort Id;
    [FieldOffset(2)] public short Status;
}

/// <summary>struct netif_rx_request: a granted page the backend may fill.</summary>
[StructLayout(LayoutKind.Explicit, Size = 8)]
public struct NetifRxRequest
{
    [FieldOffset(0)] public ushort Id;
    [FieldOffset(2)] public ushort Pad;
    [FieldOffset(4)] public uint Gref;
}

/// <summary>struct netif_rx_response: <see cref="Status"/> is the bytes placed at <see cref="Offset"/> of the
/// page, or a negative NETIF_RSP_*.</summary>
[StructLayout(LayoutKind.Explicit, Size = 8)]
public struct NetifRxResponse
{
    [FieldOffset(0)] public ushort Id;
    [FieldOffset(2)] public ushort Offset;
    [FieldOffset(4)] public ushort Flags;
    [FieldOffset(6)] public short Status;
}
