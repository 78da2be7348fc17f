using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// Privileged instructions a PV kernel executes in ring 3, which raise #GP(0) and are emulated here (Xen's
/// pv/emul-priv-op.c): MOV to and from CR0/CR2/CR3/CR4 (the guest's view: CR0.TS its own, CR3 the machine frame of
/// its kernel L4, CR4 the bits Xen lets it see or choose), CLTS, WBINVD (ignored), and RDMSR/WRMSR of the MSRs Xen
/// answers for a PV guest. Anything else, and user mode, is the guest's #GP.
/// </summary>
internal static class PvEmulPriv
{
    private const uint MsrTsc = 0x10, MsrApicBase = 0x1B, MsrPlatformId = 0x17, MsrPlatformInfo = 0xCE, MsrUcodeRev = 0x8B,
        MsrArchCapabilities = 0x10A, MsrMiscEnable = 0x1A0, MsrPat = 0x277, MsrPerfCapabilities = 0x345,
        MsrFsBase = 0xC0000100, MsrGsBase = 0xC0000101, MsrShadowGsBase = 0xC0000102, MsrEfer = 0xC0000080;
    /// <summary>Xen's own PAT (XEN_MSR_PAT), which a PV guest's PTE cache bits index.</summary>
    public const ulong XenPat = 0x0000_0501_0007_0406;
    /// <summary>MISC_ENABLE as Xen shows it: fast strings, no BTS, no PEBS, xTPR messages off.</summary>
    private const ulong GuestMiscEnable = 1 | 1UL << 11 | 1UL << 12 | 1UL << 23;
    private const ulong Cr0Ts = 8;
    /// <summary>CR4 bits a PV guest chooses itself (TSD, DE, FSGSBASE, OSXSAVE) and those of Xen's it sees
    /// (PAE, MCE, OSFXSR, OSXMMEXCPT): Xen's PV_CR4_GUEST_MASK and PV_CR4_GUEST_VISIBLE_MASK.</summary>
    public const ulong Cr4GuestMask = 0x4 | 0x8 | 0x10000 | 0x40000, Cr4GuestVisible = 0x20 | 0x40 | 0x200 | 0x400;

    /// <summary>Emulates the instruction at RIP when it is one of these; false leaves the #GP to the guest.</summary>
    public static bool TryEmulate(Vcpu v, IVcpu cpu)
    {
        var pv = v.Pv!;
        if (!pv.KernelMode)
            return false;
        cpu.GetRegisters(out var r);
        Span<byte> code = stackalloc byte[8];
        if (!GuestAccess.CopyFrom(v, r.Rip, code))
            return false;
        int at = 0;
        byte rex = 0;
        // Legacy prefixes that do not change these instructions, then REX.
        while (at < 4 && code[at] is 0x66 or 0x2E or 0x3E or 0x26 or 0x36 or 0x64 or 0x65)
            at++;
        if ((code[at] & 0xF0) == 0x40)
            rex = code[at++];
        if (code[at] is >= 0xE4 and <= 0xE7 or >= 0xEC and <= 0xEF)
            return TryEmulateIo(v, cpu, r, code[at], opsize16: at > 0 && code[..at].Contains((byte)0x66), at + (code[at] < 0xE8 ? 2 : 1));
        if (code[at] is 0xFA or 0xFB)
        {
            // CLI/STI: allowed by the virtual IOPL, and then without effect, as in Xen (the virtual IF is the event
            // mask, which a POPF could not restore).
            if (!IoplAllows(v))
                return false;
            r.Rip += (ulong)at + 1;
            cpu.SetRegisters(r);
            return true;
        }
        if (code[at] != 0x0F)
            return false;
        byte op = code[at + 1];
        int length = at + 2;
        switch (op)
        {
            case 0x20 or 0x22: // MOV r64, CRn / MOV CRn, r64
            {
                byte modrm = code[at + 2];
                length++;
                if (modrm >> 6 != 3)
                    return false;
                int cr = ((modrm >> 3) & 7) | ((rex & 4) << 1);
                int gpr = (modrm & 7) | ((rex & 1) << 3);
                if (op == 0x20)
                {
                    if (!TryReadCr(v, cpu, cr, out ulong value))
                        return false;
                    cpu.GetRegisters(out r);
                    Gpr(ref r, gpr) = value;
                    cpu.SetRegisters(r);
                }
                else if (!TryWriteCr(v, cpu, cr, Gpr(ref r, gpr)))
                    return false;
                break;
            }
            case 0x06: // CLTS
                SetTaskSwitched(v, cpu, false);
                break;
            case 0x09: // WBINVD: caches are coherent here, and Xen ignores it from an unprivileged guest
                break;
            case 0x30: // WRMSR
            {
                ulong value = (r.Rdx << 32) | (uint)r.Rax;
                if (!TryWriteMsr(v, cpu, (uint)r.Rcx, value))
                    return false;
                break;
            }
            case 0x32: // RDMSR
            {
                if (!TryReadMsr(v, cpu, (uint)r.Rcx, out ulong value))
                    return false;
                cpu.GetRegisters(out r);
                r.Rax = (uint)value;
                r.Rdx = value >> 32;
                cpu.SetRegisters(r);
                break;
            }
            default:
                return false;
        }
        cpu.GetRegisters(out r);
        r.Rip += (ulong)length;
        cpu.SetRegisters(r);
        return true;
    }

