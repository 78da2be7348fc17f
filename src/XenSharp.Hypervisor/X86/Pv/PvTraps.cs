using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.ArchX86;
using static XenSharp.Public.ArchX86.Pv;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// A 64-bit PV vCPU's traps and CPU-state hypercalls (Xen's pv/traps.c, x86_64/entry.S's create_bounce_frame,
/// pv/iret.c, pv/callback.c): the engine hands every exception, software interrupt and SYSCALL to the hypervisor
/// (<see cref="IX86Vcpu.InterceptTraps"/>); a SYSCALL from the guest kernel is a hypercall, anything else is
/// bounced to the handler the guest registered, on its kernel stack and page tables, as Xen does.
/// </summary>
internal static unsafe class PvTraps
{
    private const ulong IF = 1 << 9, TF = 1 << 8, NT = 1 << 14, RF = 1 << 16, VM = 1 << 17, IOPL = 3 << 12;
    private const int SyscallLength = 2;
    private const int VectorPageFault = 14, VectorGeneralProtection = 13, VectorInvalidOpcode = 6;
    /// <summary>Xen's forced-emulation prefix: ud2; .ascii "xen" — the CPUID after it is Xen's (PV CPUID).</summary>
    private static ReadOnlySpan<byte> ForcedEmulationPrefix => [0x0F, 0x0B, 0x78, 0x65, 0x6E];

    /// <summary>XENSHARP_PV_TRACE=1: every PV hypercall and bounced trap on the daemon's standard error, for
    /// following a guest kernel's boot.</summary>
    internal static readonly bool Trace = Environment.GetEnvironmentVariable("XENSHARP_PV_TRACE") is "1";

    /// <summary>Flat 64-bit ring-3 code and data segments in the engine's access-rights layout.</summary>
    public static readonly Segment KernelCs = new() { Selector = FLAT_KERNEL_CS, Limit = 0xFFFFFFFF, Attributes = 0xA0FB };
    public static readonly Segment KernelSs = new() { Selector = FLAT_KERNEL_SS, Limit = 0xFFFFFFFF, Attributes = 0xC0F3 };

    /// <summary>The exits a PV vCPU handles its own way; the rest (preemption, errors) are handled as for HVM.</summary>
    public static bool Handles(VcpuExitReason reason) => reason is VcpuExitReason.Syscall or VcpuExitReason.Exception
        or VcpuExitReason.Mmio or VcpuExitReason.Io or VcpuExitReason.RdMsr or VcpuExitReason.WrMsr or VcpuExitReason.Hlt
        or VcpuExitReason.Hypercall;

    /// <summary>Handles an exit of a PV vCPU for which <see cref="Handles"/> is true.</summary>
    public static bool HandleExit(Vcpu v, IVcpu cpu, in VcpuExit exit)
    {
        switch (exit.Reason)
        {
            case VcpuExitReason.Syscall:
                if (v.Domain.Pv!.Is32)
                    PvCompatTraps.Syscall(v, cpu);
                else if (v.Pv!.KernelMode)
                    DoHypercall(v, cpu);
                else
                    BounceSyscall(v, cpu);
                return !v.DescheduleRequested;
            case VcpuExitReason.Exception:
                DoTrap(v, cpu, exit);
                return !v.DescheduleRequested;
            case VcpuExitReason.Mmio:
                // A write to one of its own page tables or descriptor pages, or an access to a frame it may not
                // reach: writable page-table emulation is not there yet, so the guest cannot go on.
                return Crash(v, $"access to machine address 0x{exit.Address:x} it may not {(exit.IsWrite ? "write" : "read")}");
            case VcpuExitReason.Hypercall:
                // VMCALL is no PV instruction: #UD, as on hardware without VMX in the guest.
                cpu.GetRegisters(out var r);
                r.Rip -= 3;
                cpu.SetRegisters(r);
                DoTrap(v, cpu, new VcpuExit { Reason = VcpuExitReason.Exception, Port = VectorInvalidOpcode });
                return !v.DescheduleRequested;
            case VcpuExitReason.Io or VcpuExitReason.RdMsr or VcpuExitReason.WrMsr or VcpuExitReason.Hlt:
                // Ring 3 never reaches these without a #GP first; an engine that did would be a bug.
                return Crash(v, $"unexpected {exit.Reason} exit");
            default:
                return true;
        }
    }

