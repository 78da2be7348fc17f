using System.Buffers.Binary;
using System.Text;
using XenSharp.Cpu;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Builder;

/// <summary>What the builder needs to know about the domain.</summary>
public sealed record PvhBuildSpec(
    byte[] Kernel,
    string KernelName,
    byte[]? Ramdisk,
    string Cmdline,
    ulong MemoryBytes,
    int Vcpus,
    int MaxVcpus,
    ulong MaxMemoryBytes = 0)
{
    /// <summary>What the memory map covers (xl.cfg maxmem); above <see cref="MemoryBytes"/> the guest starts
    /// populate-on-demand and balloons down to its target.</summary>
    public ulong MapBytes => Math.Max(MemoryBytes, MaxMemoryBytes);

    /// <summary>The start info's modules, in order, instead of <see cref="Ramdisk"/> as the only one (a PV shim's
    /// guest kernel with its command line, then its ramdisk).</summary>
    public IReadOnlyList<PvhModule>? Modules { get; init; }

    /// <summary>Where a packed kernel's unpacked ELF is looked for and kept; none unpacks it every time.</summary>
    public UnpackedKernelCache? KernelCache { get; init; }
}

/// <summary>One hvm_modlist_entry: the bytes loaded, and their command line if any.</summary>
public sealed record PvhModule(byte[] Data, string? Cmdline = null);

/// <summary>The built domain: where things are, and the boot vCPU's state.</summary>
public sealed record PvhBuildResult(
    uint Entry,
    ulong StartInfoAddress,
    ulong KernelStart,
    ulong KernelEnd,
    ulong? RamdiskAddress,
    ulong CmdlineAddress,
    IReadOnlyList<MemmapEntry> Memmap,
    AcpiTables.Image Acpi,
    ulong XenstorePfn,
    ulong ConsolePfn,
    Registers Registers,
    SpecialRegisters SpecialRegisters,
    string? GuestOs);

/// <summary>
/// Builds a PVH domain (libxc's xc_dom_* for PVH): loads the ELF kernel at its physical addresses
/// and enters it at its PHYS32 entry note, the ramdisk as module 0, the command line, the
/// hvm_start_info with its memory map, the ACPI tables and the zeroed special pages, and gives the
/// first vCPU its 32-bit flat protected-mode state with RBX pointing at the start info.
/// </summary>
public static class PvhBuilder
{
    /// <summary>Turns a kernel file into its ELF: as is, out of a bzImage's payload, or decompressed; a packed one
    /// through <paramref name="cache"/> when given.</summary>
    public static ElfImage LoadKernel(byte[] file, string name, UnpackedKernelCache? cache = null)
    {
        byte[] elf = file;
        Func<byte[]>? unpack = null;
        if (BzImage.IsBzImage(file))
        {
            var bz = BzImage.Parse(file, name);
            unpack = () => PayloadDecompressor.Decompress(bz.Payload(file).ToArray(), name, sizeAppended: true);
        }
        else if (!ElfImage.IsElf(file) && PayloadDecompressor.Detect(file) != PayloadFormat.None)
            unpack = () => PayloadDecompressor.Decompress(file, name);
        if (unpack is not null)
            elf = cache is null ? unpack() : cache.GetOrUnpack(file, unpack);
        if (!ElfImage.IsElf(elf))
            throw new DomainBuildException($"{name}: not an ELF kernel, a bzImage or a compressed ELF");
        return ElfImage.Parse(elf, name);
    }

