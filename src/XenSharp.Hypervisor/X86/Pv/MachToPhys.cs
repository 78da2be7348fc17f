using XenSharp.Hypervisor.Common;
using XenSharp.Public;

namespace XenSharp.Hypervisor.X86.Pv;

/// <summary>
/// The machine-to-phys table (Xen's machine_to_phys_mapping): one 8-byte guest PFN per machine frame, in frames
/// Xen owns, which every PV guest sees read-only at MACH2PHYS_VIRT_START through L4 slot 256. Made when the
/// first PV domain is; an entry nobody set reads 0 (guests check an M2P answer against their p2m anyway). Beside it
/// the compat M2P of 32-bit PV guests (<see cref="CompatVirtStart"/>).
/// </summary>
internal sealed unsafe class MachToPhys
{
    private const int EntriesPerPage = FrameTable.PageSize / 8;
    private readonly FrameTable _frames;
    private readonly uint[] _tableMfns;

    public MachToPhys(FrameTable frames)
    {
        _frames = frames;
        ulong entries = (ulong)frames.FrameCount;
        int pages = (int)((entries + EntriesPerPage - 1) / EntriesPerPage);
        // The table's pages in 2 MiB superpages of contiguous frames, as Xen builds it: XENMEM_machphys_mfn_list
        // names each superpage's first frame, and libxc maps the 512 frames from there.
        int superpages = (pages + (int)SuperpageFrames - 1) / (int)SuperpageFrames;
        _chunks = AllocateSuperpages(superpages);
        _tableMfns = new uint[pages];
        for (int i = 0; i < pages; i++)
            _tableMfns[i] = _chunks[i / (int)SuperpageFrames] + (uint)(i % (int)SuperpageFrames);
        foreach (uint first in _chunks)
            new Span<byte>(frames.PageAddress(first), (int)SuperpageBytes).Clear();
        // The read-only view: L1s over the table's frames, L2s over the L1s, one L3 for the whole range
        // (256 GiB of virtual space, more than any machine this runs on needs).
        int l1Count = (pages + EntriesPerPage - 1) / EntriesPerPage;
        int l2Count = (l1Count + EntriesPerPage - 1) / EntriesPerPage;
        L3Mfn = Allocate();
        var l3 = (ulong*)frames.PageAddress(L3Mfn);
        for (int j = 0; j < l2Count; j++)
        {
            uint l2Mfn = Allocate();
            l3[j] = Pte(l2Mfn);
            var l2 = (ulong*)frames.PageAddress(l2Mfn);
            for (int k = 0; k < EntriesPerPage && j * EntriesPerPage + k < l1Count; k++)
            {
                int l1Index = j * EntriesPerPage + k;
                uint l1Mfn = Allocate();
                l2[k] = Pte(l1Mfn);
                var l1 = (ulong*)frames.PageAddress(l1Mfn);
                for (int m = 0; m < EntriesPerPage && l1Index * EntriesPerPage + m < pages; m++)
                    l1[m] = Pte(_tableMfns[l1Index * EntriesPerPage + m]);
            }
        }
        // Xen's GDT: L3 slot 256 (MACH2PHYS_VIRT_END) → an L2 → an L1 whose page 14 is the reserved descriptors.
        uint gdtL2 = Allocate(), gdtL1 = Allocate(), reserved = Allocate();
        ReservedGdtMfn = reserved;
        l3[(GdtVirt >> 30) & 511] = Pte(gdtL2);
        ((ulong*)frames.PageAddress(gdtL2))[0] = Pte(gdtL1);
        ((ulong*)frames.PageAddress(gdtL1))[ReservedGdtPage] = Pte(reserved);
        // Accessed bits set, as Xen's check_descriptor does: the CPU never writes the read-only page.
        var gdt = (ulong*)frames.PageAddress(reserved);
        gdt[0x10 / 8] = 0x00CFBB000000FFFF; // FLAT_RING1_CS (0xe019)
        gdt[0x18 / 8] = 0x00CFB3000000FFFF; // FLAT_RING1_DS (0xe021)
        gdt[0x20 / 8] = 0x00CFFB000000FFFF; // FLAT_RING3_CS32 (0xe023)
        gdt[0x28 / 8] = 0x00CFF3000000FFFF; // FLAT_RING3_DS32 / SS64 (0xe02b)
        gdt[0x30 / 8] = 0x00AFFB000000FFFF; // FLAT_RING3_CS64 (0xe033)
        // A 32-bit PV guest's reserved descriptors (Xen's compat_gdt): its kernel's ring-1 and its user space's
        // ring-3 flat segments, all compatibility-mode code.
        CompatReservedGdtMfn = Allocate();
        var compat = (ulong*)frames.PageAddress(CompatReservedGdtMfn);
        compat[0x18 / 8] = 0x00CFBB000000FFFF; // FLAT_RING1_CS (0xe019)
        compat[0x20 / 8] = 0x00CFB3000000FFFF; // FLAT_RING1_DS (0xe021)
        compat[0x28 / 8] = 0x00CFFB000000FFFF; // FLAT_RING3_CS (0xe02b)
        compat[0x30 / 8] = 0x00CFF3000000FFFF; // FLAT_RING3_DS (0xe033)

        // The compat M2P: 4-byte entries in 2 MiB superpages, one L2 entry each, as Xen's
        // compat_idle_pg_table_l2 has them for the slots it copies into every 32-bit guest's top L2. Entries start
        // as INVALID_M2P_ENTRY.
        ulong compatEntries = Math.Min((ulong)frames.FrameCount, CompatMaxEntries);
        int chunks = (int)((compatEntries * 4 + SuperpageBytes - 1) / SuperpageBytes);
        _compatChunks = AllocateSuperpages(chunks);
        foreach (uint first in _compatChunks)
            new Span<byte>(frames.PageAddress(first), (int)SuperpageBytes).Fill(0xFF);
        _compatEntries = (ulong)chunks * SuperpageBytes / 4;
    }

