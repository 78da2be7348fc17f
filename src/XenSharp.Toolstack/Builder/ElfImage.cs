using System.Buffers.Binary;
using System.Text;
using XenSharp.Public;

namespace XenSharp.Toolstack.Builder;

/// <summary>A PT_LOAD segment: where it goes in guest-physical memory and what fills it.</summary>
public readonly record struct ElfSegment(ulong PhysAddr, ulong VirtAddr, long FileOffset, ulong FileSize, ulong MemSize);

/// <summary>One ELF note.</summary>
public sealed record ElfNoteEntry(string Name, uint Type, byte[] Desc);

/// <summary>
/// An ELF32 or ELF64 x86 image as the domain builder loads it (libelf's role): PT_LOAD segments
/// by physical address and the "Xen" notes from PT_NOTE segments or SHT_NOTE sections.
/// </summary>
public sealed class ElfImage
{
    public byte[] Data { get; }
    public bool Is64 { get; }
    public ulong Entry { get; }
    public IReadOnlyList<ElfSegment> Segments { get; }
    public IReadOnlyList<ElfNoteEntry> Notes { get; }

    private ElfImage(byte[] data, bool is64, ulong entry, List<ElfSegment> segs, List<ElfNoteEntry> notes)
    {
        Data = data; Is64 = is64; Entry = entry; Segments = segs; Notes = notes;
    }

    public static bool IsElf(ReadOnlySpan<byte> d) =>
        d.Length >= 4 && d[0] == 0x7F && d[1] == (byte)'E' && d[2] == (byte)'L' && d[3] == (byte)'F';

    /// <summary>The value of a Xen note as a number (notes hold 4- or 8-byte little-endian values).</summary>
    public ulong? XenNoteValue(uint type)
    {
        var n = Notes.FirstOrDefault(x => x.Name == "Xen" && x.Type == type);
        if (n is null) return null;
        return n.Desc.Length switch
        {
            >= 8 => BinaryPrimitives.ReadUInt64LittleEndian(n.Desc),
            >= 4 => BinaryPrimitives.ReadUInt32LittleEndian(n.Desc),
            _ => null,
        };
    }

    public string? XenNoteString(uint type)
    {
        var n = Notes.FirstOrDefault(x => x.Name == "Xen" && x.Type == type);
        return n is null ? null : Encoding.ASCII.GetString(n.Desc).TrimEnd('\0');
    }

    /// <summary>The PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY), or null.</summary>
    public uint? Phys32Entry => XenNoteValue(ElfNote.XEN_ELFNOTE_PHYS32_ENTRY) is { } v ? (uint)v : null;

    /// <summary>Lowest and highest (exclusive) physical address of the loaded image.</summary>
    public (ulong Start, ulong End) PhysRange
    {
        get
        {
            ulong lo = ulong.MaxValue, hi = 0;
            foreach (var s in Segments)
            {
                lo = Math.Min(lo, s.PhysAddr);
                hi = Math.Max(hi, s.PhysAddr + s.MemSize);
            }
            return Segments.Count == 0 ? (0, 0) : (lo, hi);
        }
    }

