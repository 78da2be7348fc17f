using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using XenSharp.Public.ArchX86;
using static XenSharp.Public.ArchX86.XenMca;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// The pCPUs' machine-check architecture as Xen's mcheck code sees it. XenSharp's pCPUs are host threads: the real
/// machine checks of the machine under them are Linux's to handle and never reach a guest. What remains is Xen's
/// software path: each pCPU has <see cref="Banks"/> modelled banks whose MSRs only XEN_MC_msrinject sets (Xen's
/// interposition table), and #MC is raised on a pCPU only by XEN_MC_mceinject. The handler then does what Xen's
/// does with the banks it finds: an uncorrected memory error the hardware reports as recoverable (SRAO: memory
/// scrub, L3 explicit writeback; SRAR: data load, instruction fetch) at a physical address in a guest's memory is
/// passed to that guest as a vMCE (<see cref="Vmce"/>) with the address turned back into the guest's own; other
/// errors are logged. A fatal error (processor context corrupt), which resets a Xen host, is only logged.
/// </summary>
internal sealed class HostMca(HostServices host)
{
    /// <summary>Banks per pCPU (MCG_CAP.Count): enough for the banks xen-mceinj's error table names (7 to 9).</summary>
    public const int Banks = 10;

    private const ushort IntelMcacodMask = 0xFFFF;
    private const ulong MiscAddrModeMask = 0x1C0, MiscAddrModePhysical = 0x80;

    private readonly Lock _lock = new();
    private readonly Dictionary<(int Cpu, uint Msr), ulong> _interposed = [];

    /// <summary>Whether <paramref name="msr"/> is one of a pCPU's bank MSRs (MCi_CTL/STATUS/ADDR/MISC, MCi_CTL2).</summary>
    public static bool IsBankMsr(ulong msr) =>
        msr is >= MSR_IA32_MC0_CTL and < MSR_IA32_MC0_CTL + 4 * Banks or >= MSR_IA32_MC0_CTL2 and < MSR_IA32_MC0_CTL2 + Banks;

    /// <summary>Xen's intpose_add: what the pCPU's handler reads from <paramref name="msr"/> next.</summary>
    public void Interpose(int cpu, uint msr, ulong value)
    {
        lock (_lock)
            _interposed[(cpu, msr)] = value;
        host.Log($"HV MSR INJECT (interpose) target {cpu} actual {cpu} MSR 0x{msr:x} <-- 0x{value:x}");
    }

    private ulong Read(int cpu, uint msr) => _interposed.GetValueOrDefault((cpu, msr));

    private readonly record struct BankError(int Bank, ulong Status, ulong Addr, ulong Misc);

    /// <summary>#MC on pCPU <paramref name="cpu"/>: its banks are logged out and cleared (as Xen's
    /// mcheck_mca_logout does) and each error is acted on.</summary>
    public void MachineCheck(int cpu)
    {
        host.Log($"Simulating #MC on cpu {cpu}");
        ulong gstatus;
        var errors = new List<BankError>();
        lock (_lock)
        {
            gstatus = Read(cpu, MSR_IA32_MCG_STATUS);
            for (int b = 0; b < Banks; b++)
            {
                uint statusMsr = MSR_IA32_MC0_STATUS + 4 * (uint)b;
                ulong status = Read(cpu, statusMsr);
                if ((status & MCi_STATUS_VAL) == 0)
                    continue;
                ulong addr = (status & MCi_STATUS_ADDRV) != 0 ? Read(cpu, MSR_IA32_MC0_ADDR + 4 * (uint)b) : 0;
                ulong misc = (status & MCi_STATUS_MISCV) != 0 ? Read(cpu, MSR_IA32_MC0_MISC + 4 * (uint)b) : 0;
                errors.Add(new BankError(b, status, addr, misc));
                _interposed.Remove((cpu, statusMsr));
                _interposed.Remove((cpu, MSR_IA32_MC0_ADDR + 4 * (uint)b));
                _interposed.Remove((cpu, MSR_IA32_MC0_MISC + 4 * (uint)b));
            }
            _interposed.Remove((cpu, MSR_IA32_MCG_STATUS));
        }
        if (errors.Count == 0)
        {
            host.Log($"MCE: CPU{cpu}: #MC with no bank reporting an error, ignored");
            return;
        }
        foreach (var e in errors)
        {
            host.Log($"MCE: CPU{cpu} Bank {e.Bank}: {e.Status:x16}[{e.Misc:x16}] at {e.Addr:x16}");
            if (IsFatal(e.Status, gstatus))
                host.Log($"MCE: Fatal error happened on CPU{cpu}: a Xen host resets here; XenSharp only logs it");
            else if (IsRecoverableMemoryError(e.Status, e.Misc))
                MemoryError(cpu, e, gstatus);
        }
    }