    public static bool CrashDomain(Vcpu v, string why) => Crash(v, why);

    private static bool Crash(Vcpu v, string why)
    {
        v.Domain.Host.Log($"(d{v.Domain.DomainId}) vcpu {v.Id}: {why}; crashing the domain");
        v.Domain.Host.ShutdownDomain(v.Domain, Sched.SHUTDOWN_crash);
        return false;
    }

    private const int IntLength = 2;

    /// <summary>INT $0x82 from a 32-bit PV kernel (ring 1): a hypercall of the compat ABI (Xen's
    /// do_entry_int82), number in EAX, arguments in EBX, ECX, EDX, ESI, EDI, the result in EAX. From ring 3 the
    /// vector is not the guest's to raise: false, and it goes on as any software interrupt.</summary>
    private static bool TryCompatHypercall(Vcpu v, IVcpu cpu)
    {
        cpu.GetSpecialRegisters(out var s);
        if ((s.Cs.Selector & 3) != 1)
            return false;
        cpu.GetRegisters(out var r);
        v.Compat = true;
        v.Continuation = null;
        long result = Hypercall.Dispatch(v, (uint)r.Rax,
            new HypercallArgs((uint)r.Rbx, (uint)r.Rcx, (uint)r.Rdx, (uint)r.Rsi, (uint)r.Rdi));
        if (Trace)
            Console.Error.WriteLine($"d{v.Domain.DomainId}v{v.Id} compat hypercall {(uint)r.Rax}(0x{(uint)r.Rbx:x}, 0x{(uint)r.Rcx:x}, 0x{(uint)r.Rdx:x}, 0x{(uint)r.Rsi:x}, 0x{(uint)r.Rdi:x}) at 0x{r.Rip:x} = {result}");
        if (v.IretDone)
        {
            v.IretDone = false;
            return true;
        }
        if (v.Continuation is { } next)
        {
            v.Continuation = null;
            r.Rbx = (uint)next.A1; r.Rcx = (uint)next.A2; r.Rdx = (uint)next.A3; r.Rsi = (uint)next.A4; r.Rdi = (uint)next.A5;
            r.Rip -= IntLength;
        }
        else
            r.Rax = (uint)result;
        cpu.SetRegisters(r);
        return true;
    }

    private static void DoHypercall(Vcpu v, IVcpu cpu)
    {
        cpu.GetRegisters(out var r);
        v.Compat = false;
        v.Continuation = null;
        long result = Hypercall.Dispatch(v, r.Rax, new HypercallArgs(r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8));
        if (Trace)
            Console.Error.WriteLine($"d{v.Domain.DomainId}v{v.Id} hypercall {r.Rax}(0x{r.Rdi:x}, 0x{r.Rsi:x}, 0x{r.Rdx:x}, 0x{r.R10:x}, 0x{r.R8:x}) at 0x{r.Rip:x} = {result}");
        if (v.IretDone)
        {
            // HYPERVISOR_iret replaced the whole register state: nothing of the old one goes back.
            v.IretDone = false;
            return;
        }
        if (v.Continuation is { } next)
        {
            v.Continuation = null;
            r.Rdi = next.A1; r.Rsi = next.A2; r.Rdx = next.A3; r.R10 = next.A4; r.R8 = next.A5;
            r.Rip -= SyscallLength;
        }
        else
            r.Rax = (ulong)result;
        cpu.SetRegisters(r);
    }

