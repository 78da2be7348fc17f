using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.ArchX86;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// VCPUOP_initialise for a 64-bit PV vCPU (Xen's arch_set_info_guest): a struct vcpu_guest_context gives the registers,
/// trap table, GDT frames, kernel stack, callbacks, segment bases and the kernel and user L4s; the L4s and GDT frames are
/// referenced and validated as their hypercalls would, and nothing is kept if one of them is refused.
/// </summary>
internal static unsafe class PvContext
{
    private const ulong IF = 1 << 9, IOPL = 3 << 12;

    public static long Initialise(Vcpu v, in VcpuGuestContext c)
    {
        var pv = v.Pv!;
        if (v.Initialised)
            return -Errno.EEXIST;
        if ((c.Flags & VcpuGuestContext.VGCF_in_kernel) == 0)
            return -Errno.EINVAL; // a 64-bit PV vCPU starts in its kernel
        if (c.GdtEnts > PvMm.FirstReservedGdtEntry || c.LdtEnts > 8192 || (c.LdtBase & 0xFFF) != 0)
            return -Errno.EINVAL;
        if ((long)c.FsBase >> 47 is not (0 or -1) || (long)c.GsBaseKernel >> 47 is not (0 or -1)
            || (long)c.GsBaseUser >> 47 is not (0 or -1))
            return -Errno.EINVAL;

        ulong kernelL4 = c.Ctrlreg[3] >> FrameTable.PageShift, userL4 = c.Ctrlreg[1] >> FrameTable.PageShift;
        long rc = PvMm.NewBaseptr(v, kernelL4, user: false);
        if (rc != 0)
            return rc;
        if (userL4 != 0 && (rc = PvMm.NewBaseptr(v, userL4, user: true)) != 0)
            return rc;
        int nr = (int)((c.GdtEnts + 511) / 512);
        Span<ulong> gdt = stackalloc ulong[16];
        for (int i = 0; i < nr; i++)
            gdt[i] = c.GdtFrames[i];
        if ((rc = PvMm.SetGdtFrames(v, gdt[..nr], c.GdtEnts)) != 0)
            return rc;

        fixed (byte* traps = c.TrapCtxt)
            new ReadOnlySpan<TrapInfo>(traps, 256).CopyTo(pv.TrapTable);
        PvMm.SetLdt(v, c.LdtBase, (uint)c.LdtEnts);
        pv.KernelSs = c.KernelSs;
        pv.KernelSp = c.KernelSp;
        pv.EventCallback = c.EventCallbackEip;
        pv.FailsafeCallback = c.FailsafeCallbackEip;
        pv.SyscallCallback = c.SyscallCallbackEip;
        pv.GsBaseKernel = c.GsBaseKernel;
        pv.GsBaseUser = c.GsBaseUser;
        pv.KernelMode = true;
        // The IOPL in the flags is the virtual one; the flags the vCPU runs with have IF set and IOPL clear.
        pv.Iopl = (uint)((c.UserRegs.Rflags & IOPL) >> 12);
        pv.TaskSwitched = (c.Ctrlreg[0] & 8) != 0;
        pv.Cr4 = PvEmulPriv.FixupCr4(v, c.Ctrlreg[4]);
        for (int i = 0; i < 8; i++)
            pv.DebugRegs[i] = c.Debugreg[i];

        var u = c.UserRegs;
        var r = new Registers
        {
            Rax = u.Rax, Rbx = u.Rbx, Rcx = u.Rcx, Rdx = u.Rdx, Rsi = u.Rsi, Rdi = u.Rdi, Rbp = u.Rbp, Rsp = u.Rsp,
            R8 = u.R8, R9 = u.R9, R10 = u.R10, R11 = u.R11, R12 = u.R12, R13 = u.R13, R14 = u.R14, R15 = u.R15,
            Rip = u.Rip, Rflags = (u.Rflags & ~IOPL) | IF | 2,
        };
        var s = new SpecialRegisters
        {
            Cs = PvTraps.KernelCs, Ss = PvTraps.KernelSs,
            Cr0 = 0x80050033 | (pv.TaskSwitched ? 8UL : 0), Cr4 = 0x6A0 | (pv.Cr4 & PvEmulPriv.Cr4GuestMask), Efer = 0xD01,
            Fs = new Segment { Base = c.FsBase, Limit = 0xFFFFFFFF, Attributes = 0xC0F3 },
            Gs = new Segment { Base = c.GsBaseKernel, Limit = 0xFFFFFFFF, Attributes = 0xC0F3 },
            Ldt = new Segment { Attributes = 0x82 },
        };
        s.Ds = s.Es = new Segment { Limit = 0xFFFFFFFF, Attributes = 0xC0F3 };
        pv.ApplyXenState(ref s);
        v.PendingContext = (r, s);
        v.Initialised = true;
        return 0;
    }

