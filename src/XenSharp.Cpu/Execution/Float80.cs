using System.Numerics;
using System.Runtime.CompilerServices;

namespace XenSharp.Cpu;

/// <summary>x87 status-word exception bits (FSW 6:0).</summary>
internal static class FpEx
{
    public const int IE = 1, DE = 2, ZE = 4, OE = 8, UE = 0x10, PE = 0x20, SF = 0x40;
}

/// <summary>The rounding environment of one x87 operation and what it reports: rounding control,
/// significand precision (24, 53 or 64 bits), the exception flags raised and whether the result
/// was rounded up in magnitude (C1).</summary>
internal struct FpStatus
{
    public int Rc;
    public int Prec;
    public int Flags;
    public bool Up;
    /// <summary>OE/UE unmasked: register results are delivered with the exponent wrapped by ±24576
    /// (and UE is reported for every tiny result, exact or not).</summary>
    public bool OeUnmasked, UeUnmasked;

    public FpStatus(ushort fcw, bool precisionControl)
    {
        OeUnmasked = (fcw & FpEx.OE) == 0;
        UeUnmasked = (fcw & FpEx.UE) == 0;
        Rc = (fcw >> 10) & 3;
        Prec = !precisionControl ? 64 : ((fcw >> 8) & 3) switch { 0 => 24, 2 => 53, _ => 64 };
        Flags = 0;
        Up = false;
    }
}

internal enum FpClass : byte { Zero, Normal, Denormal, Infinity, QNaN, SNaN, Unsupported }

/// <summary>
/// An x87 double-extended value exactly as a register holds it: 64-bit significand with an explicit
/// integer bit, 15-bit biased exponent and sign. The arithmetic below is exact IEEE 754 arithmetic
/// with x87 rounding and precision control, the x87 NaN rules (Intel SDM Vol. 1, 4.8.3.5 and
/// table 4-7) and x87 treatment of denormals, pseudo-denormals and unsupported encodings.
/// </summary>
internal readonly struct Float80(ulong mant, ushort se)
{
    public readonly ulong Mant = mant;
    public readonly ushort Se = se;

    public const int Bias = 16383;
    public bool Sign => (Se & 0x8000) != 0;
    public int Exp => Se & 0x7FFF;

    /// <summary>The real indefinite: the QNaN an invalid operation delivers when IE is masked.</summary>
    public static Float80 Indefinite => new(0xC000_0000_0000_0000, 0xFFFF);
    public static Float80 Zero(bool sign) => new(0, (ushort)(sign ? 0x8000 : 0));
    public static Float80 Inf(bool sign) => new(0x8000_0000_0000_0000, (ushort)(sign ? 0xFFFF : 0x7FFF));
    public static Float80 One => new(0x8000_0000_0000_0000, Bias);
    public Float80 Negate() => new(Mant, (ushort)(Se ^ 0x8000));
    public Float80 Abs() => new(Mant, (ushort)(Se & 0x7FFF));
    public Float80 WithSign(bool sign) => new(Mant, (ushort)((Se & 0x7FFF) | (sign ? 0x8000 : 0)));
    public Float80 Quiet() => new(Mant | 0x4000_0000_0000_0000, Se);

    public FpClass Class
    {
        get
        {
            int e = Exp;
            if (e == 0) return Mant == 0 ? FpClass.Zero : FpClass.Denormal;
            if ((Mant >> 63) == 0) return FpClass.Unsupported; // unnormal, pseudo-infinity, pseudo-NaN
            if (e == 0x7FFF)
                return (Mant << 1) == 0 ? FpClass.Infinity : (Mant & 0x4000_0000_0000_0000) != 0 ? FpClass.QNaN : FpClass.SNaN;
            return FpClass.Normal;
        }
    }

    public bool IsNaN => Exp == 0x7FFF && (Mant << 1) != 0 && (Mant >> 63) != 0;

    /// <summary>Normalised significand (bit 63 set) and unbiased exponent of a finite nonzero value
    /// (denormals and pseudo-denormals have the exponent of the smallest normal).</summary>
    public void Unpack(out ulong sig, out int exp)
    {
        int e = Exp == 0 ? 1 : Exp;
        int lz = BitOperations.LeadingZeroCount(Mant);
        sig = Mant << lz;
        exp = e - Bias - lz;
    }

    public override string ToString() => $"{Se:x4}:{Mant:x16}";
}

