using System.Text;
using XenSharp.Cpu;
using XenSharp.Public;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Builder;

/// <summary>
/// Builds a 32-bit PAE PV domain, the compat ABI of a 64-bit Xen, as libxc's xc_dom_x86 does for x86_32p: the domain
/// is made 32-bit first (XEN_DOMCTL_set_address_size), then the ELF kernel at its virtual addresses less VIRT_BASE,
/// and in PFN order the ramdisk, the p2m list (4-byte MFNs), start_info (the 32-bit layout), the xenstore and console
/// pages, the PAE page tables (one L3, an L2 per gigabyte mapped and always one for the last, the L1s; the tables
/// read-only in the mapping) and the boot stack. The L3 is pinned and loaded; the vCPU starts at ENTRY in ring 1 on
/// Xen's flat compat selectors with ESI = start_info's address.
/// </summary>
public static class PvCompatBuilder
{
    private const ulong PageSize = 4096;
    private const ulong P = 1, RW = 2, A = 0x20, D = 0x40;
    private const ulong Slack = 512 * 1024;

    /// <summary>start_info_x86_32's offsets.</summary>
    public const int StartInfoStoreEvtchn = 48, StartInfoConsoleEvtchn = 56, StartInfoCmdline = 80;

    public static PvBuildResult Build(PvBuildSpec spec, ElfImage elf, IGuestPhysicalMemory mem, IPvBuildTarget pv)
    {
        if (elf.XenNoteString(ElfNote.XEN_ELFNOTE_PAE_MODE) is "no")
            throw new DomainBuildException($"{spec.KernelName}: a 32-bit PV kernel without PAE; Xen on x86-64 runs only PAE ones");
        pv.SetAddressSize(32);
        var layout = new PvKernelLayout(spec, elf, mem, pv, wordBytes: 4);
        ulong virtBase = layout.VirtBase, entry = layout.Entry, nrPages = layout.NrPages;
        ulong? hypercallPage = layout.HypercallPage, ramdiskPfn = layout.RamdiskPfn;
        ulong p2mPfn = layout.P2mPfn, startInfoPfn = layout.StartInfoPfn, xenstorePfn = layout.XenstorePfn, consolePfn = layout.ConsolePfn;

        // The L2s: one per gigabyte the mapping touches, and the last gigabyte's always (Xen keeps its own
        // mappings under the L3's last entry and wants it present).
        ulong tablesPfn = layout.NextPfn;
        int l1s = 0;
        var gigabytes = new SortedSet<int>();
        for (int round = 0; round < 8; round++)
        {
            ulong end = virtBase + (tablesPfn + 1 + (ulong)gigabytes.Count + (ulong)l1s + 1) * PageSize + Slack;
            var g = new SortedSet<int> { 3 };
            for (ulong gb = virtBase >> 30; gb <= (end - 1) >> 30; gb++)
                g.Add((int)gb);
            int n1 = (int)(((end - 1) >> 21) - (virtBase >> 21) + 1);
            if (g.SetEquals(gigabytes) && n1 == l1s)
                break;
            (gigabytes, l1s) = (g, n1);
        }
        int tableFrames = 1 + gigabytes.Count + l1s;
        layout.Alloc((ulong)tableFrames * PageSize);
        ulong stackPfn = layout.Alloc(PageSize);
        ulong mappedEnd = layout.NextVirt + Slack;
        if (mappedEnd > Mmu.HYPERVISOR_VIRT_START_PAE)
            throw new DomainBuildException($"{spec.KernelName}: the initial mapping (to 0x{mappedEnd:x}) reaches Xen's part of a 32-bit guest's space");

        var p2m = new byte[nrPages * 4];
        for (ulong pfn = 0; pfn < nrPages; pfn++)
            BitConverter.TryWriteBytes(p2m.AsSpan((int)(pfn * 4)), (uint)pv.MfnOf(pfn));
        mem.Write(p2mPfn * PageSize, p2m);

        // Tables: the L3, the L2s in gigabyte order, the L1s in address order.
        ulong l3Pfn = tablesPfn, l2Pfn = l3Pfn + 1, l1Pfn = l2Pfn + (ulong)gigabytes.Count;
        ulong tablesEnd = l1Pfn + (ulong)l1s;
        var l2Of = gigabytes.Select((gb, i) => (gb, i)).ToDictionary(x => x.gb, x => l2Pfn + (ulong)x.i);
        ulong Mfn(ulong pfn) => pv.MfnOf(pfn) << 12;
        var tables = new ulong[tableFrames * 512];
        void Set(ulong tablePfn, int index, ulong value) => tables[(int)(tablePfn - l3Pfn) * 512 + index] = value;
        foreach (var (gb, l2) in l2Of)
            Set(l3Pfn, gb, Mfn(l2) | P); // a PDPTE has no rights bits of its own
        for (ulong va = virtBase; va < mappedEnd; va += PageSize)
        {
            ulong l2 = l2Of[(int)(va >> 30)];
            ulong l1 = l1Pfn + ((va >> 21) - (virtBase >> 21));
            Set(l2, (int)((va >> 21) & 511), Mfn(l1) | P | RW | A);
            ulong pfn = (va - virtBase) / PageSize;
            if (pfn < nrPages)
                Set(l1, (int)((va >> 12) & 511), Mfn(pfn) | P | A | (pfn < tablesPfn || pfn >= tablesEnd ? RW | D : 0));
        }
        var tableBytes = new byte[tables.Length * 8];
        Buffer.BlockCopy(tables, 0, tableBytes, 0, tableBytes.Length);
        mem.Write(tablesPfn * PageSize, tableBytes);

        // start_info_x86_32.
        var si = new byte[PageSize];
        Encoding.ASCII.GetBytes(Public.ArchX86.Pv.START_INFO_MAGIC_X86_32P).CopyTo(si, 0);
        Put(si, 32, nrPages);
        Put(si, 36, pv.SharedInfoMfn << 12);
        Put(si, 44, pv.MfnOf(xenstorePfn));
        Put(si, 52, pv.MfnOf(consolePfn));
        Put(si, 60, virtBase + l3Pfn * PageSize);
        Put(si, 64, (ulong)tableFrames);
        Put(si, 68, virtBase + p2mPfn * PageSize);
        if (ramdiskPfn is { } rdPfn)
        {
            Put(si, 72, virtBase + rdPfn * PageSize);
            Put(si, 76, (ulong)spec.Ramdisk!.Length);
        }
        var cmd = Encoding.ASCII.GetBytes(spec.Cmdline ?? "");
        cmd.AsSpan(0, Math.Min(cmd.Length, Xen.MAX_GUEST_CMDLINE - 1)).CopyTo(si.AsSpan(StartInfoCmdline));
        Put(si, StartInfoCmdline + Xen.MAX_GUEST_CMDLINE, p2mPfn);
        Put(si, StartInfoCmdline + Xen.MAX_GUEST_CMDLINE + 4, (nrPages * 4 + PageSize - 1) / PageSize);
        mem.Write(startInfoPfn * PageSize, si);
        mem.Zero(xenstorePfn * PageSize, PageSize);
        mem.Zero(consolePfn * PageSize, PageSize);

        if (hypercallPage is { } hp)
        {
            if (hp < virtBase || (hp - virtBase) / PageSize >= nrPages)
                throw new DomainBuildException($"{spec.KernelName}: HYPERCALL_PAGE 0x{hp:x} is outside the kernel's memory");
            pv.InitHypercallPage((hp - virtBase) / PageSize);
        }
        ulong l3Mfn = pv.MfnOf(l3Pfn);
        pv.PinTable(3, l3Mfn);
        pv.SetBaseptr(0, l3Mfn);

        ulong startInfoVirt = virtBase + startInfoPfn * PageSize;
        InitialState(entry, startInfoVirt, virtBase + (stackPfn + 1) * PageSize, l3Mfn, out var regs, out var sregs);
        return new PvBuildResult(entry, virtBase, startInfoPfn, startInfoVirt, xenstorePfn, consolePfn,
            pv.MfnOf(xenstorePfn), pv.MfnOf(consolePfn), l3Pfn, tableFrames, virtBase + p2mPfn * PageSize,
            ramdiskPfn is { } r ? virtBase + r * PageSize : null, regs, sregs, elf.XenNoteString(ElfNote.XEN_ELFNOTE_GUEST_OS),
            Compat: true);
    }

