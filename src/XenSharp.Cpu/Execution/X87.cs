using System.Runtime.CompilerServices;
using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

[InlineArray(8)]
internal struct FpuRegs { private double _e; }

/// <summary>
/// The x87 FPU. Values are held as binary64 internally (the 80-bit format is produced and consumed
/// at the memory and save-area boundaries), so results carry double precision.
/// </summary>
internal unsafe partial class X86Vcpu
{
    internal FpuRegs St;
    internal int FpuTop;
    internal ushort Fsw, Fcw = 0x37F;
    /// <summary>One bit per physical register: set when it holds a value (the abridged tag).</summary>
    internal byte FpuValid;

    private void InitFpu()
    {
        Fcw = 0x37F; Fsw = 0; FpuTop = 0; FpuValid = 0;
        St = default;
        Mxcsr = 0x1F80;
    }

    private void FpuCheck()
    {
        if ((Cr0 & 0xC) != 0) throw Fault(7);
    }

    private ref double ST(int i) => ref St[(FpuTop + i) & 7];
    private bool StValid(int i) => (FpuValid & (1 << ((FpuTop + i) & 7))) != 0;

    private void FPush(double v)
    {
        FpuTop = (FpuTop - 1) & 7;
        St[FpuTop] = v;
        FpuValid |= (byte)(1 << FpuTop);
    }

    private double FPop()
    {
        double v = St[FpuTop];
        FpuValid &= (byte)~(1 << FpuTop);
        FpuTop = (FpuTop + 1) & 7;
        return v;
    }

    private const ushort C0 = 0x100, C1 = 0x200, C2 = 0x400, C3 = 0x4000;

    private void SetCc(ushort cc) => Fsw = (ushort)((Fsw & ~(C0 | C1 | C2 | C3)) | cc);

    private ushort StatusWord => (ushort)((Fsw & ~0x3800) | (FpuTop << 11));

    private double FRound(double v) => ((Fcw >> 10) & 3) switch
    {
        0 => Math.Round(v, MidpointRounding.ToEven),
        1 => Math.Floor(v),
        2 => Math.Ceiling(v),
        _ => Math.Truncate(v),
    };

    private double ReadFpMem(ulong lin, MemorySize ms) => ms switch
    {
        MemorySize.Float32 => BitConverter.Int32BitsToSingle((int)ReadLin(lin, 4)),
        MemorySize.Float64 => BitConverter.Int64BitsToDouble((long)ReadLin(lin, 8)),
        MemorySize.Float80 => Ext80.ToDouble(ReadLin(lin, 8), (ushort)ReadLin(lin + 8, 2)),
        MemorySize.Int16 => (short)ReadLin(lin, 2),
        MemorySize.Int32 => (int)ReadLin(lin, 4),
        MemorySize.Int64 => (long)ReadLin(lin, 8),
        _ => throw UD(),
    };

    private void WriteIntMem(ulong lin, int size, double v)
    {
        double r = FRound(v);
        ulong bits;
        switch (size)
        {
            case 2: bits = double.IsNaN(r) || r > short.MaxValue || r < short.MinValue ? 0x8000UL : (ushort)(short)r; break;
            case 4: bits = double.IsNaN(r) || r > int.MaxValue || r < int.MinValue ? 0x8000_0000UL : (uint)(int)r; break;
            default: bits = double.IsNaN(r) || r >= 9.2233720368547758e18 || r < long.MinValue ? 0x8000_0000_0000_0000UL : (ulong)(long)r; break;
        }
        WriteLin(lin, size, bits);
    }

    private void Compare(double a, double b, bool flags, bool pop, int pops)
    {
        if (flags)
        {
            ulong f = double.IsNaN(a) || double.IsNaN(b) ? ZF | PF | CF : a < b ? CF : a == b ? ZF : 0;
            SetArith(f);
        }
        else SetCc(double.IsNaN(a) || double.IsNaN(b) ? (ushort)(C0 | C2 | C3) : a < b ? C0 : a == b ? C3 : (ushort)0);
        for (int i = 0; i < pops; i++) FPop();
    }