    /// <summary>Processor context corrupt, or an uncorrected error without a valid restart IP.</summary>
    private static bool IsFatal(ulong status, ulong gstatus) =>
        (status & MCi_STATUS_PCC) != 0 || ((status & MCi_STATUS_UC) != 0 && (gstatus & MCG_STATUS_RIPV) == 0);

    /// <summary>Intel's software-recoverable memory errors with a physical address: SRAO (action optional: memory
    /// scrub 0xC0-0xCF, L3 explicit writeback 0x17A) and SRAR (action required: data load 0x134, instruction fetch 0x150).</summary>
    private static bool IsRecoverableMemoryError(ulong status, ulong misc)
    {
        const ulong uc = MCi_STATUS_UC | MCi_STATUS_EN | MCi_STATUS_S;
        if ((status & uc) != uc || (status & MCi_STATUS_ADDRV) == 0 || (status & MCi_STATUS_MISCV) == 0
            || (misc & MiscAddrModeMask) != MiscAddrModePhysical)
            return false;
        ushort code = (ushort)(status & IntelMcacodMask);
        return (status & MCi_STATUS_AR) == 0
            ? code is >= 0xC0 and <= 0xCF or 0x17A
            : (status & MCi_STATUS_OVER) == 0 && code is 0x134 or 0x150;
    }

    /// <summary>Xen's mc_memerr_dhandler: the frame's owner gets the error as a vMCE at its own address, vCPU 0 with
    /// the error and the others told only that a machine check is in progress (Xen's broadcast, as no guest is
    /// offered LMCE). The frame itself stays with the guest: nothing in the host's memory is broken.</summary>
    private void MemoryError(int cpu, BankError e, ulong gstatus)
    {
        ulong mfn = e.Addr >> 12;
        if (mfn >= host.Frames.FrameCount || host.Frames.TypeOf((uint)mfn) == FrameType.Free)
        {
            host.Log($"MCE: CPU{cpu}: address 0x{e.Addr:x} is not in machine memory");
            return;
        }
        ushort owner = host.Frames.OwnerOf((uint)mfn);
        var d = host.FindDomain(owner);
        if (d is null || d.IsHost)
        {
            host.Log($"MCE: CPU{cpu}: the error page 0x{mfn:x} belongs to no guest (owner {owner})");
            return;
        }
        ulong? gfn = null;
        lock (d.Lock)
            foreach (var (g, m, type) in d.P2m.Entries())
                if (m == mfn && type is P2mType.RamRw or P2mType.RamRo)
                {
                    gfn = g;
                    break;
                }
        if (gfn is null || d.Type == DomainKind.Pv)
        {
            host.Log($"MCE: CPU{cpu}: d{owner} does not map the error page 0x{mfn:x}; no vMCE");
            return;
        }
        ulong gaddr = (gfn.Value << 12) | (e.Addr & 0xFFF);
        host.Log($"MCE: the error page 0x{mfn:x} is owned by d{owner} at gfn 0x{gfn.Value:x}");
        bool delivered = true;
        foreach (var v in d.Vcpus)
        {
            bool filled = v.Id == 0
                ? v.Arch.Vmce.Fill(gstatus & ~MCG_STATUS_LMCE, e.Status, gaddr, e.Misc)
                : v.Arch.Vmce.Fill(MCG_STATUS_MCIP | MCG_STATUS_RIPV, 0, 0, 0);
            if (!filled)
            {
                host.Log($"MCE: d{owner}v{v.Id}: guest has not handled its previous vMCE");
                delivered = false;
                break;
            }
        }
        if (delivered)
            foreach (var v in d.Vcpus)
                if (v.IsUp && !v.Arch.Vmce.Inject())
                {
                    delivered = false;
                    break;
                }
        if (!delivered)
        {
            // Xen's vmce_failed: a guest that cannot be told of the error is crashed.
            host.Log($"MCE: failed to inject vMCE into d{owner}, crashing it");
            host.ShutdownDomain(d, Sched.SHUTDOWN_crash);
            return;
        }
        host.Log($"MCE: vMCE injected into d{owner}");
    }
}

