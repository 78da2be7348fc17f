using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/xsm/flask_op.h: the FLASK sub-operations of __HYPERVISOR_xsm_op.</summary>
public static class FlaskOp
{
    public const uint XEN_FLASK_INTERFACE_VERSION = 1;

    public const uint FLASK_LOAD = 1, FLASK_GETENFORCE = 2, FLASK_SETENFORCE = 3, FLASK_CONTEXT_TO_SID = 4,
        FLASK_SID_TO_CONTEXT = 5, FLASK_ACCESS = 6, FLASK_CREATE = 7, FLASK_RELABEL = 8, FLASK_USER = 9,
        FLASK_POLICYVERS = 10, FLASK_GETBOOL = 11, FLASK_SETBOOL = 12, FLASK_COMMITBOOLS = 13, FLASK_MLS = 14,
        FLASK_DISABLE = 15, FLASK_GETAVC_THRESHOLD = 16, FLASK_SETAVC_THRESHOLD = 17, FLASK_AVC_HASHSTATS = 18,
        FLASK_AVC_CACHESTATS = 19, FLASK_MEMBER = 20, FLASK_ADD_OCONTEXT = 21, FLASK_DEL_OCONTEXT = 22,
        FLASK_GET_PEER_SID = 23, FLASK_RELABEL_DOMAIN = 24, FLASK_DEVICETREE_LABEL = 25;

    /// <summary>xen/xsm/flask/include/flask.h's initial SIDs a toolstack names (libxl gives an unlabelled guest
    /// SECINITSID_DOMU and an unlabelled device model SECINITSID_DOMDM).</summary>
    public const uint SECINITSID_DOMU = 12, SECINITSID_DOMDM = 13;
}

/// <summary>struct xen_flask_load.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenFlaskLoad
{
    public ulong Buffer;
    public uint Size;
}

/// <summary>struct xen_flask_sid_context (FLASK_CONTEXT_TO_SID, FLASK_SID_TO_CONTEXT).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenFlaskSidContext
{
    public uint Sid;
    public uint Size;
    public ulong Context;
}

/// <summary>struct xen_flask_access.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenFlaskAccess
{
    public uint Ssid, Tsid, Tclass, Req;
    public uint Allowed, AuditAllow, AuditDeny, Seqno;
}

/// <summary>struct xen_flask_transition (FLASK_CREATE, FLASK_RELABEL, FLASK_MEMBER).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenFlaskTransition
{
    public uint Ssid, Tsid, Tclass, Newsid;
}

/// <summary>struct xen_flask_boolean (FLASK_GETBOOL, FLASK_SETBOOL).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenFlaskBoolean
{
    public uint BoolId;
    public byte Enforcing, Pending, NewValue, Commit;
    public uint Size;
    public ulong Name;
}

/// <summary>struct xen_flask_hash_stats.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenFlaskHashStats
{
    public uint Entries, BucketsUsed, BucketsTotal, MaxChainLen;
}

/// <summary>struct xen_flask_peersid.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenFlaskPeersid
{
    public uint Evtchn, Sid;
}

/// <summary>struct xen_flask_relabel.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenFlaskRelabel
{
    public uint Domid, Sid;
}

/// <summary>struct xen_flask_op: the command, the interface version, and a union whose largest member
/// (xen_flask_access, xen_flask_cache_stats) is 32 bytes, 8-aligned for the guest handles.</summary>
[StructLayout(LayoutKind.Sequential, Size = 40)]
public unsafe struct XenFlaskOp
{
    public uint Cmd;
    public uint InterfaceVersion;
    public fixed byte U[32];

    /// <summary>The union as member <typeparamref name="T"/>.</summary>
    public ref T As<T>() where T : unmanaged => ref System.Runtime.CompilerServices.Unsafe.As<byte, T>(ref U[0]);
}
