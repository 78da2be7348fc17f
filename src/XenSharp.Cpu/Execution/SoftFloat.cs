using System.Numerics;
using System.Runtime.CompilerServices;

namespace XenSharp.Cpu;

/// <summary>
/// IEEE 754 binary32/binary64 arithmetic as SSE performs it under an MXCSR: rounding control,
/// DAZ, FTZ (tininess detected before rounding) and the six exception flags. Values are bit
/// patterns; results come back with the flags they raise. The host's own arithmetic always
/// rounds to nearest and reports nothing, so every operation that can round is done on integer
/// significands here. <see cref="FastOk"/> tells when the caller may use the host instead.
/// </summary>
internal static class SoftFloat
{
    public const uint IE = 1, DE = 2, ZE = 4, OE = 8, UE = 16, PE = 32;
    public const uint Daz = 0x40, Ftz = 0x8000, PM = 0x1000;
    public const int RN = 0, RD = 1, RU = 2, RZ = 3;

    public enum Op { Add, Sub, Mul, Div, Min, Max, Sqrt }

    private enum Cls : byte { Zero, Finite, Inf, QNaN, SNaN }

    /// <summary>An operand taken apart: value = (-1)^S * M * 2^(E-62), M with bit 62 set when finite and non-zero.</summary>
    private struct Unp
    {
        public Cls C;
        public bool S, Den;
        public int E;
        public ulong M;
    }

    /// <summary>True when MXCSR's controls are the defaults (round to nearest, no DAZ, no FTZ):
    /// then the host's results are the guest's and only the flags need deriving.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool FastOk(uint mxcsr) => (mxcsr & (0x6000 | Daz | Ftz)) == 0;

    private static int MantBits(bool dbl) => dbl ? 52 : 23;
    private static int Bias(bool dbl) => dbl ? 1023 : 127;

    public static ulong DefaultNaN(bool dbl) => dbl ? 0xFFF8_0000_0000_0000 : 0xFFC0_0000;
    private static ulong QuietBit(bool dbl) => dbl ? 0x0008_0000_0000_0000UL : 0x0040_0000UL;

    public static bool IsNaN(ulong bits, bool dbl) => dbl
        ? (bits & 0x7FFF_FFFF_FFFF_FFFF) > 0x7FF0_0000_0000_0000
        : (bits & 0x7FFF_FFFF) > 0x7F80_0000;

    public static bool IsSNaN(ulong bits, bool dbl) => IsNaN(bits, dbl) && (bits & QuietBit(dbl)) == 0;

    public static bool IsDenormal(ulong bits, bool dbl) => dbl
        ? (bits & 0x7FF0_0000_0000_0000) == 0 && (bits & 0x000F_FFFF_FFFF_FFFF) != 0
        : (bits & 0x7F80_0000) == 0 && (bits & 0x007F_FFFF) != 0;

    /// <summary>The operand with DAZ applied (a denormal becomes a zero of its sign).</summary>
    public static ulong Flush(ulong bits, bool dbl, uint mxcsr)
    {
        if ((mxcsr & Daz) != 0 && IsDenormal(bits, dbl)) return bits & (dbl ? 0x8000_0000_0000_0000 : 0x8000_0000);
        return bits;
    }

    private static Unp Unpack(ulong bits, bool dbl, uint mxcsr)
    {
        int mb = MantBits(dbl);
        ulong frac = bits & ((1UL << mb) - 1);
        int bexp = (int)(bits >> mb) & (dbl ? 0x7FF : 0xFF);
        var u = new Unp { S = (bits >> (dbl ? 63 : 31)) != 0 };
        int maxExp = dbl ? 0x7FF : 0xFF;
        if (bexp == maxExp)
        {
            u.C = frac == 0 ? Cls.Inf : (frac & QuietBit(dbl)) != 0 ? Cls.QNaN : Cls.SNaN;
            return u;
        }
        if (bexp == 0)
        {
            if (frac == 0) { u.C = Cls.Zero; return u; }
            if ((mxcsr & Daz) != 0) { u.C = Cls.Zero; return u; }
            u.Den = true;
            int lz = BitOperations.LeadingZeroCount(frac) - 1; // shift that puts the top bit at 62
            u.C = Cls.Finite;
            u.M = frac << lz;
            u.E = 1 - Bias(dbl) - (lz - (62 - mb));
            return u;
        }
        u.C = Cls.Finite;
        u.M = ((1UL << mb) | frac) << (62 - mb);
        u.E = bexp - Bias(dbl);
        return u;
    }

