using System.Text;
using XenSharp.Cpu;
using XenSharp.Public;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Builder;

/// <summary>What the PV builder needs to know about the domain.</summary>
public sealed record PvBuildSpec(byte[] Kernel, string KernelName, byte[]? Ramdisk, string Cmdline, ulong MemoryBytes)
{
    /// <summary>Where a packed kernel's unpacked ELF is looked for and kept; none unpacks it every time.</summary>
    public UnpackedKernelCache? KernelCache { get; init; }
}

/// <summary>The built PV domain: where things are in its PFN and virtual spaces, and the boot vCPU's state.</summary>
public sealed record PvBuildResult(
    ulong Entry,
    ulong VirtBase,
    ulong StartInfoPfn,
    ulong StartInfoVirt,
    ulong XenstorePfn,
    ulong ConsolePfn,
    ulong XenstoreMfn,
    ulong ConsoleMfn,
    ulong PageTablePfn,
    int PageTableFrames,
    ulong P2mListVirt,
    ulong? RamdiskVirt,
    Registers Registers,
    SpecialRegisters SpecialRegisters,
    string? GuestOs,
    bool Compat = false);

/// <summary>
/// Builds a 64-bit PV domain as libxc's xc_dom_x86 does: the ELF kernel at its virtual addresses less VIRT_BASE (its
/// PFNs), then in order the ramdisk, the p2m list (the MFN of every PFN), start_info, the xenstore and console pages,
/// the initial page tables (mapping everything from VIRT_BASE to past the boot stack with 512 KiB to spare, the
/// tables themselves read-only), and the boot stack. The tables are pinned and loaded through the hypervisor, which
/// validates them as the guest's own; the vCPU starts at the ENTRY note in ring 3 with RSI = start_info's address.
/// </summary>
public static class PvBuilder
{
    private const ulong PageSize = 4096;
    private const ulong P = 1, RW = 2, US = 4, A = 0x20, D = 0x40;
    /// <summary>The initial mapping reaches this far past the boot stack (Xen's promise to PV kernels).</summary>
    private const ulong Slack = 512 * 1024;
    public const string StartInfoMagic = "xen-3.0-x86_64";

