using System.Buffers.Binary;
using System.Text;
using XenSharp.Cpu;
using XenSharp.Public.Hvm;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Builder;

/// <summary>What an HVM domain booted from firmware is built from: Xen's hvmloader and the BIOS it loads.</summary>
public sealed record HvmBuildSpec(
    byte[] Hvmloader,
    string HvmloaderName,
    byte[] SystemFirmware,
    ulong MemoryBytes,
    int Vcpus,
    int MaxVcpus);

/// <summary>The built HVM domain: where its pieces are and the boot vCPU's state.</summary>
public sealed record HvmBuildResult(
    uint Entry,
    ulong StartInfoAddress,
    ulong FirmwareAddress,
    IReadOnlyList<MemmapEntry> Memmap,
    ulong XenstorePfn,
    ulong ConsolePfn,
    Registers Registers,
    SpecialRegisters SpecialRegisters);

/// <summary>
/// Builds an HVM domain as libxl and libxc build one for hvmloader (xc_dom_* with the HVM memory layout): RAM from 0
/// to the MMIO hole without the VGA hole (0xA0000-0xBFFFF, which is the device model's), the eight special pages,
/// hvmloader's ELF at its physical addresses, the system firmware (SeaBIOS) as the module named "firmware", the
/// hvm_start_info naming it, and the hvm_info_table at 0x9F800 (vCPUs and the memory's extent). The boot vCPU starts
/// at hvmloader's ELF entry in 32-bit flat protected mode with EBX at the start info, as Xen starts it.
/// </summary>
public static class HvmBuilder
{
    /// <summary>HVM_INFO_PADDR of public/hvm/hvm_info_table.h, and the table's size (HVM_MAX_VCPUS 128).</summary>
    public const ulong HvmInfoAddress = 0x9F800;
    public const int HvmInfoSize = 48, HvmMaxVcpus = 128;
    /// <summary>The VGA hole libxc leaves unpopulated for the device model's legacy VGA window.</summary>
    public const ulong VgaHoleStart = 0xA0000, VgaHoleEnd = 0xC0000;
    /// <summary>libxc's NR_IOREQ_SERVER_PAGES, reserved below the special pages.</summary>
    public const int NrIoreqServerPages = 8;

