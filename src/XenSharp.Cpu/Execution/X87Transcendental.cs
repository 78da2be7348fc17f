namespace XenSharp.Cpu;

/// <summary>
/// FSIN, FCOS, FSINCOS, FPTAN, FPATAN, F2XM1, FYL2X, FYL2XP1. Special operands (NaNs, infinities,
/// zeros, unsupported encodings, out-of-range and out-of-domain arguments) follow the SDM and what
/// the hardware does where the SDM leaves it open. Arguments of the trigonometric instructions are
/// reduced by π/2 rounded to 66 bits, as the hardware does, exactly; finite results are evaluated
/// in double-double (<see cref="DoubleDouble"/>) and rounded once by RC, which agrees with the
/// hardware to the last bit in almost all cases and otherwise within one ulp.
/// </summary>
internal static class X87Transcendental
{
    private static readonly Float80 Pi = new(0xC90FDAA22168C235, 0x4000);
    private static readonly Float80 HalfPi = new(0xC90FDAA22168C235, 0x3FFF);
    private static readonly Float80 QuarterPi = new(0xC90FDAA22168C235, 0x3FFE);
    private static readonly Float80 Ln2 = new(0xB17217F7D1CF79AC, 0x3FFE);
    private static readonly Float80 Log2E = new(0xB8AA3B295C17F0BC, 0x3FFF);
    /// <summary>HalfPi above minus the π/2 the x87 reduces arguments with (π rounded to 66 bits): 2^-65.</summary>
    private const double HalfPiExcess = 1.0 / (1UL << 63) / 4;

    /// <summary>A working status for an intermediate step: the caller's rounding and exception masks, 64-bit precision.</summary>
    private static FpStatus Inner(in FpStatus st) => new() { Rc = st.Rc, Prec = 64, UeUnmasked = st.UeUnmasked, OeUnmasked = st.OeUnmasked };

    private static int Exponent(Float80 a) { a.Unpack(out _, out int e); return e; }

    /// <summary>The value as hi + lo (both binary64); exact for exponents within binary64's range.</summary>
    private static void Split(Float80 a, out double hi, out double lo)
    {
        if (a.Mant == 0) { hi = lo = a.Sign ? -0.0 : 0.0; return; }
        a.Unpack(out ulong sig, out int e);
        hi = Math.ScaleB((double)(sig & ~0x7FFUL), e - 63);
        lo = Math.ScaleB((double)(sig & 0x7FF), e - 63);
        if (a.Sign) { hi = -hi; lo = -lo; }
    }

    private static void TwoSum(double a, double b, out double s, out double err)
    {
        s = a + b;
        double bb = s - a;
        err = (a - (s - bb)) + (b - bb);
    }

    /// <summary>(hi + lo) × 2^scale rounded once to the register format; PE always.</summary>
    private static Float80 Result(ref FpStatus st, DoubleDouble v, int scale = 0)
    {
        double hi = v.Hi, lo = v.Lo;
        bool sign = hi < 0;
        if (sign) { hi = -hi; lo = -lo; }
        Decompose(hi, out ulong mh, out int eh);
        // hi = mh·2^eh; S·2^baseExp with hi's significand at bits 127..75 (one spare bit below for sticky).
        UInt128 sig = (UInt128)mh << 74;
        int baseExp = eh - 74;
        if (lo != 0)
        {
            Decompose(Math.Abs(lo), out ulong ml, out int el);
            int shift = el - baseExp;
            UInt128 l;
            bool sticky = false;
            if (shift >= 0) l = (UInt128)ml << shift;
            else if (shift > -64) { l = ml >> -shift; sticky = (ml & ((1UL << -shift) - 1)) != 0; }
            else { l = 0; sticky = true; }
            sig <<= 1; l <<= 1; baseExp--;
            if (lo > 0) sig = sig + l + (sticky ? 1u : 0u);
            else sig = sig - l - (sticky ? 1u : 0u);
        }
        int lz = (int)UInt128.LeadingZeroCount(sig);
        var s = Inner(st);
        var r = X87Math.Round(ref s, sign, baseExp + 127 - lz + scale, sig << lz, 64);
        st.Flags |= (s.Flags & (FpEx.UE | FpEx.OE)) | FpEx.PE;
        // The true result is never exact: a tiny one always underflows.
        if (r.Exp == 0) st.Flags |= FpEx.UE;
        st.Up = s.Up;
        return r;
    }