    private static void DoTrap(Vcpu v, IVcpu cpu, in VcpuExit exit)
    {
        var pv = v.Pv!;
        int vector = (int)exit.Port;
        bool software = exit.IsWrite;
        if (vector == VectorInvalidOpcode && pv.KernelMode && TryForcedEmulation(v, cpu))
            return;
        if (software && vector == HYPERCALL_VECTOR_X86_32 && v.Domain.Pv!.Is32 && TryCompatHypercall(v, cpu))
            return;
        if (software)
        {
            // INT n may reach a handler only if its DPL lets the mode in (a 64-bit guest kernel counts as ring 1; a
            // 32-bit one runs there, its user space in ring 3). INT $0x80 with DPL 3 is Linux's system call, the
            // direct trap of Xen's int80_bounce.
            int dpl = pv.TrapTable[vector].Flags & TI_DPL_MASK;
            if (dpl < (v.Domain.Pv!.Is32 ? CurrentRing(cpu) : pv.KernelMode ? 1 : 3))
            {
                cpu.GetRegisters(out var r);
                r.Rip -= vector is 3 or 4 ? 1UL : 2UL; // #GP faults on the INT instruction itself
                cpu.SetRegisters(r);
                Bounce(v, cpu, VectorGeneralProtection, (uint)(vector << 3) | 2);
                return;
            }
            Bounce(v, cpu, vector, null);
            return;
        }
        if (vector == VectorGeneralProtection && exit.Size == 1 && exit.Data == 0 && PvEmulPriv.TryEmulate(v, cpu))
            return;
        // After the privileged instructions, which come far more often: SYSENTER faults #GP(0) the same way.
        if (vector == VectorGeneralProtection && exit.Size == 1 && exit.Data == 0 && v.Domain.Pv!.Is32
            && PvCompatTraps.TrySysenter(v, cpu))
            return;
        if (vector == VectorPageFault && PvMm.TryLdtFault(v, exit.Address, out uint? ldtGp))
        {
            if (ldtGp is { } code)
                Bounce(v, cpu, VectorGeneralProtection, code);
            return;
        }
        if (vector == VectorPageFault && exit.Size == 1 && PvPtwr.TryEmulate(v, cpu, exit.Address, (uint)exit.Data))
            return;
        if (vector == VectorPageFault)
            pv.GuestCr2 = exit.Address;
        Bounce(v, cpu, vector, exit.Size == 1 ? (uint)exit.Data : null);
    }

    private static int CurrentRing(IVcpu cpu)
    {
        cpu.GetSpecialRegisters(out var s);
        return s.Cs.Selector & 3;
    }

    /// <summary>ud2; "xen"; cpuid from the guest kernel: Xen's CPUID answer, then on past the instruction.</summary>
    private static bool TryForcedEmulation(Vcpu v, IVcpu cpu)
    {
        cpu.GetRegisters(out var r);
        Span<byte> code = stackalloc byte[7];
        if (!GuestAccess.CopyFrom(v, r.Rip, code) || !code[..5].SequenceEqual(ForcedEmulationPrefix) || code[5] != 0x0F || code[6] != 0xA2)
            return false;
        if (v.Cpuid is null)
            return false;
        v.Cpuid.Cpuid((uint)r.Rax, (uint)r.Rcx, out uint a, out uint b, out uint c, out uint d);
        r.Rax = a; r.Rbx = b; r.Rcx = c; r.Rdx = d;
        r.Rip += 7;
        cpu.SetRegisters(r);
        return true;
    }

