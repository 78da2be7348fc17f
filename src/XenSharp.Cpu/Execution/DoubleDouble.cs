namespace XenSharp.Cpu;

/// <summary>
/// An unevaluated sum of two binary64 values (about 106 significant bits): the working precision
/// of the x87 transcendental instructions, enough for their 64-bit results to come out correctly
/// rounded in all but rare near-halfway cases.
/// </summary>
internal readonly struct DoubleDouble(double hi, double lo)
{
    public readonly double Hi = hi, Lo = lo;

    public static readonly DoubleDouble Ln2 = new(0.6931471805599453, 2.3190468138462996e-17);
    public static readonly DoubleDouble Log2E = new(1.4426950408889634, 2.0355273740931033e-17);

    public static implicit operator DoubleDouble(double v) => new(v, 0);

    private static DoubleDouble QuickTwoSum(double a, double b)
    {
        double s = a + b;
        return new DoubleDouble(s, b - (s - a));
    }

    public static DoubleDouble operator +(DoubleDouble a, DoubleDouble b)
    {
        double s = a.Hi + b.Hi;
        double bb = s - a.Hi;
        double e = (a.Hi - (s - bb)) + (b.Hi - bb);
        e += a.Lo + b.Lo;
        return QuickTwoSum(s, e);
    }

    public static DoubleDouble operator -(DoubleDouble a) => new(-a.Hi, -a.Lo);
    public static DoubleDouble operator -(DoubleDouble a, DoubleDouble b) => a + -b;

    public static DoubleDouble operator *(DoubleDouble a, DoubleDouble b)
    {
        double p = a.Hi * b.Hi;
        double e = Math.FusedMultiplyAdd(a.Hi, b.Hi, -p);
        e += a.Hi * b.Lo + a.Lo * b.Hi;
        return QuickTwoSum(p, e);
    }

    public static DoubleDouble operator /(DoubleDouble a, DoubleDouble b)
    {
        double q1 = a.Hi / b.Hi;
        var r = a - b * q1;
        double q2 = r.Hi / b.Hi;
        r -= b * q2;
        double q3 = r.Hi / b.Hi;
        return QuickTwoSum(q1, q2) + q3;
    }

    /// <summary>Σ x^n / n! for n ≥ 1 (e^x - 1), for |x| ≤ 1.</summary>
    public static DoubleDouble ExpM1(DoubleDouble x)
    {
        DoubleDouble sum = x, term = x;
        for (int n = 2; n < 40; n++)
        {
            term = term * x / n;
            sum += term;
            if (Math.Abs(term.Hi) < Math.Abs(sum.Hi) * 1e-34) break;
        }
        return sum;
    }

    /// <summary>sin and cos of |x| ≤ 1 by their series.</summary>
    public static void SinCos(DoubleDouble x, out DoubleDouble sin, out DoubleDouble cos)
    {
        var x2 = x * x;
        DoubleDouble s = x, t = x;
        for (int k = 1; k < 30; k++)
        {
            t = -(t * x2 / (2.0 * k * (2 * k + 1)));
            s += t;
            if (Math.Abs(t.Hi) < Math.Abs(s.Hi) * 1e-34) break;
        }
        DoubleDouble c = 1.0, u = 1.0;
        for (int k = 1; k < 30; k++)
        {
            u = -(u * x2 / (2.0 * k * (2 * k - 1)));
            c += u;
            if (Math.Abs(u.Hi) < 1e-34) break;
        }
        sin = s; cos = c;
    }

    /// <summary>ln(1 + x) for x > -1.</summary>
    public static DoubleDouble Log1P(DoubleDouble x)
    {
        if (Math.Abs(x.Hi) < 0.25) return Log1PSmall(x);
        // 1 + x = 2^k · m with m in [√½, √2): ln(1 + x) = k·ln 2 + ln(1 + (m - 1)).
        var u = (DoubleDouble)1.0 + x;
        int k = Math.ILogB(u.Hi);
        if (Math.ScaleB(u.Hi, -k) > 1.4142135623730951) k++;
        var m = new DoubleDouble(Math.ScaleB(u.Hi, -k), Math.ScaleB(u.Lo, -k));
        return Ln2 * k + Log1PSmall(m - 1.0);
    }

    /// <summary>ln(1 + x) for |x| ≤ 1/2: the binary64 estimate refined by one Newton step on e^y = 1 + x.</summary>
    private static DoubleDouble Log1PSmall(DoubleDouble x)
    {
        double y0 = Math.Abs(x.Hi) < 1e-300 ? x.Hi : LogOnePlus(x.Hi);
        // (1 + x)·e^(-y0) - 1 = expm1(-y0) + x·(1 + expm1(-y0))
        var e = ExpM1(-y0);
        var d = e + x * (1.0 + e);
        // ln(1 + d) ≈ d - d²/2 (d is about 2^-52)
        return (DoubleDouble)y0 + d - d * d * 0.5;
    }

    private static double LogOnePlus(double x)
    {
        double u = 1 + x;
        return u == 1 ? x : Math.Log(u) * x / (u - 1);
    }

    /// <summary>atan2(y, x), refined from the binary64 estimate by one Newton step.</summary>
    public static DoubleDouble Atan2(DoubleDouble y, DoubleDouble x)
    {
        double a0 = Math.Atan2(y.Hi, x.Hi);
        // Reduce a0 for the series: a0 = k·π/2 + r.
        double k = Math.Round(a0 / (Math.PI / 2));
        var halfPi = new DoubleDouble(1.5707963267948966, 6.123233995736766e-17);
        var r = (DoubleDouble)a0 - halfPi * k;
        SinCos(r, out var s, out var c);
        int q = ((int)k % 4 + 4) % 4;
        DoubleDouble sa = q switch { 0 => s, 1 => c, 2 => -s, _ => -c };
        DoubleDouble ca = q switch { 0 => c, 1 => -s, 2 => -c, _ => s };
        // tan(a - a0) = (y·cos a0 - x·sin a0) / (x·cos a0 + y·sin a0)
        var num = y * ca - x * sa;
        var den = x * ca + y * sa;
        var t = num / den;
        return (DoubleDouble)a0 + t - t * t * t / 3.0;
    }
}