/// <summary>The x87 arithmetic on <see cref="Float80"/>.</summary>
internal static class X87Math
{
    private const int Emin = 1 - Float80.Bias, Emax = Float80.Bias;

    /// <summary>x86 detects underflow (tininess) after rounding with an unbounded exponent.</summary>
    private const bool TininessAfterRounding = true;

    // ---- rounding ----

    /// <summary>Keeps the top <paramref name="keep"/> bits of <paramref name="s"/> (bit 127 set),
    /// rounding by RC. <paramref name="keep"/> may be 0 or negative (everything rounds away).</summary>
    private static UInt128 RoundBits(UInt128 s, int keep, bool sign, int rc, out bool inexact, out bool up)
    {
        UInt128 k;
        int cmpHalf;
        bool odd;
        if (keep >= 128) { inexact = false; up = false; return s; }
        if (keep >= 1)
        {
            int drop = 128 - keep;
            k = s >> drop;
            UInt128 r = s & ((UInt128.One << drop) - 1);
            UInt128 half = UInt128.One << (drop - 1);
            inexact = r != 0;
            cmpHalf = r > half ? 1 : r == half ? 0 : -1;
            odd = (k & 1) != 0;
        }
        else
        {
            k = 0;
            inexact = s != 0;
            cmpHalf = keep < 0 ? -1 : s > (UInt128.One << 127) ? 1 : s == (UInt128.One << 127) ? 0 : -1;
            odd = false;
        }
        up = inexact && rc switch
        {
            0 => cmpHalf > 0 || (cmpHalf == 0 && odd),
            1 => sign,
            2 => !sign,
            _ => false,
        };
        return up ? k + 1 : k;
    }

    /// <summary>Rounds sign × s/2^127 × 2^exp (s has bit 127 set) to <paramref name="m"/> significand bits
    /// in a format whose normal exponents are emin..emax. Returns the significand k and sets exp so
    /// that the value is k × 2^(exp - (m-1)); k below 2^(m-1) is a denormal. Overflow returns k = 0
    /// with exp = int.MaxValue (infinity) or the largest finite value, as RC says.</summary>
    internal static ulong RoundCore(ref FpStatus st, bool sign, ref int exp, UInt128 s, int m, int emin, int emax)
    {
        bool inexact, up;
        UInt128 k;
        if (exp < emin)
        {
            k = RoundBits(s, m - (emin - exp), sign, st.Rc, out inexact, out up);
            bool tiny = true;
            if (TininessAfterRounding && exp == emin - 1)
            {
                var kk = RoundBits(s, m, sign, st.Rc, out _, out _);
                if (kk >> m != 0) tiny = false;
            }
            exp = emin;
            if (tiny && st.UeUnmasked) st.Flags |= FpEx.UE;
            if (inexact)
            {
                st.Flags |= FpEx.PE;
                if (tiny) st.Flags |= FpEx.UE;
            }
            st.Up = up;
            return (ulong)k;
        }
        k = RoundBits(s, m, sign, st.Rc, out inexact, out up);
        if (k >> m != 0) { k >>= 1; exp++; }
        if (exp > emax)
        {
            st.Flags |= FpEx.OE | FpEx.PE;
            bool toInf = st.Rc switch { 0 => true, 1 => sign, 2 => !sign, _ => false };
            st.Up = toInf;
            if (toInf) { exp = int.MaxValue; return 0; }
            exp = emax;
            return m == 64 ? ulong.MaxValue : (1UL << m) - 1;
        }
        if (inexact) st.Flags |= FpEx.PE;
        st.Up = up;
        return (ulong)k;
    }