    /// <summary>IN and OUT (not the string forms) from a kernel whose virtual IOPL allows its ring (1, or 0 with
    /// VMASST_TYPE_architectural_iopl): a domain without I/O ports reads all ones and writes go nowhere, as Xen's
    /// admin_io_okay leaves them. With too low an IOPL it is the guest's #GP.</summary>
    private static bool TryEmulateIo(Vcpu v, IVcpu cpu, Registers r, byte op, bool opsize16, int length)
    {
        if (!IoplAllows(v))
            return false;
        int size = (op & 1) == 0 ? 1 : opsize16 ? 2 : 4;
        bool input = op is 0xE4 or 0xE5 or 0xEC or 0xED;
        if (input)
        {
            ulong ones = size == 4 ? 0xFFFF_FFFF : (1UL << (size * 8)) - 1;
            // A 32-bit result zero-extends into RAX; smaller ones merge.
            r.Rax = size == 4 ? ones : (r.Rax & ~ones) | ones;
        }
        r.Rip += (ulong)length;
        cpu.SetRegisters(r);
        return true;
    }

    /// <summary>Xen's iopl_ok for the guest kernel: ring 1, or 0 with VMASST_TYPE_architectural_iopl.</summary>
    private static bool IoplAllows(Vcpu v)
    {
        int cpl = (v.Domain.VmAssist & (1UL << Public.Xen.VMASST_TYPE_architectural_iopl)) != 0 ? 0 : 1;
        return v.Pv!.Iopl >= cpl;
    }

    private static ref ulong Gpr(ref Registers r, int i)
    {
        switch (i)
        {
            case 0: return ref r.Rax;
            case 1: return ref r.Rcx;
            case 2: return ref r.Rdx;
            case 3: return ref r.Rbx;
            case 4: return ref r.Rsp;
            case 5: return ref r.Rbp;
            case 6: return ref r.Rsi;
            case 7: return ref r.Rdi;
            case 8: return ref r.R8;
            case 9: return ref r.R9;
            case 10: return ref r.R10;
            case 11: return ref r.R11;
            case 12: return ref r.R12;
            case 13: return ref r.R13;
            case 14: return ref r.R14;
            default: return ref r.R15;
        }
    }

    private static unsafe bool TryReadCr(Vcpu v, IVcpu cpu, int cr, out ulong value)
    {
        var pv = v.Pv!;
        cpu.GetSpecialRegisters(out var s);
        switch (cr)
        {
            case 0:
                value = (s.Cr0 & ~Cr0Ts) | (pv.TaskSwitched ? Cr0Ts : 0);
                return true;
            case 2:
                value = pv.GuestCr2;
                return true;
            case 3:
                // A PV guest is not translated: its CR3 names the machine frame of its kernel L4.
                value = pv.GuestTable << FrameTable.PageShift;
                return true;
            case 4:
                value = pv.Cr4;
                return true;
            default:
                value = 0;
                return false;
        }
    }

