using XenSharp.Public.Hvm;

namespace XenSharp.Toolstack.Builder;

/// <summary>One e820 entry of the guest's memory map (struct hvm_memmap_table_entry).</summary>
public readonly record struct MemmapEntry(ulong Addr, ulong Size, uint Type)
{
    public ulong End => Addr + Size;
}

/// <summary>
/// Guest-physical layout of a PVH domain, as Xen's toolstack makes it: RAM from 0 up to the MMIO
/// hole, the ACPI tables at 0xFC000000, eight special pages just below 0xFF000000, the rest of RAM
/// above 4 GiB.
/// </summary>
public static class PvhLayout
{
    public const ulong PageSize = 4096;
    /// <summary>Start of the MMIO hole below 4 GiB (its default size is 256 MiB).</summary>
    public const ulong MmioHoleStart = 0xF0000000;
    public const ulong FourGiB = 1UL << 32;

    /// <summary>The special pages end at pfn 0xFF000 and there are eight of them.</summary>
    public const ulong SpecialRegionEndPfn = 0xFF000;
    public const int NrSpecialPages = 8;
    public const int SpecialPaging = 0, SpecialAccess = 1, SpecialSharing = 2, SpecialBufIoreq = 3,
        SpecialXenstore = 4, SpecialIoreq = 5, SpecialIdentPt = 6, SpecialConsole = 7;

    public static ulong SpecialPfn(int index) => SpecialRegionEndPfn - NrSpecialPages + (ulong)index;
    public static ulong SpecialRegionStart => SpecialPfn(0) * PageSize;

    /// <summary>RAM below 4 GiB and above it for <paramref name="memoryBytes"/> of guest memory.</summary>
    public static (ulong LowEnd, ulong HighSize) SplitRam(ulong memoryBytes) =>
        memoryBytes <= MmioHoleStart ? (memoryBytes, 0) : (MmioHoleStart, memoryBytes - MmioHoleStart);

    public static List<MemmapEntry> Memmap(ulong memoryBytes, AcpiTables.Image acpi)
    {
        var (low, high) = SplitRam(memoryBytes);
        var map = new List<MemmapEntry>
        {
            new(0, low, StartInfo.XEN_HVM_MEMMAP_TYPE_RAM),
            new(AcpiTables.InfoPage, AlignUp(acpi.End) - AcpiTables.InfoPage, StartInfo.XEN_HVM_MEMMAP_TYPE_NVS),
            new(SpecialRegionStart, NrSpecialPages * PageSize, StartInfo.XEN_HVM_MEMMAP_TYPE_RESERVED),
        };
        if (high > 0) map.Add(new(FourGiB, high, StartInfo.XEN_HVM_MEMMAP_TYPE_RAM));
        return map;
    }

    public static ulong AlignUp(ulong v, ulong a = PageSize) => (v + a - 1) & ~(a - 1);
}