    /// <summary>Rounds to the register format with precision <paramref name="prec"/>.</summary>
    internal static Float80 Round(ref FpStatus st, bool sign, int exp, UInt128 s, int prec)
    {
        if ((st.UeUnmasked && exp < Emin) || (st.OeUnmasked && exp >= Emax))
        {
            // Unmasked underflow/overflow: round with an unbounded exponent and wrap it by 3·2^13.
            var k0 = RoundBits(s, prec, sign, st.Rc, out bool inexact, out bool up);
            if (k0 >> prec != 0) { k0 >>= 1; exp++; }
            if ((exp < Emin && exp + 24576 >= Emin) || (exp > Emax && exp - 24576 <= Emax))
            {
                st.Flags |= exp < Emin ? FpEx.UE : FpEx.OE;
                if (inexact) st.Flags |= FpEx.PE;
                st.Up = up;
                int wrapped = exp < Emin ? exp + 24576 : exp - 24576;
                return new Float80((ulong)k0 << (64 - prec), (ushort)((sign ? 0x8000 : 0) | ((wrapped + Float80.Bias) & 0x7FFF)));
            }
            else if (exp < Emin || exp > Emax)
            {
                // Too far out to wrap into range: a signed zero or infinity.
                st.Flags |= (exp < Emin ? FpEx.UE : FpEx.OE) | FpEx.PE;
                st.Up = exp > Emax;
                return exp < Emin ? Float80.Zero(sign) : Float80.Inf(sign);
            }
            if (exp >= Emin && exp <= Emax)
            {
                // Rounded into range: a normal result.
                if (inexact) st.Flags |= FpEx.PE;
                st.Up = up;
                return new Float80((ulong)k0 << (64 - prec), (ushort)((sign ? 0x8000 : 0) | (exp + Float80.Bias)));
            }
        }
        ulong k = RoundCore(ref st, sign, ref exp, s, prec, Emin, Emax);
        ushort sb = (ushort)(sign ? 0x8000 : 0);
        if (exp == int.MaxValue) return Float80.Inf(sign);
        ulong mant = k << (64 - prec);
        if ((mant >> 63) == 0) return new Float80(mant, sb); // denormal (or zero)
        return new Float80(mant, (ushort)(sb | (exp + Float80.Bias)));
    }

    private static Float80 Normalize(ref FpStatus st, bool sign, int exp, UInt128 s, int prec)
    {
        int lz = (int)UInt128.LeadingZeroCount(s);
        return Round(ref st, sign, exp - lz, s << lz, prec);
    }

    // ---- operands ----

    /// <summary>The NaN of a two-operand operation with at least one NaN operand (both already
    /// known to be supported encodings); IE for a signalling one.</summary>
    private static Float80 PropagateNaN(ref FpStatus st, Float80 a, Float80 b)
    {
        bool an = a.IsNaN, bn = b.IsNaN;
        if ((an && (a.Mant & 0x4000_0000_0000_0000) == 0) || (bn && (b.Mant & 0x4000_0000_0000_0000) == 0)) st.Flags |= FpEx.IE;
        if (an && bn)
        {
            // A QNaN beside an SNaN wins; otherwise the larger significand.
            bool aq = (a.Mant & 0x4000_0000_0000_0000) != 0, bq = (b.Mant & 0x4000_0000_0000_0000) != 0;
            if (aq != bq) return aq ? a : b;
            ulong am = a.Mant & 0x3FFF_FFFF_FFFF_FFFF, bm = b.Mant & 0x3FFF_FFFF_FFFF_FFFF;
            if (am != bm) return (am > bm ? a : b).Quiet();
            return (a.Sign && !b.Sign ? b : a).Quiet();
        }
        return (an ? a : b).Quiet();
    }

    public static Float80 PropagateNaN(ref FpStatus st, Float80 a)
    {
        if ((a.Mant & 0x4000_0000_0000_0000) == 0) st.Flags |= FpEx.IE;
        return a.Quiet();
    }

