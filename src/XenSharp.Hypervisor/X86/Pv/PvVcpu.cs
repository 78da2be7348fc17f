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
    /// <summary>The guest's virtual CR2 in its vcpu_info (arch.cr2): a 32-bit guest's vcpu_info has it as a 32-bit
    /// word at offset 8, after a 32-bit evtchn_pending_sel; 0 before the vCPU has a vcpu_info.</summary>
    public ulong GuestCr2
    {
        get => Vcpu.VcpuInfo is null ? 0
            : Vcpu.Domain.Pv is { Is32: true } ? *(uint*)((byte*)Vcpu.VcpuInfo + CompatCr2Offset) : Vcpu.VcpuInfo->Arch.Cr2;
        set
        {
            if (Vcpu.VcpuInfo is null)
                return;
            if (Vcpu.Domain.Pv is { Is32: true })
                *(uint*)((byte*)Vcpu.VcpuInfo + CompatCr2Offset) = (uint)value;
            else
                Vcpu.VcpuInfo->Arch.Cr2 = value;
        }
    }
    private const int CompatCr2Offset = 8;

    /// <summary>A 32-bit guest's callbacks are far: the code selectors beside the addresses.</summary>
    public ushort EventCallbackCs, FailsafeCallbackCs;
    /// <summary>A 32-bit guest's SYSENTER and SYSCALL entries from its user space (CALLBACKTYPE_sysenter and
    /// CALLBACKTYPE_syscall32): selector, EIP, and whether entering masks events. A null selector means none.</summary>
    public ushort SysenterCallbackCs, Syscall32CallbackCs;
    public uint SysenterCallback, Syscall32Callback;
    public bool SysenterMasksEvents, Syscall32MasksEvents;
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
            s.Cr3 = (Vcpu.Domain.Pv is { Is32: true } ? CompatRoot() : CurrentTable) << FrameTable.PageShift;
        // A TSS too short for an I/O bitmap: every port access from ring 3 raises #GP, which PvEmulPriv checks
        // against the virtual IOPL, as Xen's own TSS (with no bitmap for the guest) makes it.
        s.Tr = new Cpu.Segment { Limit = 0, Attributes = 0x8B };
        // The LDT the guest set (MMUEXT_SET_LDT) is read through the vCPU's window, whose pages fault in on use.
        s.Ldt = LdtEntries != 0 && Vcpu.Id < PvDomain.MaxLdtWindows
            ? new Cpu.Segment { Base = PvDomain.LdtVirt(Vcpu.Id), Limit = LdtEntries * 8 - 1, Selector = LdtSelector, Attributes = 0x82 }
            : new Cpu.Segment { Attributes = 0x82 };
    }

    /// <summary>A 32-bit PV vCPU's top-level table (Xen's per-vCPU compat L4): Xen's frame, its slot 0 the guest's
    /// PAE L3 (<see cref="GuestTable"/>) so that the engine walks the guest's tables in long mode, and Xen's own
    /// slots (M2P with the GDT, per-domain) as in a 64-bit guest's L4. 0 until first needed.</summary>
    public uint CompatL4;

    private ulong CompatRoot()
    {
        var frames = Vcpu.Domain.Host.Frames;
        if (CompatL4 == 0)
        {
            if (!frames.TryAllocate(Public.Xen.DOMID_XEN, FrameType.XenShared, out CompatL4))
                throw new HypervisorException("out of machine memory for a 32-bit PV vCPU's L4");
            new Span<byte>(frames.PageAddress(CompatL4), FrameTable.PageSize).Clear();
        }
        var l4 = (ulong*)frames.PageAddress(CompatL4);
        PvMm.InitXenL4Slots(frames, l4, Vcpu.Domain.Pv);
        // The guest's L3 entries carry RW and USER (PvMm adds them, as Xen's adjust_guest_l3e does for a compat
        // guest), so the rights are its L2s' and L1s'.
        l4[0] = (GuestTable << FrameTable.PageShift) | PvMm.PAGE_PRESENT | PvMm.PAGE_RW | PvMm.PAGE_USER | PvMm.PAGE_ACCESSED;
        return CompatL4;
    }

    /// <summary>Gives back <see cref="CompatL4"/> when the domain goes.</summary>
    public void FreeCompatL4()
    {
        if (CompatL4 != 0)
            Vcpu.Domain.Host.Frames.Free(CompatL4);
        CompatL4 = 0;
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
    public override void AssertEvtchnIrq() => Vcpu.Kick();
}
