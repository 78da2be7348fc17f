using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.ArchX86;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// A 32-bit PV vCPU's traps and CPU-state hypercalls, the compat ABI (Xen's x86_64/compat/entry.S and
/// pv/callback.c's compat half): the guest kernel runs in ring 1 on one set of page tables, so there is no mode
/// switch of tables; a trap from ring 3 switches to the stack stack_switch named. Frames are 32-bit: [SS, ESP,]
/// EFLAGS, CS (the saved upcall mask in bits 16–23), EIP[, error code]. Segments are taken as flat, as every 32-bit
/// PV kernel's are on Xen's FLAT selectors.
/// </summary>
internal static unsafe class PvCompatTraps
{
    private const uint IF = 1 << 9, TF = 1 << 8, NT = 1 << 14, RF = 1 << 16, VM = 1 << 17, IOPL = 3 << 12;

    /// <summary>A flat compatibility-mode code or data segment for <paramref name="selector"/> at its RPL.</summary>
    public static Segment Flat(ushort selector, bool code)
    {
        int rpl = selector & 3;
        ushort attributes = (ushort)(0xC090 | (rpl << 5) | (code ? 0xB : 0x3));
        return new Segment { Selector = selector, Limit = 0xFFFFFFFF, Attributes = attributes };
    }

    /// <summary>A selector of the guest's as Xen fixes it up (fixup_guest_code_selector): RPL 0 becomes the
    /// kernel's ring 1.</summary>
    private static ushort GuestSelector(uint sel) => (sel & 3) == 0 ? (ushort)(sel | 1) : (ushort)sel;

    /// <summary>Xen's compat_create_bounce_frame: to <paramref name="cs"/>:<paramref name="handler"/>.</summary>
    public static void CreateBounceFrame(Vcpu v, IVcpu cpu, ushort cs, uint handler, uint? errorCode, bool maskEvents)
    {
        var pv = v.Pv!;
        var info = v.VcpuInfo;
        cpu.GetRegisters(out var r);
        cpu.GetSpecialRegisters(out var s);
        byte mask = info is null ? (byte)1 : info->EvtchnUpcallMask;
        bool fromUser = (s.Cs.Selector & 3) == 3;
        uint flags = ((uint)r.Rflags & ~(IF | IOPL)) | (mask == 0 ? IF : 0) | (pv.Iopl << 12);
        uint esp = (uint)r.Rsp;
        ushort ss = s.Ss.Selector;
        Span<uint> frame = stackalloc uint[6];
        int n = 0;
        if (errorCode is { } e)
            frame[n++] = e;
        frame[n++] = (uint)r.Rip;
        frame[n++] = s.Cs.Selector | ((uint)mask << 16);
        frame[n++] = flags;
        if (fromUser)
        {
            frame[n++] = esp;
            frame[n++] = ss;
            esp = (uint)pv.KernelSp;
            ss = GuestSelector((uint)pv.KernelSs);
        }
        esp -= (uint)n * 4;
        if (!GuestAccess.CopyTo(v, esp, System.Runtime.InteropServices.MemoryMarshal.AsBytes(frame[..n])))
        {
            PvTraps.CrashDomain(v, $"cannot write a trap frame at 0x{esp:x}");
            return;
        }
        if (maskEvents && info is not null)
            info->EvtchnUpcallMask = 1;
        r.Rsp = esp;
        r.Rip = handler;
        r.Rflags = (r.Rflags & ~(ulong)(TF | NT | RF | VM)) | 2;
        cpu.SetRegisters(r);
        s.Cs = Flat(GuestSelector(cs), code: true);
        s.Ss = Flat(ss, code: false);
        cpu.SetSpecialRegisters(s);
    }

    /// <summary>Delivers <paramref name="vector"/> through the guest's trap table, or crashes the domain when it has
    /// no handler for it.</summary>
    public static void Bounce(Vcpu v, IVcpu cpu, int vector, uint? errorCode)
    {
        var ti = v.Pv!.TrapTable[vector];
        if (ti.Address == 0)
        {
            cpu.GetRegisters(out var r);
            PvTraps.CrashDomain(v, $"unhandled trap {vector} at 0x{r.Rip:x}{(errorCode is { } e ? $" error 0x{e:x}" : "")} esp 0x{r.Rsp:x}");
            return;
        }
        CreateBounceFrame(v, cpu, ti.Cs, (uint)ti.Address, errorCode, maskEvents: (ti.Flags & Public.ArchX86.Pv.TI_IF) != 0);
    }