    private static unsafe bool TryWriteCr(Vcpu v, IVcpu cpu, int cr, ulong value)
    {
        var pv = v.Pv!;
        switch (cr)
        {
            case 0:
            {
                // Only TS may change (Xen warns about and refuses anything else).
                cpu.GetSpecialRegisters(out var s);
                if (((value ^ s.Cr0) & ~Cr0Ts) != 0)
                    return false;
                SetTaskSwitched(v, cpu, (value & Cr0Ts) != 0);
                return true;
            }
            case 2:
                pv.GuestCr2 = value;
                return true;
            case 3:
                return PvMm.NewBaseptr(v, value >> FrameTable.PageShift, user: false) == 0;
            case 4:
                pv.Cr4 = FixupCr4(v, value);
                pv.ApplyCr4();
                return true;
            default:
                return false;
        }
    }

    /// <summary>The CR4 a PV guest sees after it asks for <paramref name="value"/> (Xen's pv_fixup_guest_cr4):
    /// its own bits where the CPU policy has the feature, Xen's visible bits as they are.</summary>
    public static ulong FixupCr4(Vcpu v, ulong value)
    {
        ulong allowed = 0x4 | 0x8; // TSD, DE
        if (v.Cpuid is { } policy)
        {
            policy.Cpuid(7, 0, out _, out uint b7, out _, out _);
            policy.Cpuid(1, 0, out _, out _, out uint c1, out _);
            if ((b7 & 1) != 0) allowed |= 0x10000;        // FSGSBASE
            if ((c1 & (1u << 26)) != 0) allowed |= 0x40000; // XSAVE → OSXSAVE
        }
        return (value & Cr4GuestMask & allowed) | Cr4GuestVisible;
    }

    private static void SetTaskSwitched(Vcpu v, IVcpu cpu, bool ts)
    {
        v.Pv!.TaskSwitched = ts;
        cpu.GetSpecialRegisters(out var s);
        s.Cr0 = ts ? s.Cr0 | Cr0Ts : s.Cr0 & ~Cr0Ts;
        cpu.SetSpecialRegisters(s);
    }

    private static bool TryWriteMsr(Vcpu v, IVcpu cpu, uint msr, ulong value)
    {
        var pv = v.Pv!;
        if (msr is MsrFsBase or MsrGsBase or MsrShadowGsBase && (long)value >> 47 is not (0 or -1))
            return false;
        cpu.GetSpecialRegisters(out var s);
        switch (msr)
        {
            case MsrFsBase:
                s.Fs.Base = value;
                break;
            case MsrGsBase:
                // The kernel's GS while it runs; its user GS stays the other one.
                s.Gs.Base = value;
                pv.GsBaseKernel = value;
                break;
            case MsrShadowGsBase:
                pv.GsBaseUser = value;
                break;
            case MsrEfer:
                // Xen lets the guest write back what it read, and nothing else.
                return value == s.Efer;
            case MsrPat:
                return value == XenPat;
            case MsrMiscEnable:
                return value == GuestMiscEnable;
            case MsrUcodeRev:
                return value == 0; // Linux writes 0 before reading the revision
            default:
                return v.Arch.Vmce.TryWriteMsr(msr, value);
        }
        cpu.SetSpecialRegisters(s);
        return true;
    }

    private static bool TryReadMsr(Vcpu v, IVcpu cpu, uint msr, out ulong value)
    {
        var pv = v.Pv!;
        cpu.GetSpecialRegisters(out var s);
        switch (msr)
        {
            case MsrFsBase: value = s.Fs.Base; return true;
            case MsrGsBase: value = s.Gs.Base; return true;
            case MsrShadowGsBase: value = pv.GsBaseUser; return true;
            case MsrEfer: value = s.Efer; return true;
            case MsrPat: value = XenPat; return true;
            case MsrMiscEnable: value = GuestMiscEnable; return true;
            case MsrApicBase:
                // Linux PV reads it; Xen answers an enabled xAPIC at the default base, the BSP flag on vCPU 0.
                value = 0xFEE00000 | 0x800 | (v.Id == 0 ? 0x100UL : 0);
                return true;
            case MsrTsc:
                value = cpu is IX86Vcpu x ? x.Tsc : 0;
                return true;
            case MsrPerfCapabilities or MsrPlatformId or MsrUcodeRev:
                value = 0;
                return true;
            case MsrPlatformInfo or MsrArchCapabilities:
                // The CPU policy's MSRs, as the engine holds them.
                if (!cpu.TryGetMsr(msr, out value))
                    value = 0;
                return true;
            default:
                // The machine-check MSRs are every guest's vMCE, PV included (Xen's guest_rdmsr asks vmce_rdmsr).
                return v.Arch.Vmce.TryReadMsr(msr, out value);
        }
    }
}
