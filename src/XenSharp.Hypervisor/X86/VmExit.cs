using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86.Io;
using XenSharp.Public;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// What the hypervisor does with each engine exit of an HVM/PVH vCPU: hypercalls, port I/O and MMIO (through the
/// domain's I/O buses, <see cref="HvmIo"/>), MSRs (hypercall page, APIC), HLT, triple faults.
/// </summary>
internal static unsafe class VmExit
{
    /// <summary>VMCALL (0F 01 C1) and VMMCALL (0F 01 D9) are both three bytes.</summary>
    private const int VmcallLength = 3;
    private const uint MsrMiscEnable = 0x1A0, MsrPlatformId = 0x17, MsrBiosUpdtTrig = 0x79, MsrUcodeRev = 0x8B;

    /// <summary>Handles one exit; false when the vCPU must leave the CPU now.</summary>
    public static bool Handle(Vcpu v, IVcpu cpu, in VcpuExit exit)
    {
        if (v.Pv is not null && Pv.PvTraps.Handles(exit.Reason))
            return Pv.PvTraps.HandleExit(v, cpu, exit);
        // A GSI callback via goes down once vCPU 0 has taken its events (Xen checks on every VM entry).
        if (v.Domain.Arch.CallbackAsserted)
            v.Domain.Arch.UpdateCallbackLevel();
        switch (exit.Reason)
        {
            case VcpuExitReason.Hypercall:
                DoHypercall(v, cpu);
                return !v.DescheduleRequested;
            case VcpuExitReason.Io when exit.Count > 1:
                cpu.CompleteExit(HvmIo.Repeated(v, exit));
                return !v.DescheduleRequested;
            case VcpuExitReason.Io:
                if (exit.IsWrite)
                    HvmIo.PortWrite(v, (ushort)exit.Port, exit.Size, exit.Data);
                else
                    cpu.CompleteExit(HvmIo.PortRead(v, (ushort)exit.Port, exit.Size));
                if (!v.Domain.Arch.PortIo.TryFind(exit.Port, out _, out _))
                    v.Domain.Arch.OfferUnclaimedPorts(v);
                return !v.DescheduleRequested;
            case VcpuExitReason.Mmio:
                // A page (or a page-table entry the walk read) that is paged out: it is asked for, the vCPU waits.
                if (v.Domain.PagingEverEnabled && Common.MemPaging.OnMmio(v, cpu, exit, out bool resumed))
                    return resumed && !v.DescheduleRequested;
                // A guest access its page's mem_access denies (only possible while a restriction is in force).
                if (v.Domain.P2m.AccessRestricted && MemAccess.OnMmio(v, cpu, exit, out bool keepRunning))
                    return keepRunning && !v.DescheduleRequested;
                SyncApicBase(v, cpu); // the vLAPIC page is looked up at this vCPU's APIC base
                if (exit.Count > 1)
                    cpu.CompleteExit(HvmIo.Repeated(v, exit));
                else if (exit.IsWrite)
                    HvmIo.MmioWrite(v, exit.Address, exit.Size, exit.Data);
                else
                    cpu.CompleteExit(HvmIo.MmioRead(v, exit.Address, exit.Size));
                return !v.DescheduleRequested;
            case VcpuExitReason.RdMsr:
                if (exit.Port is >= Vlapic.X2ApicMsrBase and <= Vlapic.X2ApicMsrEnd)
                    SyncApicBase(v, cpu);
                if (TryReadMsr(v, exit.Port, out ulong value))
                    cpu.CompleteExit(value);
                else
                    cpu.CompleteExit(0, fault: true);
                return true;
            case VcpuExitReason.WrMsr:
                if (exit.Port is >= Vlapic.X2ApicMsrBase and <= Vlapic.X2ApicMsrEnd)
                    SyncApicBase(v, cpu);
                if (!TryWriteMsr(v, exit.Port, exit.Data))
                    cpu.CompleteExit(0, fault: true);
                return !v.DescheduleRequested;
            case VcpuExitReason.Hlt:
                // HLT with interrupts off never ends: Xen takes the vCPU down, and powers the domain off once none
                // is left (how a PVH guest without ACPI sleep states, as libxl builds it, powers off). A guest of
                // XenSharp's own builder has ACPI S5 and keeps blocking there, as it always has.
                if (exit.InterruptsDisabled && !v.WaitForSipi && !v.Domain.Arch.HasAcpiSleepControl)
                {
                    v.Domain.Host.HaltVcpu(v);
                    return false;
                }
                v.Block();
                return !v.DescheduleRequested;
            case VcpuExitReason.Shutdown:
                v.Domain.Host.Log($"(d{v.Domain.DomainId}) vcpu {v.Id} triple fault");
                v.Domain.Host.ShutdownDomain(v.Domain, XenSharp.Public.Sched.SHUTDOWN_crash);
                return false;
            case VcpuExitReason.InternalError:
                v.Domain.Host.Log($"(d{v.Domain.DomainId}) vcpu {v.Id} cannot continue: {exit.Message}");
                v.Domain.Host.ShutdownDomain(v.Domain, XenSharp.Public.Sched.SHUTDOWN_crash);
                return false;
            case VcpuExitReason.Preempted:
                return false;
            case VcpuExitReason.FetchDenied:
                if (v.Domain.PagingEverEnabled && Common.MemPaging.OnFetch(v, exit, out bool fetched))
                    return fetched && !v.DescheduleRequested;
                // Otherwise a fetch its page's mem_access denies.
                return MemAccess.OnFetchDenied(v, cpu, exit) && !v.DescheduleRequested;
            case VcpuExitReason.Debug:
                return v.Domain.Monitor.OnDebug(v, cpu, exit) && !v.DescheduleRequested;
            case VcpuExitReason.MonitorTrap:
                return v.Domain.Monitor.OnMonitorTrap(v, cpu) && !v.DescheduleRequested;
            default:
                return true;
        }
    }

