using XenSharp.Public;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Builder;

/// <summary>
/// The first steps of a PV build, the same for 64-bit and 32-bit guests (libxc's xc_dom_parse_elf_kernel and
/// xc_dom_alloc_segment): the kernel's Xen notes read at the guest's word size, every page of the domain populated,
/// the ELF segments loaded at their physical addresses less PADDR_OFFSET (VIRT_BASE when the note is missing, as in
/// libelf; that offset is where they are in the guest's PFN space, VIRT_BASE + it where the guest sees them), then in
/// PFN order after the kernel the ramdisk, the p2m list (one MFN of the word size per page), start_info and the
/// xenstore and console pages. The builders allocate the rest (page tables, boot stack) with <see cref="Alloc"/>.
/// </summary>
internal sealed class PvKernelLayout
{
    private const ulong PageSize = 4096;
    private readonly PvBuildSpec _spec;
    private ulong _next;

    public ulong VirtBase { get; }
    public ulong Entry { get; }
    public ulong? HypercallPage { get; }
    public ulong NrPages { get; }
    public ulong? RamdiskPfn { get; }
    public ulong P2mPfn { get; }
    public ulong StartInfoPfn { get; }
    public ulong XenstorePfn { get; }
    public ulong ConsolePfn { get; }

    /// <summary>The first PFN not allocated yet.</summary>
    public ulong NextPfn => _next / PageSize;

    /// <summary>The guest virtual address just past what is allocated.</summary>
    public ulong NextVirt => VirtBase + _next;

    public PvKernelLayout(PvBuildSpec spec, ElfImage elf, IGuestPhysicalMemory mem, IPvBuildTarget pv, int wordBytes)
    {
        _spec = spec;
        ulong mask = wordBytes == 4 ? uint.MaxValue : ulong.MaxValue;
        ulong? Note(uint type) => elf.XenNoteValue(type) is { } v ? v & mask : null;
        VirtBase = Note(ElfNote.XEN_ELFNOTE_VIRT_BASE) ?? 0;
        ulong paddrOffset = Note(ElfNote.XEN_ELFNOTE_PADDR_OFFSET) ?? VirtBase;
        Entry = Note(ElfNote.XEN_ELFNOTE_ENTRY) ?? elf.Entry & mask;
        HypercallPage = Note(ElfNote.XEN_ELFNOTE_HYPERCALL_PAGE);
        var loads = elf.Segments.Where(s => s.MemSize > 0).ToList();
        if (loads.Count == 0)
            throw new DomainBuildException($"{spec.KernelName}: no loadable segments");
        ulong kStart = loads.Min(s => s.PhysAddr), kEnd = loads.Max(s => s.PhysAddr + s.MemSize);
        if (kStart < paddrOffset || kEnd - paddrOffset > spec.MemoryBytes / 2)
            throw new DomainBuildException($"{spec.KernelName}: kernel at 0x{kStart:x}-0x{kEnd:x} (PADDR_OFFSET 0x{paddrOffset:x}) does not fit in {spec.MemoryBytes >> 20} MiB");

        NrPages = spec.MemoryBytes / PageSize;
        mem.Populate(0, NrPages);
        pv.SetMachToPhys(0, NrPages);
        foreach (var s in loads)
        {
            ulong at = s.PhysAddr - paddrOffset;
            mem.Write(at, elf.Data.AsSpan((int)s.FileOffset, (int)s.FileSize));
            if (s.MemSize > s.FileSize)
                mem.Zero(at + s.FileSize, s.MemSize - s.FileSize);
        }

        _next = AlignUp(kEnd - paddrOffset);
        if (spec.Ramdisk is { } ramdisk)
        {
            RamdiskPfn = Alloc((ulong)ramdisk.Length);
            mem.Write(RamdiskPfn.Value * PageSize, ramdisk);
        }
        P2mPfn = Alloc(NrPages * (ulong)wordBytes);
        StartInfoPfn = Alloc(PageSize);
        XenstorePfn = Alloc(PageSize);
        ConsolePfn = Alloc(PageSize);
    }

    /// <summary>The next <paramref name="bytes"/> (whole pages) after what is allocated; returns their first PFN.</summary>
    public ulong Alloc(ulong bytes)
    {
        ulong at = _next;
        _next = AlignUp(_next + Math.Max(bytes, 1));
        if (_next / PageSize > NrPages)
            throw new DomainBuildException($"{_spec.KernelName}: {_spec.MemoryBytes >> 20} MiB is too little for the kernel and its boot data");
        return at / PageSize;
    }

    private static ulong AlignUp(ulong v) => (v + PageSize - 1) & ~(PageSize - 1);
}