    private static ulong SignBit(bool s, bool dbl) => s ? (dbl ? 0x8000_0000_0000_0000 : 0x8000_0000) : 0;
    private static ulong Inf(bool s, bool dbl) => SignBit(s, dbl) | (dbl ? 0x7FF0_0000_0000_0000UL : 0x7F80_0000UL);
    private static ulong Zero(bool s, bool dbl) => SignBit(s, dbl);
    private static ulong MaxFinite(bool s, bool dbl) => SignBit(s, dbl) | (dbl ? 0x7FEF_FFFF_FFFF_FFFFUL : 0x7F7F_FFFFUL);

    /// <summary><paramref name="m"/> shifted right by <paramref name="shift"/>, rounded as <paramref name="rc"/> says
    /// for a value of sign <paramref name="s"/>.</summary>
    private static ulong RoundShift(ulong m, int shift, bool s, int rc, out bool inexact)
    {
        if (shift <= 0) { inexact = false; return m << -shift; }
        ulong q, rem, half;
        // From 64 bits on the integer part is 0 and m is at most half an ulp (a tie only at exactly 2^63).
        if (shift >= 64) { q = 0; rem = m; half = shift == 64 ? 1UL << 63 : ulong.MaxValue; inexact = m != 0; }
        else { q = m >> shift; rem = m & ((1UL << shift) - 1); half = 1UL << (shift - 1); inexact = rem != 0; }
        if (!inexact) return q;
        bool up = rc switch
        {
            RN => rem > half || (rem == half && (q & 1) != 0),
            RD => s,
            RU => !s,
            _ => false,
        };
        return up ? q + 1 : q;
    }

    /// <summary>Rounds value (-1)^s * m * 2^(e-62) (m non-zero, any bit may be its top) to the format,
    /// raising OE/UE/PE, applying FTZ.</summary>
    private static ulong RoundPack(bool s, int e, ulong m, bool dbl, uint mxcsr, ref uint flags)
    {
        int lz = BitOperations.LeadingZeroCount(m);
        // normalise to bit 62, keeping a shifted-out bit as sticky
        if (lz == 0) { m = (m >> 1) | (m & 1); e += 1; }
        else if (lz > 1) { m <<= lz - 1; e -= lz - 1; }
        int mb = MantBits(dbl), bias = Bias(dbl), emin = 1 - bias, emax = bias;
        int rc = (int)(mxcsr >> 13) & 3;
        if (e < emin)
        {
            // Tininess is detected after rounding: a value just below 2^emin that rounds up to it
            // at full precision is not tiny.
            bool full = RoundShift(m, 62 - mb, s, rc, out bool fullInexact) >> (mb + 1) != 0;
            bool tiny = e < emin - 1 || !full;
            if (!tiny) { flags |= PE; return SignBit(s, dbl) | (1UL << mb); }
            // An unmasked underflow faults on tininess alone (the destination is not written);
            // PE then says whether the result, with its exponent unbounded, was rounded.
            if ((mxcsr & 0x800) == 0) { flags |= UE | (fullInexact ? PE : 0); return Zero(s, dbl); }
            if ((mxcsr & Ftz) != 0) { flags |= UE | PE; return Zero(s, dbl); }
            ulong q = RoundShift(m, 62 - mb + (emin - e), s, rc, out bool inexact);
            if (inexact) flags |= PE | UE;
            return SignBit(s, dbl) | q; // q may have reached the smallest normal: its bit mb is exponent 1
        }
        ulong r = RoundShift(m, 62 - mb, s, rc, out bool inx);
        if (r >> (mb + 1) != 0) { r >>= 1; e++; }
        if (e > emax)
        {
            // An unmasked overflow faults; PE says whether the result, exponent unbounded, was rounded.
            if ((mxcsr & 0x400) == 0) { flags |= OE | (inx ? PE : 0); return Inf(s, dbl); }
            flags |= OE | PE;
            bool toInf = rc == RN || (rc == RD && s) || (rc == RU && !s);
            return toInf ? Inf(s, dbl) : MaxFinite(s, dbl);
        }
        if (inx) flags |= PE;
        return SignBit(s, dbl) | ((ulong)(e + bias) << mb) | (r & ((1UL << mb) - 1));
    }