    /// <summary>A positive finite double as m·2^e with m an integer.</summary>
    private static void Decompose(double v, out ulong m, out int e)
    {
        long b = BitConverter.DoubleToInt64Bits(v);
        int be = (int)((b >> 52) & 0x7FF);
        m = (ulong)b & 0xF_FFFF_FFFF_FFFF;
        if (be == 0) be = 1; else m |= 1UL << 52;
        e = be - 1075;
    }

    /// <summary>The significand of a finite nonzero value as a double-double in [1, 2) and its exponent.</summary>
    private static DoubleDouble Significand(Float80 a, out int exp)
    {
        a.Unpack(out ulong sig, out exp);
        return new DoubleDouble((double)(sig & ~0x7FFUL) / 9223372036854775808.0, (double)(sig & 0x7FF) / 9223372036854775808.0);
    }

    /// <summary>log2 of a positive finite value, as a double-double.</summary>
    private static DoubleDouble Log2(Float80 x)
    {
        var m = Significand(x, out int e);
        // Near 1 from below, log2(x) = log2(1 + (x - 1)) keeps its relative precision.
        if (e == -1) return DoubleDouble.Log1P(m * 0.5 - 1.0) * DoubleDouble.Log2E;
        return (DoubleDouble)e + DoubleDouble.Log1P(m - 1.0) * DoubleDouble.Log2E;
    }

    /// <summary>y × lg, rounded once, over the register format's whole exponent range.</summary>
    private static Float80 TimesLog(ref FpStatus st, Float80 y, DoubleDouble lg)
    {
        var m = Significand(y, out int e);
        if (y.Sign) m = -m;
        return Result(ref st, m * lg, e);
    }

    /// <summary>A result within an ulp of <paramref name="x"/>: the true value lies just below
    /// (<paramref name="below"/>) or above x in magnitude, so directed rounding may step off it.</summary>
    private static Float80 Near(ref FpStatus st, Float80 x, bool below)
    {
        if (x.Exp == 0 && x.Mant != 0 && st.UeUnmasked)
        {
            // A denormal result with underflow unmasked is delivered normalised and wrapped.
            var m = Significand(x, out int e);
            return Result(ref st, x.Sign ? -m : m, e);
        }
        st.Flags |= FpEx.PE;
        bool towardZero = st.Rc == 3 || (st.Rc == 1 && !x.Sign) || (st.Rc == 2 && x.Sign);
        bool awayFromZero = (st.Rc == 1 && x.Sign) || (st.Rc == 2 && !x.Sign);
        if (x.Exp == 0) st.Flags |= FpEx.UE;
        st.Up = false;
        if (below && towardZero)
        {
            if (x.Mant == 0x8000_0000_0000_0000 && x.Exp > 1) return new Float80(ulong.MaxValue, (ushort)(x.Se - 1));
            if (x.Mant == 0x8000_0000_0000_0000 && x.Exp == 1)
            {
                // Just below the smallest normal: the largest denormal.
                st.Flags |= FpEx.UE;
                return new Float80(0x7FFF_FFFF_FFFF_FFFF, (ushort)(x.Se & 0x8000));
            }
            return new Float80(x.Mant - 1, x.Se);
        }
        if (!below && awayFromZero)
        {
            st.Up = true;
            if (x.Mant == ulong.MaxValue) return new Float80(0x8000_0000_0000_0000, (ushort)(x.Se + 1));
            return new Float80(x.Mant + 1, x.Se);
        }
        return x;
    }

    private static bool NaNOrBad(ref FpStatus st, Float80 a, out Float80 r)
    {
        var c = a.Class;
        if (c == FpClass.Unsupported) { st.Flags |= FpEx.IE; r = Float80.Indefinite; return true; }
        if (c is FpClass.QNaN or FpClass.SNaN) { r = X87Math.PropagateNaN(ref st, a); return true; }
        r = default;
        return false;
    }