    public static ElfImage Parse(byte[] d, string what)
    {
        DomainBuildException Bad(string why) => new($"{what}: not a usable ELF image: {why}");
        if (!IsElf(d)) throw Bad("no ELF magic");
        if (d.Length < 52) throw Bad("truncated header");
        bool is64 = d[4] switch { 1 => false, 2 => true, _ => throw Bad($"unknown ELF class {d[4]}") };
        if (d[5] != 1) throw Bad("not little-endian");
        ushort machine = U16(d, 18);
        if (machine is not (3 or 62)) throw Bad($"machine {machine} is not x86");
        if (is64 && d.Length < 64) throw Bad("truncated header");

        ulong entry = is64 ? U64(d, 24) : U32(d, 24);
        ulong phoff = is64 ? U64(d, 32) : U32(d, 28);
        ulong shoff = is64 ? U64(d, 40) : U32(d, 32);
        int phentsize = U16(d, is64 ? 54 : 42), phnum = U16(d, is64 ? 56 : 44);
        int shentsize = U16(d, is64 ? 58 : 46), shnum = U16(d, is64 ? 60 : 48);

        var segs = new List<ElfSegment>();
        var notes = new List<ElfNoteEntry>();
        bool notesFromSegments = false;
        for (int i = 0; i < phnum; i++)
        {
            // phoff and the entry size come from the file: compare before adding, so nothing wraps around.
            ulong rel = (ulong)i * (ulong)phentsize, size = (ulong)(is64 ? 56 : 32);
            if (phoff > (ulong)d.Length || rel > (ulong)d.Length - phoff || size > (ulong)d.Length - phoff - rel)
                throw Bad("program header outside the file");
            int p = (int)(phoff + rel);
            uint type = U32(d, p);
            ulong offset, vaddr, paddr, filesz, memsz;
            if (is64) { offset = U64(d, p + 8); vaddr = U64(d, p + 16); paddr = U64(d, p + 24); filesz = U64(d, p + 32); memsz = U64(d, p + 40); }
            else { offset = U32(d, p + 4); vaddr = U32(d, p + 8); paddr = U32(d, p + 12); filesz = U32(d, p + 16); memsz = U32(d, p + 20); }
            if (filesz > 0 && (offset > (ulong)d.Length || filesz > (ulong)d.Length - offset))
                throw Bad($"segment {i} lies outside the file");
            if (type == 1) // PT_LOAD
            {
                if (memsz < filesz) throw Bad($"segment {i} has memsz < filesz");
                if (paddr + memsz < paddr) throw Bad($"segment {i} wraps around the end of the address space");
                if (memsz > 0) segs.Add(new ElfSegment(paddr, vaddr, (long)offset, filesz, memsz));
            }
            else if (type == 4 && filesz > 0) // PT_NOTE
            {
                ReadNotes(d, (int)offset, (int)filesz, notes);
                notesFromSegments = true;
            }
        }
        if (!notesFromSegments && shoff != 0 && shentsize > 0)
        {
            for (int i = 0; i < shnum; i++)
            {
                ulong rel = (ulong)i * (ulong)shentsize, headerSize = (ulong)(is64 ? 64 : 40);
                if (shoff > (ulong)d.Length || rel > (ulong)d.Length - shoff || headerSize > (ulong)d.Length - shoff - rel) break;
                int s = (int)(shoff + rel);
                uint type = U32(d, s + 4);
                if (type != 7) continue; // SHT_NOTE
                ulong offset = is64 ? U64(d, s + 24) : U32(d, s + 16);
                ulong size = is64 ? U64(d, s + 32) : U32(d, s + 20);
                if (size == 0 || offset > (ulong)d.Length || size > (ulong)d.Length - offset) continue;
                ReadNotes(d, (int)offset, (int)size, notes);
            }
        }
        return new ElfImage(d, is64, entry, segs, notes);
    }

    private static void ReadNotes(byte[] d, int offset, int size, List<ElfNoteEntry> into)
    {
        // In longs: the sizes are the file's 32-bit words, and a sum of them must not wrap.
        long p = offset, end = (long)offset + size;
        while (p + 12 <= end)
        {
            long namesz = U32(d, (int)p), descsz = U32(d, (int)p + 4);
            uint type = U32(d, (int)p + 8);
            long name = p + 12;
            long desc = name + Align4(namesz);
            long next = desc + Align4(descsz);
            if (next > end) break;
            string n = Encoding.ASCII.GetString(d, (int)name, (int)Math.Max(0, namesz - 1));
            into.Add(new ElfNoteEntry(n, type, d.AsSpan((int)desc, (int)descsz).ToArray()));
            p = next;
        }
    }

    private static long Align4(long n) => (n + 3) & ~3L;
    private static ushort U16(byte[] d, int o) => BinaryPrimitives.ReadUInt16LittleEndian(d.AsSpan(o));
    private static uint U32(byte[] d, int o) => BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(o));
    private static ulong U64(byte[] d, int o) => BinaryPrimitives.ReadUInt64LittleEndian(d.AsSpan(o));
}
