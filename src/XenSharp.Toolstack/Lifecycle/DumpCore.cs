using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Hypervisor;
using XenSharp.Public;
using XenSharp.Public.ArchX86;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// Writes a domain's core in Xen's dump-core format (docs/misc/dump-core-format.txt), as libxc's
/// xc_domain_dumpcore does for `xl dump-core` and the coredump-* actions: a 64-bit ELF core with no
/// program headers and the sections .note.Xen, .xen_prstatus (one vcpu_guest_context per vCPU),
/// .xen_shared_info, .xen_pfn (translated guests name their pages by GFN) and .xen_pages.
/// </summary>
internal static class DumpCore
{
    private const int PageSize = 4096;
    /// <summary>xch_magic of a translated (HVM/PVH) domain's core.</summary>
    public const ulong XC_CORE_MAGIC_HVM = 0xF00FEBEE;
    /// <summary>Format (major 0, minor 1).</summary>
    private const ulong FormatVersion = 1;
    private const int EhdrSize = 64, ShdrSize = 64, NoteHeader = 12 + 4; // namesz, descsz, type, "Xen\0"
    private const int VersionDescSize = 8 + 8 + 16 + 144 + 1024 + 64 + 8 + 8;
    private const uint SHT_PROGBITS = 1, SHT_STRTAB = 3, SHT_NOTE = 7;
    private const ulong SHF_ALLOC = 2;

    private static readonly string[] SectionNames = ["", ".shstrtab", ".note.Xen", ".xen_prstatus", ".xen_shared_info", ".xen_pfn", ".xen_pages"];

    /// <summary>Writes the core; false when <paramref name="cancelled"/> said stop before the end (the file is then
    /// incomplete). The domain should be paused, so that the pages are one moment's.</summary>
    public static bool Write(Stream f, IHypervisorDomain d, int vcpus, XenVersionInfo version, Func<bool> cancelled)
    {
        var mem = d.Memory;
        var page = new byte[PageSize];
        // First pass: which GFNs hold RAM (the core has only those).
        var pfns = new List<ulong>();
        ulong max = mem.MaxGfn;
        for (ulong gfn = 0; gfn <= max; gfn++)
        {
            if ((gfn & 0xFFF) == 0 && cancelled()) return false;
            if (mem.TryReadFrame(gfn, page)) pfns.Add(gfn);
        }

        byte[] notes = Notes(vcpus, pfns.Count, version);
        byte[] strtab = StringTable(out int[] nameOffsets);
        int ctxSize = Marshal.SizeOf<VcpuGuestContext>();

        // Layout: header, notes, prstatus, shared info, pfn list, string table, section headers, then the
        // pages on a page boundary (as libxc aligns them).
        long at = EhdrSize;
        var sections = new (uint Type, ulong Flags, long Offset, long Size, long Align, long EntSize)[SectionNames.Length];
        long Place(int i, uint type, long size, long align, long entSize = 0, ulong flags = 0)
        {
            at = (at + align - 1) / align * align;
            sections[i] = (type, flags, at, size, align, entSize);
            at += size;
            return sections[i].Offset;
        }
        Place(2, SHT_NOTE, notes.Length, 4);
        Place(3, SHT_PROGBITS, (long)ctxSize * vcpus, 8, ctxSize, SHF_ALLOC);
        Place(4, SHT_PROGBITS, PageSize, 8, PageSize, SHF_ALLOC);
        Place(5, SHT_PROGBITS, 8L * pfns.Count, 8, 8, SHF_ALLOC);
        Place(1, SHT_STRTAB, strtab.Length, 1);
        at = (at + 7) & ~7L;
        long shoff = at;
        at += (long)ShdrSize * SectionNames.Length;
        Place(6, SHT_PROGBITS, (long)PageSize * pfns.Count, PageSize, PageSize, SHF_ALLOC);

        var w = new BinaryWriter(f, Encoding.ASCII, leaveOpen: true);
        WriteElfHeader(w, shoff, SectionNames.Length, shstrndx: 1);
        void Seek(long offset)
        {
            w.Flush();
            while (f.Position < offset) f.WriteByte(0);
        }
        Seek(sections[2].Offset);
        w.Write(notes);
        Seek(sections[3].Offset);
        var ctx = new byte[ctxSize];
        for (int v = 0; v < vcpus; v++)
        {
            var c = d.GetVcpuContext(v);
            MemoryMarshal.Write(ctx, in c);
            w.Write(ctx);
        }
        Seek(sections[4].Offset);
        d.ReadSharedInfo(page);
        w.Write(page);
        Seek(sections[5].Offset);
        foreach (ulong pfn in pfns) w.Write(pfn);
        Seek(sections[1].Offset);
        w.Write(strtab);
        Seek(shoff);
        for (int i = 0; i < SectionNames.Length; i++)
        {
            var s = sections[i];
            w.Write((uint)nameOffsets[i]);
            w.Write(s.Type);
            w.Write(s.Flags);
            w.Write(0UL);            // sh_addr
            w.Write((ulong)s.Offset);
            w.Write((ulong)s.Size);
            w.Write(0u);             // sh_link
            w.Write(0u);             // sh_info
            w.Write((ulong)s.Align);
            w.Write((ulong)s.EntSize);
        }
        Seek(sections[6].Offset);
        for (int i = 0; i < pfns.Count; i++)
        {
            if ((i & 0xFFF) == 0 && cancelled()) return false;
            // A page given back since the first pass reads as zeroes: the list above already names it.
            if (!mem.TryReadFrame(pfns[i], page)) Array.Clear(page);
            w.Write(page);
        }
        w.Flush();
        return true;
    }

