using System.Runtime.InteropServices;

namespace XenSharp.Public.ArchX86;

/// <summary>struct arch_vcpu_info (x86_64).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct ArchVcpuInfo
{
    public ulong Cr2;
    public ulong Pad;
}

/// <summary>struct arch_shared_info (x86_64).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct ArchSharedInfo
{
    public ulong MaxPfn;
    public ulong PfnToMfnFrameListList;
    public ulong NmiReason;
    public ulong P2mCr3;
    public ulong P2mVaddr;
    public ulong P2mGeneration;
}

/// <summary>xen_arch_domainconfig.emulation_flags (arch-x86/xen.h XEN_X86_EMU_*): the devices Xen emulates for a domain.</summary>
public static class XenX86Emu
{
    public const uint XEN_X86_EMU_LAPIC = 1 << 0, XEN_X86_EMU_HPET = 1 << 1, XEN_X86_EMU_PM = 1 << 2, XEN_X86_EMU_RTC = 1 << 3,
        XEN_X86_EMU_IOAPIC = 1 << 4, XEN_X86_EMU_PIC = 1 << 5, XEN_X86_EMU_VGA = 1 << 6, XEN_X86_EMU_IOMMU = 1 << 7,
        XEN_X86_EMU_PIT = 1 << 8, XEN_X86_EMU_USE_PIRQ = 1 << 9, XEN_X86_EMU_VPCI = 1 << 10;
    public const uint XEN_X86_EMU_ALL = 0x7FF;
}
