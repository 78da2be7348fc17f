using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// An HVM or PVH vCPU's x86 state (Xen's hvm_vcpu): its vLAPIC and its event upcall vector, which together are
/// where its external interrupts come from.
/// </summary>
internal sealed unsafe class HvmVcpu : ArchVcpu
{
    public HvmVcpu(Vcpu vcpu) : base(vcpu)
    {
        Vlapic = new Vlapic(vcpu);
        Vmce = new Vmce(vcpu);
    }

    public Vlapic Vlapic { get; }

    /// <summary>The vCPU's machine-check banks and pending #MC (Xen's v->arch.vmce).</summary>
    public Vmce Vmce { get; }

    /// <summary>The upcall vector set by HVMOP_set_evtchn_upcall_vector (per vCPU), 0 when none.</summary>
    public byte UpcallVector;

    private byte EffectiveUpcallVector => UpcallVector != 0 ? UpcallVector : Vcpu.Domain.Arch.CallbackVector;

    // The vLAPIC and the Xen upcall vector, which is level-like (no IRR/ISR, no EOI).
    public override bool HasPendingInterrupt =>
        (Vcpu.VcpuInfo is not null && Vcpu.VcpuInfo->EvtchnUpcallPending != 0 && EffectiveUpcallVector != 0) || PicPending || Vlapic.HasPendingInterrupt;

    /// <summary>The 8259's INT output reaches vCPU 0 when its vLAPIC takes ExtINT on LINT0 or is disabled, or when the
    /// IOAPIC's pin 0 sends ExtINT to its enabled vLAPIC (Xen's vlapic_accept_pic_intr).</summary>
    private bool PicPending => Vcpu.Id == 0 && Vcpu.Domain.Arch.Platform is { } p && p.Pic.IntOutput
        && (Vlapic.AcceptsPicInterrupt || (Vlapic.IsEnabled && p.Ioapic.RoutesExtIntTo(Vlapic.ApicId)));

    public override int Acknowledge()
    {
        byte upcall = EffectiveUpcallVector;
        bool upcallPending = Vcpu.VcpuInfo is not null && Vcpu.VcpuInfo->EvtchnUpcallPending != 0 && upcall != 0;
        // As Xen's hvm_vcpu_has_pending_irq: the callback vector, then the 8259, then the vLAPIC.
        if (!upcallPending && PicPending && Vcpu.Domain.Arch.Platform!.Pic.Acknowledge() is int picVector and >= 0)
            return picVector;
        int lapicVector = Vlapic.HighestDeliverable();
        if (upcallPending && (lapicVector < 0 || (upcall >> 4) >= (lapicVector >> 4)))
            return upcall;
        return Vlapic.Acknowledge();
    }

    public override void Reset() => Vlapic.Reset();

    /// <summary>Events became pending for this vCPU (Xen's hvm_assert_evtchn_irq): a vector upcall is taken
    /// from <see cref="HasPendingInterrupt"/> once the vCPU is kicked; a GSI callback via raises its line for
    /// vCPU 0's events.</summary>
    public override void AssertEvtchnIrq()
    {
        var hvm = Vcpu.Domain.Arch;
        if (UpcallVector == 0 && Vcpu.Id == 0 && hvm.CallbackVia == CallbackVia.Gsi)
            hvm.UpdateCallbackLevel();
        Vcpu.Kick();
    }
}
