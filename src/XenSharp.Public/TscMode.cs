using XenSharp.Public.ArchX86;

namespace XenSharp.Public;

/// <summary>A domain's TSC mode: xl.cfg tsc_mode and libxl_tsc_mode, whose numbers are Xen's TSC_MODE_*
/// (what the TSC CPUID leaf reports). native_paravirt never reaches the hypervisor: libxl refuses it.</summary>
public enum TscMode : uint
{
    /// <summary>Native when the TSC is reliable, emulated otherwise. XenSharp's TSC is always constant-rate and in step
    /// across vCPUs, so the guest reads it without emulation being reported.</summary>
    Default = Cpuid.TSC_MODE_DEFAULT,
    /// <summary>Every RDTSC/RDTSCP is emulated at the domain's TSC frequency; the TSC leaf says so.</summary>
    AlwaysEmulate = Cpuid.TSC_MODE_ALWAYS_EMULATE,
    /// <summary>Never emulated: the guest sees the TSC as it runs.</summary>
    Native = Cpuid.TSC_MODE_NEVER_EMULATE,
    /// <summary>PVRDTSCP, removed from Xen: refused by the toolstack.</summary>
    NativeParavirt = Cpuid.TSC_MODE_PVRDTSCP,
}