/// <summary>
/// __HYPERVISOR_mca (Xen's do_mca) for the control domain: XEN_MC_msrinject, XEN_MC_mceinject, XEN_MC_inject_v2
/// (machine checks only: the modelled pCPUs have neither CMCI nor LMCE) and XEN_MC_physcpuinfo's count of pCPUs.
/// A domain other than the control domain is -EPERM; a translated guest has no such hypercall (-ENOSYS, as
/// Xen's HVM table). Telemetry for Domain-0 (XEN_MC_fetch, VIRQ_MCA) is not kept.
/// </summary>
internal static class McaOp
{
    private delegate long Handler(Vcpu v, ref XenMc op, out bool copyBack);

    private static readonly Dictionary<uint, Handler> Table = new()
    {
        [XEN_MC_physcpuinfo] = PhysCpuInfo,
        [XEN_MC_msrinject] = MsrInject,
        [XEN_MC_mceinject] = MceInject,
        [XEN_MC_inject_v2] = InjectV2,
    };

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        if (v.Caller is null && v.Pv is null)
            return -Errno.ENOSYS;
        if (!v.Domain.IsPrivileged)
            return -Errno.EPERM;
        if (!GuestAccess.Read(v, a.A1, out XenMc op))
            return -Errno.EFAULT;
        if (op.InterfaceVersion != XEN_MCA_INTERFACE_VERSION)
            return -Errno.EACCES;
        if (!Table.TryGetValue(op.Cmd, out var handler))
            return op.Cmd is XEN_MC_fetch or XEN_MC_notifydomain ? -Errno.ENOSYS : -Errno.EINVAL;
        long rc = handler(v, ref op, out bool copyBack);
        if (copyBack && !GuestAccess.Write(v, a.A1, op))
            return -Errno.EFAULT;
        return rc;
    }

    private static bool Online(Vcpu v, uint cpu) => v.Domain.Host.Scheduler.IsOnline((int)Math.Min(cpu, int.MaxValue));

    /// <summary>The number of online pCPUs; the per-pCPU details are not provided (-ENOSYS when asked for).</summary>
    private static long PhysCpuInfo(Vcpu v, ref XenMc op, out bool copyBack)
    {
        copyBack = false;
        ref var p = ref op.As<XenMcPhyscpuinfo>();
        if (p.Info != 0)
            return -Errno.ENOSYS;
        var s = v.Domain.Host.Scheduler;
        p.Ncpus = (uint)Enumerable.Range(0, s.NrPcpus).Count(s.IsOnline);
        copyBack = true;
        return 0;
    }

    private static long MsrInject(Vcpu v, ref XenMc op, out bool copyBack)
    {
        copyBack = false;
        ref var m = ref op.As<XenMcMsrinject>();
        if (!Online(v, m.McinjCpunr))
            return -Errno.EINVAL;
        if (m.McinjCount == 0)
            return 0;
        if (m.McinjCount > MC_MSRINJ_MAXMSRS)
            return -Errno.EINVAL;
        var host = v.Domain.Host;
        Span<McinfoMsr> msrs = stackalloc McinfoMsr[(int)m.McinjCount];
        for (int i = 0; i < msrs.Length; i++)
            msrs[i] = m.Msr(i);
        if ((m.McinjFlags & MC_MSRINJ_F_GPADDR) != 0)
        {
            // The values are guest addresses of the named domain: the handler will see the machine addresses.
            var d = m.McinjDomid == Xen.DOMID_SELF ? v.Domain : host.FindDomain(m.McinjDomid);
            if (d is null || d.IsHost)
                return -Errno.EINVAL;
            for (int i = 0; i < msrs.Length; i++)
            {
                ulong gfn = msrs[i].Value >> 12;
                uint mfn;
                P2mType type;
                lock (d.Lock)
                    if (!d.P2m.TryLookup(gfn, out mfn, out type))
                        type = P2mType.Invalid;
                if (type is not (P2mType.RamRw or P2mType.RamRo))
                    return -Errno.EINVAL;
                msrs[i].Value = ((ulong)mfn << 12) | (msrs[i].Value & 0xFFF);
            }
        }
        // Xen's x86_mc_msrinject_verify: bank MSRs must be interposed (there is no hardware to write), and the only
        // other MSR taken is MCG_STATUS.
        foreach (var msr in msrs)
        {
            bool bank = HostMca.IsBankMsr(msr.Reg);
            if ((bank && (m.McinjFlags & MC_MSRINJ_F_INTERPOSE) == 0) || (!bank && msr.Reg != MSR_IA32_MCG_STATUS))
            {
                host.Log($"HV MSR INJECT ERROR: MSR 0x{msr.Reg:x} {(bank ? "must specify interposition" : "not a recognized MCA MSR")}");
                return -Errno.EINVAL;
            }
        }
        foreach (var msr in msrs)
            host.Mca.Interpose((int)m.McinjCpunr, (uint)msr.Reg, msr.Value);
        return 0;
    }

    private static long MceInject(Vcpu v, ref XenMc op, out bool copyBack)
    {
        copyBack = false;
        uint cpu = op.As<XenMcMceinject>().MceinjCpunr;
        if (!Online(v, cpu))
            return -Errno.EINVAL;
        v.Domain.Host.Mca.MachineCheck((int)cpu);
        return 0;
    }

    private static long InjectV2(Vcpu v, ref XenMc op, out bool copyBack)
    {
        copyBack = false;
        var inj = op.As<XenMcInjectV2>();
        var s = v.Domain.Host.Scheduler;
        if ((inj.Flags & XEN_MC_INJECT_TYPE_MASK) != XEN_MC_INJECT_TYPE_MCE)
            return -Errno.EINVAL; // CMCI and LMCE: the modelled pCPUs have neither
        var cpus = new List<int>();
        if ((inj.Flags & XEN_MC_INJECT_CPU_BROADCAST) != 0)
            cpus.AddRange(Enumerable.Range(0, s.NrPcpus).Where(s.IsOnline));
        else
        {
            int bytes = (int)Math.Min((inj.Cpumap.NrBits + 7) / 8, (uint)(s.NrPcpus + 7) / 8);
            Span<byte> map = stackalloc byte[Math.Max(bytes, 1)];
            if (bytes > 0 && !GuestAccess.CopyFrom(v, inj.Cpumap.Bitmap, map[..bytes]))
                return -Errno.EFAULT;
            for (int c = 0; c < Math.Min(inj.Cpumap.NrBits, (uint)s.NrPcpus); c++)
                if ((map[c / 8] & (1 << (c % 8))) != 0 && s.IsOnline(c))
                    cpus.Add(c);
            if (cpus.Count == 0)
                return -Errno.EINVAL;
        }
        foreach (int c in cpus)
            v.Domain.Host.Mca.MachineCheck(c);
        return 0;
    }
}
