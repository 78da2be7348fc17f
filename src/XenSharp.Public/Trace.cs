using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/trace.h: trace classes, the events XenSharp records, and t_rec's header bits.</summary>
public static class Trace
{
    public const int TRACE_EXTRA_MAX = 7, TRACE_EXTRA_SHIFT = 28;

    public const uint TRC_GEN = 0x0001f000, TRC_SCHED = 0x0002f000, TRC_DOM0OP = 0x0004f000, TRC_HVM = 0x0008f000,
        TRC_MEM = 0x0010f000, TRC_PV = 0x0020f000, TRC_ALL = 0x0ffff000;

    public const uint TRC_SCHED_MIN = 0x00021000, TRC_SCHED_CLASS = 0x00022000, TRC_SCHED_VERBOSE = 0x00028000;

    public const uint TRC_LOST_RECORDS = TRC_GEN + 1, TRC_TRACE_WRAP_BUFFER = TRC_GEN + 2, TRC_TRACE_CPU_CHANGE = TRC_GEN + 3;

    public const uint TRC_SCHED_RUNSTATE_CHANGE = TRC_SCHED_MIN + 1, TRC_SCHED_CONTINUE_RUNNING = TRC_SCHED_MIN + 2;

    public const uint TRC_SCHED_DOM_ADD = TRC_SCHED_VERBOSE + 1, TRC_SCHED_DOM_REM = TRC_SCHED_VERBOSE + 2,
        TRC_SCHED_SLEEP = TRC_SCHED_VERBOSE + 3, TRC_SCHED_WAKE = TRC_SCHED_VERBOSE + 4, TRC_SCHED_SWITCH = TRC_SCHED_VERBOSE + 10;

    /// <summary>DOMID_IDLE: the idle domain, whose vCPU n is pCPU n idling.</summary>
    public const ushort DOMID_IDLE = 0x7FFF;
}

/// <summary>struct xen_sysctl_tbuf_op.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenSysctlTbufOp
{
    public uint Cmd;
    public XenctlBitmap CpuMask;
    public uint EvtMask;
    public ulong BufferMfn;
    public uint Size;
}