    /// <summary>The NaN an operation on NaN operands returns: the first NaN operand, quietened.</summary>
    private static ulong PropagateNaN(ulong a, Cls ca, ulong b, bool dbl) =>
        (ca is Cls.QNaN or Cls.SNaN ? a : b) | QuietBit(dbl);

    /// <summary>ADD, SUB, MUL, DIV, MIN, MAX or SQRT (of <paramref name="b"/>) under MXCSR; flags are ORed into <paramref name="flags"/>.</summary>
    public static ulong Arith(Op op, ulong a, ulong b, bool dbl, uint mxcsr, ref uint flags)
    {
        if (op == Op.Sqrt) return Sqrt(b, dbl, mxcsr, ref flags);
        var x = Unpack(a, dbl, mxcsr);
        var y = Unpack(b, dbl, mxcsr);
        if (op is Op.Min or Op.Max)
        {
            if (x.C >= Cls.QNaN || y.C >= Cls.QNaN) { flags |= IE; return Flush(b, dbl, mxcsr); }
            if (x.Den || y.Den) flags |= DE;
            double fa = ToDouble(Flush(a, dbl, mxcsr), dbl), fb = ToDouble(Flush(b, dbl, mxcsr), dbl);
            bool takeA = op == Op.Min ? fa < fb : fa > fb;
            return takeA ? Flush(a, dbl, mxcsr) : Flush(b, dbl, mxcsr);
        }
        if (x.C >= Cls.QNaN || y.C >= Cls.QNaN)
        {
            if (x.C == Cls.SNaN || y.C == Cls.SNaN) flags |= IE;
            return PropagateNaN(a, x.C, b, dbl);
        }
        int rc = (int)(mxcsr >> 13) & 3;
        if (op == Op.Sub) { y.S = !y.S; op = Op.Add; }
        switch (op)
        {
            case Op.Add:
                if (x.C == Cls.Inf || y.C == Cls.Inf)
                {
                    if (x.C == Cls.Inf && y.C == Cls.Inf && x.S != y.S) { flags |= IE; return DefaultNaN(dbl); }
                    if (x.Den || y.Den) flags |= DE;
                    return Inf(x.C == Cls.Inf ? x.S : y.S, dbl);
                }
                if (x.Den || y.Den) flags |= DE;
                if (x.C == Cls.Zero && y.C == Cls.Zero) return Zero(x.S == y.S ? x.S : rc == RD, dbl);
                if (x.C == Cls.Zero) return RoundPack(y.S, y.E, y.M, dbl, mxcsr, ref flags);
                if (y.C == Cls.Zero) return RoundPack(x.S, x.E, x.M, dbl, mxcsr, ref flags);
                return AddMag(x, y, dbl, mxcsr, rc, ref flags);
            case Op.Mul:
            {
                bool s = x.S != y.S;
                if (x.C == Cls.Inf || y.C == Cls.Inf)
                {
                    if (x.C == Cls.Zero || y.C == Cls.Zero) { flags |= IE; return DefaultNaN(dbl); }
                    if (x.Den || y.Den) flags |= DE;
                    return Inf(s, dbl);
                }
                if (x.Den || y.Den) flags |= DE;
                if (x.C == Cls.Zero || y.C == Cls.Zero) return Zero(s, dbl);
                UInt128 p = (UInt128)x.M * y.M; // in [2^124, 2^126)
                int e = x.E + y.E;
                int top = (int)(p >> 64 >> 61) != 0 ? 125 : 124;
                ulong m = (ulong)(p >> (top - 62));
                if ((p & ((UInt128.One << (top - 62)) - 1)) != 0) m |= 1;
                return RoundPack(s, e + (top - 124), m, dbl, mxcsr, ref flags);
            }
            default: // Div
            {
                bool s = x.S != y.S;
                if (x.C == Cls.Inf)
                {
                    if (y.C == Cls.Inf) { flags |= IE; return DefaultNaN(dbl); }
                    if (y.Den) flags |= DE;
                    return Inf(s, dbl);
                }
                if (y.C == Cls.Inf) { if (x.Den) flags |= DE; return Zero(s, dbl); }
                if (y.C == Cls.Zero)
                {
                    if (x.C == Cls.Zero) { flags |= IE; return DefaultNaN(dbl); }
                    flags |= ZE; // not DE: division by zero takes precedence
                    return Inf(s, dbl);
                }
                if (x.Den || y.Den) flags |= DE;
                if (x.C == Cls.Zero) return Zero(s, dbl);
                UInt128 n = (UInt128)x.M << 64;
                UInt128 q = n / y.M;
                bool sticky = q * y.M != n;
                int top = 127 - (int)UInt128.LeadingZeroCount(q); // 63 or 64
                ulong m = (ulong)(q >> (top - 62));
                if (sticky || (q & ((UInt128.One << (top - 62)) - 1)) != 0) m |= 1;
                return RoundPack(s, x.E - y.E + top - 64, m, dbl, mxcsr, ref flags);
            }
        }
    }

