using System.Runtime.InteropServices;

namespace XenSharp.Public.Hvm;

/// <summary>xen/include/public/hvm/hvm_op.h.</summary>
public static class HvmOp
{
    public const int HVMOP_set_param = 0, HVMOP_get_param = 1, HVMOP_set_pci_intx_level = 2,
        HVMOP_set_isa_irq_level = 3, HVMOP_set_pci_link_route = 4, HVMOP_flush_tlbs = 5, HVMOP_pagetable_dying = 9,
        HVMOP_get_time = 10, HVMOP_xentrace = 11, HVMOP_set_mem_access = 12, HVMOP_get_mem_access = 13,
        HVMOP_get_mem_type = 15, HVMOP_set_evtchn_upcall_vector = 23, HVMOP_guest_request_vm_event = 24,
        HVMOP_altp2m = 25;
}

/// <summary>struct xen_hvm_param (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenHvmParam { public ushort Domid; public ushort Pad; public uint Index; public ulong Value; }

/// <summary>struct xen_hvm_pagetable_dying.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct XenHvmPagetableDying { public ushort Domid; public fixed ushort Pad[3]; public ulong Gpa; }

/// <summary>struct xen_hvm_get_time.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenHvmGetTime { public ulong Now; }

/// <summary>struct xen_hvm_evtchn_upcall_vector.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenHvmEvtchnUpcallVector { public uint Vcpu; public byte Vector; }
