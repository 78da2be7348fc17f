namespace XenSharp.Cpu;

/// <summary>
/// FSIN, FCOS, FSINCOS, FPTAN, FPATAN, F2XM1, FYL2X, FYL2XP1. Special operands (NaNs, infinities,
/// zeros, out-of-range arguments, domain errors) follow the SDM's tables exactly. Finite results are
/// computed from the exact 64-bit operand split into two binary64 halves, with a first-order
/// correction for the low half, and rounded once to the register format: accurate to about 2^-52
/// relative, which the differential tester's tolerance for these mnemonics reflects (hardware itself
/// is not correctly rounded here).
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
    private const double Ln2D = 0.6931471805599453;

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

    /// <summary>hi + lo rounded once to the register format; PE always (these results are inexact).</summary>
    private static Float80 Result(ref FpStatus st, double hi, double lo)
    {
        var h = X87Math.FromBinary((ulong)BitConverter.DoubleToInt64Bits(hi), 53, 11, out _);
        var l = X87Math.FromBinary((ulong)BitConverter.DoubleToInt64Bits(lo), 53, 11, out _);
        var s = new FpStatus { Rc = st.Rc, Prec = 64 };
        var r = X87Math.Add(ref s, h, l, false);
        st.Flags |= (s.Flags & (FpEx.UE | FpEx.OE)) | FpEx.PE;
        st.Up = s.Up;
        return r;
    }

    /// <summary>A result within an ulp of <paramref name="x"/>: the true value lies just below
    /// (<paramref name="below"/>) or above x in magnitude, so directed rounding may step off it.</summary>
    private static Float80 Near(ref FpStatus st, Float80 x, bool below)
    {
        st.Flags |= FpEx.PE;
        bool towardZero = st.Rc == 3 || (st.Rc == 1 && !x.Sign) || (st.Rc == 2 && x.Sign);
        bool awayFromZero = (st.Rc == 1 && x.Sign) || (st.Rc == 2 && !x.Sign);
        if (x.Exp == 0) st.Flags |= FpEx.UE;
        st.Up = false;
        if (below && towardZero)
        {
            if (x.Mant == 0x8000_0000_0000_0000 && x.Exp > 1) return new Float80(ulong.MaxValue, (ushort)(x.Se - 1));
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

    private static void SinCosCore(double h, double l, out double sh, out double sl, out double ch, out double cl)
    {
        double s = Math.Sin(h), c = Math.Cos(h);
        sh = s; sl = c * l;
        ch = c; cl = -s * l;
    }

    public static Float80 Sin(ref FpStatus st, Float80 a, out bool incomplete)
    {
        if (TrigPrelude(ref st, a, out var r, out incomplete)) return r;
        if (Exponent(a) < -40) return Near(ref st, a, true);
        Reduce(a, out int q, out double h, out double l);
        SinCosCore(h, l, out double sh, out double sl, out double ch, out double cl);
        return q switch
        {
            0 => Result(ref st, sh, sl),
            1 => Result(ref st, ch, cl),
            2 => Result(ref st, -sh, -sl),
            _ => Result(ref st, -ch, -cl),
        };
    }

    public static Float80 Cos(ref FpStatus st, Float80 a, out bool incomplete)
    {
        if (TrigPrelude(ref st, a, out var r, out incomplete))
            return a.Class == FpClass.Zero ? Float80.One : r;
        if (Exponent(a) < -40) return Near(ref st, Float80.One, true);
        Reduce(a, out int q, out double h, out double l);
        SinCosCore(h, l, out double sh, out double sl, out double ch, out double cl);
        return q switch
        {
            0 => Result(ref st, ch, cl),
            1 => Result(ref st, -sh, -sl),
            2 => Result(ref st, -ch, -cl),
            _ => Result(ref st, sh, sl),
        };
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
        double t = Math.Tan(h);
        double dt = (1 + t * t) * l;
        if ((q & 1) != 0)
        {
            // tan(x + π/2) = -1/tan(x)
            double inv = -1 / t;
            return Result(ref st, inv, inv * inv * dt);
        }
        return Result(ref st, t, dt);
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
            var s = new FpStatus { Rc = st.Rc, Prec = 64 };
            var p = X87Math.Mul(ref s, a, Ln2);
            st.Flags |= s.Flags | FpEx.PE;
            st.Up = s.Up;
            return p;
        }
        Split(a, out double h, out double l);
        double v = Math.Abs(h) < 0.25 ? ExpM1(h * Ln2D) : Math.Pow(2, h) - 1;
        double dv = (v + 1) * Ln2D * l;
        return Result(ref st, v, dv);
    }

    private static double ExpM1(double x)
    {
        // exp(x) - 1 without cancellation: 2·tanh(x/2) / (1 - tanh(x/2)).
        double t = Math.Tanh(x / 2);
        return 2 * t / (1 - t);
    }

    private static double Log1P(double x)
    {
        double u = 1 + x;
        return u == 1 ? x : Math.Log(u) * x / (u - 1);
    }

    /// <summary>y × lg where lg = hi + lo (a logarithm, well inside binary64's range), with the
    /// product's exponent range that of the register format.</summary>
    private static Float80 TimesLog(ref FpStatus st, Float80 y, double hi, double lo)
    {
        var t = new FpStatus { Rc = 0, Prec = 64 };
        var lg = Result(ref t, hi, lo);
        return TimesExact(ref st, y, lg);
    }

    private static Float80 TimesExact(ref FpStatus st, Float80 y, Float80 v)
    {
        var s = new FpStatus { Rc = st.Rc, Prec = 64 };
        var p = X87Math.Mul(ref s, y, v);
        st.Flags |= (s.Flags & (FpEx.OE | FpEx.UE)) | FpEx.PE;
        st.Up = s.Up;
        return p;
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
        x.Unpack(out ulong xs, out int xe);
        // log2(x) = e + log2(m), m = 1 + t in [1, 2)
        double th = (double)((xs & ~0x7FFUL) - 0x8000_0000_0000_0000) / 9223372036854775808.0;
        double tl = (double)(xs & 0x7FF) / 9223372036854775808.0;
        double ln = Log1P(th) + tl / (1 + th);
        TwoSum(xe, ln / Ln2D, out double hi, out double lo);
        return TimesLog(ref st, y, hi, lo);
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
            // y·x·log2(e) on significands, the exponents added at the final rounding, so that only
            // it can underflow.
            x.Unpack(out ulong xs, out int xe);
            y.Unpack(out ulong ys, out int ye);
            var t = new FpStatus { Rc = st.Rc, Prec = 64 };
            var u = X87Math.Mul(ref t, X87Math.Mul(ref t, new Float80(xs, (ushort)((x.Se & 0x8000) | Float80.Bias)), Log2E),
                new Float80(ys, (ushort)((y.Se & 0x8000) | Float80.Bias)));
            u.Unpack(out ulong us, out int ue);
            var r2 = X87Math.Round(ref st, u.Sign, ue + xe + ye, (UInt128)us << 64, 64);
            st.Flags |= FpEx.PE;
            return r2;
        }
        if (Exponent(x) > 900)
        {
            x.Unpack(out ulong bs, out int be);
            TwoSum(be, Math.Log2((double)bs / 9223372036854775808.0), out double bh, out double bl);
            return TimesLog(ref st, y, bh, bl);
        }
        Split(x, out double xh, out double xl);
        double lg = Log1P(xh) / Ln2D;
        double dlg = xl / ((1 + xh) * Ln2D);
        return TimesLog(ref st, y, lg, dlg);
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
            Split(Pi, out double ph, out double pl);
            var s3 = Result(ref st, ph * 0.75, pl * 0.75);
            return y.Sign ? s3.Negate() : s3;
        }
        if (cy == FpClass.Infinity || cx == FpClass.Zero) return RoundConst(ref st, HalfPi, y.Sign);
        if (cx == FpClass.Infinity) return x.Sign ? RoundConst(ref st, Pi, y.Sign) : Float80.Zero(y.Sign);
        int xe = Exponent(x), ye = Exponent(y);
        if (ye - xe > 70) return RoundConst(ref st, HalfPi, y.Sign);
        if (ye - xe < -70)
        {
            if (x.Sign) return RoundConst(ref st, Pi, y.Sign);
            // atan(t) = t - t³/3: the quotient itself, just below in magnitude.
            var s = new FpStatus { Rc = st.Rc, Prec = 64 };
            var q = X87Math.Div(ref s, y, x);
            st.Flags |= (s.Flags & (FpEx.UE | FpEx.OE)) | FpEx.PE;
            st.Up = s.Up;
            return q;
        }
        // Scale both by the same power of two into binary64's range.
        int sh = -Math.Max(xe, ye);
        ScaledSplit(x, sh, out double xh, out double xl);
        ScaledSplit(y, sh, out double yh, out double yl);
        double a = Math.Atan2(yh, xh);
        double d2 = xh * xh + yh * yh;
        double da = (xh * yl - yh * xl) / d2;
        if (!double.IsFinite(da)) da = 0;
        return Result(ref st, a, da);
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