    /// <summary>The engine owns IA32_APIC_BASE; the vLAPIC follows its base and x2APIC mode.</summary>
    private static void SyncApicBase(Vcpu v, IVcpu cpu)
    {
        cpu.GetSpecialRegisters(out var s);
        if (s.ApicBase != 0)
            v.Arch.Vlapic.ApicBase = s.ApicBase;
    }

    public static void DoHypercall(Vcpu v, IVcpu cpu)
    {
        cpu.GetRegisters(out var r);
        cpu.GetSpecialRegisters(out var s);
        long result;
        v.Compat = !IsLongMode(s);
        v.Continuation = null;
        if (((s.Cs.Attributes >> 5) & 3) != 0)
            result = -Errno.EPERM; // hypercalls are for the guest kernel only
        else if (IsLongMode(s))
            result = Hypercall.Dispatch(v, r.Rax, new HypercallArgs(r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8));
        else
            result = Hypercall.Dispatch(v, (uint)r.Rax, new HypercallArgs((uint)r.Rbx, (uint)r.Rcx, (uint)r.Rdx, (uint)r.Rsi, (uint)r.Rdi));
        if (v.Continuation is { } next)
        {
            // A continuation: the guest runs the same VMCALL again with the updated arguments (RAX keeps the
            // hypercall number), so the pCPU loop sees an exit boundary between the pieces.
            v.Continuation = null;
            if (IsLongMode(s))
            {
                r.Rdi = next.A1; r.Rsi = next.A2; r.Rdx = next.A3; r.R10 = next.A4; r.R8 = next.A5;
            }
            else
            {
                r.Rbx = (uint)next.A1; r.Rcx = (uint)next.A2; r.Rdx = (uint)next.A3; r.Rsi = (uint)next.A4; r.Rdi = (uint)next.A5;
            }
            r.Rip -= VmcallLength;
            cpu.SetRegisters(r);
            return;
        }
        r.Rax = IsLongMode(s) ? (ulong)result : (uint)result;
        cpu.SetRegisters(r);
    }

    /// <summary>64-bit mode: EFER.LMA and CS.L (bit 13 of the VMX access-rights encoding).</summary>
    public static bool IsLongMode(in SpecialRegisters s) => (s.Efer & (1 << 10)) != 0 && (s.Cs.Attributes & (1 << 13)) != 0;

    public static bool TryReadMsr(Vcpu v, uint msr, out ulong value)
    {
        value = 0;
        if (v.Arch.Vlapic.TryReadMsr(msr, out value) || v.Arch.Vmce.TryReadMsr(msr, out value))
            return true;
        switch (msr)
        {
            case XenCpuid.HypercallPageMsr:
                value = 0;
                return true;
            case MsrMiscEnable:
                value = 1; // fast strings
                return true;
            case MsrPlatformId:
            case MsrUcodeRev:
                value = 0; // no microcode to speak of, as Xen reports to HVM guests
                return true;
            default:
                return false;
        }
    }

    public static bool TryWriteMsr(Vcpu v, uint msr, ulong value)
    {
        if (v.Arch.Vlapic.TryWriteMsr(msr, value) || v.Arch.Vmce.TryWriteMsr(msr, value))
            return true;
        switch (msr)
        {
            case XenCpuid.HypercallPageMsr:
                return WriteHypercallPage(v, value);
            case MsrMiscEnable:
                return true; // Linux's verify_cpu rewrites it; nothing here depends on it
            case MsrUcodeRev:
            case MsrBiosUpdtTrig:
                return true; // the revision probe writes 0 first; updates are ignored
            default:
                return false;
        }
    }

    /// <summary>The hypercall page MSR: page address in the high bits, page index (only 0) in the low 12.</summary>
    public static bool WriteHypercallPage(Vcpu v, ulong value)
    {
        if ((value & 0xFFF) != 0)
            return false;
        byte* page = v.Domain.P2m.GetPage(value >> 12, write: true);
        if (page is null)
            return false;
        HypercallPage.Write(new Span<byte>(page, FrameTable.PageSize), v.Domain.Host.IsAmdVendor(v));
        return true;
    }
}
