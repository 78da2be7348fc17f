using System.Buffers.Binary;
using System.Text;

namespace XenSharp.Artifacts;

/// <summary>Reads what a root filesystem builder needs from ELF files: the shared libraries a
/// 64-bit little-endian executable or library names as DT_NEEDED, and a kernel module's modinfo.</summary>
internal static class ElfFile
{
    private const uint ShtDynamic = 6;
    private const long DtNull = 0, DtNeeded = 1;

    /// <summary>The DT_NEEDED sonames of a 64-bit ELF file; empty for anything else (static
    /// binaries, 32-bit objects, scripts).</summary>
    public static IReadOnlyList<string> Needed(string path)
    {
        Span<byte> head = stackalloc byte[6];
        using (var f = File.OpenRead(path))
            if (f.Read(head) < head.Length || !head[..4].SequenceEqual("\u007FELF"u8)) return [];
        var b = File.ReadAllBytes(path);
        if (b.Length < 64 || b[0] != 0x7F || b[1] != 'E' || b[2] != 'L' || b[3] != 'F' || b[4] != 2 /* ELFCLASS64 */ || b[5] != 1 /* little-endian */)
            return [];
        var shoff = (long)BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(0x28));
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(0x3A));
        int shnum = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(0x3C));
        var needed = new List<string>();
        for (var i = 0; i < shnum; i++)
        {
            var sh = Section(b, shoff, shentsize, i);
            if (sh.Type != ShtDynamic) continue;
            var strtab = Section(b, shoff, shentsize, (int)sh.Link);
            for (var at = sh.Offset; at + 16 <= sh.Offset + sh.Size; at += 16)
            {
                var tag = BinaryPrimitives.ReadInt64LittleEndian(b.AsSpan((int)at));
                if (tag == DtNull) break;
                if (tag != DtNeeded) continue;
                var name = (long)BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan((int)at + 8));
                needed.Add(CString(b, strtab.Offset + name));
            }
        }
        return needed;
    }

    /// <summary>The modules a kernel module needs loaded first: its modinfo "depends=" field.</summary>
    public static IReadOnlyList<string> ModuleDepends(string path)
    {
        var b = File.ReadAllBytes(path);
        var key = "\0depends="u8;
        var at = b.AsSpan().IndexOf(key);
        if (at < 0) return [];
        var value = CString(b, at + key.Length);
        return value.Split(',', StringSplitOptions.RemoveEmptyEntries);
    }

    private readonly record struct SectionHeader(uint Type, long Offset, long Size, uint Link);

    private static SectionHeader Section(byte[] b, long shoff, int shentsize, int index)
    {
        var s = b.AsSpan((int)(shoff + (long)index * shentsize), shentsize);
        return new SectionHeader(
            BinaryPrimitives.ReadUInt32LittleEndian(s[4..]),
            (long)BinaryPrimitives.ReadUInt64LittleEndian(s[0x18..]),
            (long)BinaryPrimitives.ReadUInt64LittleEndian(s[0x20..]),
            BinaryPrimitives.ReadUInt32LittleEndian(s[0x28..]));
    }

    private static string CString(byte[] b, long offset)
    {
        var span = b.AsSpan((int)offset);
        var end = span.IndexOf((byte)0);
        return Encoding.UTF8.GetString(end < 0 ? span : span[..end]);
    }
}