    /// <summary>The argument of FSIN/FCOS/FSINCOS/FPTAN: true with the result for specials, incomplete when |x| ≥ 2^63.</summary>
    private static bool TrigPrelude(ref FpStatus st, Float80 a, out Float80 r, out bool incomplete)
    {
        incomplete = false;
        if (NaNOrBad(ref st, a, out r)) return true;
        var c = a.Class;
        if (c == FpClass.Infinity) { st.Flags |= FpEx.IE; r = Float80.Indefinite; return true; }
        if (c == FpClass.Zero) { r = a; return true; }
        if (c == FpClass.Denormal) st.Flags |= FpEx.DE;
        if (Exponent(a) >= 63) { incomplete = true; r = a; return true; }
        return false;
    }

    /// <summary>x - k·π/2 as hi + lo and k mod 4, with π/2 to 66 bits as the hardware has it: the
    /// exact remainder by the 64-bit constant, corrected by k times its excess over the 66-bit one.</summary>
    private static void Reduce(Float80 a, out int quadrant, out double hi, out double lo)
    {
        if (Exponent(a) < -1) { quadrant = 0; Split(a, out hi, out lo); return; }
        var st = new FpStatus { Rc = 0, Prec = 64 };
        var r = X87Math.Remainder(ref st, a.Abs(), HalfPi, true, out _, out _, out ulong q);
        Split(r, out double rh, out double rl);
        TwoSum(rh, (q & ~0x7FFUL) * HalfPiExcess, out hi, out double err);
        lo = rl + err + (q & 0x7FF) * HalfPiExcess;
        quadrant = (int)(q & 3);
        if (a.Sign) { hi = -hi; lo = -lo; quadrant = (4 - quadrant) & 3; }
    }

    public static Float80 Sin(ref FpStatus st, Float80 a, out bool incomplete)
    {
        if (TrigPrelude(ref st, a, out var r, out incomplete)) return r;
        if (Exponent(a) < -40) return Near(ref st, a, true);
        Reduce(a, out int q, out double h, out double l);
        DoubleDouble.SinCos(new DoubleDouble(h, l), out var sn, out var cs);
        return Result(ref st, q switch { 0 => sn, 1 => cs, 2 => -sn, _ => -cs });
    }

    public static Float80 Cos(ref FpStatus st, Float80 a, out bool incomplete)
    {
        if (TrigPrelude(ref st, a, out var r, out incomplete))
            return a.Class == FpClass.Zero ? Float80.One : r;
        if (Exponent(a) < -40) return Near(ref st, Float80.One, true);
        Reduce(a, out int q, out double h, out double l);
        DoubleDouble.SinCos(new DoubleDouble(h, l), out var sn, out var cs);
        return Result(ref st, q switch { 0 => cs, 1 => -sn, 2 => -cs, _ => sn });
    }

    public static void SinCos(ref FpStatus st, Float80 a, out Float80 sin, out Float80 cos, out bool incomplete)
    {
        if (TrigPrelude(ref st, a, out var r, out incomplete))
        {
            sin = r;
            cos = a.Class == FpClass.Zero ? Float80.One : r;
            return;
        }
        var s2 = st;
        sin = Sin(ref st, a, out _);
        cos = Cos(ref s2, a, out _);
        st.Flags |= s2.Flags;
        st.Up = s2.Up;
    }

    public static Float80 Tan(ref FpStatus st, Float80 a, out bool incomplete)
    {
        if (TrigPrelude(ref st, a, out var r, out incomplete)) return r;
        if (Exponent(a) < -40) return Near(ref st, a, false);
        Reduce(a, out int q, out double h, out double l);
        DoubleDouble.SinCos(new DoubleDouble(h, l), out var sn, out var cs);
        // tan(x + π/2) = -cos(x)/sin(x)
        return Result(ref st, (q & 1) == 0 ? sn / cs : -(cs / sn));
    }

    public static Float80 Exp2M1(ref FpStatus st, Float80 a)
    {
        if (NaNOrBad(ref st, a, out var r)) return r;
        var c = a.Class;
        if (c == FpClass.Zero) return a;
        if (c == FpClass.Denormal) st.Flags |= FpEx.DE;
        int e = Exponent(a);
        // Outside the documented domain (|x| ≤ 1) the result is x itself, inexact.
        if (c == FpClass.Infinity) return a.Sign ? new Float80(0x8000_0000_0000_0000, 0xBFFF) : a;
        if (e > 0 || (e == 0 && a.Mant != 0x8000_0000_0000_0000)) { st.Flags |= FpEx.PE; return a; }
        if (e < -900)
        {
            // 2^x - 1 = x·ln 2 to far beyond the working precision.
            var m = Significand(a, out int me);
            return Result(ref st, (a.Sign ? -m : m) * DoubleDouble.Ln2, me);
        }
        Split(a, out double h, out double l);
        return Result(ref st, DoubleDouble.ExpM1(new DoubleDouble(h, l) * DoubleDouble.Ln2));
    }