    public static PvhBuildResult Build(PvhBuildSpec spec, IGuestPhysicalMemory mem)
    {
        var elf = LoadKernel(spec.Kernel, spec.KernelName, spec.KernelCache);
        uint entry = elf.Phys32Entry
            ?? throw new DomainBuildException($"{spec.KernelName}: no XEN_ELFNOTE_PHYS32_ENTRY note: the kernel cannot boot as PVH");
        if (elf.Segments.Count == 0) throw new DomainBuildException($"{spec.KernelName}: no loadable segments");
        if (Encoding.UTF8.GetByteCount(spec.Cmdline) >= Xen.MAX_GUEST_CMDLINE)
            throw new DomainBuildException($"command line longer than {Xen.MAX_GUEST_CMDLINE - 1} bytes");

        var (lowEnd, high) = PvhLayout.SplitRam(spec.MapBytes);
        var (kStart, kEnd) = elf.PhysRange;
        if (kEnd > lowEnd)
            throw new DomainBuildException(
                $"{spec.KernelName}: loads up to 0x{kEnd:x}, beyond the domain's 0x{lowEnd:x} bytes of low memory; raise memory=");

        // RAM, the ACPI pages and the special pages. A target below the map's size makes the RAM
        // populate-on-demand with a cache of the target's size, as libxc's meminit_hvm does; the
        // kernel, ramdisk and start info written below take their frames from that cache.
        if (spec.MapBytes > spec.MemoryBytes)
        {
            mem.SetPodTarget(spec.MemoryBytes / PvhLayout.PageSize);
            mem.PopulateOnDemand(0, lowEnd / PvhLayout.PageSize);
            if (high > 0) mem.PopulateOnDemand(PvhLayout.FourGiB / PvhLayout.PageSize, high / PvhLayout.PageSize);
        }
        else
        {
            mem.Populate(0, lowEnd / PvhLayout.PageSize);
            if (high > 0) mem.Populate(PvhLayout.FourGiB / PvhLayout.PageSize, high / PvhLayout.PageSize);
        }
        var acpi = AcpiTables.Build(spec.Vcpus, spec.MaxVcpus);
        ulong acpiPages = (PvhLayout.AlignUp(acpi.End) - AcpiTables.InfoPage) / PvhLayout.PageSize;
        mem.Populate(AcpiTables.InfoPage / PvhLayout.PageSize, acpiPages);
        mem.Write(acpi.Base, acpi.Bytes);
        mem.Populate(PvhLayout.SpecialPfn(0), PvhLayout.NrSpecialPages);

        foreach (var s in elf.Segments)
        {
            if (s.FileSize > 0) mem.Write(s.PhysAddr, elf.Data.AsSpan((int)s.FileOffset, (int)s.FileSize));
            if (s.MemSize > s.FileSize) mem.Zero(s.PhysAddr + s.FileSize, s.MemSize - s.FileSize);
        }

        ulong next = PvhLayout.AlignUp(kEnd);
        var modules = spec.Modules
            ?? (spec.Ramdisk is { Length: > 0 } rd ? new[] { new PvhModule(rd) } : Array.Empty<PvhModule>());
        var moduleAt = new ulong[modules.Count];
        for (int i = 0; i < modules.Count; i++)
        {
            var data = modules[i].Data;
            moduleAt[i] = next;
            next = PvhLayout.AlignUp(next + (ulong)data.Length);
            if (next > lowEnd)
                throw new DomainBuildException($"the {(spec.Modules is null ? "ramdisk" : $"module {i}")} ({data.Length} bytes) does not fit in memory; raise memory=");
            mem.Write(moduleAt[i], data);
        }
        ulong? ramdiskAt = spec.Modules is null && modules.Count > 0 ? moduleAt[0] : null;

        var memmap = PvhLayout.Memmap(spec.MapBytes, acpi);
        byte[] cmdline = Encoding.UTF8.GetBytes(spec.Cmdline + "\0");
        var moduleCmdlines = modules.Select(m => m.Cmdline is null ? null : Encoding.UTF8.GetBytes(m.Cmdline + "\0")).ToArray();
        int nrModules = modules.Count;
        const int startInfoSize = 56, modSize = 32, memmapSize = 24;
        ulong startInfo = next;
        ulong modlist = startInfo + startInfoSize + 8; // 8-byte aligned (56 is)
        ulong memmapAt = modlist + (ulong)(nrModules * modSize);
        ulong cmdlineAt = memmapAt + (ulong)(memmap.Count * memmapSize);
        ulong moduleCmdlinesAt = cmdlineAt + (ulong)cmdline.Length;
        ulong blockEnd = PvhLayout.AlignUp(moduleCmdlinesAt + (ulong)moduleCmdlines.Sum(c => c?.Length ?? 0));
        if (blockEnd > lowEnd || blockEnd > (1UL << 30))
            throw new DomainBuildException("no room below 1 GiB for the start info after the kernel and ramdisk");

        var block = new byte[blockEnd - startInfo];
        var b = block.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(b[0..], StartInfo.XEN_HVM_START_MAGIC_VALUE);
        BinaryPrimitives.WriteUInt32LittleEndian(b[4..], 1); // version: has the memmap fields
        BinaryPrimitives.WriteUInt32LittleEndian(b[8..], 0); // flags: not the initial domain
        BinaryPrimitives.WriteUInt32LittleEndian(b[12..], (uint)nrModules);
        BinaryPrimitives.WriteUInt64LittleEndian(b[16..], nrModules > 0 ? modlist : 0);
        BinaryPrimitives.WriteUInt64LittleEndian(b[24..], cmdlineAt);
        BinaryPrimitives.WriteUInt64LittleEndian(b[32..], acpi.RsdpAddress);
        BinaryPrimitives.WriteUInt64LittleEndian(b[40..], memmapAt);
        BinaryPrimitives.WriteUInt32LittleEndian(b[48..], (uint)memmap.Count);
        ulong moduleCmdline = moduleCmdlinesAt;
        for (int i = 0; i < nrModules; i++)
        {
            var m = b[(int)(modlist - startInfo + (ulong)(i * modSize))..];
            BinaryPrimitives.WriteUInt64LittleEndian(m, moduleAt[i]);
            BinaryPrimitives.WriteUInt64LittleEndian(m[8..], (ulong)modules[i].Data.Length);
            if (moduleCmdlines[i] is { } mc)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(m[16..], moduleCmdline);
                mc.CopyTo(b[(int)(moduleCmdline - startInfo)..]);
                moduleCmdline += (ulong)mc.Length;
            }
        }
        for (int i = 0; i < memmap.Count; i++)
        {
            var e = b[(int)(memmapAt - startInfo + (ulong)(i * memmapSize))..];
            BinaryPrimitives.WriteUInt64LittleEndian(e, memmap[i].Addr);
            BinaryPrimitives.WriteUInt64LittleEndian(e[8..], memmap[i].Size);
            BinaryPrimitives.WriteUInt32LittleEndian(e[16..], memmap[i].Type);
        }
        cmdline.CopyTo(b[(int)(cmdlineAt - startInfo)..]);
        mem.Write(startInfo, block);

