using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// A PV vCPU's x86 state (Xen's pv_vcpu): its kernel and user page tables (guest_table, guest_table_user, each a
/// validated and referenced L4), its LDT, and flushes other vCPUs asked of it. Events reach it through its
/// callback, not an interrupt vector.
/// </summary>
internal sealed unsafe class PvVcpu : ArchVcpu
{
    public PvVcpu(Vcpu vcpu) : base(vcpu)
    {
        // A PV vCPU starts with events masked; the kernel unmasks them once its callback is in place.
        if (vcpu.VcpuInfo is not null)
            vcpu.VcpuInfo->EvtchnUpcallMask = 1;
    }

    /// <summary>The kernel's L4 (MMUEXT_NEW_BASEPTR), 0 before the builder or the guest sets one.</summary>
    public ulong GuestTable;
    /// <summary>The user L4 (MMUEXT_NEW_USER_BASEPTR), 0 when none.</summary>
    public ulong GuestTableUser;
    /// <summary>The guest runs its kernel (on <see cref="GuestTable"/>) rather than user code.</summary>
    public bool KernelMode = true;
    /// <summary>The guest's GDT frames (set_gdt), each holding a general and a descriptor-page type reference.</summary>
    public readonly ulong[] GdtFrames = new ulong[PvDomain.ReservedGdtPage];
    public int GdtFrameCount;
    public ulong GdtEntries;
    public ulong LdtBase;
    public uint LdtEntries;
    /// <summary>The guest's LDT pages mapped in the vCPU's LDT window so far, by page (0: not yet), each holding a
    /// general and a descriptor-page type reference.</summary>
    public readonly ulong[] LdtFrames = new ulong[PvDomain.LdtWindowPages];
    /// <summary>The LDTR selector the engine holds while an LDT is set: one of Xen's reserved GDT entries.</summary>
    public const ushort LdtSelector = 0xE050;

    /// <summary>The virtual IDT (set_trap_table): handler and flags per vector, address 0 when none.</summary>
    public readonly Public.ArchX86.TrapInfo[] TrapTable = new Public.ArchX86.TrapInfo[256];
    /// <summary>The kernel stack a trap from user mode switches to (stack_switch).</summary>
    public ulong KernelSs, KernelSp;
    public ulong EventCallback, FailsafeCallback, SyscallCallback;
    public bool SyscallMasksEvents;
    /// <summary>GS bases of the two modes: the engine holds the current one, this the other.</summary>
    public ulong GsBaseKernel, GsBaseUser;
    /// <summary>The guest's virtual IOPL (physdev_op set_iopl), which I/O instructions are checked against.</summary>
    public uint Iopl;
    /// <summary>CR0.TS as the guest set it (fpu_taskswitch).</summary>
    public bool TaskSwitched;
    public readonly ulong[] DebugRegs = new ulong[8];
    /// <summary>CR4 as the guest sees it (Xen's ctrlreg[4]); the engine runs with Xen's bits plus the guest's own.</summary>
    public ulong Cr4 = PvEmulPriv.Cr4GuestVisible;
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
        if (EventsNeedDelivery && EventCallback != 0 && Vcpu.Engine is { } cpu)
            PvTraps.DeliverEventUpcall(Vcpu, cpu);
    }

    /// <summary>Points the engine at the L4 of the current mode (its CR3 holds a machine address).</summary>
    public void LoadCr3()
    {
        if (Vcpu.Engine is not { } cpu)
            return;
        cpu.GetSpecialRegisters(out var s);
        ApplyXenState(ref s);
        cpu.SetSpecialRegisters(s);
        FlushTlb(now: true);
    }

    /// <summary>What the hypervisor owns of a PV vCPU's state, over whatever a context set: the GDT (Xen's, with
    /// its flat selectors) and CR3 on the current L4.</summary>
    public void ApplyXenState(ref Cpu.SpecialRegisters s)
    {
        s.Gdt = Vcpu.Id < PvDomain.MaxGdtWindows
            ? new Cpu.DescriptorTable { Base = PvDomain.GdtVirt(Vcpu.Id), Limit = MachToPhys.GdtLimit }
            : new Cpu.DescriptorTable { Base = MachToPhys.GdtVirt, Limit = MachToPhys.GdtLimit };
        if (GuestTable != 0)
            s.Cr3 = CurrentTable << FrameTable.PageShift;
        // A TSS too short for an I/O bitmap: every port access from ring 3 raises #GP, which PvEmulPriv checks
        // against the virtual IOPL, as Xen's own TSS (with no bitmap for the guest) makes it.
        s.Tr = new Cpu.Segment { Limit = 0, Attributes = 0x8B };
        // The LDT the guest set (MMUEXT_SET_LDT) is read through the vCPU's window, whose pages fault in on use.
        s.Ldt = LdtEntries != 0 && Vcpu.Id < PvDomain.MaxLdtWindows
            ? new Cpu.Segment { Base = PvDomain.LdtVirt(Vcpu.Id), Limit = LdtEntries * 8 - 1, Selector = LdtSelector, Attributes = 0x82 }
            : new Cpu.Segment { Attributes = 0x82 };
    }

    /// <summary>Loads the guest's own CR4 bits (Xen's pv_make_cr4) into the engine beside Xen's.</summary>
    public void ApplyCr4()
    {
        if (Vcpu.Engine is not { } cpu)
            return;
        cpu.GetSpecialRegisters(out var s);
        s.Cr4 = (s.Cr4 & ~PvEmulPriv.Cr4GuestMask) | (Cr4 & PvEmulPriv.Cr4GuestMask);
        cpu.SetSpecialRegisters(s);
    }

    /// <summary>The L4 the vCPU translates through now.</summary>
    public ulong CurrentTable => KernelMode || GuestTableUser == 0 ? GuestTable : GuestTableUser;

    // Events come through the callback the guest registered, delivered on the way back to guest code.
    public override bool HasPendingInterrupt => false;
    public override int Acknowledge() => -1;
    public override void Reset() { }

    /// <summary>Pending events the guest has not masked (Xen's local_events_need_delivery): what wakes a blocked PV
    /// vCPU and what the upcall is made for.</summary>
    public unsafe bool EventsNeedDelivery =>
        Vcpu.VcpuInfo is not null && Vcpu.VcpuInfo->EvtchnUpcallPending != 0 && Vcpu.VcpuInfo->EvtchnUpcallMask == 0;

    /// <summary>A running vCPU leaves guest code to take the upcall; a blocked one wakes.</summary>
    public override void AssertEvtchnIrq()
    {
        Vcpu.Engine?.RequestExit();
        Vcpu.Kick();
    }
}
