using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Iced.Intel;
using XenSharp.Cpu.Decoding;
using V = System.Runtime.Intrinsics.Vector128<byte>;

namespace XenSharp.Cpu;

/// <summary>SSE/SSE2/SSE3 floating point: packed and scalar arithmetic, compares, conversions.</summary>
internal unsafe partial class X86Vcpu
{
    
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

    /// <summary>Raises the SIMD exception the flags of one instruction call for, before its
    /// destination is written: unmasked pre-computation exceptions (IE, DE, ZE) on any element
    /// stop it before the results are looked at; otherwise every flag is recorded and an
    /// unmasked one among them faults. #XM with CR4.OSXMMEXCPT, #UD without.</summary>
    private void SimdFlags(uint flags)
    {
        if (flags == 0) return;
        uint unmasked = ~(Mxcsr >> 7) & 0x3F;
        uint pre = flags & (SoftFloat.IE | SoftFloat.DE | SoftFloat.ZE);
        if ((pre & unmasked) != 0) { Mxcsr |= pre; throw SimdFault(); }
        Mxcsr |= flags;
        if ((flags & unmasked) != 0) throw SimdFault();
    }

    private GuestFault SimdFault() => (Cr4 & 0x400) != 0 ? Fault(19) : UD();

    /// <summary>One element of ADD/SUB/MUL/DIV/MIN/MAX/SQRT under MXCSR.</summary>
    private ulong FpLane(SoftFloat.Op op, ulong a, ulong b, bool dbl, ref uint flags)
    {
        if (SoftFloat.FastOk(Mxcsr) && SoftFloat.TryHost(op, a, b, dbl, ref flags, out ulong r)) return r;
        return SoftFloat.Arith(op, a, b, dbl, Mxcsr, ref flags);
    }

    private bool TrySseFloat(ref DecodedInsn d)
    {
        SoftFloat.Op op;
        switch (d.Op)
        {
            case Mnemonic.Addps: case Mnemonic.Addpd: case Mnemonic.Addss: case Mnemonic.Addsd: op = SoftFloat.Op.Add; break;
            case Mnemonic.Subps: case Mnemonic.Subpd: case Mnemonic.Subss: case Mnemonic.Subsd: op = SoftFloat.Op.Sub; break;
            case Mnemonic.Mulps: case Mnemonic.Mulpd: case Mnemonic.Mulss: case Mnemonic.Mulsd: op = SoftFloat.Op.Mul; break;
            case Mnemonic.Divps: case Mnemonic.Divpd: case Mnemonic.Divss: case Mnemonic.Divsd: op = SoftFloat.Op.Div; break;
            case Mnemonic.Minps: case Mnemonic.Minpd: case Mnemonic.Minss: case Mnemonic.Minsd: op = SoftFloat.Op.Min; break;
            case Mnemonic.Maxps: case Mnemonic.Maxpd: case Mnemonic.Maxss: case Mnemonic.Maxsd: op = SoftFloat.Op.Max; break;
            case Mnemonic.Sqrtps: case Mnemonic.Sqrtpd: case Mnemonic.Sqrtss: case Mnemonic.Sqrtsd: op = SoftFloat.Op.Sqrt; break;
            case Mnemonic.Rcpps: case Mnemonic.Rcpss: case Mnemonic.Rsqrtps: case Mnemonic.Rsqrtss:
                return Reciprocal(ref d);
            default: return TrySseFloatOther(ref d);
        }
        SseCheck();
        byte shape = s_fpShape[(int)d.Op];
        bool packed = (shape & 1) != 0;
        bool dbl = (shape & 2) != 0;
        var a = Dst(ref d);
        var b = VecOp(ref d, 1, packed && d.I.Op1Kind == OpKind.Memory);
        V r;
        if ((Mxcsr & (SoftFloat.PE | SoftFloat.PM | 0x6000 | SoftFloat.Daz | SoftFloat.Ftz)) == (SoftFloat.PE | SoftFloat.PM) && HostVector(op, packed, dbl, a, b, out r))
        {
            XReg(d.I.Op0Register) = r;
            return true;
        }
        uint fl = 0;
        if (dbl)
        {
            var x = a.AsUInt64(); var y = b.AsUInt64();
            ulong r0 = FpLane(op, x[0], y[0], true, ref fl);
            r = (packed ? Vector128.Create(r0, FpLane(op, x[1], y[1], true, ref fl)) : x.WithElement(0, r0)).AsByte();
        }
        else
        {
            var x = a.AsUInt32(); var y = b.AsUInt32();
            if (packed)
            {
                uint r0 = (uint)FpLane(op, x[0], y[0], false, ref fl), r1 = (uint)FpLane(op, x[1], y[1], false, ref fl);
                uint r2 = (uint)FpLane(op, x[2], y[2], false, ref fl), r3 = (uint)FpLane(op, x[3], y[3], false, ref fl);
                r = Vector128.Create(r0, r1, r2, r3).AsByte();
            }
            else r = x.WithElement(0, (uint)FpLane(op, x[0], y[0], false, ref fl)).AsByte();
        }
        SimdFlags(fl);
        XReg(d.I.Op0Register) = r;
        return true;
    }