    /// <summary>Handles NaN and unsupported operands of a two-operand operation, and flags
    /// denormal operands; returns true with the result when the operation is decided.</summary>
    private static bool Prelude(ref FpStatus st, Float80 a, Float80 b, out Float80 r, out FpClass ca, out FpClass cb)
    {
        ca = a.Class; cb = b.Class;
        if (ca == FpClass.Unsupported || cb == FpClass.Unsupported) { st.Flags |= FpEx.IE; r = Float80.Indefinite; return true; }
        if (ca is FpClass.QNaN or FpClass.SNaN || cb is FpClass.QNaN or FpClass.SNaN) { r = PropagateNaN(ref st, a, b); return true; }
        if (ca == FpClass.Denormal || cb == FpClass.Denormal) st.Flags |= FpEx.DE;
        r = default;
        return false;
    }

    private static Float80 Invalid(ref FpStatus st) { st.Flags |= FpEx.IE; return Float80.Indefinite; }

    // ---- arithmetic ----

    public static Float80 Add(ref FpStatus st, Float80 a, Float80 b, bool subtract)
    {
        if (subtract && !b.IsNaN && b.Class != FpClass.Unsupported) b = b.Negate();
        if (Prelude(ref st, a, b, out var r, out var ca, out var cb)) return r;
        if (ca == FpClass.Infinity || cb == FpClass.Infinity)
        {
            if (ca == FpClass.Infinity && cb == FpClass.Infinity && a.Sign != b.Sign) return Invalid(ref st);
            return ca == FpClass.Infinity ? a : b;
        }
        if (ca == FpClass.Zero && cb == FpClass.Zero)
            return Float80.Zero(a.Sign == b.Sign ? a.Sign : st.Rc == 1);
        if (ca == FpClass.Zero || cb == FpClass.Zero)
        {
            var x = ca == FpClass.Zero ? b : a;
            x.Unpack(out ulong xs, out int xe);
            return Round(ref st, x.Sign, xe, (UInt128)xs << 64, st.Prec);
        }
        a.Unpack(out ulong asg, out int ae);
        b.Unpack(out ulong bsg, out int be);
        bool sa = a.Sign, sb = b.Sign;
        if (ae < be || (ae == be && asg < bsg)) { (asg, bsg) = (bsg, asg); (ae, be) = (be, ae); (sa, sb) = (sb, sa); }
        UInt128 x1 = (UInt128)asg << 63, y1 = (UInt128)bsg << 63;
        int d = ae - be;
        if (d > 0) y1 = d >= 127 ? UInt128.One : (y1 >> d) | ((y1 & ((UInt128.One << d) - 1)) != 0 ? UInt128.One : UInt128.Zero);
        UInt128 s;
        if (sa == sb) s = x1 + y1;
        else
        {
            s = x1 - y1;
            if (s == 0) return Float80.Zero(st.Rc == 1);
        }
        return Normalize(ref st, sa, ae + 1, s, st.Prec);
    }

    public static Float80 Mul(ref FpStatus st, Float80 a, Float80 b)
    {
        if (Prelude(ref st, a, b, out var r, out var ca, out var cb)) return r;
        bool sign = a.Sign ^ b.Sign;
        if (ca == FpClass.Infinity || cb == FpClass.Infinity)
        {
            if (ca == FpClass.Zero || cb == FpClass.Zero) return Invalid(ref st);
            return Float80.Inf(sign);
        }
        if (ca == FpClass.Zero || cb == FpClass.Zero) return Float80.Zero(sign);
        a.Unpack(out ulong asg, out int ae);
        b.Unpack(out ulong bsg, out int be);
        ulong hi = Math.BigMul(asg, bsg, out ulong lo);
        return Normalize(ref st, sign, ae + be + 1, new UInt128(hi, lo), st.Prec);
    }

