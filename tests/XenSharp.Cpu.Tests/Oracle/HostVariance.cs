using System.Buffers.Binary;
using Iced.Intel;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>
/// Behaviours where processors that implement the same instructions differ, so that a host of one
/// generation or vendor cannot judge the engine's choice (README.md, "What is compared"):
/// <list type="bullet">
/// <item>DPPS/DPPD with several NaN inputs or products: which NaN reaches each destination lane (some
/// hosts sum the products in a different order per lane, so lanes of one result hold different NaNs).
/// A lane of a DPPS/DPPD destination matches when both sides hold a NaN there.</item>
/// <item>The alignment check (#AC) on the 16-byte SSE loads and stores that accept a misaligned
/// operand (MOVUPS, MOVUPD, MOVDQU, LDDQU, PCMPxSTRx): some processors raise it under EFLAGS.AC at
/// CPL 3, others never do. A case in which the engine raised #AC on one of them while the host ran on
/// is not compared further.</item>
/// </list>
/// </summary>
internal static class HostVariance
{
    static bool UnalignedSse(Mnemonic m) => m is Mnemonic.Movups or Mnemonic.Movupd or Mnemonic.Movdqu or Mnemonic.Lddqu
        or Mnemonic.Pcmpestri or Mnemonic.Pcmpestrm or Mnemonic.Pcmpistri or Mnemonic.Pcmpistrm
        or Mnemonic.Pcmpestri64 or Mnemonic.Pcmpestrm64;

    const uint AlignmentCheck = 17;

    /// <summary>True when the engine stopped with #AC at an unaligned-SSE instruction the host ran.</summary>
    public static bool OptionalAlignmentCheck(OracleCase c, OracleResult host, OracleResult engine)
    {
        if (engine.Vector != AlignmentCheck || host.Vector == AlignmentCheck) return false;
        ulong ip = OracleLayout.Code;
        foreach (var i in c.Instructions)
        {
            if (ip == engine.Rip) return UnalignedSse(i.Mnemonic);
            ip += (ulong)i.Length;
        }
        return false;
    }

    /// <summary>Lane width in bytes (4 or 8) of DPPS/DPPD results written to XMM register
    /// <paramref name="xmm"/> in this case, or 0 when none is.</summary>
    public static int DotProductLanes(OracleCase c, int xmm)
    {
        int width = 0;
        foreach (var i in c.Instructions)
            if (i.Mnemonic is Mnemonic.Dpps or Mnemonic.Dppd && i.Op0Register == Register.XMM0 + xmm)
                width = i.Mnemonic == Mnemonic.Dpps ? 4 : 8;
        return width;
    }

    /// <summary>Whether two XMM values agree when each lane of <paramref name="width"/> bytes that
    /// holds a NaN on both sides counts as equal.</summary>
    public static bool SameUpToNaNs(ReadOnlySpan<byte> host, ReadOnlySpan<byte> engine, int width)
    {
        for (int at = 0; at < 16; at += width)
        {
            var h = host.Slice(at, width);
            var e = engine.Slice(at, width);
            if (h.SequenceEqual(e)) continue;
            if (!(IsNaN(h) && IsNaN(e))) return false;
        }
        return true;
    }

    static bool IsNaN(ReadOnlySpan<byte> lane) => lane.Length == 4
        ? float.IsNaN(BinaryPrimitives.ReadSingleLittleEndian(lane))
        : double.IsNaN(BinaryPrimitives.ReadDoubleLittleEndian(lane));
}