    public static PvBuildResult Build(PvBuildSpec spec, IGuestPhysicalMemory mem, IPvBuildTarget pv)
    {
        var elf = PvhBuilder.LoadKernel(spec.Kernel, spec.KernelName, spec.KernelCache);
        if (!elf.Is64)
            return PvCompatBuilder.Build(spec, elf, mem, pv);
        var layout = new PvKernelLayout(spec, elf, mem, pv, wordBytes: 8);
        ulong virtBase = layout.VirtBase, entry = layout.Entry, nrPages = layout.NrPages;
        ulong? hypercallPage = layout.HypercallPage, ramdiskPfn = layout.RamdiskPfn;
        ulong p2mPfn = layout.P2mPfn, startInfoPfn = layout.StartInfoPfn, xenstorePfn = layout.XenstorePfn, consolePfn = layout.ConsolePfn;
        // The tables map up to the boot stack's end plus slack; how many they are depends on that end.
        ulong tablesPfn = layout.NextPfn;
        int l1s = 0, l2s = 0, l3s = 0;
        for (int round = 0; round < 8; round++)
        {
            ulong end = virtBase + (tablesPfn + (ulong)(1 + l3s + l2s + l1s) + 1) * PageSize + Slack;
            int n1 = Spans(virtBase, end, 21), n2 = Spans(virtBase, end, 30), n3 = Spans(virtBase, end, 39);
            if ((n1, n2, n3) == (l1s, l2s, l3s))
                break;
            (l1s, l2s, l3s) = (n1, n2, n3);
        }
        int tableFrames = 1 + l3s + l2s + l1s;
        layout.Alloc((ulong)tableFrames * PageSize);
        ulong stackPfn = layout.Alloc(PageSize);
        ulong mappedEnd = layout.NextVirt + Slack;

        // The p2m list.
        var p2m = new byte[nrPages * 8];
        for (ulong pfn = 0; pfn < nrPages; pfn++)
            BitConverter.TryWriteBytes(p2m.AsSpan((int)(pfn * 8)), pv.MfnOf(pfn));
        mem.Write(p2mPfn * PageSize, p2m);

        // Page tables: L4, then the L3s, L2s and L1s, each level over consecutive PFNs.
        ulong l4Pfn = tablesPfn, l3Pfn = l4Pfn + 1, l2Pfn = l3Pfn + (ulong)l3s, l1Pfn = l2Pfn + (ulong)l2s;
        ulong tablesEnd = l1Pfn + (ulong)l1s;
        ulong Entry(ulong pfn, bool writable) => (pv.MfnOf(pfn) << 12) | P | US | A | (writable ? RW | D : 0);
        var tables = new ulong[tableFrames * 512];
        void Set(ulong tablePfn, int index, ulong value) => tables[(int)(tablePfn - l4Pfn) * 512 + index] = value;
        for (ulong va = virtBase; va < mappedEnd; va += PageSize)
        {
            int i4 = (int)((va >> 39) & 511), i3 = (int)((va >> 30) & 511), i2 = (int)((va >> 21) & 511), i1 = (int)((va >> 12) & 511);
            ulong l3 = l3Pfn + (ulong)Spans(virtBase, va + 1, 39) - 1;
            ulong l2 = l2Pfn + (ulong)Spans(virtBase, va + 1, 30) - 1;
            ulong l1 = l1Pfn + (ulong)Spans(virtBase, va + 1, 21) - 1;
            Set(l4Pfn, i4, Entry(l3, true));
            Set(l3, i3, Entry(l2, true));
            Set(l2, i2, Entry(l1, true));
            ulong pfn = (va - virtBase) / PageSize;
            if (pfn < nrPages)
                Set(l1, i1, Entry(pfn, writable: pfn < tablesPfn || pfn >= tablesEnd));
        }
        var tableBytes = new byte[tables.Length * 8];
        Buffer.BlockCopy(tables, 0, tableBytes, 0, tableBytes.Length);
        mem.Write(tablesPfn * PageSize, tableBytes);

        // start_info.
        var si = new byte[PageSize];
        Encoding.ASCII.GetBytes(StartInfoMagic).CopyTo(si, 0);
        Put(si, 32, nrPages);
        Put(si, 40, pv.SharedInfoMfn << 12);
        Put(si, 56, pv.MfnOf(xenstorePfn));
        Put(si, 72, pv.MfnOf(consolePfn));
        Put(si, 88, virtBase + l4Pfn * PageSize);
        Put(si, 96, (ulong)tableFrames);
        Put(si, 104, virtBase + p2mPfn * PageSize);
        if (ramdiskPfn is { } rdPfn)
        {
            Put(si, 112, virtBase + rdPfn * PageSize);
            Put(si, 120, (ulong)spec.Ramdisk!.Length);
        }
        var cmd = Encoding.ASCII.GetBytes(spec.Cmdline ?? "");
        cmd.AsSpan(0, Math.Min(cmd.Length, Xen.MAX_GUEST_CMDLINE - 1)).CopyTo(si.AsSpan(StartInfoCmdline));
        Put(si, StartInfoCmdline + Xen.MAX_GUEST_CMDLINE, p2mPfn);
        Put(si, StartInfoCmdline + Xen.MAX_GUEST_CMDLINE + 8, (nrPages * 8 + PageSize - 1) / PageSize);
        mem.Write(startInfoPfn * PageSize, si);
        mem.Zero(xenstorePfn * PageSize, PageSize);
        mem.Zero(consolePfn * PageSize, PageSize);

        if (hypercallPage is { } hp)
        {
            if (hp < virtBase || (hp - virtBase) / PageSize >= nrPages)
                throw new DomainBuildException($"{spec.KernelName}: HYPERCALL_PAGE 0x{hp:x} is outside the kernel's memory");
            pv.InitHypercallPage((hp - virtBase) / PageSize);
        }
        ulong l4Mfn = pv.MfnOf(l4Pfn);
        pv.PinTable(4, l4Mfn);
        pv.SetBaseptr(0, l4Mfn);

        InitialState(entry, virtBase + startInfoPfn * PageSize, virtBase + (stackPfn + 1) * PageSize, l4Mfn, out var regs, out var sregs);
        return new PvBuildResult(entry, virtBase, startInfoPfn, virtBase + startInfoPfn * PageSize, xenstorePfn, consolePfn,
            pv.MfnOf(xenstorePfn), pv.MfnOf(consolePfn), l4Pfn, tableFrames, virtBase + p2mPfn * PageSize,
            ramdiskPfn is { } r ? virtBase + r * PageSize : null, regs, sregs, elf.XenNoteString(ElfNote.XEN_ELFNOTE_GUEST_OS));
    }