    /// <summary>VCPUOP_initialise for a 32-bit PV vCPU (Xen's arch_set_info_guest for a compat context): the base is
    /// the PAE L3 named by CR3 in Xen's extended format; the vCPU starts with the context's ring-1 (or ring-0, taken
    /// as ring 1) selectors on flat compatibility-mode segments.</summary>
    public static long InitialiseCompat(Vcpu v, in CompatVcpuGuestContext c)
    {
        var pv = v.Pv!;
        if (v.Initialised)
            return -Errno.EEXIST;
        if (c.GdtEnts > PvMm.FirstReservedGdtEntry || c.LdtEnts > 8192 || (c.LdtBase & 0xFFF) != 0)
            return -Errno.EINVAL;
        uint cr3 = c.Ctrlreg[3];
        ulong l3 = (cr3 >> 12) | (cr3 << 20);
        long rc = PvMm.NewBaseptr(v, l3, user: false);
        if (rc != 0)
            return rc;
        int nr = (int)((c.GdtEnts + 511) / 512);
        Span<ulong> gdt = stackalloc ulong[16];
        for (int i = 0; i < nr; i++)
            gdt[i] = c.GdtFrames[i];
        if ((rc = PvMm.SetGdtFrames(v, gdt[..nr], c.GdtEnts)) != 0)
            return rc;

        fixed (byte* traps = c.TrapCtxt)
        {
            var compat = new ReadOnlySpan<CompatTrapInfo>(traps, 256);
            for (int i = 0; i < 256; i++)
                pv.TrapTable[i] = new TrapInfo { Vector = compat[i].Vector, Flags = compat[i].Flags, Cs = compat[i].Cs, Address = compat[i].Address };
        }
        PvMm.SetLdt(v, c.LdtBase, c.LdtEnts);
        pv.KernelSs = c.KernelSs;
        pv.KernelSp = c.KernelSp;
        pv.EventCallbackCs = Ring1(c.EventCallbackCs);
        pv.EventCallback = c.EventCallbackEip;
        pv.FailsafeCallbackCs = Ring1(c.FailsafeCallbackCs);
        pv.FailsafeCallback = c.FailsafeCallbackEip;
        pv.KernelMode = true;
        pv.Iopl = (c.Eflags & (uint)IOPL) >> 12;
        pv.TaskSwitched = (c.Ctrlreg[0] & 8) != 0;
        pv.Cr4 = PvEmulPriv.FixupCr4(v, c.Ctrlreg[4]);
        for (int i = 0; i < 8; i++)
            pv.DebugRegs[i] = c.Debugreg[i];

        var r = new Registers
        {
            Rax = c.Eax, Rbx = c.Ebx, Rcx = c.Ecx, Rdx = c.Edx, Rsi = c.Esi, Rdi = c.Edi, Rbp = c.Ebp, Rsp = c.Esp,
            Rip = c.Eip, Rflags = (c.Eflags & ~IOPL) | IF | 2,
        };
        // Flat data segments (a null selector too, as the 64-bit context's null DS and ES are), as a 32-bit PV kernel's are.
        Segment Data(ushort sel) => PvCompatTraps.Flat(Ring1(sel), code: false);
        var s = new SpecialRegisters
        {
            Cs = PvCompatTraps.Flat(Ring1(c.Cs), code: true), Ss = Data(c.Ss),
            Ds = Data(c.Ds), Es = Data(c.Es), Fs = Data(c.Fs), Gs = Data(c.Gs),
            Cr0 = 0x80050033 | (pv.TaskSwitched ? 8UL : 0), Cr4 = 0x6A0 | (pv.Cr4 & PvEmulPriv.Cr4GuestMask), Efer = 0xD01,
            Ldt = new Segment { Attributes = 0x82 },
        };
        pv.ApplyXenState(ref s);
        v.PendingContext = (r, s);
        v.Initialised = true;
        return 0;
    }