    /// <summary>The fast path for the default MXCSR controls: the host computes the (correctly
    /// rounded to nearest) result, and when every operand and the result are normal numbers well
    /// away from the exponent limits the only flag possible is PE, found from the exact residual.
    /// False sends the caller to <see cref="Arith"/>.</summary>
    public static bool TryHost(Op op, ulong a, ulong b, bool dbl, ref uint flags, out ulong result)
    {
        result = 0;
        if (dbl)
        {
            // Exponents within [2^-900, 2^900): residuals are representable, nothing overflows.
            if (!Mid64(b) || (op != Op.Sqrt && !Mid64(a))) return false;
            double r = HostOp(op, BitConverter.UInt64BitsToDouble(a), BitConverter.UInt64BitsToDouble(b), out bool inexact);
            result = BitConverter.DoubleToUInt64Bits(r);
            if (!Mid64(result)) return false;
            if (inexact) flags |= PE;
            return true;
        }
        else
        {
            if (!Normal32(b) || (op != Op.Sqrt && !Normal32(a))) return false;
            // Binary64 holds binary32 products exactly, and rounding a binary64 result of + - * / sqrt
            // to binary32 gives the correctly rounded binary32 result.
            double r = HostOp(op, BitConverter.UInt32BitsToSingle((uint)a), BitConverter.UInt32BitsToSingle((uint)b), out bool inexact);
            float f = (float)r;
            result = BitConverter.SingleToUInt32Bits(f);
            // The smallest binade is left to the slow path: a result rounded up to 2^-126 may still be tiny.
            uint re = ((uint)result >> 23) & 0xFF;
            if (re <= 1 || re == 0xFF) return false;
            if (inexact || f != r) flags |= PE;
            return true;
        }
    }

    /// <summary>x op y in binary64, and whether that result is inexact: the exact residual of + and -
    /// (TwoSum) or of * / and sqrt (one fused multiply-add).</summary>
    private static double HostOp(Op op, double x, double y, out bool inexact)
    {
        double r;
        switch (op)
        {
            case Op.Add: case Op.Sub:
            {
                if (op == Op.Sub) y = -y;
                r = x + y;
                double bb = r - x;
                inexact = (x - (r - bb)) + (y - bb) != 0;
                break;
            }
            case Op.Mul: r = x * y; inexact = Math.FusedMultiplyAdd(x, y, -r) != 0; break;
            case Op.Div: r = x / y; inexact = Math.FusedMultiplyAdd(-r, y, x) != 0; break;
            case Op.Sqrt: r = Math.Sqrt(y); inexact = Math.FusedMultiplyAdd(-r, r, y) != 0; break;
            case Op.Min: r = x < y ? x : y; inexact = false; break;
            default: r = x > y ? x : y; inexact = false; break;
        }
        return r;
    }

    private static bool Mid64(ulong bits)
    {
        int e = (int)(bits >> 52) & 0x7FF;
        return e > 123 && e < 1923;
    }

    private static bool Normal32(ulong bits)
    {
        uint e = ((uint)bits >> 23) & 0xFF;
        return e != 0 && e != 0xFF;
    }

