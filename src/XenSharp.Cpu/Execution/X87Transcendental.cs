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

    /// <summary>The value as hi + lo (both binary64, exact for every finite register value in binary64 range).</summary>
    private static void Split(Float80 a, out double hi, out double lo)
    {
        a.Unpack(out ulong sig, out int e);
        double h = (double)(sig & ~0x7FFUL);
        double l = sig & 0x7FF;
        hi = Math.ScaleB(h, e - 63);
        lo = Math.ScaleB(l, e - 63);
        if (a.Sign) { hi = -hi; lo = -lo; }
    }

    /// <summary>hi + lo rounded once to the register format (PE always: these results are inexact).</summary>
    private static Float80 Result(ref FpStatus st, double hi, double lo)
    {
        var h = X87Math.FromBinary((ulong)BitConverter.DoubleToInt64Bits(hi), 53, 11, out _);
        var l = X87Math.FromBinary((ulong)BitConverter.DoubleToInt64Bits(lo), 53, 11, out _);
        int rc = st.Rc;
        var s = new FpStatus { Rc = rc, Prec = 64 };
        var r = X87Math.Add(ref s, h, l, false);
        st.Flags |= (s.Flags & (FpEx.UE | FpEx.OE)) | FpEx.PE;
        st.Up = s.Up;
        return r;
    }

    private static bool NaNOrBad(ref FpStatus st, Float80 a, out Float80 r)
    {
        var c = a.Class;
        if (c == FpClass.Unsupported) { st.Flags |= FpEx.IE; r = Float80.Indefinite; return true; }
        if (c is FpClass.QNaN or FpClass.SNaN) { r = X87Math.PropagateNaN(ref st, a); return true; }
        r = default;
        return false;
    }

    /// <summary>The argument of FSIN/FCOS/FSINCOS/FPTAN: null result for specials, incomplete when |x| ≥ 2^63.</summary>
    private static bool TrigPrelude(ref FpStatus st, Float80 a, out Float80 r, out bool incomplete)
    {
        incomplete = false;
        if (NaNOrBad(ref st, a, out r)) return true;
        var c = a.Class;
        if (c == FpClass.Infinity) { st.Flags |= FpEx.IE; r = Float80.Indefinite; return true; }
        if (c == FpClass.Zero) { r = a; return true; }
        if (c == FpClass.Denormal) st.Flags |= FpEx.DE;
        a.Unpack(out _, out int e);
        if (e >= 63) { incomplete = true; r = a; return true; }
        return false;
    }

    /// <summary>x reduced by multiples of π/2 (with the 66-bit π the x87 reduces with): the quadrant and
    /// the remainder as hi + lo.</summary>
    private static void Reduce(Float80 a, out int quadrant, out double hi, out double lo)
    {
        Split(a, out double xh, out double xl);
        if (Math.Abs(xh) <= Math.PI / 4) { quadrant = 0; hi = xh; lo = xl; return; }
        // Exact remainder with the partial-remainder machinery: x - k·(π/2).
        var st = new FpStatus { Rc = 0, Prec = 64 };
        var r = X87Math.Remainder(ref st, a, HalfPi, true, out int q, out bool partial);
        while (partial) r = X87Math.Remainder(ref st, r, HalfPi, true, out q, out partial);
        quadrant = q & 3;
        Split(r, out hi, out lo);
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
        if (c == FpClass.Infinity) return a.Sign ? new Float80(0x8000_0000_0000_0000, 0xBFFF) : a;
        if (c == FpClass.Denormal) st.Flags |= FpEx.DE;
        Split(a, out double h, out double l);
        double v = Math.Abs(h) < 1e-300 ? h * Math.Log(2) : (Math.Pow(2, h) - 1);
        if (Math.Abs(h) < 0.25) v = ExpM1(h * Math.Log(2));
        double dv = (v + 1) * Math.Log(2) * l;
        return Result(ref st, v, dv);
    }

    private static double ExpM1(double x)
    {
        // expm1 without cancellation: exp(x) - 1 = 2·tanh(x/2)/(1 - tanh(x/2)).
        double t = Math.Tanh(x / 2);
        return 2 * t / (1 - t);
    }

    private static double Log1P(double x)
    {
        double u = 1 + x;
        return u == 1 ? x : Math.Log(u) * x / (u - 1);
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
        Split(x, out double xh, out double xl);
        Split(y, out double yh, out double yl);
        x.Unpack(out ulong xs, out int xe);
        // log2(x) = e + log2(m), m in [1, 2)
        double m = (double)(xs & ~0x7FFUL) / 9223372036854775808.0;
        double ml = (double)(xs & 0x7FF) / 9223372036854775808.0;
        double lg = xe + Math.Log2(m);
        double dlg = ml / (m * Math.Log(2));
        if (xe == 0 || xe == -1) { lg = Log1P(m * Math.ScaleB(1, xe) - 1) / Math.Log(2); }
        _ = xh; _ = xl;
        double p = yh * lg;
        double err = Math.FusedMultiplyAdd(yh, lg, -p);
        return ScaledResult(ref st, p, err + yh * dlg + yl * lg, y, x);
    }

    /// <summary>FYL2XP1: ST(1) × log2(ST(0) + 1).</summary>
    public static Float80 YLog2XP1(ref FpStatus st, Float80 y, Float80 x)
    {
        if (TwoNaN(ref st, y, x, out var r)) return r;
        var cx = x.Class; var cy = y.Class;
        if (cx == FpClass.Denormal || cy == FpClass.Denormal) st.Flags |= FpEx.DE;
        if (cx == FpClass.Infinity || cy == FpClass.Infinity)
        {
            if (cx == FpClass.Zero || cy == FpClass.Zero) return Invalid(ref st);
            if (cx == FpClass.Infinity && x.Sign) return Invalid(ref st);
            return Float80.Inf(x.Sign ^ y.Sign);
        }
        if (cx == FpClass.Zero || cy == FpClass.Zero) return Float80.Zero(x.Sign ^ y.Sign);
        Split(x, out double xh, out double xl);
        Split(y, out double yh, out double yl);
        if (xh <= -1) return Invalid(ref st);
        double lg = Log1P(xh) / Math.Log(2);
        double dlg = xl / ((1 + xh) * Math.Log(2));
        double p = yh * lg;
        double err = Math.FusedMultiplyAdd(yh, lg, -p);
        return ScaledResult(ref st, p, err + yh * dlg + yl * lg, y, x);
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
            // 3π/4
            Split(Pi, out double ph, out double pl);
            var s3 = Result(ref st, ph * 0.75, pl * 0.75);
            return y.Sign ? s3.Negate() : s3;
        }
        if (cy == FpClass.Infinity || cx == FpClass.Zero) return RoundConst(ref st, HalfPi, y.Sign);
        if (cx == FpClass.Infinity) return x.Sign ? RoundConst(ref st, Pi, y.Sign) : Float80.Zero(y.Sign);
        Split(x, out double xh, out double xl);
        Split(y, out double yh, out double yl);
        if (double.IsInfinity(xh) || double.IsInfinity(yh) || xh == 0 || yh == 0)
        {
            // Beyond binary64's range: scale both by the same power of two.
            x.Unpack(out _, out int xe); y.Unpack(out _, out int ye);
            int sh = -Math.Max(xe, ye);
            xh = Math.ScaleB(xh, sh); xl = Math.ScaleB(xl, sh); yh = Math.ScaleB(yh, sh); yl = Math.ScaleB(yl, sh);
            if (double.IsNaN(xh) || double.IsNaN(yh)) return Float80.Indefinite;
        }
        double a = Math.Atan2(yh, xh);
        double d2 = xh * xh + yh * yh;
        double da = (xh * yl - yh * xl) / d2;
        if (!double.IsFinite(da)) da = 0;
        return Result(ref st, a, da);
    }

    private static Float80 ScaledResult(ref FpStatus st, double hi, double lo, Float80 y, Float80 x)
    {
        if (double.IsFinite(hi)) return Result(ref st, hi, double.IsFinite(lo) ? lo : 0);
        // Outside binary64's range: fall back to an exact-exponent product in the soft-float.
        var s = new FpStatus { Rc = st.Rc, Prec = 64 };
        Split(x, out double xh, out _);
        x.Unpack(out ulong xs, out int xe);
        double m = (double)xs / 9223372036854775808.0;
        var lg = X87Math.FromBinary((ulong)BitConverter.DoubleToInt64Bits(xe + Math.Log2(m)), 53, 11, out _);
        _ = xh;
        var r = X87Math.Mul(ref s, y, lg);
        st.Flags |= s.Flags | FpEx.PE;
        st.Up = s.Up;
        return r;
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