    public static Float80 Div(ref FpStatus st, Float80 a, Float80 b)
    {
        if (Prelude(ref st, a, b, out var r, out var ca, out var cb)) return r;
        bool sign = a.Sign ^ b.Sign;
        if (ca == FpClass.Infinity)
            return cb == FpClass.Infinity ? Invalid(ref st) : Float80.Inf(sign);
        if (cb == FpClass.Infinity) return Float80.Zero(sign);
        if (cb == FpClass.Zero)
        {
            if (ca == FpClass.Zero) return Invalid(ref st);
            // Division by zero takes precedence over a denormal dividend.
            st.Flags = (st.Flags & ~FpEx.DE) | FpEx.ZE;
            return Float80.Inf(sign);
        }
        if (ca == FpClass.Zero) return Float80.Zero(sign);
        a.Unpack(out ulong asg, out int ae);
        b.Unpack(out ulong bsg, out int be);
        UInt128 num = (UInt128)asg << 64;
        UInt128 q = UInt128.DivRem(num, bsg).Quotient;
        UInt128 rem = num - q * bsg;
        UInt128 rem2 = rem << 1;
        UInt128 t = (q << 1) | (rem2 >= bsg ? UInt128.One : UInt128.Zero);
        bool sticky = rem2 >= bsg ? rem2 != bsg : rem2 != 0;
        int lz = (int)UInt128.LeadingZeroCount(t);
        UInt128 s = (t << lz) | (sticky ? UInt128.One : UInt128.Zero);
        // t/2^65 × 2^(ae-be) = s/2^127 × 2^(ae - be + 62 - lz)
        return Round(ref st, sign, ae - be + 62 - lz, s, st.Prec);
    }

    public static Float80 Sqrt(ref FpStatus st, Float80 a)
    {
        var c = a.Class;
        if (c == FpClass.Unsupported) return Invalid(ref st);
        if (c is FpClass.QNaN or FpClass.SNaN) return PropagateNaN(ref st, a);
        if (c == FpClass.Zero) return a;
        if (a.Sign) return Invalid(ref st);
        if (c == FpClass.Infinity) return a;
        if (c == FpClass.Denormal) st.Flags |= FpEx.DE;
        a.Unpack(out ulong sig, out int e);
        // sqrt(sig × 2^(e-63)): scale by 2^k (k = 63 or 64) so that e - 63 - k is even.
        int k = (e & 1) != 0 ? 64 : 63;
        UInt128 n = (UInt128)sig << k;
        UInt128 root = ISqrt(n);
        UInt128 remd = n - root * root;
        bool half = remd > root;
        bool sticky = remd != 0;
        UInt128 s = (root << 2) | (half ? 2u : 0u) | (sticky ? 1u : 0u);
        // root has bit 63 set: s/2^127 × 2^(63 + h), h = (e - 63 - k)/2
        int h = (e - 63 - k) / 2;
        return Round(ref st, false, 63 + h, s << 62, st.Prec);
    }

    private static UInt128 ISqrt(UInt128 n)
    {
        UInt128 r = (UInt128)Math.Sqrt((double)n);
        for (int i = 0; i < 2 && r != 0; i++) r = (r + n / r) >> 1;
        while (r * r > n) r--;
        while ((r + 1) * (r + 1) <= n) r++;
        return r;
    }

    /// <summary>Rounds a finite nonzero value to an integer by RC; returns its magnitude (saturating
    /// at 2^64 and above with <paramref name="big"/>).</summary>
    private static UInt128 IntegerMagnitude(Float80 a, int rc, out bool inexact, out bool up, out bool big)
    {
        a.Unpack(out ulong sig, out int e);
        big = false;
        if (e >= 63)
        {
            inexact = false; up = false;
            big = e >= 64;
            return big ? UInt128.MaxValue : sig;
        }
        // Integer part = top e+1 bits of sig.
        return RoundBits((UInt128)sig << 64, e + 1, a.Sign, rc, out inexact, out up);
    }

    public static Float80 RoundToInt(ref FpStatus st, Float80 a)
    {
        var c = a.Class;
        if (c == FpClass.Unsupported) return Invalid(ref st);
        if (c is FpClass.QNaN or FpClass.SNaN) return PropagateNaN(ref st, a);
        if (c is FpClass.Zero or FpClass.Infinity) return a;
        if (c == FpClass.Denormal) st.Flags |= FpEx.DE;
        a.Unpack(out _, out int e);
        if (e >= 63) return a;
        UInt128 m = IntegerMagnitude(a, st.Rc, out bool inexact, out bool up, out _);
        if (inexact) st.Flags |= FpEx.PE;
        st.Up = up;
        return FromMagnitude(a.Sign, m);
    }

