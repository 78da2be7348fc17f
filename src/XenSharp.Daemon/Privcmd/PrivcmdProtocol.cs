using System.Runtime.InteropServices;

namespace XenSharp.Daemon.Privcmd;

/// <summary>
/// The wire protocol of the privcmd socket, shared with the drop-in libraries (src/dom0/privcmd.h, which documents
/// it): one SOCK_SEQPACKET connection per library handle, fixed-size requests each answered by one reply, file
/// descriptors beside them as SCM_RIGHTS.
/// </summary>
internal static class PrivcmdProtocol
{
    public const string SocketName = "privcmd.sock";
    public const ulong Version = 1;
    /// <summary>Linux's EPROTO (not a Xen errno): a library speaking another version of this protocol.</summary>
    public const int EPROTO = 71;

    // enum privcmd_kind
    public const ulong KindXencall = 1, KindEvtchn = 2, KindForeignMemory = 3, KindGnttab = 4, KindGntshr = 5;

    // enum privcmd_op
    public const uint OpOpen = 1, OpHypercall = 2, OpDmOpPosted = 3;
    /// <summary>What a handle returns for a request that gets no reply (a posted one).</summary>
    public const long NoReply = long.MinValue;
    public const uint OpEvtchnBindUnbound = 16, OpEvtchnBindInterdomain = 17, OpEvtchnBindVirq = 18,
        OpEvtchnNotify = 19, OpEvtchnUnbind = 20, OpEvtchnUnmask = 21, OpEvtchnRestrict = 22;
    /// <summary>An event channel handle's shared per-port words (privcmd.h PRIVCMD_EVTCHN_*): how many, and their bits.</summary>
    public const uint EvtchnStatePorts = 1u << 17, EvtchnMasked = 1, EvtchnPending = 2, EvtchnDirect = 4, EvtchnNotified = 8;
    public const uint OpForeignMap = 32;
    public const uint OpGnttabMap = 48, OpGnttabUnmap = 49, OpGnttabCopy = 50, OpGnttabSetMax = 51;
    public const uint OpGntshrShare = 52, OpGntshrUnshare = 53;
    /// <summary>Segments per PRIVCMD_OP_GNTTAB_COPY (struct privcmd_grant_copy, 12 bytes each).</summary>
    public const int MaxCopy = 16, GrantCopySize = 12;
    public const uint OpForeignMapResource = 64;
}

/// <summary>struct privcmd_request.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct PrivcmdRequest
{
    public uint Op;
    public uint Pad;
    public fixed ulong Arg[6];
}

/// <summary>struct privcmd_reply.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct PrivcmdReply
{
    /// <summary>≥ 0, or -errno.</summary>
    public long Result;
    public fixed ulong Value[3];
}
