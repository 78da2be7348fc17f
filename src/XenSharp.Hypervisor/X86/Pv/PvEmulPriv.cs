using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// Privileged instructions a PV kernel executes in ring 3, which raise #GP(0) and are emulated here (Xen's
/// pv/emul-priv-op.c): RDMSR/WRMSR of the segment-base MSRs, which a 64-bit kernel uses for its per-CPU area
/// before it has made the set_segment_base hypercall its own. Anything else is the guest's #GP.
/// </summary>
internal static class PvEmulPriv
{
    private const uint MsrFsBase = 0xC0000100, MsrGsBase = 0xC0000101, MsrShadowGsBase = 0xC0000102, MsrEfer = 0xC0000080;

    /// <summary>Emulates the instruction at RIP when it is one of these; false leaves the #GP to the guest.</summary>
    public static bool TryEmulate(Vcpu v, IVcpu cpu)
    {
        var pv = v.Pv!;
        if (!pv.KernelMode)
            return false;
        cpu.GetRegisters(out var r);
        Span<byte> code = stackalloc byte[2];
        if (!GuestAccess.CopyFrom(v, r.Rip, code) || code[0] != 0x0F)
            return false;
        switch (code[1])
        {
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
        r.Rip += 2;
        cpu.SetRegisters(r);
        return true;
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
            default:
                return false;
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
            default: value = 0; return false;
        }
    }
}
