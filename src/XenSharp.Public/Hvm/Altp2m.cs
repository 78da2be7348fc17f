using System.Runtime.InteropServices;

namespace XenSharp.Public.Hvm;

/// <summary>HVMOP_altp2m (xen/include/public/hvm/hvm_op.h) and HVM_PARAM_ALTP2M's modes (hvm/params.h).</summary>
public static class Altp2m
{
    public const uint HVMOP_ALTP2M_INTERFACE_VERSION = 0x00000001;

    public const uint HVMOP_altp2m_get_domain_state = 1, HVMOP_altp2m_set_domain_state = 2,
        HVMOP_altp2m_vcpu_enable_notify = 3, HVMOP_altp2m_create_p2m = 4, HVMOP_altp2m_destroy_p2m = 5,
        HVMOP_altp2m_switch_p2m = 6, HVMOP_altp2m_set_mem_access = 7, HVMOP_altp2m_change_gfn = 8,
        HVMOP_altp2m_set_mem_access_multi = 9, HVMOP_altp2m_set_suppress_ve = 10, HVMOP_altp2m_get_suppress_ve = 11,
        HVMOP_altp2m_get_mem_access = 12, HVMOP_altp2m_vcpu_disable_notify = 13, HVMOP_altp2m_get_p2m_idx = 14,
        HVMOP_altp2m_set_suppress_ve_multi = 15, HVMOP_altp2m_set_visibility = 16;

    public const ulong XEN_ALTP2M_disabled = 0, XEN_ALTP2M_mixed = 1, XEN_ALTP2M_external = 2, XEN_ALTP2M_limited = 3;

    /// <summary>Xen's MAX_ALTP2M: views per domain, view 0 being the host p2m's.</summary>
    public const int MAX_ALTP2M = 10;
}

/// <summary>struct xen_hvm_altp2m_op: the header, then the 32-byte union <c>u</c> at offset 16, read through the
/// members below according to <see cref="Cmd"/>.</summary>
[StructLayout(LayoutKind.Explicit, Size = 48)]
public struct XenHvmAltp2mOp
{
    [FieldOffset(0)] public uint Version;
    [FieldOffset(4)] public uint Cmd;
    [FieldOffset(8)] public ushort Domain;
    [FieldOffset(10)] public ushort Pad1;
    [FieldOffset(12)] public uint Pad2;

    /// <summary>xen_hvm_altp2m_domain_state.state.</summary>
    [FieldOffset(16)] public byte State;

    /// <summary>xen_hvm_altp2m_view: view, hvmmem_default_access.</summary>
    [FieldOffset(16)] public ushort View;
    [FieldOffset(18)] public ushort DefaultAccess;

    /// <summary>xen_hvm_altp2m_mem_access: view (<see cref="View"/>), access, pad, gfn.</summary>
    [FieldOffset(18)] public ushort Access;
    [FieldOffset(20)] public uint AccessPad;
    [FieldOffset(24)] public ulong Gfn;

    /// <summary>xen_hvm_altp2m_change_gfn: view (<see cref="View"/>), pad1, pad2, old_gfn, new_gfn.</summary>
    [FieldOffset(18)] public ushort ChangePad1;
    [FieldOffset(20)] public uint ChangePad2;
    [FieldOffset(24)] public ulong OldGfn;
    [FieldOffset(32)] public ulong NewGfn;

    /// <summary>xen_hvm_altp2m_vcpu_enable_notify / disable_notify / get_vcpu_p2m_idx: vcpu_id first.</summary>
    [FieldOffset(16)] public uint VcpuId;
    [FieldOffset(20)] public ushort VcpuAltp2mIdx;
}
