using System.Runtime.InteropServices;

namespace XenSharp.Public.Hvm;

/// <summary>xen/include/public/arch-x86/hvm/start_info.h: what a PVH kernel finds in RBX at entry.</summary>
public static class StartInfo
{
    public const uint XEN_HVM_START_MAGIC_VALUE = 0x336ec578;
    public const uint XEN_HVM_MEMMAP_TYPE_RAM = 1, XEN_HVM_MEMMAP_TYPE_RESERVED = 2, XEN_HVM_MEMMAP_TYPE_ACPI = 3,
        XEN_HVM_MEMMAP_TYPE_NVS = 4, XEN_HVM_MEMMAP_TYPE_UNUSABLE = 5, XEN_HVM_MEMMAP_TYPE_DISABLED = 6,
        XEN_HVM_MEMMAP_TYPE_PMEM = 7;
}

/// <summary>struct hvm_start_info (56 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct HvmStartInfo
{
    public uint Magic, Version, Flags, NrModules;
    public ulong ModlistPaddr, CmdlinePaddr, RsdpPaddr, MemmapPaddr;
    public uint MemmapEntries, Reserved;
}

/// <summary>struct hvm_modlist_entry (32 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct HvmModlistEntry { public ulong Paddr, Size, CmdlinePaddr, Reserved; }

/// <summary>struct hvm_memmap_table_entry (24 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct HvmMemmapTableEntry { public ulong Addr, Size; public uint Type, Reserved; }
