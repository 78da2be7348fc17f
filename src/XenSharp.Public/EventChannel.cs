using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/event_channel.h.</summary>
public static class EventChannel
{
    public const int EVTCHNOP_bind_interdomain = 0, EVTCHNOP_bind_virq = 1, EVTCHNOP_bind_pirq = 2,
        EVTCHNOP_close = 3, EVTCHNOP_send = 4, EVTCHNOP_status = 5, EVTCHNOP_alloc_unbound = 6,
        EVTCHNOP_bind_ipi = 7, EVTCHNOP_bind_vcpu = 8, EVTCHNOP_unmask = 9, EVTCHNOP_reset = 10,
        EVTCHNOP_init_control = 11, EVTCHNOP_expand_array = 12, EVTCHNOP_set_priority = 13;

    public const uint EVTCHNSTAT_closed = 0, EVTCHNSTAT_unbound = 1, EVTCHNSTAT_interdomain = 2,
        EVTCHNSTAT_pirq = 3, EVTCHNSTAT_virq = 4, EVTCHNSTAT_ipi = 5;

    /// <summary>64 words of 64 bits on x86_64.</summary>
    public const int EVTCHN_2L_NR_CHANNELS = 8 * 8 * 64;

    public const uint EVTCHN_FIFO_PRIORITY_MAX = 0, EVTCHN_FIFO_PRIORITY_DEFAULT = 7, EVTCHN_FIFO_PRIORITY_MIN = 15,
        EVTCHN_FIFO_MAX_QUEUES = 16;
    public const int EVTCHN_FIFO_PENDING = 31, EVTCHN_FIFO_MASKED = 30, EVTCHN_FIFO_LINKED = 29,
        EVTCHN_FIFO_BUSY = 28, EVTCHN_FIFO_LINK_BITS = 17;
    public const uint EVTCHN_FIFO_LINK_MASK = (1u << EVTCHN_FIFO_LINK_BITS) - 1;
    public const int EVTCHN_FIFO_NR_CHANNELS = 1 << EVTCHN_FIFO_LINK_BITS;
    /// <summary>event_word_t entries per 4 KiB event array page.</summary>
    public const int EVTCHN_FIFO_EVENT_WORDS_PER_PAGE = 4096 / 4;
}

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnAllocUnbound { public ushort Dom, RemoteDom; public uint Port; }

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnBindInterdomain { public ushort RemoteDom; public uint RemotePort; public uint LocalPort; }

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnBindVirq { public uint Virq, Vcpu, Port; }

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnBindPirq { public uint Pirq, Flags, Port; }

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnBindIpi { public uint Vcpu, Port; }

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnClose { public uint Port; }

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnSend { public uint Port; }

/// <summary>struct evtchn_status; the union u starts at 16 (unbound.dom / interdomain.dom at 16, interdomain.port at 20, virq at 16).</summary>
[StructLayout(LayoutKind.Explicit, Size = 24)]
public struct EvtchnStatus
{
    [FieldOffset(0)] public ushort Dom;
    [FieldOffset(4)] public uint Port;
    [FieldOffset(8)] public uint Status;
    [FieldOffset(12)] public uint Vcpu;
    [FieldOffset(16)] public ushort UnboundDom;
    [FieldOffset(16)] public ushort InterdomainDom;
    [FieldOffset(20)] public uint InterdomainPort;
    [FieldOffset(16)] public uint Pirq;
    [FieldOffset(16)] public uint Virq;
}

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnBindVcpu { public uint Port, Vcpu; }

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnUnmask { public uint Port; }

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnReset { public ushort Dom; }

[StructLayout(LayoutKind.Sequential)]
public unsafe struct EvtchnInitControl
{
    public ulong ControlGfn;
    public uint Offset;
    public uint Vcpu;
    public byte LinkBits;
    public fixed byte Pad[7];
}

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnExpandArray { public ulong ArrayGfn; }

[StructLayout(LayoutKind.Sequential)]
public struct EvtchnSetPriority { public uint Port, Priority; }

/// <summary>struct evtchn_fifo_control_block (72 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct EvtchnFifoControlBlock
{
    public uint Ready;
    public uint Rsvd;
    public fixed uint Head[16];
}
