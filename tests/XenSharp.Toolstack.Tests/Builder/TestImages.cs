using System.Buffers.Binary;
using System.Diagnostics;

namespace XenSharp.Toolstack.Tests.Builder;

/// <summary>Small kernel images made in the test: ELF with Xen notes, bzImage wrappers, compressed payloads.</summary>
internal static class TestImages
{
    public const ulong LoadAddress = 0x100000;

    /// <summary>hlt; jmp back: with interrupts off the vCPU blocks for good and costs nothing.</summary>
    public static readonly byte[] HaltLoop = [0xF4, 0xEB, 0xFD];

    /// <summary>An ELF64 (or ELF32) with one PT_LOAD of <paramref name="code"/> plus <paramref name="bss"/>
    /// zero bytes at <paramref name="paddr"/>, and a PT_NOTE with the Xen PHYS32_ENTRY note when given.</summary>
    public static byte[] Elf(byte[] code, uint? phys32Entry, ulong paddr = LoadAddress, int bss = 0, bool is64 = true, string? guestOs = "XenSharpTest")
    {
        var notes = new MemoryStream();
        void Note(uint type, byte[] desc)
        {
            Span<byte> h = stackalloc byte[12];
            BinaryPrimitives.WriteUInt32LittleEndian(h, 4);
            BinaryPrimitives.WriteUInt32LittleEndian(h[4..], (uint)desc.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(h[8..], type);
            notes.Write(h);
            notes.Write("Xen\0"u8);
            notes.Write(desc);
            while (notes.Length % 4 != 0) notes.WriteByte(0);
        }
        if (guestOs is not null) Note(6, System.Text.Encoding.ASCII.GetBytes(guestOs + "\0"));
        if (phys32Entry is { } e) { var d = new byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(d, e); Note(18, d); }
        byte[] noteBytes = notes.ToArray();

        int ehsize = is64 ? 64 : 52, phsize = is64 ? 56 : 32;
        int phoff = ehsize, noteOff = phoff + 2 * phsize, codeOff = (noteOff + noteBytes.Length + 15) & ~15;
        var f = new byte[codeOff + code.Length];
        var s = f.AsSpan();
        s[0] = 0x7F; s[1] = (byte)'E'; s[2] = (byte)'L'; s[3] = (byte)'F';
        s[4] = (byte)(is64 ? 2 : 1); s[5] = 1; s[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], (ushort)(is64 ? 62 : 3));
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 1);
        if (is64)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(s[24..], paddr);
            BinaryPrimitives.WriteUInt64LittleEndian(s[32..], (ulong)phoff);
            BinaryPrimitives.WriteUInt16LittleEndian(s[52..], (ushort)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[54..], (ushort)phsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[56..], 2);
            var p = s[phoff..];
            BinaryPrimitives.WriteUInt32LittleEndian(p, 1);
            BinaryPrimitives.WriteUInt32LittleEndian(p[4..], 7);
            BinaryPrimitives.WriteUInt64LittleEndian(p[8..], (ulong)codeOff);
            BinaryPrimitives.WriteUInt64LittleEndian(p[16..], paddr + 0xFFFFFFFF80000000);
            BinaryPrimitives.WriteUInt64LittleEndian(p[24..], paddr);
            BinaryPrimitives.WriteUInt64LittleEndian(p[32..], (ulong)code.Length);
            BinaryPrimitives.WriteUInt64LittleEndian(p[40..], (ulong)(code.Length + bss));
            p = s[(phoff + phsize)..];
            BinaryPrimitives.WriteUInt32LittleEndian(p, 4);
            BinaryPrimitives.WriteUInt64LittleEndian(p[8..], (ulong)noteOff);
            BinaryPrimitives.WriteUInt64LittleEndian(p[32..], (ulong)noteBytes.Length);
            BinaryPrimitives.WriteUInt64LittleEndian(p[40..], (ulong)noteBytes.Length);
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(s[24..], (uint)paddr);
            BinaryPrimitives.WriteUInt32LittleEndian(s[28..], (uint)phoff);
            BinaryPrimitives.WriteUInt16LittleEndian(s[40..], (ushort)ehsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[42..], (ushort)phsize);
            BinaryPrimitives.WriteUInt16LittleEndian(s[44..], 2);
            var p = s[phoff..];
            BinaryPrimitives.WriteUInt32LittleEndian(p, 1);
            BinaryPrimitives.WriteUInt32LittleEndian(p[4..], (uint)codeOff);
            BinaryPrimitives.WriteUInt32LittleEndian(p[8..], (uint)paddr);
            BinaryPrimitives.WriteUInt32LittleEndian(p[12..], (uint)paddr);
            BinaryPrimitives.WriteUInt32LittleEndian(p[16..], (uint)code.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(p[20..], (uint)(code.Length + bss));
            BinaryPrimitives.WriteUInt32LittleEndian(p[24..], 7);
            p = s[(phoff + phsize)..];
            BinaryPrimitives.WriteUInt32LittleEndian(p, 4);
            BinaryPrimitives.WriteUInt32LittleEndian(p[4..], (uint)noteOff);
            BinaryPrimitives.WriteUInt32LittleEndian(p[16..], (uint)noteBytes.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(p[20..], (uint)noteBytes.Length);
        }
        noteBytes.CopyTo(f, noteOff);
        code.CopyTo(f, codeOff);
        return f;
    }

    /// <summary>A bzImage-format file: boot sector and setup sectors with the HdrS header (protocol
    /// 2.15), the payload at payload_offset within the protected-mode part, and the 4-byte size Linux appends.</summary>
    public static byte[] BzImage(byte[] payload, int unpackedSize, int setupSects = 3, int payloadOffset = 0x3A0)
    {
        int pmStart = (setupSects + 1) * 512;
        var f = new byte[pmStart + payloadOffset + payload.Length + 4];
        f[0x1F1] = (byte)setupSects;
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(0x1FE), 0xAA55);
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(0x202), 0x53726448);
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(0x206), 0x020F);
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(0x248), (uint)payloadOffset);
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(0x24C), (uint)payload.Length + 4);
        payload.CopyTo(f, pmStart + payloadOffset);
        BinaryPrimitives.WriteUInt32LittleEndian(f.AsSpan(f.Length - 4), (uint)unpackedSize);
        return f;
    }

    /// <summary>Compresses with a host tool reading stdin (xz, gzip, zstd from xz-utils/gzip/zstd).</summary>
    public static byte[] Tool(string tool, string args, byte[] input)
    {
        var psi = new ProcessStartInfo(tool, args)
        { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        using var p = Process.Start(psi)!;
        var output = new MemoryStream();
        var copy = p.StandardOutput.BaseStream.CopyToAsync(output);
        p.StandardInput.BaseStream.Write(input);
        p.StandardInput.Close();
        copy.Wait();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{tool} {args} failed");
        return output.ToArray();
    }
}