    /// <summary>Delivers <paramref name="vector"/> to the guest's handler for it, or crashes the domain when it
    /// has none (Xen's pv_inject_event with a missing trap_ctxt entry).</summary>
    private static void Bounce(Vcpu v, IVcpu cpu, int vector, uint? errorCode)
    {
        if (v.Domain.Pv!.Is32)
        {
            PvCompatTraps.Bounce(v, cpu, vector, errorCode);
            return;
        }
        var ti = v.Pv!.TrapTable[vector];
        if (Trace)
        {
            cpu.GetRegisters(out var t);
            Console.Error.WriteLine($"d{v.Domain.DomainId}v{v.Id} trap {vector} at 0x{t.Rip:x} error {errorCode?.ToString("x") ?? "-"} cr2 0x{v.Pv!.GuestCr2:x} rsp 0x{t.Rsp:x} rax 0x{t.Rax:x} rcx 0x{t.Rcx:x} rdx 0x{t.Rdx:x} rdi 0x{t.Rdi:x} rsi 0x{t.Rsi:x}");
        }
        if (ti.Address == 0)
        {
            cpu.GetRegisters(out var r);
            // The top of the stack names the caller, which the crash report needs more than anything.
            Span<ulong> top = stackalloc ulong[64];
            string stack = "";
            if (GuestAccess.CopyFrom(v, r.Rsp, System.Runtime.InteropServices.MemoryMarshal.AsBytes(top)))
                foreach (ulong word in top)
                    if (word >> 40 == 0xFFFFFF) // what looks like kernel text: return addresses
                        stack += $" 0x{word:x}";
            Crash(v, $"unhandled trap {vector} at 0x{r.Rip:x}{(errorCode is { } e ? $" error 0x{e:x}" : "")} rsp 0x{r.Rsp:x}{stack}");
            return;
        }
        CreateBounceFrame(v, cpu, ti.Address, errorCode, maskEvents: (ti.Flags & TI_IF) != 0);
    }

    /// <summary>SYSCALL from guest user space: the registers as the instruction leaves them (RCX the return
    /// address, R11 the flags), then the frame to the kernel's syscall callback.</summary>
    private static void BounceSyscall(Vcpu v, IVcpu cpu)
    {
        var pv = v.Pv!;
        if (pv.SyscallCallback == 0)
        {
            // No callback: Xen raises #UD, as a CPU without SYSCALL would.
            cpu.GetRegisters(out var u);
            u.Rip -= SyscallLength;
            cpu.SetRegisters(u);
            Bounce(v, cpu, VectorInvalidOpcode, null);
            return;
        }
        cpu.GetRegisters(out var r);
        r.Rcx = r.Rip;
        r.R11 = r.Rflags & ~RF;
        cpu.SetRegisters(r);
        CreateBounceFrame(v, cpu, pv.SyscallCallback, null, pv.SyscallMasksEvents);
    }

    /// <summary>An event upcall: pending events and the guest has them unmasked.</summary>
    public static void DeliverEventUpcall(Vcpu v, IVcpu cpu)
    {
        if (Trace)
            Console.Error.WriteLine($"d{v.Domain.DomainId}v{v.Id} event upcall");
        if (v.Domain.Pv!.Is32)
            PvCompatTraps.CreateBounceFrame(v, cpu, v.Pv!.EventCallbackCs, (uint)v.Pv.EventCallback, null, maskEvents: true);
        else
            CreateBounceFrame(v, cpu, v.Pv!.EventCallback, null, maskEvents: true);
    }

    /// <summary>
    /// Xen's create_bounce_frame for a 64-bit guest: from user mode, switch to the kernel's page tables and stack;
    /// push SS, RSP, RFLAGS (IF showing the event mask, IOPL the virtual one), CS (RPL 0 for kernel context, the
    /// saved upcall mask in bits 32–39), RIP, the error code if any, then R11 and RCX, on a 16-byte aligned stack;
    /// then enter the handler with TF, NT, RF and VM clear.
    /// </summary>
    public static void CreateBounceFrame(Vcpu v, IVcpu cpu, ulong handler, uint? errorCode, bool maskEvents)
    {
        var pv = v.Pv!;
        var info = v.VcpuInfo;
        cpu.GetRegisters(out var r);
        cpu.GetSpecialRegisters(out var s);
        byte mask = info is null ? (byte)1 : info->EvtchnUpcallMask;
        bool fromUser = !pv.KernelMode;
        ulong cs = (fromUser ? s.Cs.Selector | 3UL : s.Cs.Selector & ~3UL) | ((ulong)mask << 32);
        ulong flags = (r.Rflags & ~(IF | IOPL)) | (mask == 0 ? IF : 0) | ((ulong)pv.Iopl << 12);
        ulong userRsp = r.Rsp, ss = s.Ss.Selector;
        ulong rsp = r.Rsp;
        if (fromUser)
        {
            ToggleGuestMode(v, cpu);
            rsp = pv.KernelSp;
        }
        rsp &= ~0xFUL;
        Span<ulong> frame = stackalloc ulong[8];
        int n = 0;
        frame[n++] = r.Rcx;
        frame[n++] = r.R11;
        if (errorCode is { } e)
            frame[n++] = e;
        frame[n++] = r.Rip;
        frame[n++] = cs;
        frame[n++] = flags;
        frame[n++] = userRsp;
        frame[n++] = ss;
        rsp -= (ulong)n * 8;
        if (!GuestAccess.CopyTo(v, rsp, System.Runtime.InteropServices.MemoryMarshal.AsBytes(frame[..n])))
        {
            Crash(v, $"cannot write a trap frame at 0x{rsp:x}");
            return;
        }
        if (maskEvents && info is not null)
            info->EvtchnUpcallMask = 1;
        cpu.GetRegisters(out r);
        r.Rsp = rsp;
        r.Rip = handler;
        r.Rflags = (r.Rflags & ~(TF | NT | RF | VM)) | 2;
        cpu.SetRegisters(r);
        cpu.GetSpecialRegisters(out s);
        s.Cs = KernelCs;
        s.Ss = KernelSs;
        cpu.SetSpecialRegisters(s);
    }