    /// <summary>HYPERVISOR_iret of the compat ABI (Xen's compat_iret): EAX, EIP, CS, EFLAGS on the stack, and ESP,
    /// SS after them when it returns to another ring.</summary>
    public static long Iret(Vcpu v)
    {
        var cpu = v.Engine!;
        cpu.GetRegisters(out var r);
        cpu.GetSpecialRegisters(out var s);
        Span<uint> frame = stackalloc uint[6];
        v.IretDone = true;
        if (!GuestAccess.CopyFrom(v, (uint)r.Rsp, System.Runtime.InteropServices.MemoryMarshal.AsBytes(frame[..4])))
        {
            PvTraps.CrashDomain(v, "fault reading the IRET context");
            return 0;
        }
        ushort cs = GuestSelector(frame[2] & 0xFFFF);
        uint eflags = frame[3];
        uint esp = (uint)r.Rsp + 16;
        ushort ss = s.Ss.Selector;
        if ((cs & 3) != (s.Cs.Selector & 3))
        {
            if (!GuestAccess.CopyFrom(v, (uint)r.Rsp + 16, System.Runtime.InteropServices.MemoryMarshal.AsBytes(frame.Slice(4, 2))))
            {
                PvTraps.CrashDomain(v, "fault reading the IRET context");
                return 0;
            }
            esp = frame[4];
            ss = GuestSelector(frame[5] & 0xFFFF);
        }
        r.Rax = frame[0];
        r.Rip = frame[1];
        r.Rsp = esp;
        r.Rflags = (eflags & 0x3F7FD5 & ~(IOPL | VM)) | IF | 2;
        cpu.SetRegisters(r);
        s.Cs = Flat(cs, code: true);
        s.Ss = Flat(ss, code: false);
        cpu.SetSpecialRegisters(s);
        if (v.VcpuInfo is not null)
            v.VcpuInfo->EvtchnUpcallMask = (byte)((eflags & IF) == 0 ? 1 : 0);
        return 0;
    }

    /// <summary>set_trap_table of the compat ABI: 8-byte entries up to the one with address 0.</summary>
    public static long SetTrapTable(Vcpu v, in HypercallArgs a)
    {
        var pv = v.Pv!;
        if (a.A1 == 0)
        {
            Array.Clear(pv.TrapTable);
            return 0;
        }
        for (ulong i = 0; ; i++)
        {
            if (i > 0 && i % (ulong)Hypercall.PreemptBudget == 0)
                return Hypercall.CreateContinuation(v, new HypercallArgs(a.A1 + i * 8));
            if (!GuestAccess.ReadElement(v, a.A1, i, out CompatTrapInfo ti))
                return -Errno.EFAULT;
            if (ti.Address == 0)
                return 0;
            pv.TrapTable[ti.Vector] = new TrapInfo { Vector = ti.Vector, Flags = ti.Flags, Cs = ti.Cs, Address = ti.Address };
        }
    }

    /// <summary>set_callbacks(event_cs, event_eip, failsafe_cs, failsafe_eip) of the compat ABI.</summary>
    public static long SetCallbacks(Vcpu v, in HypercallArgs a)
    {
        var pv = v.Pv!;
        pv.EventCallbackCs = GuestSelector((uint)a.A1);
        pv.EventCallback = (uint)a.A2;
        pv.FailsafeCallbackCs = GuestSelector((uint)a.A3);
        pv.FailsafeCallback = (uint)a.A4;
        return 0;
    }