    private static Float80 FromMagnitude(bool sign, UInt128 m)
    {
        if (m == 0) return Float80.Zero(sign);
        int lz = (int)UInt128.LeadingZeroCount(m);
        // m ≤ 2^64: exact in 64 bits after normalising.
        UInt128 s = m << lz;
        return new Float80((ulong)(s >> 64), (ushort)((sign ? 0x8000 : 0) | (Float80.Bias + 127 - lz)));
    }

    /// <summary>Conversion to a signed integer of <paramref name="bits"/> bits (16/32/64) for FIST,
    /// FISTP and (with RC = truncate) FISTTP; out of range or NaN gives IE and the integer indefinite.</summary>
    public static ulong ToInt(ref FpStatus st, Float80 a, int bits)
    {
        ulong indefinite = 1UL << (bits - 1);
        var c = a.Class;
        if (c is FpClass.Unsupported or FpClass.QNaN or FpClass.SNaN or FpClass.Infinity) { st.Flags |= FpEx.IE; return indefinite; }
        if (c == FpClass.Zero) return 0;
        // Denormal sources do not raise DE here (they are not an arithmetic operand).
        UInt128 m = IntegerMagnitude(a, st.Rc, out bool inexact, out bool up, out bool big);
        UInt128 limit = a.Sign ? (UInt128)1 << (bits - 1) : ((UInt128)1 << (bits - 1)) - 1;
        if (big || m > limit) { st.Flags |= FpEx.IE; return indefinite; }
        if (inexact) st.Flags |= FpEx.PE;
        st.Up = up;
        ulong v = (ulong)m;
        if (a.Sign) v = 0 - v;
        return bits == 64 ? v : v & ((1UL << bits) - 1);
    }

    public static Float80 FromInt(long v)
    {
        if (v == 0) return Float80.Zero(false);
        bool sign = v < 0;
        ulong m = sign ? 0 - (ulong)v : (ulong)v;
        return FromMagnitude(sign, m);
    }

    // ---- binary32 / binary64 ----

    /// <summary>binary32 (<paramref name="m"/> = 24, <paramref name="eb"/> = 8) or binary64 (53, 11) to
    /// the register format: exact; <paramref name="denormal"/> reports a denormal source.</summary>
    public static Float80 FromBinary(ulong bits, int m, int eb, out bool denormal)
    {
        int fracBits = m - 1;
        int bias = (1 << (eb - 1)) - 1;
        bool sign = (bits >> (fracBits + eb)) != 0;
        int e = (int)((bits >> fracBits) & ((1UL << eb) - 1));
        ulong frac = bits & ((1UL << fracBits) - 1);
        ushort sb = (ushort)(sign ? 0x8000 : 0);
        denormal = false;
        if (e == 0)
        {
            if (frac == 0) return Float80.Zero(sign);
            denormal = true;
            int lz = BitOperations.LeadingZeroCount(frac);
            // value = frac × 2^(1 - bias - fracBits)
            int exp = 1 - bias - fracBits + (63 - lz);
            return new Float80(frac << lz, (ushort)(sb | (exp + Float80.Bias)));
        }
        if (e == (1 << eb) - 1)
            return new Float80((1UL << 63) | (frac << (64 - m)), (ushort)(sb | 0x7FFF));
        return new Float80((1UL << 63) | (frac << (64 - m)), (ushort)(sb | (e - bias + Float80.Bias)));
    }

