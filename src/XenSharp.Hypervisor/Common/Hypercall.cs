using XenSharp.Hypervisor.X86;
using XenSharp.Hypervisor.X86.Pv;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Common;

/// <summary>The five hypercall arguments (RDI, RSI, RDX, R10, R8 on x86_64).</summary>
internal readonly record struct HypercallArgs(ulong A1, ulong A2 = 0, ulong A3 = 0, ulong A4 = 0, ulong A5 = 0);

/// <summary>A hypercall handler: works on the calling vCPU and returns Xen's result (≥ 0 or -errno).</summary>
internal delegate long HypercallHandler(Vcpu v, in HypercallArgs a);

/// <summary>The hypercall table (Xen's hypercall-defs): number → handler. Anything else is -ENOSYS.</summary>
internal static class Hypercall
{
    private static readonly HypercallHandler?[] Table = Build(
        (Xen.__HYPERVISOR_set_trap_table, PvTraps.SetTrapTable),
        (Xen.__HYPERVISOR_mmu_update, PvMm.MmuUpdate),
        (Xen.__HYPERVISOR_set_gdt, PvMm.SetGdt),
        (Xen.__HYPERVISOR_update_descriptor, PvMm.UpdateDescriptor),
        (Xen.__HYPERVISOR_stack_switch, PvTraps.StackSwitch),
        (Xen.__HYPERVISOR_set_callbacks, PvTraps.SetCallbacks),
        (Xen.__HYPERVISOR_fpu_taskswitch, PvTraps.FpuTaskswitch),
        (Xen.__HYPERVISOR_set_debugreg, PvTraps.SetDebugreg),
        (Xen.__HYPERVISOR_get_debugreg, PvTraps.GetDebugreg),
        (Xen.__HYPERVISOR_memory_op, MemoryOp.Do),
        (Xen.__HYPERVISOR_update_va_mapping, PvMm.UpdateVaMapping),
        (Xen.__HYPERVISOR_update_va_mapping_otherdomain, PvMm.UpdateVaMappingOtherdomain),
        (Xen.__HYPERVISOR_iret, PvTraps.Iret),
        (Xen.__HYPERVISOR_set_segment_base, PvTraps.SetSegmentBase),
        (Xen.__HYPERVISOR_mmuext_op, PvMm.MmuextOp),
        (Xen.__HYPERVISOR_callback_op, PvTraps.CallbackOp),
        (Xen.__HYPERVISOR_multicall, Multicall.Do),
        (Xen.__HYPERVISOR_set_timer_op, TimeOps.SetTimerOp),
        (Xen.__HYPERVISOR_xen_version, XenVersion.Do),
        (Xen.__HYPERVISOR_console_io, ConsoleIo.Do),
        (Xen.__HYPERVISOR_grant_table_op, GrantTableOp.Do),
        (Xen.__HYPERVISOR_vm_assist, VmAssist.Do),
        (Xen.__HYPERVISOR_vcpu_op, VcpuOps.Do),
        (Xen.__HYPERVISOR_sched_op, SchedOp.Do),
        (Xen.__HYPERVISOR_event_channel_op, EventChannelOp.Do),
        (Xen.__HYPERVISOR_physdev_op, PvTraps.PhysdevOp),
        (Xen.__HYPERVISOR_hvm_op, HvmOps.Do),
        (Xen.__HYPERVISOR_dm_op, DmOps.Do),
        (Xen.__HYPERVISOR_sysctl, SysctlOp.Do),
        (Xen.__HYPERVISOR_domctl, DomctlOp.Do),
        (Xen.__HYPERVISOR_hypfs_op, HypfsTree.Do),
        (Xen.__HYPERVISOR_argo_op, ArgoOp.Do),
        (Xen.__HYPERVISOR_xsm_op, Xsm.XsmOp.Do),
        (XenSharp.Public.ArchX86.XenMca.__HYPERVISOR_mca, McaOp.Do));

    private static HypercallHandler?[] Build(params (int Nr, HypercallHandler Handler)[] rows)
    {
        var table = new HypercallHandler?[64];
        foreach (var (nr, h) in rows)
            table[nr] = h;
        return table;
    }

    /// <summary>Work a preemptible hypercall does per invocation before it yields with a continuation
    /// (the role of Xen's hypercall_preempt_check: bounded pieces keep a guest from holding its pCPU).</summary>
    public const int PreemptBudget = 256;

    /// <summary>Ends the current hypercall early: the guest re-executes it with <paramref name="next"/> (Xen's
    /// hypercall_create_continuation). The return value is what the handler returns; the guest never sees it.</summary>
    public static long CreateContinuation(Vcpu v, in HypercallArgs next)
    {
        v.Continuation = next;
        return 0;
    }

    public static bool IsImplemented(ulong nr) => nr < (ulong)Table.Length && Table[nr] is not null;

    /// <summary>Runs hypercall <paramref name="nr"/>. Guest mistakes come back as -errno; a handler bug
    /// is reported on the domain's console and answered -EFAULT rather than taking the pCPU down.</summary>
    public static long Dispatch(Vcpu v, ulong nr, in HypercallArgs a)
    {
        var h = nr < (ulong)Table.Length ? Table[nr] : null;
        if (h is null || (v.Caller is not null && !Dom0HypercallContext.Allows(nr, a)))
            return -Errno.ENOSYS;
        try
        {
            return h(v, a);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            v.Domain.Host.Log($"(d{v.Domain.DomainId}) hypercall {nr} failed in the hypervisor: {e.Message}");
            return -Errno.EFAULT;
        }
    }
}
