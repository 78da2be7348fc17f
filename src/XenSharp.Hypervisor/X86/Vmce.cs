using XenSharp.Hypervisor.Common;
using static XenSharp.Public.ArchX86.XenMca;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// A translated vCPU's virtual machine-check architecture (Xen's vmce): the MCG and bank MSRs the guest reads, and
/// the #MC Xen raises in it when a machine check hits memory the domain owns. The guest sees two banks (bank 0 left
/// empty for the "bank 0 quirk" of old processors, errors reported in bank 1), an Intel MCG_CAP with software error
/// recovery, threshold status and CMCI advertised (no CMCI is ever raised), MCi_CTL reading all ones, and a status,
/// address and misc register per bank that only zero may be written to.
/// </summary>
internal sealed class Vmce(Vcpu vcpu)
{
    /// <summary>GUEST_MC_BANK_NUM.</summary>
    public const int Banks = 2;
    /// <summary>Xen's guest MCG_CAP on Intel: MCG_SER_P | MCG_TES_P | MCG_CMCI_P | the bank count.</summary>
    public const ulong GuestMcgCap = MCG_SER_P | MCG_TES_P | MCG_CMCI_P | Banks;
    /// <summary>#MC.</summary>
    public const byte Vector = 18;

    private readonly Lock _lock = new();
    private ulong _mcgStatus;
    private readonly ulong[] _status = new ulong[Banks], _addr = new ulong[Banks], _misc = new ulong[Banks], _ctl2 = new ulong[Banks];
    private volatile bool _pending;

    public ulong McgCap => GuestMcgCap;

    /// <summary>A bank MSR of this vCPU: MCi_CTL/STATUS/ADDR/MISC of the banks MCG_CAP counts, and their CTL2.</summary>
    private static bool IsBankMsr(uint msr) =>
        msr is >= MSR_IA32_MC0_CTL and < MSR_IA32_MC0_CTL + 4 * Banks or >= MSR_IA32_MC0_CTL2 and < MSR_IA32_MC0_CTL2 + Banks;

    /// <summary>The MSRs this vCPU answers: MCG_CAP, MCG_STATUS, MCG_CTL and its banks' (checked before any lock,
    /// since every MSR exit the vLAPIC does not take asks here first).</summary>
    private static bool IsVmceMsr(uint msr) => msr is >= MSR_IA32_MCG_CAP and <= MSR_IA32_MCG_CTL || IsBankMsr(msr);

    /// <summary>Xen's vmce_rdmsr: true when the MSR is a machine-check one this vCPU has.</summary>
    public bool TryReadMsr(uint msr, out ulong value)
    {
        value = 0;
        if (!IsVmceMsr(msr))
            return false;
        lock (_lock)
        {
            switch (msr)
            {
                case MSR_IA32_MCG_CAP:
                    value = GuestMcgCap;
                    return true;
                case MSR_IA32_MCG_STATUS:
                    value = _mcgStatus;
                    return true;
                case MSR_IA32_MCG_CTL:
                    return true; // no MCG_CTL_P: reads as 0, as Xen's does
                case >= MSR_IA32_MC0_CTL2 and < MSR_IA32_MC0_CTL2 + Banks:
                    value = _ctl2[msr - MSR_IA32_MC0_CTL2];
                    return true;
            }
            if (!IsBankMsr(msr))
                return false;
            int bank = (int)(msr - MSR_IA32_MC0_CTL) / 4;
            value = ((msr - MSR_IA32_MC0_CTL) % 4) switch
            {
                0 => ~0UL, // every error reporting enabled, whatever the guest wrote
                1 => _status[bank],
                2 => _addr[bank],
                _ => _misc[bank],
            };
            return true;
        }
    }

    /// <summary>Xen's vmce_wrmsr: false (#GP) for a non-zero write to a bank's status, address or misc, or for an MSR
    /// this vCPU does not have.</summary>
    // ---------------- save/restore (HVM_SAVE_CODE(VMCE_VCPU)) ----------------

    public XenSharp.Public.Hvm.HvmVmceVcpu Save()
    {
        lock (_lock)
            return new() { Caps = GuestMcgCap, MciCtl2Bank0 = _ctl2[0], MciCtl2Bank1 = _ctl2[1] };
    }

    /// <summary>Xen's vmce_restore_vcpu check: the saved MCG_CAP offers nothing beyond what a guest here is given
    /// (the bank count and MCG_CTL_P aside, as Xen allows, and LMCE, which Xen's Intel guests may have).</summary>
    public static bool IsValid(in XenSharp.Public.Hvm.HvmVmceVcpu s) =>
        (s.Caps & ~(GuestMcgCap | MCG_LMCE_P) & ~MCG_CAP_COUNT & ~MCG_CTL_P) == 0;

    public void Load(in XenSharp.Public.Hvm.HvmVmceVcpu s)
    {
        lock (_lock)
        {
            _ctl2[0] = s.MciCtl2Bank0;
            _ctl2[1] = s.MciCtl2Bank1;
        }
    }

    public bool TryWriteMsr(uint msr, ulong value)
    {
        if (!IsVmceMsr(msr))
            return false;
        lock (_lock)
        {
            switch (msr)
            {
                case MSR_IA32_MCG_CAP: // read-only; the write changes nothing, as Xen treats it
                case MSR_IA32_MCG_CTL:
                    return true;
                case MSR_IA32_MCG_STATUS:
                    _mcgStatus = value;
                    return true;
                case >= MSR_IA32_MC0_CTL2 and < MSR_IA32_MC0_CTL2 + Banks:
                    _ctl2[msr - MSR_IA32_MC0_CTL2] = value;
                    return true;
            }
            if (!IsBankMsr(msr))
                return false;
            int bank = (int)(msr - MSR_IA32_MC0_CTL) / 4;
            switch ((msr - MSR_IA32_MC0_CTL) % 4)
            {
                case 0:
                    return true; // MCi_CTL stays all ones
                case 1 when value == 0:
                    _status[bank] = 0;
                    return true;
                case 2 when value == 0:
                    _addr[bank] = 0;
                    return true;
                case 3 when value == 0:
                    _misc[bank] = 0;
                    return true;
                default:
                    return false;
            }
        }
    }

    /// <summary>Xen's vcpu_fill_mc_msrs: the error goes to bank 1 with its model-specific code filtered out.
    /// False while the guest has not finished with the previous one (MCG_STATUS.MCIP still set).</summary>
    public bool Fill(ulong mcgStatus, ulong status, ulong addr, ulong misc)
    {
        lock (_lock)
        {
            if ((_mcgStatus & MCG_STATUS_MCIP) != 0)
                return false;
            _mcgStatus = mcgStatus;
            _status[1] = status & ~MCi_STATUS_MSCOD;
            _addr[1] = addr;
            _misc[1] = misc;
            return true;
        }
    }

    /// <summary>Xen's inject_vmce for one vCPU: #MC is raised before it next runs (ending a HLT). False when one is
    /// already pending.</summary>
    public bool Inject()
    {
        lock (_lock)
        {
            if (_pending)
                return false;
            _pending = true;
        }
        if (vcpu.IsUp)
            vcpu.Unblock();
        vcpu.Engine?.RequestExit();
        return true;
    }

    /// <summary>The pCPU loop's check before entering the guest: true once per injected #MC.</summary>
    public bool TakePending()
    {
        if (!_pending)
            return false;
        lock (_lock)
        {
            bool was = _pending;
            _pending = false;
            return was;
        }
    }
}