    /// <summary>Where a 32-bit PV guest sees the compat M2P (Xen's HYPERVISOR_COMPAT_VIRT_START of a domU, the PAE
    /// MACH2PHYS_VIRT_START) and where Xen's area ends; its first L2 slot in the top gigabyte.</summary>
    public const uint CompatVirtStart = 0xF5800000, CompatVirtEnd = 0xFFE00000;
    public const int CompatFirstL2Slot = (int)((CompatVirtStart >> 21) & 511);
    /// <summary>What XENMEM_machphys_mapping tells a 32-bit guest (MACH2PHYS_COMPAT_NR_ENTRIES).</summary>
    public const ulong CompatMaxEntries = (CompatVirtEnd - CompatVirtStart) / 4;
    private const ulong SuperpageBytes = 2UL << 20;
    private const uint SuperpageFrames = 512;
    private readonly uint[] _compatChunks;
    private readonly ulong _compatEntries;
    private readonly uint[] _chunks;

    /// <summary>The first MFN of each 2 MiB superpage of the M2P (XENMEM_machphys_mfn_list).</summary>
    public ReadOnlySpan<uint> Chunks => _chunks;

    private uint[] AllocateSuperpages(int count)
    {
        var chunks = new uint[count];
        for (int c = 0; c < count;)
        {
            if (!_frames.TryAllocateExtent(Xen.DOMID_XEN, FrameType.XenShared, out uint first))
                throw new HypervisorException("out of machine memory for the M2P table");
            for (uint f = first; c < count && f + SuperpageFrames <= first + (uint)_frames.ExtentFrames; f += SuperpageFrames)
                chunks[c++] = f;
        }
        return chunks;
    }

    /// <summary>The first MFN of each 2 MiB superpage of the compat M2P (XENMEM_machphys_compat_mfn_list).</summary>
    public ReadOnlySpan<uint> CompatChunks => _compatChunks;

    /// <summary>Xen's slots of a 32-bit guest's top L2 (init_xen_pae_l2_slots): the compat M2P's superpages
    /// present, read-only and supervisor-only (the guest kernel in ring 1 reads them), the rest of the slots
    /// empty.</summary>
    public void InitPaeXenL2Slots(ulong* l2)
    {
        for (int i = CompatFirstL2Slot; i < EntriesPerPage; i++)
        {
            int c = i - CompatFirstL2Slot;
            l2[i] = c < _compatChunks.Length ? ((ulong)_compatChunks[c] << FrameTable.PageShift) | PvMm.PAGE_PSE | PvMm.PAGE_PRESENT : 0;
        }
    }

    /// <summary>The page of reserved descriptors a 32-bit PV domain's GDT windows have instead.</summary>
    public uint CompatReservedGdtMfn { get; }

    /// <summary>Where every PV vCPU's GDT is (GDTR), in Xen's part of the address space right after the M2P: page 14
    /// holds Xen's reserved descriptors, the flat ring-3 (and ring-1) code and data segments at FLAT_RING3_CS32,
    /// DS32 and CS64, so that a native IRET or segment load of those selectors finds them.</summary>
    public const ulong GdtVirt = Public.Mmu.MACH2PHYS_VIRT_END;
    public const ushort GdtLimit = 0xEFFF;
    private const int ReservedGdtPage = 14;

    /// <summary>The page of Xen's reserved GDT descriptors, mapped at page 14 of every GDT window.</summary>
    public uint ReservedGdtMfn { get; }

    /// <summary>The L3 table a PV guest's L4 slot for MACH2PHYS_VIRT_START points at.</summary>
    public uint L3Mfn { get; }

    /// <summary>Present, user (the guest kernel runs in ring 3), never writable.</summary>
    private static ulong Pte(uint mfn) => ((ulong)mfn << FrameTable.PageShift) | PvMm.PAGE_PRESENT | PvMm.PAGE_USER | PvMm.PAGE_ACCESSED;

    private uint Allocate() => _frames.TryAllocate(Xen.DOMID_XEN, FrameType.XenShared, out uint mfn)
        ? mfn : throw new HypervisorException("out of machine memory for the M2P table");

    public ulong Get(ulong mfn) => mfn < _frames.FrameCount ? Slot(mfn) : ulong.MaxValue;

    public void Set(ulong mfn, ulong gpfn)
    {
        if (mfn < _frames.FrameCount)
            Volatile.Write(ref Slot(mfn), gpfn);
        // The compat table gets the low 32 bits, or INVALID_M2P_ENTRY for an entry that does not fit (Xen's
        // set_gpfn_from_mfn).
        if (mfn < _compatEntries)
            Volatile.Write(ref CompatSlot(mfn), gpfn >> 32 == 0 || gpfn == ulong.MaxValue ? (uint)gpfn : uint.MaxValue);
    }

    /// <summary>A compat M2P entry (for tests and the 32-bit view), INVALID_M2P_ENTRY when none.</summary>
    public uint GetCompat(ulong mfn) => mfn < _compatEntries ? CompatSlot(mfn) : uint.MaxValue;

    private ref uint CompatSlot(ulong mfn) =>
        ref ((uint*)_frames.PageAddress(_compatChunks[mfn / (SuperpageBytes / 4)]))[mfn % (SuperpageBytes / 4)];

    private ref ulong Slot(ulong mfn) =>
        ref ((ulong*)_frames.PageAddress(_tableMfns[mfn / EntriesPerPage]))[mfn % EntriesPerPage];
}