    private static ulong AddMag(Unp x, Unp y, bool dbl, uint mxcsr, int rc, ref uint flags)
    {
        // Put the larger magnitude first.
        if (y.E > x.E || (y.E == x.E && y.M > x.M)) (x, y) = (y, x);
        UInt128 a = (UInt128)x.M << 64, b = (UInt128)y.M << 64;
        int diff = x.E - y.E;
        if (diff > 0)
        {
            if (diff >= 127) b = 1;
            else
            {
                bool st = (b & ((UInt128.One << diff) - 1)) != 0;
                b = (b >> diff) | (st ? UInt128.One : UInt128.Zero);
            }
        }
        UInt128 r = x.S == y.S ? a + b : a - b;
        if (r == UInt128.Zero) return Zero(rc == RD, dbl);
        // value = r * 2^(x.E - 126); reduce to 64 bits with sticky.
        int top = 127 - (int)UInt128.LeadingZeroCount(r);
        int e = x.E + (top - 126);
        ulong m;
        if (top > 62)
        {
            m = (ulong)(r >> (top - 62));
            if ((r & ((UInt128.One << (top - 62)) - 1)) != 0) m |= 1;
        }
        else m = (ulong)r << (62 - top);
        return RoundPack(x.S, e, m, dbl, mxcsr, ref flags);
    }

    private static ulong Sqrt(ulong b, bool dbl, uint mxcsr, ref uint flags)
    {
        var y = Unpack(b, dbl, mxcsr);
        if (y.C >= Cls.QNaN) { if (y.C == Cls.SNaN) flags |= IE; return b | QuietBit(dbl); }
        if (y.C == Cls.Zero) return Zero(y.S, dbl);
        if (y.S) { flags |= IE; return DefaultNaN(dbl); }
        if (y.Den) flags |= DE;
        if (y.C == Cls.Inf) return b;
        // value = M * 2^(E-62) = X * 2^(E-62-s) with E-62-s even
        int s = ((y.E - 62 - 64) & 1) == 0 ? 64 : 65;
        UInt128 X = (UInt128)y.M << s;
        ulong r = ISqrt(X, out bool exact);
        ulong m = (r >> 1) | (r & 1) | (exact ? 0UL : 1UL);
        return RoundPack(false, (y.E - 62 - s) / 2 + 63, m, dbl, mxcsr, ref flags);
    }

    /// <summary>floor(sqrt(x)) for x in [2^126, 2^128).</summary>
    private static ulong ISqrt(UInt128 x, out bool exact)
    {
        UInt128 r = (UInt128)Math.Sqrt((double)x);
        UInt128 max = ulong.MaxValue;
        if (r > max) r = max;
        // A Newton step from a guess with 53 correct bits, then exact correction (by division, which cannot overflow).
        r = (r + x / r) >> 1;
        if (r > max) r = max;
        while (r > x / r) r--;
        while (r < max && r + 1 <= x / (r + 1)) r++;
        exact = r * r == x;
        return (ulong)r;
    }

    private static double ToDouble(ulong bits, bool dbl) =>
        dbl ? BitConverter.UInt64BitsToDouble(bits) : BitConverter.UInt32BitsToSingle((uint)bits);

    /// <summary>CMPPS/CMPSS predicate 0-7; IE for SNaN, or any NaN with the ordered-signalling predicates (LT, LE, NLT, NLE).</summary>
    public static bool Compare(int pred, ulong a, ulong b, bool dbl, uint mxcsr, ref uint flags)
    {
        bool na = IsNaN(a, dbl), nb = IsNaN(b, dbl);
        if (na || nb)
        {
            if (IsSNaN(a, dbl) || IsSNaN(b, dbl) || (pred & 3) is 1 or 2) flags |= IE;
        }
        else if ((mxcsr & Daz) == 0 && (IsDenormal(a, dbl) || IsDenormal(b, dbl))) flags |= DE;
        double x = ToDouble(Flush(a, dbl, mxcsr), dbl), y = ToDouble(Flush(b, dbl, mxcsr), dbl);
        bool un = na || nb;
        return (pred & 7) switch
        {
            0 => x == y,
            1 => x < y,
            2 => x <= y,
            3 => un,
            4 => !(x == y),
            5 => !(x < y),
            6 => !(x <= y),
            _ => !un,
        };
    }