    /// <summary>FYL2X: ST(1) × log2(ST(0)).</summary>
    public static Float80 YLog2X(ref FpStatus st, Float80 y, Float80 x)
    {
        if (TwoNaN(ref st, y, x, out var r)) return r;
        var cx = x.Class; var cy = y.Class;
        if (x.Sign && cx != FpClass.Zero) return Invalid(ref st);
        if (cx == FpClass.Denormal || cy == FpClass.Denormal) st.Flags |= FpEx.DE;
        int cmp1 = cx switch { FpClass.Zero => -1, FpClass.Infinity => 1, _ => CompareOne(x) };
        if (cx == FpClass.Zero)
        {
            if (cy == FpClass.Zero) return Invalid(ref st);
            if (cy != FpClass.Infinity) st.Flags |= FpEx.ZE;
            return Float80.Inf(!y.Sign);
        }
        if (cx == FpClass.Infinity)
            return cy == FpClass.Zero ? Invalid(ref st) : Float80.Inf(y.Sign);
        if (cy == FpClass.Infinity)
        {
            if (cmp1 == 0) return Invalid(ref st);
            return Float80.Inf(y.Sign ^ (cmp1 < 0));
        }
        if (cmp1 == 0) return Float80.Zero(y.Sign);
        if (cy == FpClass.Zero) return Float80.Zero(y.Sign ^ (cmp1 < 0));
        return TimesLog(ref st, y, Log2(x));
    }

    /// <summary>FYL2XP1: ST(1) × log2(ST(0) + 1).</summary>
    public static Float80 YLog2XP1(ref FpStatus st, Float80 y, Float80 x)
    {
        if (TwoNaN(ref st, y, x, out var r)) return r;
        var cx = x.Class; var cy = y.Class;
        if (cx == FpClass.Denormal || cy == FpClass.Denormal) st.Flags |= FpEx.DE;
        // Below the documented domain (|x| < 1 - √2/2) results follow log2(1 + x) as long as it is
        // defined; at or below -1 the result is x itself, inexact.
        if (cx == FpClass.Infinity && x.Sign) return Invalid(ref st);
        bool atOrBelowMinusOne = cx != FpClass.Infinity && x.Sign && cx != FpClass.Zero && Exponent(x) >= 0;
        if (cy == FpClass.Infinity)
        {
            if (cx == FpClass.Zero) return Invalid(ref st);
            return Float80.Inf(atOrBelowMinusOne ? !y.Sign : x.Sign ^ y.Sign);
        }
        if (cx == FpClass.Infinity) return cy == FpClass.Zero ? Invalid(ref st) : Float80.Inf(y.Sign);
        if (cx == FpClass.Zero || cy == FpClass.Zero) return Float80.Zero(x.Sign ^ y.Sign);
        // Below the documented domain (|x| < 1 - √2/2) results follow log2(1 + x) as long as it is
        // defined; at or below -1 the result is x itself, inexact.
        if (atOrBelowMinusOne) { st.Flags |= FpEx.PE; return x; }
        if (Exponent(x) < -900)
        {
            // log2(1 + x) = x·log2(e) to far beyond the working precision; the exponents are added
            // at the final rounding, so only it can underflow.
            var mx = Significand(x, out int xe);
            var my = Significand(y, out int ye);
            var p = mx * my * DoubleDouble.Log2E;
            return Result(ref st, x.Sign ^ y.Sign ? -p : p, xe + ye);
        }
        // Far above 1, log2(1 + x) is log2(x) to well beyond the working precision.
        if (Exponent(x) > 200) return TimesLog(ref st, y, Log2(x));
        Split(x, out double xh, out double xl);
        return TimesLog(ref st, y, DoubleDouble.Log1P(new DoubleDouble(xh, xl)) * DoubleDouble.Log2E);
    }

