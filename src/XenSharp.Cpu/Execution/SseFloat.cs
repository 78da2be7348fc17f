using System.Runtime.Intrinsics;
using Iced.Intel;
using XenSharp.Cpu.Decoding;
using V = System.Runtime.Intrinsics.Vector128<byte>;

namespace XenSharp.Cpu;

/// <summary>SSE/SSE2/SSE3 floating point: packed and scalar arithmetic, compares, conversions.</summary>
internal unsafe partial class X86Vcpu
{
    private enum FOp { Add, Sub, Mul, Div, Min, Max, Sqrt, Rcp, Rsqrt }

    /// <summary>Per mnemonic: bit 0 packed (..PS/..PD), bit 1 double (..PD/..SD); names end in
    /// ps, pd, ss or sd for the arithmetic group.</summary>
    private static readonly byte[] s_fpShape = BuildFpShape();

    private static byte[] BuildFpShape()
    {
        var all = Enum.GetValues<Mnemonic>();
        int max = 0;
        foreach (var m in all) max = Math.Max(max, (int)m);
        var t = new byte[max + 1];
        foreach (var m in all)
        {
            string n = m.ToString();
            if (n.Length < 3) continue;
            t[(int)m] = (byte)((n[^2] == 'p' ? 1 : 0) | (n[^1] == 'd' ? 2 : 0));
        }
        return t;
    }

    private static float F32(FOp op, float a, float b) => op switch
    {
        FOp.Add => a + b,
        FOp.Sub => a - b,
        FOp.Mul => a * b,
        FOp.Div => a / b,
        FOp.Min => a < b ? a : b,
        FOp.Max => a > b ? a : b,
        FOp.Sqrt => MathF.Sqrt(b),
        FOp.Rcp => 1f / b,
        _ => 1f / MathF.Sqrt(b),
    };

    private static double F64(FOp op, double a, double b) => op switch
    {
        FOp.Add => a + b,
        FOp.Sub => a - b,
        FOp.Mul => a * b,
        FOp.Div => a / b,
        FOp.Min => a < b ? a : b,
        FOp.Max => a > b ? a : b,
        _ => Math.Sqrt(b),
    };

    private static bool CmpPred(int pred, double a, double b)
    {
        bool un = double.IsNaN(a) || double.IsNaN(b);
        return (pred & 7) switch
        {
            0 => a == b,
            1 => a < b,
            2 => a <= b,
            3 => un,
            4 => !(a == b),
            5 => !(a < b),
            6 => !(a <= b),
            _ => !un,
        };
    }

    private double RoundMx(double v) => ((Mxcsr >> 13) & 3) switch
    {
        0 => Math.Round(v, MidpointRounding.ToEven),
        1 => Math.Floor(v),
        2 => Math.Ceiling(v),
        _ => Math.Truncate(v),
    };

    private static ulong ToInt(double v, int size)
    {
        if (size == 4)
        {
            if (double.IsNaN(v) || v >= 2147483648.0 || v < -2147483648.0) return 0x8000_0000;
            return (uint)(int)v;
        }
        if (double.IsNaN(v) || v >= 9223372036854775808.0 || v < -9223372036854775808.0) return 0x8000_0000_0000_0000;
        return (ulong)(long)v;
    }

    private bool TrySseFloat(ref DecodedInsn d)
    {
        FOp op;
        switch (d.Op)
        {
            case Mnemonic.Addps: case Mnemonic.Addpd: case Mnemonic.Addss: case Mnemonic.Addsd: op = FOp.Add; break;
            case Mnemonic.Subps: case Mnemonic.Subpd: case Mnemonic.Subss: case Mnemonic.Subsd: op = FOp.Sub; break;
            case Mnemonic.Mulps: case Mnemonic.Mulpd: case Mnemonic.Mulss: case Mnemonic.Mulsd: op = FOp.Mul; break;
            case Mnemonic.Divps: case Mnemonic.Divpd: case Mnemonic.Divss: case Mnemonic.Divsd: op = FOp.Div; break;
            case Mnemonic.Minps: case Mnemonic.Minpd: case Mnemonic.Minss: case Mnemonic.Minsd: op = FOp.Min; break;
            case Mnemonic.Maxps: case Mnemonic.Maxpd: case Mnemonic.Maxss: case Mnemonic.Maxsd: op = FOp.Max; break;
            case Mnemonic.Sqrtps: case Mnemonic.Sqrtpd: case Mnemonic.Sqrtss: case Mnemonic.Sqrtsd: op = FOp.Sqrt; break;
            case Mnemonic.Rcpps: case Mnemonic.Rcpss: op = FOp.Rcp; break;
            case Mnemonic.Rsqrtps: case Mnemonic.Rsqrtss: op = FOp.Rsqrt; break;
            default: return TrySseFloatOther(ref d);
        }
        SseCheck();
        byte shape = s_fpShape[(int)d.Op];
        bool packed = (shape & 1) != 0;
        bool dbl = (shape & 2) != 0;
        var a = Dst(ref d);
        var b = VecOp(ref d, 1, packed && d.I.Op1Kind == OpKind.Memory);
        V r;
        if (dbl)
        {
            var x = a.AsDouble(); var y = b.AsDouble();
            r = packed
                ? Vector128.Create(F64(op, x[0], y[0]), F64(op, x[1], y[1])).AsByte()
                : x.WithElement(0, F64(op, x[0], y[0])).AsByte();
        }
        else
        {
            var x = a.AsSingle(); var y = b.AsSingle();
            r = packed
                ? Vector128.Create(F32(op, x[0], y[0]), F32(op, x[1], y[1]), F32(op, x[2], y[2]), F32(op, x[3], y[3])).AsByte()
                : x.WithElement(0, F32(op, x[0], y[0])).AsByte();
        }
        XReg(d.I.Op0Register) = r;
        return true;
    }

