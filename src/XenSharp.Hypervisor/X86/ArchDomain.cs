using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// The x86 state of a domain that depends on its guest type (Xen's arch_domain with its hvm/pv union):
/// <see cref="HvmDomain"/> for HVM and PVH guests; a PV variant goes beside it.
/// </summary>
internal abstract class ArchDomain(Domain domain)
{
    public Domain Domain { get; } = domain;

    /// <summary>Lets go of what the domain holds here (caller makes sure no vCPU runs).</summary>
    public virtual void Teardown() { }
}

/// <summary>
/// The x86 state of a vCPU that depends on the guest type (Xen's arch_vcpu with its hvm/pv union), including
/// where its external interrupts come from: <see cref="HvmVcpu"/> for HVM and PVH guests.
/// </summary>
internal abstract class ArchVcpu(Vcpu vcpu) : IInterruptSource
{
    public Vcpu Vcpu { get; } = vcpu;

    public abstract bool HasPendingInterrupt { get; }
    public abstract int Acknowledge();

    /// <summary>INIT: the interrupt state goes back to its power-on values.</summary>
    public abstract void Reset();

    /// <summary>Events became pending in the vCPU's vcpu_info: deliver the upcall the guest type's way and
    /// wake the vCPU (Xen's arch_evtchn_inject).</summary>
    public abstract void AssertEvtchnIrq();
}