    /// <summary>XEN_DOMCTL_getvcpucontext of a PV vCPU (Xen's arch_get_info_guest), in the 64-bit layout: the
    /// registers with the virtual IOPL merged into the flags, the trap table, GDT and LDT, kernel stack, callbacks,
    /// segment bases and the kernel and user L4s. The caller has the domain paused.</summary>
    public static void Get(Vcpu v, ref VcpuGuestContext c)
    {
        var pv = v.Pv!;
        Registers r;
        SpecialRegisters s;
        bool fpu;
        fixed (byte* fx = c.FpuCtxt)
            (r, s, fpu) = State(v, fx);
        var u = new CpuUserRegs
        {
            Rax = r.Rax, Rbx = r.Rbx, Rcx = r.Rcx, Rdx = r.Rdx, Rsi = r.Rsi, Rdi = r.Rdi, Rbp = r.Rbp, Rsp = r.Rsp,
            R8 = r.R8, R9 = r.R9, R10 = r.R10, R11 = r.R11, R12 = r.R12, R13 = r.R13, R14 = r.R14, R15 = r.R15,
            Rip = r.Rip, Rflags = (r.Rflags & ~IOPL) | (pv.Iopl << 12),
            Cs = s.Cs.Selector, Ss = s.Ss.Selector, Ds = s.Ds.Selector, Es = s.Es.Selector, Fs = s.Fs.Selector, Gs = s.Gs.Selector,
        };
        c.UserRegs = u;
        c.Flags = Flags(v, fpu, pv.KernelMode) | (pv.SyscallMasksEvents ? VcpuGuestContext.VGCF_syscall_disables_events : 0);
        fixed (byte* traps = c.TrapCtxt)
            pv.TrapTable.AsSpan().CopyTo(new Span<TrapInfo>(traps, 256));
        c.LdtBase = pv.LdtEntries != 0 ? pv.LdtBase : 0;
        c.LdtEnts = pv.LdtEntries;
        for (int i = 0; i < 16; i++)
            c.GdtFrames[i] = i < pv.GdtFrameCount ? pv.GdtFrames[i] : 0;
        c.GdtEnts = pv.GdtEntries;
        c.KernelSs = pv.KernelSs;
        c.KernelSp = pv.KernelSp;
        c.Ctrlreg[0] = 0x80050033 | (pv.TaskSwitched ? 8UL : 0);
        c.Ctrlreg[2] = pv.GuestCr2;
        c.Ctrlreg[3] = pv.GuestTable << FrameTable.PageShift;
        c.Ctrlreg[1] = pv.GuestTableUser << FrameTable.PageShift;
        c.Ctrlreg[4] = pv.Cr4;
        for (int i = 0; i < 8; i++)
            c.Debugreg[i] = pv.DebugRegs[i];
        c.EventCallbackEip = pv.EventCallback;
        c.FailsafeCallbackEip = pv.FailsafeCallback;
        c.SyscallCallbackEip = pv.SyscallCallback;
        c.FsBase = s.Fs.Base;
        // The engine holds the GS base of the mode the vCPU is in; the other is kept aside.
        (c.GsBaseKernel, c.GsBaseUser) = pv.KernelMode ? (s.Gs.Base, pv.GsBaseUser) : (pv.GsBaseKernel, s.Gs.Base);
        c.VmAssist = v.Domain.VmAssist;
    }

    /// <summary>XEN_DOMCTL_getvcpucontext of a 32-bit PV vCPU: the compat (x86_32) vcpu_guest_context, CR3 in Xen's
    /// extended PAE format (compat_pfn_to_cr3), callbacks as selector:EIP. The caller has the domain paused.</summary>
    public static void GetCompat(Vcpu v, ref CompatVcpuGuestContext c)
    {
        var pv = v.Pv!;
        Registers r;
        SpecialRegisters s;
        bool fpu;
        fixed (byte* fx = c.FpuCtxt)
            (r, s, fpu) = State(v, fx);
        (c.Eax, c.Ebx, c.Ecx, c.Edx, c.Esi, c.Edi, c.Ebp, c.Esp) =
            ((uint)r.Rax, (uint)r.Rbx, (uint)r.Rcx, (uint)r.Rdx, (uint)r.Rsi, (uint)r.Rdi, (uint)r.Rbp, (uint)r.Rsp);
        c.Eip = (uint)r.Rip;
        c.Eflags = ((uint)r.Rflags & ~(uint)IOPL) | (pv.Iopl << 12);
        (c.Cs, c.Ss, c.Ds, c.Es, c.Fs, c.Gs) = (s.Cs.Selector, s.Ss.Selector, s.Ds.Selector, s.Es.Selector, s.Fs.Selector, s.Gs.Selector);
        // Ring 1 is the kernel of a 32-bit guest (Xen's guest_kernel_mode).
        c.Flags = (uint)Flags(v, fpu, (s.Cs.Selector & 3) == 1);
        fixed (byte* traps = c.TrapCtxt)
        {
            var compat = new Span<CompatTrapInfo>(traps, 256);
            for (int i = 0; i < 256; i++)
            {
                var t = pv.TrapTable[i];
                compat[i] = new CompatTrapInfo { Vector = t.Vector, Flags = t.Flags, Cs = t.Cs, Address = (uint)t.Address };
            }
        }
        c.LdtBase = pv.LdtEntries != 0 ? (uint)pv.LdtBase : 0;
        c.LdtEnts = pv.LdtEntries;
        for (int i = 0; i < 16; i++)
            c.GdtFrames[i] = i < pv.GdtFrameCount ? (uint)pv.GdtFrames[i] : 0;
        c.GdtEnts = (uint)pv.GdtEntries;
        c.KernelSs = (uint)pv.KernelSs;
        c.KernelSp = (uint)pv.KernelSp;
        c.Ctrlreg[0] = 0x80050033 | (pv.TaskSwitched ? 8U : 0);
        c.Ctrlreg[2] = (uint)pv.GuestCr2;
        c.Ctrlreg[3] = CompatCr3(pv.GuestTable);
        c.Ctrlreg[4] = (uint)pv.Cr4;
        for (int i = 0; i < 8; i++)
            c.Debugreg[i] = (uint)pv.DebugRegs[i];
        c.EventCallbackCs = pv.EventCallbackCs;
        c.EventCallbackEip = (uint)pv.EventCallback;
        c.FailsafeCallbackCs = pv.FailsafeCallbackCs;
        c.FailsafeCallbackEip = (uint)pv.FailsafeCallback;
        c.VmAssist = (uint)v.Domain.VmAssist;
    }