    /// <summary>FPATAN: arctan(ST(1)/ST(0)) with the quadrant of (ST(0), ST(1)).</summary>
    public static Float80 Atan2(ref FpStatus st, Float80 y, Float80 x)
    {
        if (TwoNaN(ref st, y, x, out var r)) return r;
        var cx = x.Class; var cy = y.Class;
        if (cx == FpClass.Denormal || cy == FpClass.Denormal) st.Flags |= FpEx.DE;
        if (cy == FpClass.Zero)
        {
            if (!x.Sign) return y;
            return RoundConst(ref st, Pi, y.Sign);
        }
        if (cx == FpClass.Infinity && cy == FpClass.Infinity)
        {
            if (!x.Sign) return RoundConst(ref st, QuarterPi, y.Sign);
            var s3 = Result(ref st, new DoubleDouble(2.356194490192345, 9.184850993605148e-17));
            return y.Sign ? s3.Negate() : s3;
        }
        if (cy == FpClass.Infinity || cx == FpClass.Zero) return RoundConst(ref st, HalfPi, y.Sign);
        if (cx == FpClass.Infinity) return x.Sign ? RoundConst(ref st, Pi, y.Sign) : Float80.Zero(y.Sign);
        int xe = Exponent(x), ye = Exponent(y);
        if (ye - xe > 70) return RoundConst(ref st, HalfPi, y.Sign);
        if (ye - xe < -70)
        {
            if (x.Sign) return RoundConst(ref st, Pi, y.Sign);
            // atan(t) = t - t³/3 with t below 2^-70: an inexact quotient rounds as atan(t) does (t is
            // then too far from every representable value for t³/3 to matter); an exact one is the
            // value just above the true result.
            var s = Inner(st);
            var q = X87Math.Div(ref s, y, x);
            if ((s.Flags & FpEx.PE) == 0 && q.Class is FpClass.Normal or FpClass.Denormal) return Near(ref st, q, true);
            st.Flags |= (s.Flags & (FpEx.UE | FpEx.OE)) | FpEx.PE;
            st.Up = s.Up;
            return q;
        }
        // Scale both by the same power of two into binary64's range.
        int sh = -Math.Max(xe, ye);
        ScaledSplit(x, sh, out double xh, out double xl);
        ScaledSplit(y, sh, out double yh, out double yl);
        return Result(ref st, DoubleDouble.Atan2(new DoubleDouble(yh, yl), new DoubleDouble(xh, xl)));
    }

    private static void ScaledSplit(Float80 a, int shift, out double hi, out double lo)
    {
        a.Unpack(out ulong sig, out int e);
        hi = Math.ScaleB((double)(sig & ~0x7FFUL), e + shift - 63);
        lo = Math.ScaleB((double)(sig & 0x7FF), e + shift - 63);
        if (a.Sign) { hi = -hi; lo = -lo; }
    }

    private static Float80 RoundConst(ref FpStatus st, Float80 c, bool negative)
    {
        st.Flags |= FpEx.PE;
        var v = c;
        // The constants above are rounded to nearest; directed modes take the neighbour toward zero.
        bool towardZero = st.Rc == 3 || (st.Rc == 1 && !negative) || (st.Rc == 2 && negative);
        if (towardZero) v = new Float80(v.Mant - 1, v.Se);
        st.Up = !towardZero;
        return negative ? v.Negate() : v;
    }

    private static int CompareOne(Float80 x)
    {
        var st = new FpStatus { Prec = 64 };
        return X87Math.Compare(ref st, x, Float80.One, true);
    }

    private static Float80 Invalid(ref FpStatus st) { st.Flags |= FpEx.IE; return Float80.Indefinite; }

    private static bool TwoNaN(ref FpStatus st, Float80 y, Float80 x, out Float80 r)
    {
        var cx = x.Class; var cy = y.Class;
        if (cx == FpClass.Unsupported || cy == FpClass.Unsupported) { r = Invalid(ref st); return true; }
        if (x.IsNaN || y.IsNaN)
        {
            var s = st;
            r = X87Math.Add(ref s, x.IsNaN ? x : y, y.IsNaN ? y : x, false);
            st.Flags |= s.Flags & FpEx.IE;
            return true;
        }
        r = default;
        return false;
    }
}
