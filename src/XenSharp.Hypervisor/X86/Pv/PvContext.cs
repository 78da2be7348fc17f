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

    /// <summary>A selector of a 32-bit guest's context with RPL 0 runs in ring 1 (Xen's fixup_guest_*_selector).</summary>
    private static ushort Ring1(uint sel) => (sel & 3) == 0 && sel != 0 ? (ushort)(sel | 1) : (ushort)sel;
}