    /// <summary>The register value rounded to binary32/binary64 (FST, FSTP): overflow, underflow,
    /// precision and invalid (SNaN) flags as the SDM gives them.</summary>
    public static ulong ToBinary(ref FpStatus st, Float80 a, int m, int eb)
    {
        int fracBits = m - 1;
        int bias = (1 << (eb - 1)) - 1;
        ulong signBit = a.Sign ? 1UL << (fracBits + eb) : 0;
        ulong expAll = ((1UL << eb) - 1) << fracBits;
        switch (a.Class)
        {
            case FpClass.Zero: return signBit;
            case FpClass.Infinity: return signBit | expAll;
            case FpClass.Unsupported: st.Flags |= FpEx.IE; return (1UL << (fracBits + eb)) | expAll | (1UL << (fracBits - 1));
            case FpClass.QNaN: case FpClass.SNaN:
            {
                var q = PropagateNaN(ref st, a);
                return signBit | expAll | ((q.Mant << 1) >> (65 - m));
            }
        }
        // A denormal source raises no DE here (only UE/PE as the rounding gives them).
        a.Unpack(out ulong sig, out int e);
        ulong k = RoundCore(ref st, a.Sign, ref e, (UInt128)sig << 64, m, 1 - bias, bias);
        if (e == int.MaxValue) return signBit | expAll;
        if ((k >> fracBits) == 0) return signBit | k; // denormal or zero
        return signBit | ((ulong)(e + bias - 1) << fracBits) + k;
    }

    // ---- compare ----

    /// <summary>-1, 0, 1 for ordered values, 2 for unordered. <paramref name="quiet"/> (FUCOM*) raises
    /// IE only for SNaNs; FCOM* for any NaN. Unsupported encodings are invalid and unordered.</summary>
    public static int Compare(ref FpStatus st, Float80 a, Float80 b, bool quiet)
    {
        var ca = a.Class; var cb = b.Class;
        if (ca == FpClass.Unsupported || cb == FpClass.Unsupported) { st.Flags |= FpEx.IE; return 2; }
        if (ca is FpClass.QNaN or FpClass.SNaN || cb is FpClass.QNaN or FpClass.SNaN)
        {
            if (!quiet || ca == FpClass.SNaN || cb == FpClass.SNaN) st.Flags |= FpEx.IE;
            return 2;
        }
        if (ca == FpClass.Denormal || cb == FpClass.Denormal) st.Flags |= FpEx.DE;
        if (ca == FpClass.Zero && cb == FpClass.Zero) return 0;
        if (a.Sign != b.Sign) return ca == FpClass.Zero ? (b.Sign ? 1 : -1) : (a.Sign ? -1 : 1);
        int mag = CompareMagnitude(a, ca, b, cb);
        return a.Sign ? -mag : mag;
    }

    private static int CompareMagnitude(Float80 a, FpClass ca, Float80 b, FpClass cb)
    {
        if (ca == cb && ca is FpClass.Infinity or FpClass.Zero) return 0;
        if (ca == FpClass.Infinity || cb == FpClass.Zero) return 1;
        if (cb == FpClass.Infinity || ca == FpClass.Zero) return -1;
        a.Unpack(out ulong asg, out int ae);
        b.Unpack(out ulong bsg, out int be);
        if (ae != be) return ae < be ? -1 : 1;
        return asg == bsg ? 0 : asg < bsg ? -1 : 1;
    }

    // ---- FSCALE, FXTRACT, FPREM ----

    public static Float80 Scale(ref FpStatus st, Float80 a, Float80 b)
    {
        if (Prelude(ref st, a, b, out var r, out var ca, out var cb)) return r;
        if (cb == FpClass.Infinity)
        {
            if (b.Sign) return ca == FpClass.Infinity ? Invalid(ref st) : ca == FpClass.Zero ? a : Float80.Zero(a.Sign);
            return ca == FpClass.Zero ? Invalid(ref st) : Float80.Inf(a.Sign);
        }
        if (ca is FpClass.Zero or FpClass.Infinity) return a;
        int n = 0;
        if (cb != FpClass.Zero)
        {
            b.Unpack(out ulong bs, out int be);
            if (be >= 20) n = b.Sign ? -(1 << 20) : 1 << 20;
            else if (be >= 0) { n = (int)(bs >> (63 - be)); if (b.Sign) n = -n; }
        }
        a.Unpack(out ulong asg, out int ae);
        return Round(ref st, a.Sign, ae + n, (UInt128)asg << 64, 64);
    }

