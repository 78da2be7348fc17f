using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// A PV vCPU's x86 state (Xen's pv_vcpu): its kernel and user page tables (guest_table, guest_table_user, each a
/// validated and referenced L4), its LDT, and flushes other vCPUs asked of it. Events reach it through its
/// callback, not an interrupt vector.
/// </summary>
internal sealed class PvVcpu(Vcpu vcpu) : ArchVcpu(vcpu)
{
    /// <summary>The kernel's L4 (MMUEXT_NEW_BASEPTR), 0 before the builder or the guest sets one.</summary>
    public ulong GuestTable;
    /// <summary>The user L4 (MMUEXT_NEW_USER_BASEPTR), 0 when none.</summary>
    public ulong GuestTableUser;
    /// <summary>The guest runs its kernel (on <see cref="GuestTable"/>) rather than user code.</summary>
    public bool KernelMode = true;
    public ulong LdtBase;
    public uint LdtEntries;
    private volatile bool _flushPending;

    /// <summary>Drops the vCPU's cached translations: now when <paramref name="now"/> (the caller runs it),
    /// otherwise before it next runs guest code.</summary>
    public void FlushTlb(bool now)
    {
        if (now)
        {
            _flushPending = false;
            Vcpu.Engine?.FlushHostTranslations();
            return;
        }
        _flushPending = true;
        Vcpu.Engine?.RequestExit();
    }

    /// <summary>Called on the vCPU's own thread before it runs guest code.</summary>
    public void BeforeRun()
    {
        if (_flushPending)
            FlushTlb(now: true);
    }

    /// <summary>Points the engine at the L4 of the current mode (its CR3 holds a machine address).</summary>
    public void LoadCr3()
    {
        if (Vcpu.Engine is not { } cpu)
            return;
        cpu.GetSpecialRegisters(out var s);
        s.Cr3 = CurrentTable << FrameTable.PageShift;
        cpu.SetSpecialRegisters(s);
        FlushTlb(now: true);
    }

    /// <summary>The L4 the vCPU translates through now.</summary>
    public ulong CurrentTable => KernelMode || GuestTableUser == 0 ? GuestTable : GuestTableUser;

    // Events come through the callback the guest registered, delivered on the way back to guest code.
    public override bool HasPendingInterrupt => false;
    public override int Acknowledge() => -1;
    public override void Reset() { }
    public override void AssertEvtchnIrq() => Vcpu.Kick();
}
