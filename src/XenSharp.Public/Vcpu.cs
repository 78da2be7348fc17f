using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/vcpu.h.</summary>
public static class VcpuOp
{
    public const int VCPUOP_initialise = 0, VCPUOP_up = 1, VCPUOP_down = 2, VCPUOP_is_up = 3,
        VCPUOP_get_runstate_info = 4, VCPUOP_register_runstate_memory_area = 5, VCPUOP_set_periodic_timer = 6,
        VCPUOP_stop_periodic_timer = 7, VCPUOP_set_singleshot_timer = 8, VCPUOP_stop_singleshot_timer = 9,
        VCPUOP_register_vcpu_info = 10, VCPUOP_send_nmi = 11, VCPUOP_get_physid = 12,
        VCPUOP_register_vcpu_time_memory_area = 13;
    public const int RUNSTATE_running = 0, RUNSTATE_runnable = 1, RUNSTATE_blocked = 2, RUNSTATE_offline = 3;
    public const ulong XEN_RUNSTATE_UPDATE = 1UL << 63;
    public const uint VCPU_SSHOTTMR_future = 1;
}

/// <summary>struct vcpu_runstate_info (48 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct VcpuRunstateInfo
{
    public int State;
    public ulong StateEntryTime;
    public fixed ulong Time[4];
}

[StructLayout(LayoutKind.Sequential)]
public struct VcpuRegisterRunstateMemoryArea { public ulong Addr; }

[StructLayout(LayoutKind.Sequential)]
public struct VcpuSetPeriodicTimer { public ulong PeriodNs; }

[StructLayout(LayoutKind.Sequential)]
public struct VcpuSetSingleshotTimer { public ulong TimeoutAbsNs; public uint Flags; }

[StructLayout(LayoutKind.Sequential)]
public struct VcpuRegisterVcpuInfo { public ulong Mfn; public uint Offset; public uint Rsvd; }

[StructLayout(LayoutKind.Sequential)]
public struct VcpuGetPhysid { public ulong PhysId; }

[StructLayout(LayoutKind.Sequential)]
public struct VcpuRegisterTimeMemoryArea { public ulong Addr; }