    /// <summary>32-bit ring-1 flat code and data (FLAT_RING1_CS/DS: compatibility mode) in the VMX access-rights
    /// layout.</summary>
    public const ushort FlatCode32Ring1 = 0xC0BB, FlatData32Ring1 = 0xC0B3;

    /// <summary>The compat PV entry state: long mode underneath (Xen's), the guest in compatibility mode in ring 1
    /// on FLAT_RING1_CS/DS, ESI = start_info, ESP = the top of the boot stack.</summary>
    public static void InitialState(ulong entry, ulong startInfo, ulong stackTop, ulong l3Mfn, out Registers regs, out SpecialRegisters sregs)
    {
        PvBuilder.InitialState(entry, startInfo, stackTop, l3Mfn, out regs, out sregs);
        var data = new Segment { Selector = Public.ArchX86.Pv.FLAT_RING1_DS, Limit = 0xFFFFFFFF, Attributes = FlatData32Ring1 };
        sregs.Cs = new Segment { Selector = Public.ArchX86.Pv.FLAT_RING1_CS, Limit = 0xFFFFFFFF, Attributes = FlatCode32Ring1 };
        sregs.Ss = data;
        sregs.Ds = data;
        sregs.Es = data;
    }


    private static void Put(byte[] b, int offset, ulong v) => BitConverter.TryWriteBytes(b.AsSpan(offset), (uint)v);
}
