using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/argo.h (Xen 4.14's ABI): inter-domain messages by hypercall.</summary>
public static class Argo
{
    public const int XEN_ARGO_OP_register_ring = 1, XEN_ARGO_OP_unregister_ring = 2, XEN_ARGO_OP_sendv = 3, XEN_ARGO_OP_notify = 4;
    public const uint XEN_ARGO_REGISTER_FLAG_FAIL_EXIST = 0x1;
    public const ushort XEN_ARGO_DOMID_ANY = Xen.DOMID_INVALID;
    public const ulong XEN_ARGO_MAX_RING_SIZE = 0x1000000;
    public const uint XEN_ARGO_MAXIOV = 8;
    public const int XEN_ARGO_MSG_SLOT_SIZE = 0x10;
    /// <summary>sizeof(xen_argo_ring_t) before the ring bytes, and of xen_argo_ring_message_header.</summary>
    public const int RingHeaderSize = 64, MessageHeaderSize = 16;
    public const ushort XEN_ARGO_RING_EXISTS = 1 << 0, XEN_ARGO_RING_SHARED = 1 << 1, XEN_ARGO_RING_EMPTY = 1 << 2,
        XEN_ARGO_RING_SUFFICIENT = 1 << 3, XEN_ARGO_RING_EMSGSIZE = 1 << 4, XEN_ARGO_RING_EBUSY = 1 << 5;
}

/// <summary>struct xen_argo_addr.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenArgoAddr
{
    public uint Aport;
    public ushort DomainId;
    public ushort Pad;
}

/// <summary>struct xen_argo_send_addr.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenArgoSendAddr
{
    public XenArgoAddr Src;
    public XenArgoAddr Dst;
}

/// <summary>struct xen_argo_iov.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenArgoIov
{
    public ulong IovHnd;
    public uint IovLen;
    public uint Pad;
}

/// <summary>struct xen_argo_register_ring.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenArgoRegisterRing
{
    public uint Aport;
    public ushort PartnerId;
    public ushort Pad;
    public uint Len;
}

/// <summary>struct xen_argo_unregister_ring.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenArgoUnregisterRing
{
    public uint Aport;
    public ushort PartnerId;
    public ushort Pad;
}

/// <summary>struct xen_argo_ring_data_ent.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenArgoRingDataEnt
{
    public XenArgoAddr Ring;
    public ushort Flags;
    public ushort Pad;
    public uint SpaceRequired;
    public uint MaxMessageSize;
}