    public static HvmBuildResult Build(HvmBuildSpec spec, IGuestPhysicalMemory mem)
    {
        if (spec.MaxVcpus > HvmMaxVcpus)
            throw new DomainBuildException($"an HVM domain has at most {HvmMaxVcpus} vCPUs");
        if (!ElfImage.IsElf(spec.Hvmloader))
            throw new DomainBuildException($"{spec.HvmloaderName}: not an ELF image");
        var elf = ElfImage.Parse(spec.Hvmloader, spec.HvmloaderName);
        if (elf.Segments.Count == 0)
            throw new DomainBuildException($"{spec.HvmloaderName}: no loadable segments");
        var (lowEnd, high) = PvhLayout.SplitRam(spec.MemoryBytes);
        if (lowEnd < (16UL << 20))
            throw new DomainBuildException("an HVM domain needs at least 16 MiB of memory");

        mem.Populate(0, VgaHoleStart / PvhLayout.PageSize);
        mem.Populate(VgaHoleEnd / PvhLayout.PageSize, (lowEnd - VgaHoleEnd) / PvhLayout.PageSize);
        if (high > 0)
            mem.Populate(PvhLayout.FourGiB / PvhLayout.PageSize, high / PvhLayout.PageSize);
        mem.Populate(PvhLayout.SpecialPfn(0), PvhLayout.NrSpecialPages);

        foreach (var s in elf.Segments)
        {
            if (s.FileSize > 0) mem.Write(s.PhysAddr, elf.Data.AsSpan((int)s.FileOffset, (int)s.FileSize));
            if (s.MemSize > s.FileSize) mem.Zero(s.PhysAddr + s.FileSize, s.MemSize - s.FileSize);
        }
        var (_, kEnd) = elf.PhysRange;

        // The firmware module, then the start info with its module entry and the module's name.
        ulong firmwareAt = PvhLayout.AlignUp(kEnd);
        ulong startInfo = PvhLayout.AlignUp(firmwareAt + (ulong)spec.SystemFirmware.Length);
        if (startInfo + PvhLayout.PageSize > lowEnd)
            throw new DomainBuildException("hvmloader and its firmware do not fit in memory; raise memory=");
        mem.Write(firmwareAt, spec.SystemFirmware);

        var memmap = Memmap(spec.MemoryBytes);
        const int startInfoSize = 56, modSize = 32, memmapSize = 24;
        ulong modlist = startInfo + startInfoSize;
        ulong memmapAt = modlist + modSize;
        ulong nameAt = memmapAt + (ulong)(memmap.Count * memmapSize);
        byte[] name = Encoding.ASCII.GetBytes("firmware\0");
        var block = new byte[(int)(nameAt - startInfo) + name.Length];
        var b = block.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(b[0..], StartInfo.XEN_HVM_START_MAGIC_VALUE);
        BinaryPrimitives.WriteUInt32LittleEndian(b[4..], 1);
        BinaryPrimitives.WriteUInt32LittleEndian(b[12..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(b[16..], modlist);
        BinaryPrimitives.WriteUInt64LittleEndian(b[40..], memmapAt);
        BinaryPrimitives.WriteUInt32LittleEndian(b[48..], (uint)memmap.Count);
        var m = b[(int)(modlist - startInfo)..];
        BinaryPrimitives.WriteUInt64LittleEndian(m, firmwareAt);
        BinaryPrimitives.WriteUInt64LittleEndian(m[8..], (ulong)spec.SystemFirmware.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(m[16..], nameAt);
        for (int i = 0; i < memmap.Count; i++)
        {
            var e = b[(int)(memmapAt - startInfo + (ulong)(i * memmapSize))..];
            BinaryPrimitives.WriteUInt64LittleEndian(e, memmap[i].Addr);
            BinaryPrimitives.WriteUInt64LittleEndian(e[8..], memmap[i].Size);
            BinaryPrimitives.WriteUInt32LittleEndian(e[16..], memmap[i].Type);
        }
        name.CopyTo(b[(int)(nameAt - startInfo)..]);
        mem.Write(startInfo, block);

        mem.Write(HvmInfoAddress, HvmInfoTable(spec.Vcpus, lowEnd, high));

        PvhBuilder.InitialState((uint)elf.Entry, startInfo, out var regs, out var sregs);
        return new HvmBuildResult((uint)elf.Entry, startInfo, firmwareAt, memmap,
            PvhLayout.SpecialPfn(PvhLayout.SpecialXenstore), PvhLayout.SpecialPfn(PvhLayout.SpecialConsole), regs, sregs);
    }

    /// <summary>Where libxl's memory map of a domain with a device model starts its RAM (GUEST_LOW_MEM_START_DEFAULT):
    /// hvmloader lays out the first megabyte itself.</summary>
    public const ulong LowMemStart = 0x100000;

    /// <summary>The e820 the toolstack gives the domain (XENMEM_memory_map), from which hvmloader makes the guest's: RAM
    /// from 1 MiB to the hole and above 4 GiB (libxl__arch_domain_construct_memmap for HVM).</summary>
    public static List<MemmapEntry> Memmap(ulong memoryBytes)
    {
        var (low, high) = PvhLayout.SplitRam(memoryBytes);
        var map = new List<MemmapEntry> { new(LowMemStart, low - LowMemStart, StartInfo.XEN_HVM_MEMMAP_TYPE_RAM) };
        if (high > 0) map.Add(new(PvhLayout.FourGiB, high, StartInfo.XEN_HVM_MEMMAP_TYPE_RAM));
        return map;
    }

    /// <summary>struct hvm_info_table with its checksum (the bytes sum to zero).</summary>
    public static byte[] HvmInfoTable(int vcpus, ulong lowEnd, ulong high)
    {
        var t = new byte[HvmInfoSize];
        "HVM INFO"u8.CopyTo(t);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(8), HvmInfoSize);
        t[13] = 1; // apic_mode: the firmware builds the MADT and MP tables
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(16), (uint)vcpus);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(20), (uint)(lowEnd / PvhLayout.PageSize));
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(24), (uint)(PvhLayout.SpecialPfn(0) - NrIoreqServerPages));
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(28), high > 0 ? (uint)((PvhLayout.FourGiB + high) / PvhLayout.PageSize) : 0);
        for (int i = 0; i < vcpus; i++)
            t[32 + i / 8] |= (byte)(1 << (i % 8));
        byte sum = 0;
        foreach (byte x in t) sum += x;
        t[12] = (byte)-sum;
        return t;
    }
}