    /// <summary>Between guest kernel and guest user mode (Xen's toggle_guest_mode): the other L4 and the other
    /// GS base.</summary>
    public static void ToggleGuestMode(Vcpu v, IVcpu cpu)
    {
        var pv = v.Pv!;
        cpu.GetSpecialRegisters(out var s);
        if (pv.KernelMode)
            pv.GsBaseKernel = s.Gs.Base;
        else
            pv.GsBaseUser = s.Gs.Base;
        pv.KernelMode = !pv.KernelMode;
        s.Gs.Base = pv.KernelMode ? pv.GsBaseKernel : pv.GsBaseUser;
        cpu.SetSpecialRegisters(s);
        pv.LoadCr3();
    }

    // ---- hypercalls ----

    private const int PHYSDEVOP_set_iopl = 6;

    /// <summary>physdev_op(cmd, arg) for a PV guest: PHYSDEVOP_set_iopl sets the virtual IOPL its I/O instructions
    /// are checked against (Xen's do_physdev_op); a domain without devices has nothing else to ask.</summary>
    public static long PhysdevOp(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is not { } pv)
            return -Errno.ENOSYS;
        switch ((int)a.A1)
        {
            case PHYSDEVOP_set_iopl:
                if (!GuestAccess.Read(v, a.A2, out uint iopl))
                    return -Errno.EFAULT;
                if (iopl > 3)
                    return -Errno.EINVAL;
                pv.Iopl = iopl;
                return 0;
            default:
                return -Errno.ENOSYS;
        }
    }

    /// <summary>HYPERVISOR_iret: pops an iret_context from the guest stack (Xen's do_iret).</summary>
    public static long Iret(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is not { } pv || v.Engine is not { } cpu)
            return -Errno.ENOSYS;
        if (v.Domain.Pv!.Is32)
            return PvCompatTraps.Iret(v);
        cpu.GetRegisters(out var r);
        if (!GuestAccess.Read(v, r.Rsp, out IretContext ctx))
        {
            Crash(v, "fault reading the IRET context");
            v.IretDone = true;
            return 0;
        }
        if ((ctx.Cs & 3) == 3)
        {
            if (pv.GuestTableUser == 0)
            {
                Crash(v, "switching to user mode with no user page tables");
                v.IretDone = true;
                return 0;
            }
            if (pv.KernelMode)
                ToggleGuestMode(v, cpu);
        }
        cpu.GetRegisters(out r);
        r.Rax = ctx.Rax;
        r.Rip = ctx.Rip;
        r.Rsp = ctx.Rsp;
        r.Rflags = (ctx.Rflags & 0x3F7FD5 & ~(IOPL | VM)) | IF | 2;
        if ((ctx.Flags & VGCF_in_syscall) == 0)
        {
            r.R11 = ctx.R11;
            r.Rcx = ctx.Rcx;
        }
        cpu.SetRegisters(r);
        cpu.GetSpecialRegisters(out var s);
        s.Cs = KernelCs with { Selector = (ushort)(ctx.Cs | 3) };
        s.Ss = KernelSs with { Selector = (ushort)(ctx.Ss | 3) };
        cpu.SetSpecialRegisters(s);
        if (v.VcpuInfo is not null)
            v.VcpuInfo->EvtchnUpcallMask = (byte)((ctx.Rflags & IF) == 0 ? 1 : 0);
        v.IretDone = true;
        return 0;
    }

    /// <summary>set_trap_table(traps): entries up to the one with address 0; a null pointer clears the table.</summary>
    public static long SetTrapTable(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is not { } pv)
            return -Errno.ENOSYS;
        if (v.Domain.Pv!.Is32)
            return PvCompatTraps.SetTrapTable(v, a);
        if (a.A1 == 0)
        {
            Array.Clear(pv.TrapTable);
            return 0;
        }
        for (ulong i = 0; ; i++)
        {
            if (i > 0 && i % (ulong)Hypercall.PreemptBudget == 0)
                return Hypercall.CreateContinuation(v, new HypercallArgs(a.A1 + i * 16));
            if (!GuestAccess.ReadElement(v, a.A1, i, out TrapInfo ti))
                return -Errno.EFAULT;
            if (ti.Address == 0)
                return 0;
            pv.TrapTable[ti.Vector] = ti;
        }
    }

    /// <summary>stack_switch(ss, esp): the kernel stack for traps from user mode.</summary>
    public static long StackSwitch(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is not { } pv)
            return -Errno.ENOSYS;
        // A 64-bit kernel's stack is ring 3's; a 32-bit kernel's selector keeps its RPL, 0 taken as ring 1 (Xen's
        // fixup_guest_stack_selector).
        pv.KernelSs = v.Domain.Pv!.Is32 ? ((a.A1 & 3) == 0 ? (a.A1 & 0xFFFF) | 1 : a.A1 & 0xFFFF) : a.A1 | 3;
        pv.KernelSp = v.Domain.Pv.Is32 ? (uint)a.A2 : a.A2;
        return 0;
    }

    /// <summary>set_callbacks(event, failsafe, syscall) of the 64-bit ABI.</summary>
    public static long SetCallbacks(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is not { } pv)
            return -Errno.ENOSYS;
        if (v.Domain.Pv!.Is32)
            return PvCompatTraps.SetCallbacks(v, a);
        pv.EventCallback = a.A1;
        pv.FailsafeCallback = a.A2;
        pv.SyscallCallback = a.A3;
        pv.SyscallMasksEvents = true;
        return 0;
    }

    /// <summary>callback_op(CALLBACKOP_register / unregister, arg).</summary>
    public static long CallbackOp(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is not { } pv)
            return -Errno.ENOSYS;
        switch ((int)a.A1)
        {
            case Callback.CALLBACKOP_register when v.Domain.Pv!.Is32:
                return PvCompatTraps.RegisterCallback(v, a.A2);
            case Callback.CALLBACKOP_register:
            {
                if (!GuestAccess.Read(v, a.A2, out CallbackRegister reg))
                    return -Errno.EFAULT;
                switch (reg.Type)
                {
                    case Callback.CALLBACKTYPE_event: pv.EventCallback = reg.Address; return 0;
                    case Callback.CALLBACKTYPE_failsafe: pv.FailsafeCallback = reg.Address; return 0;
                    case Callback.CALLBACKTYPE_syscall:
                        pv.SyscallCallback = reg.Address;
                        pv.SyscallMasksEvents = (reg.Flags & Callback.CALLBACKF_mask_events) != 0;
                        return 0;
                    case Callback.CALLBACKTYPE_nmi:
                        return 0; // no NMIs are sent to PV guests here
                    default:
                        return -Errno.EINVAL;
                }
            }
            case Callback.CALLBACKOP_unregister when v.Domain.Pv!.Is32:
                return PvCompatTraps.UnregisterCallback(v, a.A2);
            case Callback.CALLBACKOP_unregister:
            {
                if (!GuestAccess.Read(v, a.A2, out CallbackUnregister unreg))
                    return -Errno.EFAULT;
                switch (unreg.Type)
                {
                    case Callback.CALLBACKTYPE_event: pv.EventCallback = 0; return 0;
                    case Callback.CALLBACKTYPE_failsafe: pv.FailsafeCallback = 0; return 0;
                    case Callback.CALLBACKTYPE_syscall: pv.SyscallCallback = 0; return 0;
                    case Callback.CALLBACKTYPE_nmi: return -Errno.EINVAL; // Xen does not let NMI go
                    default: return -Errno.EINVAL;
                }
            }
            default:
                return v.Domain.Pv!.Is32 ? -Errno.EINVAL : -Errno.ENOSYS; // compat_callback_op's answer is -EINVAL
        }
    }

    /// <summary>set_segment_base(which, base): FS, and the GS of either mode.</summary>
    public static long SetSegmentBase(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is not { } pv || v.Engine is not { } cpu || v.Domain.Pv!.Is32)
            return -Errno.ENOSYS; // not part of the compat ABI
        ulong @base = a.A2;
        if ((long)@base >> 47 is not (0 or -1))
            return -Errno.EINVAL;
        cpu.GetSpecialRegisters(out var s);
        switch ((int)a.A1)
        {
            case SEGBASE_FS:
                s.Fs.Base = @base;
                break;
            case SEGBASE_GS_KERNEL:
                if (pv.KernelMode) s.Gs.Base = @base;
                pv.GsBaseKernel = @base;
                break;
            case SEGBASE_GS_USER:
                if (!pv.KernelMode) s.Gs.Base = @base;
                pv.GsBaseUser = @base;
                break;
            case SEGBASE_GS_USER_SEL:
                // A user GS selector: only the null selector, whose base is 0, has meaning without a GDT here.
                if ((@base & 0xFFFC) != 0)
                    return -Errno.EINVAL;
                pv.GsBaseUser = 0;
                break;
            default:
                return -Errno.EINVAL;
        }
        cpu.SetSpecialRegisters(s);
        return 0;
    }

    /// <summary>fpu_taskswitch(set): the guest's CR0.TS.</summary>
    public static long FpuTaskswitch(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is not { } pv || v.Engine is not { } cpu)
            return -Errno.ENOSYS;
        pv.TaskSwitched = a.A1 != 0;
        cpu.GetSpecialRegisters(out var s);
        s.Cr0 = pv.TaskSwitched ? s.Cr0 | 8 : s.Cr0 & ~8UL;
        cpu.SetSpecialRegisters(s);
        return 0;
    }

    /// <summary>set_debugreg(reg, value) / get_debugreg(reg): kept per vCPU; DR4/5 and out-of-range ones are -EINVAL.</summary>
    public static long SetDebugreg(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is not { } pv)
            return -Errno.ENOSYS;
        int reg = (int)a.A1;
        ulong value = a.A2;
        switch (reg)
        {
            case 0 or 1 or 2 or 3:
                if ((long)value >> 47 is not (0 or -1) || value >= Mmu.HYPERVISOR_VIRT_START && value < Mmu.HYPERVISOR_VIRT_END)
                    return -Errno.EPERM;
                break;
            case 6:
                value = (value & 0xE00F) | 0xFFFF0FF0;
                break;
            case 7:
                // General detect and the breakpoints' enables are the guest's; reserved bits must be clear.
                if ((value & 0xFFFFFFFF_00000000) != 0)
                    return -Errno.EINVAL;
                value |= 0x400;
                break;
            default:
                return -Errno.EINVAL;
        }
        pv.DebugRegs[reg] = value;
        return 0;
    }

    public static long GetDebugreg(Vcpu v, in HypercallArgs a)
    {
        if (v.Pv is not { } pv)
            return -Errno.ENOSYS;
        return a.A1 is 0 or 1 or 2 or 3 or 6 or 7 ? (long)pv.DebugRegs[a.A1] : -Errno.EINVAL;
    }
}