    private bool TryX87(ref DecodedInsn d)
    {
        var op = d.Op;
        switch (op)
        {
            case Mnemonic.Wait:
                if ((Cr0 & 0xA) == 0xA) throw Fault(7);
                return true;
            case Mnemonic.Fninit: FpuCheck(); Fcw = 0x37F; Fsw = 0; FpuTop = 0; FpuValid = 0; return true;
            case Mnemonic.Fnclex: FpuCheck(); Fsw &= 0x7F00; return true;
            case Mnemonic.Fnstcw: FpuCheck(); WriteLin(MemAddr(ref d), 2, Fcw); return true;
            case Mnemonic.Fldcw: FpuCheck(); Fcw = (ushort)(ReadLin(MemAddr(ref d), 2) | 0x40); return true;
            case Mnemonic.Fnstsw:
                FpuCheck();
                if (d.I.Op0Kind == OpKind.Register) WriteReg(Register.AX, StatusWord);
                else WriteLin(MemAddr(ref d), 2, StatusWord);
                return true;
            case Mnemonic.Fnop: FpuCheck(); return true;
            case Mnemonic.Fincstp: FpuCheck(); FpuTop = (FpuTop + 1) & 7; return true;
            case Mnemonic.Fdecstp: FpuCheck(); FpuTop = (FpuTop - 1) & 7; return true;
            case Mnemonic.Ffree: case Mnemonic.Ffreep:
                FpuCheck();
                FpuValid &= (byte)~(1 << ((FpuTop + (d.I.Op0Register - Register.ST0)) & 7));
                if (op == Mnemonic.Ffreep) FPop();
                return true;
            case Mnemonic.Fld:
            {
                FpuCheck();
                // Loads of 80-bit values (from memory or another register) keep their exact bits.
                ulong mant; ushort se;
                if (d.I.Op0Kind == OpKind.Register) GetRaw80((FpuTop + (d.I.Op0Register - Register.ST0)) & 7, out mant, out se);
                else if (d.I.MemorySize == MemorySize.Float80)
                {
                    ulong lin = MemAddr(ref d);
                    mant = ReadLin(lin, 8); se = (ushort)ReadLin(lin + 8, 2);
                }
                else { FPush(ReadFpMem(MemAddr(ref d), d.I.MemorySize)); return true; }
                FPush(0);
                SetRaw80(FpuTop, mant, se);
                return true;
            }
            case Mnemonic.Fild:
                FpuCheck();
                FPush(ReadFpMem(MemAddr(ref d), d.I.MemorySize));
                return true;
            case Mnemonic.Fld1: FpuCheck(); FPush(1.0); return true;
            case Mnemonic.Fldz: FpuCheck(); FPush(0.0); return true;
            case Mnemonic.Fldpi: FpuCheck(); FPush(Math.PI); return true;
            case Mnemonic.Fldl2e: FpuCheck(); FPush(1.4426950408889634); return true;
            case Mnemonic.Fldl2t: FpuCheck(); FPush(3.3219280948873622); return true;
            case Mnemonic.Fldlg2: FpuCheck(); FPush(0.3010299956639812); return true;
            case Mnemonic.Fldln2: FpuCheck(); FPush(0.6931471805599453); return true;
            case Mnemonic.Fst:
            case Mnemonic.Fstp:
            {
                FpuCheck();
                double v = ST(0);
                if (d.I.Op0Kind == OpKind.Register)
                {
                    GetRaw80(FpuTop, out ulong rm, out ushort rse);
                    SetRaw80((FpuTop + (d.I.Op0Register - Register.ST0)) & 7, rm, rse);
                }
                else
                {
                    ulong lin = MemAddr(ref d);
                    switch (d.I.MemorySize)
                    {
                        case MemorySize.Float32: WriteLin(lin, 4, (uint)BitConverter.SingleToInt32Bits((float)v)); break;
                        case MemorySize.Float64: WriteLin(lin, 8, (ulong)BitConverter.DoubleToInt64Bits(v)); break;
                        default:
                            GetRaw80(FpuTop, out ulong mant, out ushort se);
                            WriteLin(lin, 8, mant); WriteLin(lin + 8, 2, se);
                            break;
                    }
                }
                if (op == Mnemonic.Fstp)
                {
                    if (d.I.Op0Kind == OpKind.Register) FpuValid |= (byte)(1 << ((FpuTop + (d.I.Op0Register - Register.ST0)) & 7));
                    FPop();
                }
                return true;
            }
            case Mnemonic.Fist: case Mnemonic.Fistp: case Mnemonic.Fisttp:
            {
                FpuCheck();
                int size = d.I.MemorySize.GetSize();
                double v = ST(0);
                if (op == Mnemonic.Fisttp) { ushort save = Fcw; Fcw |= 0xC00; WriteIntMem(MemAddr(ref d), size, v); Fcw = save; }
                else WriteIntMem(MemAddr(ref d), size, v);
                if (op != Mnemonic.Fist) FPop();
                return true;
            }
            case Mnemonic.Fxch:
            {
                FpuCheck();
                int i = d.I.OpCount > 1 ? d.I.Op1Register - Register.ST0 : 1;
                (ST(0), ST(i)) = (ST(i), ST(0));
                return true;
            }
            case Mnemonic.Fchs: FpuCheck(); ST(0) = -ST(0); return true;
            case Mnemonic.Fabs: FpuCheck(); ST(0) = Math.Abs(ST(0)); return true;
            case Mnemonic.Fsqrt: FpuCheck(); ST(0) = Math.Sqrt(ST(0)); return true;
            case Mnemonic.Frndint: FpuCheck(); ST(0) = FRound(ST(0)); return true;
            case Mnemonic.Fsin: FpuCheck(); ST(0) = Math.Sin(ST(0)); SetCc(0); return true;
            case Mnemonic.Fcos: FpuCheck(); ST(0) = Math.Cos(ST(0)); SetCc(0); return true;
            case Mnemonic.Fsincos: { FpuCheck(); double v = ST(0); ST(0) = Math.Sin(v); FPush(Math.Cos(v)); SetCc(0); return true; }
            case Mnemonic.Fptan: FpuCheck(); ST(0) = Math.Tan(ST(0)); FPush(1.0); SetCc(0); return true;
            case Mnemonic.Fpatan: { FpuCheck(); double x = ST(0); FPop(); ST(0) = Math.Atan2(ST(0), x); return true; }
            case Mnemonic.F2xm1: FpuCheck(); ST(0) = Math.Pow(2, ST(0)) - 1; return true;
            case Mnemonic.Fyl2x: { FpuCheck(); double x = ST(0); FPop(); ST(0) = ST(0) * Math.Log2(x); return true; }
            case Mnemonic.Fyl2xp1: { FpuCheck(); double x = ST(0); FPop(); ST(0) = ST(0) * Math.Log2(x + 1); return true; }
            case Mnemonic.Fscale: FpuCheck(); ST(0) = Math.ScaleB(ST(0), (int)Math.Clamp(Math.Truncate(ST(1)), -100000, 100000)); return true;
            case Mnemonic.Fxtract:
            {
                FpuCheck();
                double v = ST(0);
                if (v == 0 || double.IsInfinity(v) || double.IsNaN(v)) { FPush(v); return true; }
                int e = Math.ILogB(v);
                ST(0) = e;
                FPush(Math.ScaleB(v, -e));
                return true;
            }
            case Mnemonic.Fprem: case Mnemonic.Fprem1:
            {
                FpuCheck();
                double a = ST(0), b = ST(1);
                double q = op == Mnemonic.Fprem ? Math.Truncate(a / b) : Math.Round(a / b, MidpointRounding.ToEven);
                ST(0) = op == Mnemonic.Fprem ? a % b : Math.IEEERemainder(a, b);
                long qi = double.IsFinite(q) ? (long)Math.Abs(q % 8) : 0;
                SetCc((ushort)(((qi & 4) != 0 ? C0 : 0) | ((qi & 2) != 0 ? C3 : 0) | ((qi & 1) != 0 ? C1 : 0)));
                return true;
            }
            case Mnemonic.Ftst: FpuCheck(); Compare(ST(0), 0.0, false, false, 0); return true;
            case Mnemonic.Fxam:
            {
                FpuCheck();
                double v = ST(0);
                ushort c1 = double.IsNegative(v) ? C1 : (ushort)0;
                ushort cls = !StValid(0) ? (ushort)(C3 | C0) : double.IsNaN(v) ? C0 : double.IsInfinity(v) ? (ushort)(C2 | C0)
                    : v == 0 ? C3 : double.IsSubnormal(v) ? (ushort)(C3 | C2) : C2;
                SetCc((ushort)(c1 | cls));
                return true;
            }
            case Mnemonic.Fcom: case Mnemonic.Fcomp: case Mnemonic.Fucom: case Mnemonic.Fucomp:
            case Mnemonic.Ficom: case Mnemonic.Ficomp:
            {
                FpuCheck();
                double b = d.I.OpCount == 0 ? ST(1)
                    : d.I.GetOpKind(d.I.OpCount - 1) == OpKind.Register ? ST(d.I.GetOpRegister(d.I.OpCount - 1) - Register.ST0)
                    : ReadFpMem(MemAddr(ref d), d.I.MemorySize);
                Compare(ST(0), b, false, false, op is Mnemonic.Fcomp or Mnemonic.Fucomp or Mnemonic.Ficomp ? 1 : 0);
                return true;
            }
            case Mnemonic.Fcompp: case Mnemonic.Fucompp:
                FpuCheck(); Compare(ST(0), ST(1), false, false, 2); return true;
            case Mnemonic.Fcomi: case Mnemonic.Fcomip: case Mnemonic.Fucomi: case Mnemonic.Fucomip:
                FpuCheck();
                Compare(ST(0), ST(d.I.Op1Register - Register.ST0), true, false, op is Mnemonic.Fcomip or Mnemonic.Fucomip ? 1 : 0);
                return true;
            case Mnemonic.Fcmovb: case Mnemonic.Fcmove: case Mnemonic.Fcmovbe: case Mnemonic.Fcmovu:
            case Mnemonic.Fcmovnb: case Mnemonic.Fcmovne: case Mnemonic.Fcmovnbe: case Mnemonic.Fcmovnu:
            {
                FpuCheck();
                bool c = op switch
                {
                    Mnemonic.Fcmovb => (Rflags & CF) != 0,
                    Mnemonic.Fcmove => (Rflags & ZF) != 0,
                    Mnemonic.Fcmovbe => (Rflags & (CF | ZF)) != 0,
                    Mnemonic.Fcmovu => (Rflags & PF) != 0,
                    Mnemonic.Fcmovnb => (Rflags & CF) == 0,
                    Mnemonic.Fcmovne => (Rflags & ZF) == 0,
                    Mnemonic.Fcmovnbe => (Rflags & (CF | ZF)) == 0,
                    _ => (Rflags & PF) == 0,
                };
                if (c) ST(0) = ST(d.I.Op1Register - Register.ST0);
                return true;
            }
        }
        // Two-operand arithmetic.
        int kind = op switch
        {
            Mnemonic.Fadd or Mnemonic.Faddp or Mnemonic.Fiadd => 0,
            Mnemonic.Fmul or Mnemonic.Fmulp or Mnemonic.Fimul => 1,
            Mnemonic.Fsub or Mnemonic.Fsubp or Mnemonic.Fisub => 2,
            Mnemonic.Fsubr or Mnemonic.Fsubrp or Mnemonic.Fisubr => 3,
            Mnemonic.Fdiv or Mnemonic.Fdivp or Mnemonic.Fidiv => 4,
            Mnemonic.Fdivr or Mnemonic.Fdivrp or Mnemonic.Fidivr => 5,
            _ => -1,
        };
        if (kind < 0) return false;
        FpuCheck();
        bool pop = op is Mnemonic.Faddp or Mnemonic.Fmulp or Mnemonic.Fsubp or Mnemonic.Fsubrp or Mnemonic.Fdivp or Mnemonic.Fdivrp;
        int di; double fx, fy;
        if (d.I.OpCount == 1 && d.I.Op0Kind == OpKind.Memory) { di = 0; fx = ST(0); fy = ReadFpMem(MemAddr(ref d), d.I.MemorySize); }
        else if (d.I.OpCount == 0) { di = 1; fx = ST(1); fy = ST(0); }
        else { di = d.I.Op0Register - Register.ST0; fx = ST(di); fy = ST(d.I.Op1Register - Register.ST0); }
        ST(di) = kind switch
        {
            0 => fx + fy,
            1 => fx * fy,
            2 => fx - fy,
            3 => fy - fx,
            4 => fx / fy,
            _ => fy / fx,
        };
        if (pop) FPop();
        return true;
    }
}