    /// <summary>Xen's compat_pfn_to_cr3: a PAE base's MFN rotated into a 32-bit CR3 (the bits above 20 in the low
    /// 12).</summary>
    public static uint CompatCr3(ulong mfn) => (uint)((mfn << 12) | (mfn >> 20));

    /// <summary>The vCPU's registers: a context set and not yet run, or the engine's; and its FXSAVE image.</summary>
    private static (Registers, SpecialRegisters, bool Fpu) State(Vcpu v, byte* fxsave)
    {
        Registers r = default;
        SpecialRegisters s = default;
        bool fpu = false;
        if (v.PendingContext is { } pending)
            (r, s) = pending;
        else if (v.Engine is { } cpu)
        {
            cpu.GetRegisters(out r);
            cpu.GetSpecialRegisters(out s);
            fpu = cpu.TryGetFpuState(new Span<byte>(fxsave, 512), out _);
        }
        return (r, s, fpu);
    }

    private static ulong Flags(Vcpu v, bool fpu, bool inKernel) =>
        (fpu ? VcpuGuestContext.VGCF_i387_valid : 0) | (v.IsUp ? VcpuGuestContext.VGCF_online : 0)
        | (inKernel ? VcpuGuestContext.VGCF_in_kernel : 0);

    /// <summary>XEN_DOMCTL_setvcpucontext of a PV vCPU the domain has not started: as VCPUOP_initialise with the
    /// context in the domain's layout. A vCPU that runs already is reinitialised only with the page tables it has
    /// (Xen refuses another base), its registers, trap table and callbacks taken from the context.</summary>
    public static long Set(Vcpu v, ReadOnlySpan<byte> context)
    {
        bool compat = v.Domain.Pv!.Is32;
        if (!v.Initialised)
            return compat
                ? InitialiseCompat(v, System.Runtime.InteropServices.MemoryMarshal.Read<CompatVcpuGuestContext>(context))
                : Initialise(v, System.Runtime.InteropServices.MemoryMarshal.Read<VcpuGuestContext>(context));
        // Reinitialising: only on the base the vCPU has (Xen's arch_set_info_guest compares CR3).
        var pv = v.Pv!;
        bool sameBase;
        if (compat)
        {
            var cc = System.Runtime.InteropServices.MemoryMarshal.Read<CompatVcpuGuestContext>(context);
            sameBase = cc.Ctrlreg[3] == CompatCr3(pv.GuestTable);
        }
        else
        {
            var nc = System.Runtime.InteropServices.MemoryMarshal.Read<VcpuGuestContext>(context);
            sameBase = nc.Ctrlreg[3] >> FrameTable.PageShift == pv.GuestTable;
        }
        if (!sameBase)
            return -Errno.EINVAL;
        v.Initialised = false;
        long rc = compat
            ? InitialiseCompat(v, System.Runtime.InteropServices.MemoryMarshal.Read<CompatVcpuGuestContext>(context))
            : Initialise(v, System.Runtime.InteropServices.MemoryMarshal.Read<VcpuGuestContext>(context));
        v.Initialised = true;
        return rc;
    }

    /// <summary>A selector of a 32-bit guest's context with RPL 0 runs in ring 1 (Xen's fixup_guest_*_selector).</summary>
    private static ushort Ring1(uint sel) => (sel & 3) == 0 && sel != 0 ? (ushort)(sel | 1) : (ushort)sel;
}