    /// <summary>FXTRACT: the exponent (as a value) and the significand (exponent 0).</summary>
    public static void Extract(ref FpStatus st, Float80 a, out Float80 exponent, out Float80 significand)
    {
        switch (a.Class)
        {
            case FpClass.Unsupported: exponent = significand = Invalid(ref st); return;
            case FpClass.QNaN: case FpClass.SNaN: exponent = significand = PropagateNaN(ref st, a); return;
            case FpClass.Zero: st.Flags |= FpEx.ZE; exponent = Float80.Inf(true); significand = a; return;
            case FpClass.Infinity: exponent = Float80.Inf(false); significand = a; return;
            case FpClass.Denormal: st.Flags |= FpEx.DE; break;
        }
        a.Unpack(out ulong sig, out int e);
        exponent = FromInt(e);
        significand = new Float80(sig, (ushort)((a.Sign ? 0x8000 : 0) | Float80.Bias));
    }

    /// <summary>FPREM (truncating quotient) and FPREM1 (quotient rounded to nearest). Sets
    /// <paramref name="quotient"/> to the low three bits of the quotient and
    /// <paramref name="partial"/> when only a partial reduction was done (C2).</summary>
    public static Float80 Remainder(ref FpStatus st, Float80 a, Float80 b, bool ieee, out int quotient, out bool partial)
        => Remainder(ref st, a, b, ieee, out quotient, out partial, out _);

    /// <summary>As above; <paramref name="fullQuotient"/> is the whole quotient's magnitude of a complete reduction.</summary>
    public static Float80 Remainder(ref FpStatus st, Float80 a, Float80 b, bool ieee, out int quotient, out bool partial, out ulong fullQuotient)
    {
        quotient = 0; partial = false; fullQuotient = 0;
        if (Prelude(ref st, a, b, out var r, out var ca, out var cb)) return r;
        if (ca == FpClass.Infinity || cb == FpClass.Zero) { st.Flags &= ~FpEx.DE; return Invalid(ref st); }
        if (ca == FpClass.Zero) return a;
        if (cb == FpClass.Infinity) return Normalized(ref st, a);
        a.Unpack(out ulong asg, out int ae);
        b.Unpack(out ulong bsg, out int be);
        int d = ae - be;
        bool sign = a.Sign;
        if (d < -1) return Normalized(ref st, a);
        if (d >= 64)
        {
            // Partial reduction: reduce the exponent difference by 32..63 bits per step.
            partial = true;
            int n = 32 + (d % 32);
            int shift = n;
            // Quotient of the top bits: (a / b) / 2^(d - n), truncated.
            UInt128 num = (UInt128)asg << shift;
            UInt128 q = num / bsg;
            UInt128 rem = num - q * bsg;
            quotient = (int)(q & 7);
            if (rem == 0) return Float80.Zero(sign);
            int lzr = (int)UInt128.LeadingZeroCount(rem);
            // rem × 2^(be - 63) × 2^(d - n)
            return Round(ref st, sign, be - 63 + (d - n) + 127 - lzr, rem << lzr, 64);
        }
        UInt128 numr, den;
        int baseExp;
        if (d >= 0) { numr = (UInt128)asg << d; den = bsg; baseExp = be - 63; }
        else { numr = asg; den = (UInt128)bsg << 1; baseExp = be - 64; }
        UInt128 qq = numr / den;
        UInt128 rr = numr - qq * den;
        if (ieee)
        {
            UInt128 twice = rr << 1;
            if (twice > den || (twice == den && (qq & 1) != 0))
            {
                rr = den - rr;
                qq++;
                sign = !sign;
            }
        }
        quotient = (int)(qq & 7);
        fullQuotient = (ulong)qq;
        if (rr == 0) return Float80.Zero(a.Sign);
        int lz = (int)UInt128.LeadingZeroCount(rr);
        return Round(ref st, sign, baseExp + 127 - lz, rr << lz, 64);
    }

    /// <summary>A finite value as arithmetic delivers it: denormal operands come back as they are
    /// (flagging DE was done by the caller), pseudo-denormals are normalised.</summary>
    private static Float80 Normalized(ref FpStatus st, Float80 a)
    {
        if (a.Class != FpClass.Denormal) return a;
        a.Unpack(out ulong sig, out int e);
        return Round(ref st, a.Sign, e, (UInt128)sig << 64, 64);
    }
}