        InitialState(entry, startInfo, out var regs, out var sregs);
        return new PvhBuildResult(entry, startInfo, kStart, kEnd, ramdiskAt, cmdlineAt, memmap, acpi,
            PvhLayout.SpecialPfn(PvhLayout.SpecialXenstore), PvhLayout.SpecialPfn(PvhLayout.SpecialConsole),
            regs, sregs, elf.XenNoteString(ElfNote.XEN_ELFNOTE_GUEST_OS));
    }

    /// <summary>Segment attributes in the VMX access-rights layout: type, S, DPL, P, AVL, L, D/B, G.</summary>
    public const ushort FlatCode32 = 0xB | 1 << 4 | 1 << 7 | 1 << 14 | 1 << 15;
    public const ushort FlatData32 = 0x3 | 1 << 4 | 1 << 7 | 1 << 14 | 1 << 15;
    public const ushort Tss32Busy = 0xB | 1 << 7;

    /// <summary>The PVH entry state: 32-bit flat protected mode, paging off, RBX = start info.</summary>
    public static void InitialState(uint entry, ulong startInfo, out Registers regs, out SpecialRegisters sregs)
    {
        regs = default;
        regs.Rip = entry;
        regs.Rbx = startInfo;
        regs.Rflags = 0x2;
        sregs = default;
        var code = new Segment { Base = 0, Limit = 0xFFFFFFFF, Selector = 0x10, Attributes = FlatCode32 };
        var data = new Segment { Base = 0, Limit = 0xFFFFFFFF, Selector = 0x18, Attributes = FlatData32 };
        sregs.Cs = code;
        sregs.Ds = sregs.Es = sregs.Ss = sregs.Fs = sregs.Gs = data;
        sregs.Tr = new Segment { Base = 0, Limit = 0x67, Selector = 0x20, Attributes = Tss32Busy };
        sregs.Cr0 = 0x11; // PE | ET
        sregs.Cr4 = 0;
        sregs.Efer = 0;
        sregs.ApicBase = AcpiTables.LapicAddress | 1 << 11 | 1 << 8; // enabled, BSP
    }
}