    /// <summary>CALLBACKOP_register of the compat ABI (Xen's compat_register_guest_callback): event, failsafe,
    /// SYSENTER and 32-bit SYSCALL entries by selector and EIP; another type is -ENOSYS.</summary>
    public static long RegisterCallback(Vcpu v, ulong arg)
    {
        var pv = v.Pv!;
        if (!GuestAccess.Read(v, arg, out CompatCallbackRegister reg))
            return -Errno.EFAULT;
        ushort cs = GuestSelector(reg.Cs);
        bool mask = (reg.Flags & Callback.CALLBACKF_mask_events) != 0;
        switch (reg.Type)
        {
            case Callback.CALLBACKTYPE_event:
                (pv.EventCallbackCs, pv.EventCallback) = (cs, reg.Eip);
                return 0;
            case Callback.CALLBACKTYPE_failsafe:
                (pv.FailsafeCallbackCs, pv.FailsafeCallback) = (cs, reg.Eip);
                return 0;
            case Callback.CALLBACKTYPE_syscall32:
                (pv.Syscall32CallbackCs, pv.Syscall32Callback, pv.Syscall32MasksEvents) = (cs, reg.Eip, mask);
                return 0;
            case Callback.CALLBACKTYPE_sysenter:
                (pv.SysenterCallbackCs, pv.SysenterCallback, pv.SysenterMasksEvents) = (cs, reg.Eip, mask);
                return 0;
            case Callback.CALLBACKTYPE_nmi:
                return 0; // no NMIs are sent to PV guests here
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>CALLBACKOP_unregister of the compat ABI: only the NMI callback may go (Xen's
    /// compat_unregister_guest_callback); the others are -EINVAL, an unknown type -ENOSYS.</summary>
    public static long UnregisterCallback(Vcpu v, ulong arg)
    {
        if (!GuestAccess.Read(v, arg, out CallbackUnregister unreg))
            return -Errno.EFAULT;
        return unreg.Type switch
        {
            Callback.CALLBACKTYPE_event or Callback.CALLBACKTYPE_failsafe or Callback.CALLBACKTYPE_syscall32
                or Callback.CALLBACKTYPE_sysenter => -Errno.EINVAL,
            Callback.CALLBACKTYPE_nmi => 0,
            _ => -Errno.ENOSYS,
        };
    }

    private const int VectorGeneralProtection = 13;

    /// <summary>SYSENTER from a 32-bit guest (Xen's sysenter_entry and compat_sysenter). The engine's SYSENTER MSRs
    /// are null, so the instruction faults #GP(0) as it would on a CPU whose MSRs Xen did not set; the hypervisor
    /// recognises it and does what Xen's entry does: a frame with a null EIP and ESP (the guest's user space passes
    /// its return address and stack in EDX and ECX), CS 3 and Xen's user SS, to the registered entry; without one,
    /// or with NT set, the guest's #GP handler with error code 0.</summary>
    public static bool TrySysenter(Vcpu v, IVcpu cpu)
    {
        cpu.GetRegisters(out var r);
        Span<byte> code = stackalloc byte[2];
        if (!GuestAccess.CopyFrom(v, (uint)r.Rip, code) || code[0] != 0x0F || code[1] != 0x34)
            return false;
        var pv = v.Pv!;
        cpu.GetSpecialRegisters(out var s);
        uint handler = pv.SysenterCallback;
        bool mask = pv.SysenterMasksEvents;
        ushort cs = pv.SysenterCallbackCs;
        uint? errorCode = null;
        if ((r.Rflags & NT) != 0 || handler == 0)
        {
            var gp = pv.TrapTable[VectorGeneralProtection];
            (handler, cs, mask, errorCode) = ((uint)gp.Address, gp.Cs, (gp.Flags & Public.ArchX86.Pv.TI_IF) != 0, 0u);
        }
        if ((cs & ~3) == 0)
            cs = pv.TrapTable[VectorGeneralProtection].Cs;
        // The state Xen's entry saves: EIP 0, CS 3 (ring 3, null), ESP 0, its flat user SS; NT cleared.
        r.Rip = 0;
        r.Rsp = 0;
        r.Rflags &= ~(ulong)NT;
        cpu.SetRegisters(r);
        s.Cs = Flat(3, code: true);
        s.Ss = Flat(Public.ArchX86.Pv.FLAT_RING3_DS_X86_32, code: false);
        cpu.SetSpecialRegisters(s);
        if (handler == 0)
        {
            PvTraps.CrashDomain(v, "SYSENTER with no entry registered and no #GP handler");
            return true;
        }
        CreateBounceFrame(v, cpu, cs, handler, errorCode, mask);
        return true;
    }

    /// <summary>SYSCALL from a 32-bit guest (Xen's compat_syscall, the AMD path): ECX gets the return address as the
    /// instruction leaves it, the frame reports Xen's flat user CS and SS, and the registered 32-bit SYSCALL entry
    /// gets it; with none, the guest's #GP handler with error code 0 at the instruction.</summary>
    public static void Syscall(Vcpu v, IVcpu cpu)
    {
        var pv = v.Pv!;
        cpu.GetRegisters(out var r);
        cpu.GetSpecialRegisters(out var s);
        r.Rcx = (uint)r.Rip;
        uint handler = pv.Syscall32Callback;
        ushort cs = pv.Syscall32CallbackCs;
        bool mask = pv.Syscall32MasksEvents;
        uint? errorCode = null;
        if ((cs & ~3) == 0)
        {
            var gp = pv.TrapTable[VectorGeneralProtection];
            (handler, cs, mask, errorCode) = ((uint)gp.Address, gp.Cs, (gp.Flags & Public.ArchX86.Pv.TI_IF) != 0, 0u);
            r.Rip -= 2;
        }
        cpu.SetRegisters(r);
        s.Cs = Flat(Public.ArchX86.Pv.FLAT_RING3_CS_X86_32, code: true);
        s.Ss = Flat(Public.ArchX86.Pv.FLAT_RING3_DS_X86_32, code: false);
        cpu.SetSpecialRegisters(s);
        if (handler == 0)
        {
            PvTraps.CrashDomain(v, "SYSCALL with no entry registered and no #GP handler");
            return;
        }
        CreateBounceFrame(v, cpu, cs, handler, errorCode, mask);
    }
}