/// <summary>Conversions between binary64 and the x87 80-bit extended format.</summary>
internal static class Ext80
{
    public static void FromDouble(double v, out ulong mant, out ushort se)
    {
        ulong bits = (ulong)BitConverter.DoubleToInt64Bits(v);
        ushort sign = (ushort)((bits >> 48) & 0x8000);
        int exp = (int)((bits >> 52) & 0x7FF);
        ulong frac = bits & 0xF_FFFF_FFFF_FFFFUL;
        if (exp == 0)
        {
            if (frac == 0) { mant = 0; se = sign; return; }
            // Subnormal double: normalise into the wider exponent range.
            int shift = System.Numerics.BitOperations.LeadingZeroCount(frac) - 11;
            frac <<= shift;
            exp = 1 - shift;
            mant = (frac << 11) | (1UL << 63);
            se = (ushort)(sign | (exp - 1023 + 16383));
            mant = frac << 11;
            return;
        }
        if (exp == 0x7FF)
        {
            mant = (1UL << 63) | (frac << 11);
            se = (ushort)(sign | 0x7FFF);
            return;
        }
        mant = (1UL << 63) | (frac << 11);
        se = (ushort)(sign | (exp - 1023 + 16383));
    }

    public static double ToDouble(ulong mant, ushort se)
    {
        bool neg = (se & 0x8000) != 0;
        int exp = se & 0x7FFF;
        double r;
        if (exp == 0 && mant == 0) r = 0;
        else if (exp == 0x7FFF) r = (mant << 1) == 0 ? double.PositiveInfinity : double.NaN;
        else r = Math.ScaleB((double)mant, exp - 16383 - 63);
        return neg ? -r : r;
    }
}