    /// <summary>The common case, with the default controls and PE already set and masked: when the operands
    /// and results are normal numbers away from the exponent limits no flag can be raised (PE is
    /// sticky), so the host's vector arithmetic is the whole story. False: take the exact path.</summary>
    private static bool HostVector(SoftFloat.Op op, bool packed, bool dbl, V a, V b, out V r) => dbl
        ? HostVector<double, ulong>(op, packed, a, b, out r)
        : HostVector<float, uint>(op, packed, a, b, out r);

    /// <summary><see cref="HostVector(SoftFloat.Op, bool, bool, V, V, out V)"/> for lanes of
    /// <typeparamref name="T"/> (float or double) whose bits are <typeparamref name="TBits"/>. Each
    /// instantiation is compiled on its own, with the format's constants folded.</summary>
    private static bool HostVector<T, TBits>(SoftFloat.Op op, bool packed, V a, V b, out V r)
        where T : unmanaged, IBinaryFloatingPointIeee754<T>
        where TBits : unmanaged, IBinaryInteger<TBits>, IUnsignedNumber<TBits>
    {
        TBits top = MaxExponent<T, TBits>();
        var x = a.As<byte, T>(); var y = b.As<byte, T>();
        var z = op switch
        {
            SoftFloat.Op.Add => x + y,
            SoftFloat.Op.Sub => x - y,
            SoftFloat.Op.Mul => x * y,
            SoftFloat.Op.Div => x / y,
            SoftFloat.Op.Min => Vector128.Min(x, y),
            SoftFloat.Op.Max => Vector128.Max(x, y),
            _ => Vector128.Sqrt(y),
        };
        var ex = Exponent<T, TBits>(a.As<byte, TBits>());
        var ey = Exponent<T, TBits>(b.As<byte, TBits>());
        var ez = Exponent<T, TBits>(z.As<T, TBits>());
        if (op == SoftFloat.Op.Sqrt) ex = Vector128<TBits>.One;
        // Operands normal (exponent 1..top-1); the result normal and not within a factor of two of
        // the smallest normal (exponent 2..top-1), so that nothing but PE can be raised.
        TBits one = TBits.One, two = one + one;
        var bad = Vector128.GreaterThanOrEqual(ex - Vector128<TBits>.One, Vector128.Create(top - one))
            | Vector128.GreaterThanOrEqual(ey - Vector128<TBits>.One, Vector128.Create(top - one))
            | Vector128.GreaterThanOrEqual(ez - Vector128.Create(two), Vector128.Create(top - two));
        if (packed ? bad != Vector128<TBits>.Zero : bad.ToScalar() != TBits.Zero) { r = default; return false; }
        r = (packed ? z : x.WithElement(0, z.ToScalar())).AsByte();
        return true;
    }

    /// <summary>The biased exponent of infinities and NaNs.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TBits MaxExponent<T, TBits>() where TBits : IBinaryInteger<TBits> =>
        TBits.CreateTruncating(typeof(T) == typeof(double) ? 0x7FF : 0xFF);

    /// <summary>The biased exponent of each lane (literal shift counts, so that the shifts take immediates).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<TBits> Exponent<T, TBits>(Vector128<TBits> bits)
        where TBits : unmanaged, IBinaryInteger<TBits>, IUnsignedNumber<TBits> =>
        (typeof(T) == typeof(double) ? bits >>> 52 : bits >>> 23) & Vector128.Create(MaxExponent<T, TBits>());