    private static void WriteElfHeader(BinaryWriter w, long shoff, int shnum, int shstrndx)
    {
        w.Write([0x7f, (byte)'E', (byte)'L', (byte)'F', 2 /* ELFCLASS64 */, 1 /* little-endian */, 1 /* EV_CURRENT */, 0 /* SYSV */]);
        w.Write(new byte[8]);
        w.Write((ushort)4);     // ET_CORE
        w.Write((ushort)62);    // EM_X86_64
        w.Write(1u);            // e_version
        w.Write(0UL);           // e_entry
        w.Write(0UL);           // e_phoff: no program headers
        w.Write((ulong)shoff);
        w.Write(0u);            // e_flags
        w.Write((ushort)EhdrSize);
        w.Write((ushort)56);    // e_phentsize
        w.Write((ushort)0);     // e_phnum
        w.Write((ushort)ShdrSize);
        w.Write((ushort)shnum);
        w.Write((ushort)shstrndx);
    }

    private static byte[] StringTable(out int[] offsets)
    {
        offsets = new int[SectionNames.Length];
        var b = new MemoryStream();
        b.WriteByte(0); // offset 0: the empty name of the null section
        for (int i = 1; i < SectionNames.Length; i++)
        {
            offsets[i] = (int)b.Length;
            b.Write(Encoding.ASCII.GetBytes(SectionNames[i]));
            b.WriteByte(0);
        }
        return b.ToArray();
    }

    /// <summary>The .note.Xen notes: none, header, xen_version, format_version.</summary>
    private static byte[] Notes(int vcpus, int pages, XenVersionInfo v)
    {
        var b = new MemoryStream();
        void Note(uint type, ReadOnlySpan<byte> desc)
        {
            Span<byte> h = stackalloc byte[NoteHeader];
            BinaryPrimitives.WriteUInt32LittleEndian(h, 4);
            BinaryPrimitives.WriteUInt32LittleEndian(h[4..], (uint)desc.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(h[8..], type);
            "Xen\0"u8.CopyTo(h[12..]);
            b.Write(h);
            b.Write(desc);
            while (b.Length % 4 != 0) b.WriteByte(0);
        }
        Note(ElfNote.XEN_ELFNOTE_DUMPCORE_NONE, []);

        Span<byte> header = stackalloc byte[32];
        BinaryPrimitives.WriteUInt64LittleEndian(header, XC_CORE_MAGIC_HVM);
        BinaryPrimitives.WriteUInt64LittleEndian(header[8..], (ulong)vcpus);
        BinaryPrimitives.WriteUInt64LittleEndian(header[16..], (ulong)pages);
        BinaryPrimitives.WriteUInt64LittleEndian(header[24..], PageSize);
        Note(ElfNote.XEN_ELFNOTE_DUMPCORE_HEADER, header);

        var ver = new byte[VersionDescSize];
        BinaryPrimitives.WriteUInt64LittleEndian(ver, (ulong)v.Major);
        BinaryPrimitives.WriteUInt64LittleEndian(ver.AsSpan(8), (ulong)v.Minor);
        Ascii(ver.AsSpan(16, 16), v.ExtraVersion);
        v.CompileInfo.AsSpan(0, Math.Min(144, v.CompileInfo.Length)).CopyTo(ver.AsSpan(32));
        Ascii(ver.AsSpan(176, 1024), v.Capabilities);
        Ascii(ver.AsSpan(1200, 64), v.Changeset);
        BinaryPrimitives.WriteUInt64LittleEndian(ver.AsSpan(1264), v.VirtStart);
        BinaryPrimitives.WriteUInt64LittleEndian(ver.AsSpan(1272), (ulong)v.PageSize);
        Note(ElfNote.XEN_ELFNOTE_DUMPCORE_XEN_VERSION, ver);

        Span<byte> format = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(format, FormatVersion);
        Note(ElfNote.XEN_ELFNOTE_DUMPCORE_FORMAT_VERSION, format);
        return b.ToArray();
    }

    private static void Ascii(Span<byte> field, string s) =>
        Encoding.ASCII.GetBytes(s.AsSpan(0, Math.Min(s.Length, field.Length - 1)), field);
}
