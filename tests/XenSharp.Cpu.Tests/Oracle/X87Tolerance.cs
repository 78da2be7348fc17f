using System.Buffers.Binary;
using System.Numerics;
using Iced.Intel;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>
/// How results of the x87 transcendental instructions (FSIN, FCOS, FSINCOS, FPTAN, FPATAN, F2XM1,
/// FYL2X, FYL2XP1) are compared (README.md, "What is compared"). The SDM bounds their error (about
/// 1 ulp) but does not define the bits: the host returns nearly but not always correctly rounded
/// results (FPTAN least often), while the engine evaluates them in double-double (about 106 bits)
/// and rounds once. A register value from a case containing one of them matches when it has the
/// host's sign and class and lies within <see cref="Ulps"/> unit in the last place of the host's;
/// C1 (whether the result was rounded up, which follows from the last bit) is not compared. Every
/// other field, including the exception flags, stays exact. The generator puts such an instruction
/// only at the end of a case, so no later instruction (FPREM, FXTRACT, ...) magnifies the difference.
/// </summary>
internal static class X87Tolerance
{
    /// <summary>One ulp of the 64-bit significand.</summary>
    public const int Ulps = 1;

    /// <summary>FSW bits not compared: C1 (0x200).</summary>
    public const ushort FswIgnored = 0x200;

    public static bool IsApproximate(Mnemonic m) => m is Mnemonic.Fsin or Mnemonic.Fcos or Mnemonic.Fsincos or Mnemonic.Fptan
        or Mnemonic.Fpatan or Mnemonic.F2xm1 or Mnemonic.Fyl2x or Mnemonic.Fyl2xp1;

    public static bool Within(ReadOnlySpan<byte> host, ReadOnlySpan<byte> engine)
    {
        ulong hm = BinaryPrimitives.ReadUInt64LittleEndian(host), em = BinaryPrimitives.ReadUInt64LittleEndian(engine);
        ushort hse = BinaryPrimitives.ReadUInt16LittleEndian(host[8..]), ese = BinaryPrimitives.ReadUInt16LittleEndian(engine[8..]);
        if ((hse & 0x8000) != (ese & 0x8000)) return false;
        int he = hse & 0x7fff, ee = ese & 0x7fff;
        // NaNs, infinities and zeros must match exactly.
        if (he == 0x7fff || ee == 0x7fff || hm == 0 || em == 0) return false;
        int hx = Math.Max(he, 1), ex = Math.Max(ee, 1);
        int lo = Math.Min(hx, ex), hi = Math.Max(hx, ex);
        if (hi - lo > 1) return false;
        var a = (BigInteger)hm << (hx - lo);
        var b = (BigInteger)em << (ex - lo);
        var diff = BigInteger.Abs(a - b) >> (hi - lo);
        return diff <= Ulps;
    }
}