    /// <summary>start_info's offsets: store_evtchn and console.domU.evtchn, set once the toolstack has the ports.</summary>
    public const int StartInfoStoreEvtchn = 64, StartInfoConsoleEvtchn = 80, StartInfoCmdline = 128;

    /// <summary>Writes the xenstore and console event channels into start_info (the 32-bit layout's when
    /// <paramref name="compat"/>).</summary>
    public static void SetEventChannels(IGuestPhysicalMemory mem, ulong startInfoPfn, uint storePort, uint consolePort, bool compat = false)
    {
        mem.WriteUInt32(startInfoPfn * PageSize + (ulong)(compat ? PvCompatBuilder.StartInfoStoreEvtchn : StartInfoStoreEvtchn), storePort);
        mem.WriteUInt32(startInfoPfn * PageSize + (ulong)(compat ? PvCompatBuilder.StartInfoConsoleEvtchn : StartInfoConsoleEvtchn), consolePort);
    }

    /// <summary>64-bit ring-3 flat code and data (FLAT_KERNEL_CS/SS) in the VMX access-rights layout.</summary>
    public const ushort FlatCode64Ring3 = 0xA0FB, FlatData64Ring3 = 0xC0F3;

    /// <summary>The PV entry state: long mode, paging on the initial tables, ring 3 on Xen's flat selectors, RSI =
    /// start_info, RSP = the top of the boot stack, events masked until the kernel unmasks them.</summary>
    public static void InitialState(ulong entry, ulong startInfo, ulong stackTop, ulong l4Mfn, out Registers regs, out SpecialRegisters sregs)
    {
        regs = default;
        regs.Rip = entry;
        regs.Rsi = startInfo;
        regs.Rsp = stackTop;
        regs.Rflags = 0x202;
        sregs = default;
        sregs.Cs = new Segment { Selector = Public.ArchX86.Pv.FLAT_KERNEL_CS, Limit = 0xFFFFFFFF, Attributes = FlatCode64Ring3 };
        sregs.Ss = new Segment { Selector = Public.ArchX86.Pv.FLAT_KERNEL_SS, Limit = 0xFFFFFFFF, Attributes = FlatData64Ring3 };
        sregs.Tr = new Segment { Limit = 0x67, Attributes = 0x8B };
        sregs.Ldt = new Segment { Attributes = 0x82 };
        sregs.Cr0 = 0x80050033; // PG, WP, NE, ET, MP, PE
        sregs.Cr3 = l4Mfn << 12;
        sregs.Cr4 = 0x6A0;      // PAE, PGE, OSFXSR, OSXMMEXCPT
        sregs.Efer = 0xD01;     // SCE, LME, LMA, NXE
    }

    /// <summary>How many naturally aligned 2^shift blocks [start, end) touches.</summary>
    private static int Spans(ulong start, ulong end, int shift) => (int)(((end - 1) >> shift) - (start >> shift) + 1);


    private static void Put(byte[] b, int offset, ulong v) => BitConverter.TryWriteBytes(b.AsSpan(offset), v);
}
