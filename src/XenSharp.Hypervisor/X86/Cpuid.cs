using XenSharp.Public;
using XenSharp.Cpu;
using static XenSharp.Public.ArchX86.Cpuid;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// The CPUID a vCPU sees: the engine's policy, with the hypervisor bit, this vCPU's APIC ID, and the Xen
/// leaves at 0x40000000 ("XenVMMXenVMM", version 4.14, one hypercall page at MSR 0x40000000, the TSC
/// leaf, and HVM leaf 4 with the vCPU id), restricted by the domain's policy once the toolstack set one.
/// </summary>
internal sealed class XenCpuid(ICpuidPolicy baseline, int vcpuId, Func<(uint Mul, sbyte Shift, ulong TscHz)> tsc,
    TscMode tscMode = TscMode.Default) : ICpuidPolicy
{
    public const uint HypercallPageMsr = 0x40000000;
    private const uint Base = XEN_CPUID_FIRST_LEAF;
    private const uint LastLeaf = Base + 4;

    private DomainCpuPolicy? _policy;

    /// <summary>The domain's TSC mode the TSC leaf reports (XEN_DOMCTL_settscinfo changes it).</summary>
    public TscMode TscMode { get; set; } = tscMode;

    /// <summary>The domain's policy as set-policy left it (null: none set, the engine's CPUID as it is).</summary>
    public DomainCpuPolicy? Policy
    {
        get => Volatile.Read(ref _policy);
        set => Volatile.Write(ref _policy, value);
    }

    /// <summary>What this vCPU could be given: its CPUID without the domain's policy (Xen's maximum policy).</summary>
    public ICpuidPolicy Max => new Unrestricted(this);

    public void Cpuid(uint leaf, uint subleaf, out uint eax, out uint ebx, out uint ecx, out uint edx)
    {
        CpuidMax(leaf, subleaf, out eax, out ebx, out ecx, out edx);
        Policy?.Apply(leaf, subleaf, ref eax, ref ebx, ref ecx, ref edx);
    }

    private sealed class Unrestricted(XenCpuid of) : ICpuidPolicy
    {
        public void Cpuid(uint leaf, uint subleaf, out uint eax, out uint ebx, out uint ecx, out uint edx) =>
            of.CpuidMax(leaf, subleaf, out eax, out ebx, out ecx, out edx);
    }

    private void CpuidMax(uint leaf, uint subleaf, out uint eax, out uint ebx, out uint ecx, out uint edx)
    {
        if (leaf >= Base && leaf < Base + 0x10000)
        {
            XenLeaf(leaf, subleaf, out eax, out ebx, out ecx, out edx);
            return;
        }
        baseline.Cpuid(leaf, subleaf, out eax, out ebx, out ecx, out edx);
        switch (leaf)
        {
            case 1:
                ebx = (ebx & 0x00FFFFFF) | ((uint)(2 * vcpuId) << 24);
                ecx |= 1u << 31; // running under a hypervisor
                edx |= 1u << 9;  // APIC present
                edx |= (1u << 7) | (1u << 14); // MCE and MCA: the vMCE banks (Vmce), as Xen's HVM policy offers them
                break;
            case 0xB:
            case 0x1F:
                edx = (uint)(2 * vcpuId); // x2APIC ID
                break;
        }
    }

    private bool HasRdtscp()
    {
        Cpuid(0x80000000, 0, out uint max, out _, out _, out _);
        if (max < 0x80000001)
            return false;
        Cpuid(0x80000001, 0, out _, out _, out _, out uint edx);
        return (edx & (1u << 27)) != 0;
    }

    private void XenLeaf(uint leaf, uint subleaf, out uint eax, out uint ebx, out uint ecx, out uint edx)
    {
        eax = ebx = ecx = edx = 0;
        switch (leaf - Base)
        {
            case 0:
                eax = LastLeaf;
                ebx = XEN_CPUID_SIGNATURE_EBX;
                ecx = XEN_CPUID_SIGNATURE_ECX;
                edx = XEN_CPUID_SIGNATURE_EDX;
                break;
            case 1:
                eax = (4u << 16) | 14u;
                break;
            case 2:
                eax = 1; // hypercall pages
                ebx = HypercallPageMsr;
                break;
            case 3:
            {
                // The TSC leaf. The engine's TSC is constant-rate and in step on every vCPU (a reliable TSC), so only
                // always_emulate reports emulation; the scale is the one vcpu_time_info carries. Every mode is
                // honoured by the one TSC the engine has: computed from the host's clock at the domain's frequency
                // on every RDTSC/RDTSCP (always_emulate's emulation), which is also what the guest reads natively.
                var (mul, shift, hz) = tsc();
                switch (subleaf)
                {
                    case 0:
                        eax = XEN_CPUID_HOST_TSC_RELIABLE
                            | (TscMode == TscMode.AlwaysEmulate ? XEN_CPUID_TSC_EMULATED : 0)
                            | (HasRdtscp() ? XEN_CPUID_RDTSCP_INSTR_AVAIL : 0);
                        ebx = (uint)TscMode;
                        ecx = (uint)(hz / 1000); // guest TSC frequency in kHz
                        edx = 0;                 // incarnation: never migrated
                        break;
                    case 1:
                        // The offset is 0: the guest TSC is the engine's, with no per-domain offset to apply.
                        ecx = mul;
                        edx = (uint)(int)shift;
                        break;
                    case 2:
                        eax = (uint)(hz / 1000); // the "host" TSC the engine presents
                        break;
                }
                break;
            }
            case 4:
                eax = XEN_HVM_CPUID_VCPU_ID_PRESENT;
                ebx = (uint)vcpuId;
                break;
        }
    }
}