    private bool TrySseFloatOther(ref DecodedInsn d)
    {
        switch (d.Op)
        {
            case Mnemonic.Cmpps: case Mnemonic.Cmppd: case Mnemonic.Cmpss: case Mnemonic.Cmpsd:
            {
                SseCheck();
                int pred = d.I.Immediate8;
                bool packed = d.Op is Mnemonic.Cmpps or Mnemonic.Cmppd;
                var a = Dst(ref d); var b = VecOp(ref d, 1, packed && d.I.Op1Kind == OpKind.Memory);
                V r;
                if (d.Op is Mnemonic.Cmppd or Mnemonic.Cmpsd)
                {
                    var x = a.AsDouble(); var y = b.AsDouble();
                    ulong m0 = CmpPred(pred, x[0], y[0]) ? ulong.MaxValue : 0, m1 = CmpPred(pred, x[1], y[1]) ? ulong.MaxValue : 0;
                    r = packed ? Vector128.Create(m0, m1).AsByte() : a.AsUInt64().WithElement(0, m0).AsByte();
                }
                else
                {
                    var x = a.AsSingle(); var y = b.AsSingle();
                    Span<uint> m = stackalloc uint[4];
                    for (int i = 0; i < 4; i++) m[i] = CmpPred(pred, x[i], y[i]) ? uint.MaxValue : 0;
                    r = packed ? Vector128.Create((ReadOnlySpan<uint>)m).AsByte() : a.AsUInt32().WithElement(0, m[0]).AsByte();
                }
                XReg(d.I.Op0Register) = r;
                return true;
            }
            case Mnemonic.Comiss: case Mnemonic.Ucomiss: case Mnemonic.Comisd: case Mnemonic.Ucomisd:
            {
                SseCheck();
                double x, y;
                var a = Dst(ref d); var b = VecOp(ref d, 1);
                if (d.Op is Mnemonic.Comiss or Mnemonic.Ucomiss) { x = a.AsSingle()[0]; y = b.AsSingle()[0]; }
                else { x = a.AsDouble()[0]; y = b.AsDouble()[0]; }
                ulong f = double.IsNaN(x) || double.IsNaN(y) ? ZF | PF | CF : x < y ? CF : x == y ? ZF : 0;
                SetArith(f);
                return true;
            }
            case Mnemonic.Cvtsi2ss: case Mnemonic.Cvtsi2sd:
            {
                SseCheck();
                int size = d.I.Op1Kind == OpKind.Register ? d.I.Op1Register.GetSize() : d.I.MemorySize.GetSize();
                long v = size == 8 ? (long)ReadOp(ref d, 1, 8) : (int)ReadOp(ref d, 1, 4);
                var a = Dst(ref d);
                XReg(d.I.Op0Register) = d.Op == Mnemonic.Cvtsi2ss ? a.AsSingle().WithElement(0, (float)v).AsByte() : a.AsDouble().WithElement(0, (double)v).AsByte();
                return true;
            }
            case Mnemonic.Cvtss2si: case Mnemonic.Cvttss2si: case Mnemonic.Cvtsd2si: case Mnemonic.Cvttsd2si:
            {
                SseCheck();
                var b = VecOp(ref d, 1);
                double v = d.Op is Mnemonic.Cvtss2si or Mnemonic.Cvttss2si ? b.AsSingle()[0] : b.AsDouble()[0];
                v = d.Op is Mnemonic.Cvttss2si or Mnemonic.Cvttsd2si ? Math.Truncate(v) : RoundMx(v);
                int size = d.I.Op0Register.GetSize();
                WriteReg(d.I.Op0Register, ToInt(v, size));
                return true;
            }
            case Mnemonic.Cvtss2sd:
            {
                SseCheck();
                float v = VecOp(ref d, 1).AsSingle()[0];
                XReg(d.I.Op0Register) = Dst(ref d).AsDouble().WithElement(0, (double)v).AsByte();
                return true;
            }
            case Mnemonic.Cvtsd2ss:
            {
                SseCheck();
                double v = VecOp(ref d, 1).AsDouble()[0];
                XReg(d.I.Op0Register) = Dst(ref d).AsSingle().WithElement(0, (float)v).AsByte();
                return true;
            }
            case Mnemonic.Cvtdq2ps:
            {
                SseCheck();
                var s = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsInt32();
                XReg(d.I.Op0Register) = Vector128.Create((float)s[0], s[1], s[2], s[3]).AsByte();
                return true;
            }
            case Mnemonic.Cvtdq2pd:
            {
                SseCheck();
                var s = VecOp(ref d, 1).AsInt32();
                XReg(d.I.Op0Register) = Vector128.Create((double)s[0], s[1]).AsByte();
                return true;
            }
            case Mnemonic.Cvtps2dq: case Mnemonic.Cvttps2dq:
            {
                SseCheck();
                var s = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsSingle();
                bool t = d.Op == Mnemonic.Cvttps2dq;
                Span<uint> r = stackalloc uint[4];
                for (int i = 0; i < 4; i++) r[i] = (uint)ToInt(t ? Math.Truncate(s[i]) : RoundMx(s[i]), 4);
                XReg(d.I.Op0Register) = Vector128.Create((ReadOnlySpan<uint>)r).AsByte();
                return true;
            }
            case Mnemonic.Cvtpd2dq: case Mnemonic.Cvttpd2dq:
            {
                SseCheck();
                var s = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsDouble();
                bool t = d.Op == Mnemonic.Cvttpd2dq;
                uint r0 = (uint)ToInt(t ? Math.Truncate(s[0]) : RoundMx(s[0]), 4), r1 = (uint)ToInt(t ? Math.Truncate(s[1]) : RoundMx(s[1]), 4);
                XReg(d.I.Op0Register) = Vector128.Create(r0, r1, 0u, 0u).AsByte();
                return true;
            }
            case Mnemonic.Cvtps2pd:
            {
                SseCheck();
                var s = VecOp(ref d, 1).AsSingle();
                XReg(d.I.Op0Register) = Vector128.Create((double)s[0], s[1]).AsByte();
                return true;
            }
            case Mnemonic.Cvtpd2ps:
            {
                SseCheck();
                var s = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsDouble();
                XReg(d.I.Op0Register) = Vector128.Create((float)s[0], (float)s[1], 0f, 0f).AsByte();
                return true;
            }
            case Mnemonic.Haddps: case Mnemonic.Hsubps:
            {
                SseCheck();
                var a = Dst(ref d).AsSingle(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsSingle();
                bool add = d.Op == Mnemonic.Haddps;
                XReg(d.I.Op0Register) = (add
                    ? Vector128.Create(a[0] + a[1], a[2] + a[3], b[0] + b[1], b[2] + b[3])
                    : Vector128.Create(a[0] - a[1], a[2] - a[3], b[0] - b[1], b[2] - b[3])).AsByte();
                return true;
            }
            case Mnemonic.Haddpd: case Mnemonic.Hsubpd:
            {
                SseCheck();
                var a = Dst(ref d).AsDouble(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsDouble();
                bool add = d.Op == Mnemonic.Haddpd;
                XReg(d.I.Op0Register) = (add ? Vector128.Create(a[0] + a[1], b[0] + b[1]) : Vector128.Create(a[0] - a[1], b[0] - b[1])).AsByte();
                return true;
            }
            case Mnemonic.Addsubps:
            {
                SseCheck();
                var a = Dst(ref d).AsSingle(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsSingle();
                XReg(d.I.Op0Register) = Vector128.Create(a[0] - b[0], a[1] + b[1], a[2] - b[2], a[3] + b[3]).AsByte();
                return true;
            }
            case Mnemonic.Addsubpd:
            {
                SseCheck();
                var a = Dst(ref d).AsDouble(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsDouble();
                XReg(d.I.Op0Register) = Vector128.Create(a[0] - b[0], a[1] + b[1]).AsByte();
                return true;
            }
            case Mnemonic.Roundss: case Mnemonic.Roundsd: case Mnemonic.Roundps: case Mnemonic.Roundpd:
            {
                SseCheck();
                int imm = d.I.Immediate8;
                var a = Dst(ref d); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory && d.Op is Mnemonic.Roundps or Mnemonic.Roundpd);
                Func<double, double> rnd = (imm & 4) != 0 ? RoundMx : (imm & 3) switch
                {
                    0 => static v => Math.Round(v, MidpointRounding.ToEven),
                    1 => Math.Floor,
                    2 => Math.Ceiling,
                    _ => Math.Truncate,
                };
                V r = d.Op switch
                {
                    Mnemonic.Roundss => a.AsSingle().WithElement(0, (float)rnd(b.AsSingle()[0])).AsByte(),
                    Mnemonic.Roundsd => a.AsDouble().WithElement(0, rnd(b.AsDouble()[0])).AsByte(),
                    Mnemonic.Roundps => Vector128.Create((float)rnd(b.AsSingle()[0]), (float)rnd(b.AsSingle()[1]), (float)rnd(b.AsSingle()[2]), (float)rnd(b.AsSingle()[3])).AsByte(),
                    _ => Vector128.Create(rnd(b.AsDouble()[0]), rnd(b.AsDouble()[1])).AsByte(),
                };
                XReg(d.I.Op0Register) = r;
                return true;
            }
        }
        return false;
    }
}