    /// <summary>COMISS/UCOMISS: ZF PF CF as bits 0x40, 0x04, 0x01.</summary>
    public static ulong ComiFlags(ulong a, ulong b, bool dbl, bool signalling, uint mxcsr, ref uint flags)
    {
        bool na = IsNaN(a, dbl), nb = IsNaN(b, dbl);
        if (na || nb)
        {
            if (signalling || IsSNaN(a, dbl) || IsSNaN(b, dbl)) flags |= IE;
            return 0x45;
        }
        if ((mxcsr & Daz) == 0 && (IsDenormal(a, dbl) || IsDenormal(b, dbl))) flags |= DE;
        double x = ToDouble(Flush(a, dbl, mxcsr), dbl), y = ToDouble(Flush(b, dbl, mxcsr), dbl);
        return x < y ? 0x01UL : x == y ? 0x40UL : 0;
    }

    /// <summary>Binary32 to binary64 (CVTSS2SD/CVTPS2PD) or back (CVTSD2SS/CVTPD2PS).</summary>
    public static ulong Convert(ulong a, bool fromDbl, uint mxcsr, ref uint flags)
    {
        var x = Unpack(a, fromDbl, mxcsr);
        bool toDbl = !fromDbl;
        switch (x.C)
        {
            case Cls.QNaN: case Cls.SNaN:
            {
                if (x.C == Cls.SNaN) flags |= IE;
                ulong payload = fromDbl ? (a & 0x000F_FFFF_FFFF_FFFF) >> 29 : (a & 0x7F_FFFF) << 29;
                return Inf(x.S, toDbl) | payload | QuietBit(toDbl);
            }
            case Cls.Inf: return Inf(x.S, toDbl);
            case Cls.Zero: return Zero(x.S, toDbl);
        }
        if (x.Den) flags |= DE;
        return RoundPack(x.S, x.E, x.M, toDbl, mxcsr, ref flags);
    }

    /// <summary>A signed integer to binary32/binary64, rounded as MXCSR says.</summary>
    public static ulong FromInt(long v, bool dbl, uint mxcsr, ref uint flags)
    {
        if (v == 0) return 0;
        bool s = v < 0;
        ulong m = s ? (ulong)-v : (ulong)v; // -2^63 stays 2^63 as unsigned
        return RoundPack(s, 62, m, dbl, mxcsr, ref flags);
    }

    /// <summary>Binary32/binary64 to a 32- or 64-bit signed integer; truncating (CVTT*) or as MXCSR.RC says.
    /// NaN and out-of-range values give the integer indefinite and IE.</summary>
    public static ulong ToInt(ulong a, bool dbl, int size, bool truncate, uint mxcsr, ref uint flags)
    {
        ulong indefinite = size == 4 ? 0x8000_0000UL : 0x8000_0000_0000_0000UL;
        var x = Unpack(a, dbl, mxcsr);
        if (x.C == Cls.Zero) return 0;
        if (x.C != Cls.Finite) { flags |= IE; return indefinite; }
        int rc = truncate ? RZ : (int)(mxcsr >> 13) & 3;
        if (x.E > 63) { flags |= IE; return indefinite; }
        ulong n = RoundShift(x.M, 62 - x.E, x.S, rc, out bool inexact);
        ulong limit = size == 4 ? (x.S ? 0x8000_0000UL : 0x7FFF_FFFFUL) : (x.S ? 0x8000_0000_0000_0000UL : 0x7FFF_FFFF_FFFF_FFFFUL);
        if (n > limit) { flags |= IE; return indefinite; }
        if (inexact) flags |= PE;
        ulong v = x.S ? (ulong)-(long)n : n;
        return size == 4 ? (uint)v : v;
    }

    /// <summary>ROUNDPS/PD/SS/SD: to an integral value with rounding control <paramref name="rc"/>; PE unless suppressed.</summary>
    public static ulong RoundInt(ulong a, bool dbl, int rc, bool suppressPE, uint mxcsr, ref uint flags)
    {
        var x = Unpack(a, dbl, mxcsr);
        switch (x.C)
        {
            case Cls.SNaN: flags |= IE; return a | QuietBit(dbl);
            case Cls.QNaN: case Cls.Inf: return a;
            case Cls.Zero: return Zero(x.S, dbl);
        }
        if (x.E >= MantBits(dbl)) return a;
        ulong n = RoundShift(x.M, 62 - x.E, x.S, rc, out bool inexact);
        if (inexact && !suppressPE) flags |= PE;
        if (n == 0) return Zero(x.S, dbl);
        uint ignore = 0;
        return SignBit(x.S, dbl) | RoundPack(false, 62, n, dbl, 0x1F80, ref ignore);
    }
}