    /// <summary>RCPPS/RCPSS/RSQRTPS/RSQRTSS: the host's approximations (the SDM bounds their error only).</summary>
    private bool Reciprocal(ref DecodedInsn d)
    {
        SseCheck();
        bool packed = d.Op is Mnemonic.Rcpps or Mnemonic.Rsqrtps;
        bool rsqrt = d.Op is Mnemonic.Rsqrtps or Mnemonic.Rsqrtss;
        var x = Dst(ref d).AsSingle(); var y = VecOp(ref d, 1, packed && d.I.Op1Kind == OpKind.Memory).AsSingle();
        static float F(bool rsqrt, float v) => rsqrt ? 1f / MathF.Sqrt(v) : 1f / v;
        XReg(d.I.Op0Register) = (packed
            ? Vector128.Create(F(rsqrt, y[0]), F(rsqrt, y[1]), F(rsqrt, y[2]), F(rsqrt, y[3]))
            : x.WithElement(0, F(rsqrt, y[0]))).AsByte();
        return true;
    }

    private int RoundingControl => (int)(Mxcsr >> 13) & 3;

    private bool TrySseFloatOther(ref DecodedInsn d)
    {
        switch (d.Op)
        {
            case Mnemonic.Cmpps: case Mnemonic.Cmppd: case Mnemonic.Cmpss: case Mnemonic.Cmpsd:
            {
                SseCheck();
                int pred = d.I.Immediate8 & 7;
                bool packed = d.Op is Mnemonic.Cmpps or Mnemonic.Cmppd;
                var a = Dst(ref d); var b = VecOp(ref d, 1, packed && d.I.Op1Kind == OpKind.Memory);
                uint fl = 0;
                V r;
                if (d.Op is Mnemonic.Cmppd or Mnemonic.Cmpsd)
                {
                    var x = a.AsUInt64(); var y = b.AsUInt64();
                    ulong m0 = SoftFloat.Compare(pred, x[0], y[0], true, Mxcsr, ref fl) ? ulong.MaxValue : 0;
                    r = packed
                        ? Vector128.Create(m0, SoftFloat.Compare(pred, x[1], y[1], true, Mxcsr, ref fl) ? ulong.MaxValue : 0).AsByte()
                        : x.WithElement(0, m0).AsByte();
                }
                else
                {
                    var x = a.AsUInt32(); var y = b.AsUInt32();
                    var m = x;
                    for (int i = 0; i < (packed ? 4 : 1); i++)
                        m = m.WithElement(i, SoftFloat.Compare(pred, x[i], y[i], false, Mxcsr, ref fl) ? uint.MaxValue : 0);
                    r = m.AsByte();
                }
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r;
                return true;
            }
            case Mnemonic.Comiss: case Mnemonic.Ucomiss: case Mnemonic.Comisd: case Mnemonic.Ucomisd:
            {
                SseCheck();
                var a = Dst(ref d); var b = VecOp(ref d, 1);
                bool dbl = d.Op is Mnemonic.Comisd or Mnemonic.Ucomisd;
                uint fl = 0;
                ulong f = dbl
                    ? SoftFloat.ComiFlags(a.AsUInt64()[0], b.AsUInt64()[0], true, d.Op == Mnemonic.Comisd, Mxcsr, ref fl)
                    : SoftFloat.ComiFlags(a.AsUInt32()[0], b.AsUInt32()[0], false, d.Op == Mnemonic.Comiss, Mxcsr, ref fl);
                SimdFlags(fl);
                SetArith(f);
                return true;
            }
            case Mnemonic.Cvtsi2ss: case Mnemonic.Cvtsi2sd:
            {
                SseCheck();
                int size = d.I.Op1Kind == OpKind.Register ? d.I.Op1Register.GetSize() : d.I.MemorySize.GetSize();
                long v = size == 8 ? (long)ReadOp(ref d, 1, 8) : (int)ReadOp(ref d, 1, 4);
                var a = Dst(ref d);
                uint fl = 0;
                V r = d.Op == Mnemonic.Cvtsi2ss
                    ? a.AsUInt32().WithElement(0, (uint)SoftFloat.FromInt(v, false, Mxcsr, ref fl)).AsByte()
                    : a.AsUInt64().WithElement(0, SoftFloat.FromInt(v, true, Mxcsr, ref fl)).AsByte();
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r;
                return true;
            }
            case Mnemonic.Cvtss2si: case Mnemonic.Cvttss2si: case Mnemonic.Cvtsd2si: case Mnemonic.Cvttsd2si:
            {
                SseCheck();
                var b = VecOp(ref d, 1);
                bool dbl = d.Op is Mnemonic.Cvtsd2si or Mnemonic.Cvttsd2si;
                bool t = d.Op is Mnemonic.Cvttss2si or Mnemonic.Cvttsd2si;
                int size = d.I.Op0Register.GetSize();
                uint fl = 0;
                ulong v = SoftFloat.ToInt(dbl ? b.AsUInt64()[0] : b.AsUInt32()[0], dbl, size, t, Mxcsr, ref fl);
                SimdFlags(fl);
                WriteReg(d.I.Op0Register, v);
                return true;
            }
            case Mnemonic.Cvtss2sd: case Mnemonic.Cvtsd2ss:
            {
                SseCheck();
                var b = VecOp(ref d, 1);
                uint fl = 0;
                V r = d.Op == Mnemonic.Cvtss2sd
                    ? Dst(ref d).AsUInt64().WithElement(0, SoftFloat.Convert(b.AsUInt32()[0], false, Mxcsr, ref fl)).AsByte()
                    : Dst(ref d).AsUInt32().WithElement(0, (uint)SoftFloat.Convert(b.AsUInt64()[0], true, Mxcsr, ref fl)).AsByte();
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r;
                return true;
            }
            case Mnemonic.Cvtdq2ps:
            {
                SseCheck();
                var s = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsInt32();
                uint fl = 0;
                var r = Vector128.Create((uint)SoftFloat.FromInt(s[0], false, Mxcsr, ref fl), (uint)SoftFloat.FromInt(s[1], false, Mxcsr, ref fl),
                    (uint)SoftFloat.FromInt(s[2], false, Mxcsr, ref fl), (uint)SoftFloat.FromInt(s[3], false, Mxcsr, ref fl));
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r.AsByte();
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
                var s = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt32();
                bool t = d.Op == Mnemonic.Cvttps2dq;
                uint fl = 0;
                var r = Vector128.Create((uint)SoftFloat.ToInt(s[0], false, 4, t, Mxcsr, ref fl), (uint)SoftFloat.ToInt(s[1], false, 4, t, Mxcsr, ref fl),
                    (uint)SoftFloat.ToInt(s[2], false, 4, t, Mxcsr, ref fl), (uint)SoftFloat.ToInt(s[3], false, 4, t, Mxcsr, ref fl));
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r.AsByte();
                return true;
            }
            case Mnemonic.Cvtpd2dq: case Mnemonic.Cvttpd2dq:
            {
                SseCheck();
                var s = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt64();
                bool t = d.Op == Mnemonic.Cvttpd2dq;
                uint fl = 0;
                uint r0 = (uint)SoftFloat.ToInt(s[0], true, 4, t, Mxcsr, ref fl), r1 = (uint)SoftFloat.ToInt(s[1], true, 4, t, Mxcsr, ref fl);
                SimdFlags(fl);
                XReg(d.I.Op0Register) = Vector128.Create(r0, r1, 0u, 0u).AsByte();
                return true;
            }
            case Mnemonic.Cvtps2pd:
            {
                SseCheck();
                var s = VecOp(ref d, 1).AsUInt32();
                uint fl = 0;
                var r = Vector128.Create(SoftFloat.Convert(s[0], false, Mxcsr, ref fl), SoftFloat.Convert(s[1], false, Mxcsr, ref fl));
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r.AsByte();
                return true;
            }
            case Mnemonic.Cvtpd2ps:
            {
                SseCheck();
                var s = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt64();
                uint fl = 0;
                var r = Vector128.Create((uint)SoftFloat.Convert(s[0], true, Mxcsr, ref fl), (uint)SoftFloat.Convert(s[1], true, Mxcsr, ref fl), 0u, 0u);
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r.AsByte();
                return true;
            }
            case Mnemonic.Haddps: case Mnemonic.Hsubps:
            {
                SseCheck();
                var a = Dst(ref d).AsUInt32(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt32();
                var op = d.Op == Mnemonic.Haddps ? SoftFloat.Op.Add : SoftFloat.Op.Sub;
                uint fl = 0;
                var r = Vector128.Create((uint)FpLane(op, a[0], a[1], false, ref fl), (uint)FpLane(op, a[2], a[3], false, ref fl),
                    (uint)FpLane(op, b[0], b[1], false, ref fl), (uint)FpLane(op, b[2], b[3], false, ref fl));
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r.AsByte();
                return true;
            }
            case Mnemonic.Haddpd: case Mnemonic.Hsubpd:
            {
                SseCheck();
                var a = Dst(ref d).AsUInt64(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt64();
                var op = d.Op == Mnemonic.Haddpd ? SoftFloat.Op.Add : SoftFloat.Op.Sub;
                uint fl = 0;
                var r = Vector128.Create(FpLane(op, a[0], a[1], true, ref fl), FpLane(op, b[0], b[1], true, ref fl));
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r.AsByte();
                return true;
            }
            case Mnemonic.Addsubps:
            {
                SseCheck();
                var a = Dst(ref d).AsUInt32(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt32();
                uint fl = 0;
                var r = Vector128.Create((uint)FpLane(SoftFloat.Op.Sub, a[0], b[0], false, ref fl), (uint)FpLane(SoftFloat.Op.Add, a[1], b[1], false, ref fl),
                    (uint)FpLane(SoftFloat.Op.Sub, a[2], b[2], false, ref fl), (uint)FpLane(SoftFloat.Op.Add, a[3], b[3], false, ref fl));
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r.AsByte();
                return true;
            }
            case Mnemonic.Addsubpd:
            {
                SseCheck();
                var a = Dst(ref d).AsUInt64(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt64();
                uint fl = 0;
                var r = Vector128.Create(FpLane(SoftFloat.Op.Sub, a[0], b[0], true, ref fl), FpLane(SoftFloat.Op.Add, a[1], b[1], true, ref fl));
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r.AsByte();
                return true;
            }
            case Mnemonic.Roundss: case Mnemonic.Roundsd: case Mnemonic.Roundps: case Mnemonic.Roundpd:
            {
                SseCheck();
                int imm = d.I.Immediate8;
                var a = Dst(ref d); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory && d.Op is Mnemonic.Roundps or Mnemonic.Roundpd);
                int rc = (imm & 4) != 0 ? RoundingControl : imm & 3;
                bool noPe = (imm & 8) != 0;
                uint fl = 0;
                V r;
                switch (d.Op)
                {
                    case Mnemonic.Roundss:
                        r = a.AsUInt32().WithElement(0, (uint)SoftFloat.RoundInt(b.AsUInt32()[0], false, rc, noPe, Mxcsr, ref fl)).AsByte();
                        break;
                    case Mnemonic.Roundsd:
                        r = a.AsUInt64().WithElement(0, SoftFloat.RoundInt(b.AsUInt64()[0], true, rc, noPe, Mxcsr, ref fl)).AsByte();
                        break;
                    case Mnemonic.Roundps:
                    {
                        var s = b.AsUInt32();
                        r = Vector128.Create((uint)SoftFloat.RoundInt(s[0], false, rc, noPe, Mxcsr, ref fl), (uint)SoftFloat.RoundInt(s[1], false, rc, noPe, Mxcsr, ref fl),
                            (uint)SoftFloat.RoundInt(s[2], false, rc, noPe, Mxcsr, ref fl), (uint)SoftFloat.RoundInt(s[3], false, rc, noPe, Mxcsr, ref fl)).AsByte();
                        break;
                    }
                    default:
                    {
                        var s = b.AsUInt64();
                        r = Vector128.Create(SoftFloat.RoundInt(s[0], true, rc, noPe, Mxcsr, ref fl), SoftFloat.RoundInt(s[1], true, rc, noPe, Mxcsr, ref fl)).AsByte();
                        break;
                    }
                }
                SimdFlags(fl);
                XReg(d.I.Op0Register) = r;
                return true;
            }
        }
        return false;
    }
}
