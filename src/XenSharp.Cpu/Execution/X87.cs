using System.Runtime.CompilerServices;
using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

[InlineArray(8)]
internal struct FpuRegs { private double _e; }

/// <summary>
/// The x87 FPU. Registers hold exact 80-bit values (the MMX aliasing storage of Mmx.cs, reached
/// through GetRaw80/SetRaw80) and all arithmetic is the 80-bit soft-float of Float80.cs under the
/// control word's rounding and precision control, with the status word's exception flags, C0-C3,
/// stack faults and TOP, and #MF for unmasked exceptions at the next waiting instruction.
/// </summary>
internal unsafe partial class X86Vcpu
{
    /// <summary>A binary64 image of each physical register, kept by SetRaw80 (Mmx.cs) beside the exact bits.</summary>
    internal FpuRegs St;
    internal int FpuTop;
    internal ushort Fsw, Fcw = 0x37F;
    /// <summary>One bit per physical register: set when it holds a value (the abridged tag).</summary>
    internal byte FpuValid;

    private const ushort C0 = 0x100, C1 = 0x200, C2 = 0x400, C3 = 0x4000;
    private const ushort FswEs = 0x80, FswB = 0x8000;

    private void InitFpu()
    {
        Fcw = 0x37F; Fsw = 0; FpuTop = 0; FpuValid = 0;
        ClearFpuRegs();
        Mxcsr = 0x1F80;
    }

    /// <summary>All eight registers +0 (FNINIT leaves them alone; reset and XRSTOR's init do this).</summary>
    private void ClearFpuRegs()
    {
        for (int i = 0; i < 8; i++) SetRaw80(i, 0, 0);
    }

    private void FpuCheck()
    {
        if ((Cr0 & 0xC) != 0) throw Fault(7);
    }

    /// <summary>A waiting x87 instruction: #NM, then #MF when an unmasked exception is pending and
    /// CR0.NE is set (with NE clear the error would go to the external FERR# line, which no guest
    /// of this engine has).</summary>
    private FpStatus FpBegin(bool precisionControl = false)
    {
        if ((Cr0 & 0xC) != 0) throw Fault(7);
        if ((Fsw & FswEs) != 0 && (Cr0 & 0x20) != 0) throw Fault(16);
        return new FpStatus(Fcw, precisionControl);
    }

    /// <summary>Merges an operation's flags into FSW and sets C1 from its rounding (or stack fault).
    /// Returns false when an unmasked IE, ZE or DE forbids writing the result.</summary>
    private bool FpEnd(in FpStatus s, bool setC1 = true, int blocking = FpEx.IE | FpEx.ZE | FpEx.DE, bool memory = false)
    {
        int f = s.Flags & 0x7F;
        int unmasked = f & ~Fcw & 0x3F;
        // An unmasked invalid, zero-divide or denormal exception stops the operation before a
        // result exists: only those flags (and the stack fault) are reported, and C1 only says
        // whether a stack fault was an overflow.
        bool blocked = (unmasked & blocking) != 0;
        bool up = s.Up;
        if (blocked)
        {
            f &= FpEx.IE | FpEx.ZE | FpEx.DE | FpEx.SF;
            up &= (f & FpEx.SF) != 0;
        }
        else if (memory && (unmasked & (FpEx.OE | FpEx.UE)) != 0)
        {
            // Nothing is stored: no precision exception, no rounding direction.
            f &= ~FpEx.PE;
            up = false;
        }
        ushort fsw = (ushort)(Fsw | f);
        if (setC1 || (blocked && (f & FpEx.SF) != 0)) fsw = (ushort)(up ? fsw | C1 : fsw & ~C1);
        if (unmasked != 0) fsw |= FswEs | FswB;
        Fsw = fsw;
        return !blocked;
    }

    /// <summary>Whether a result may be stored: no unmasked IE, ZE or DE (and, for memory
    /// destinations, no unmasked OE or UE). Stores check this, write, then commit with FpEnd, so
    /// that a faulting write leaves FSW as it was.</summary>
    private bool FpAllowed(in FpStatus s, bool memory)
    {
        int unmasked = s.Flags & ~Fcw & 0x3F;
        int blocking = FpEx.IE | FpEx.ZE | FpEx.DE | (memory ? FpEx.OE | FpEx.UE : 0);
        return (unmasked & blocking) == 0;
    }

    /// <summary>A store the x87 decided not to make still checks that the destination is writable:
    /// the page fault comes before the numeric exception.</summary>
    private void ProbeStore(ulong lin, int size)
    {
        Translate(lin, Access.Write, Cpl == 3);
        if ((lin & 0xFFF) + (ulong)size > 0x1000) Translate(lin + (ulong)size - 1, Access.Write, Cpl == 3);
    }

    /// <summary>ES and B follow the pending exceptions against the mask (after FLDCW, FLDENV, ...).</summary>
    private void FpRecomputeSummary()
    {
        if ((Fsw & ~Fcw & 0x3F) != 0) Fsw |= FswEs | FswB;
        else Fsw &= unchecked((ushort)~(FswEs | FswB));
    }

    private int Phys(int i) => (FpuTop + i) & 7;

    private Float80 Reg(int i)
    {
        GetRaw80((FpuTop + i) & 7, out ulong m, out ushort se);
        return new Float80(m, se);
    }

    private void SetReg(int i, Float80 v) => SetRaw80((FpuTop + i) & 7, v.Mant, v.Se);

    private bool StValid(int i) => (FpuValid & (1 << ((FpuTop + i) & 7))) != 0;

    /// <summary>ST(i), or a stack underflow (IE, SF, C1 = 0) and the indefinite when it is empty.</summary>
    private bool Fetch(ref FpStatus s, int i, out Float80 v)
    {
        if (StValid(i)) { v = Reg(i); return true; }
        s.Flags |= FpEx.IE | FpEx.SF;
        s.Up = false;
        v = Float80.Indefinite;
        return false;
    }

    /// <summary>Pushes a value; a full register below TOP is a stack overflow (IE, SF, C1 = 1) that
    /// pushes the indefinite when IE is masked and changes nothing otherwise.</summary>
    private void FPush(ref FpStatus s, Float80 v)
    {
        int t = (FpuTop - 1) & 7;
        if ((FpuValid & (1 << t)) != 0)
        {
            s.Flags |= FpEx.IE | FpEx.SF;
            s.Up = true;
            if ((Fcw & 1) == 0) return;
            v = Float80.Indefinite;
        }
        FpuTop = t;
        SetRaw80(t, v.Mant, v.Se);
        FpuValid |= (byte)(1 << t);
    }

    private void FPop()
    {
        FpuValid &= (byte)~(1 << FpuTop);
        FpuTop = (FpuTop + 1) & 7;
    }

    private void SetReg(int i, Float80 v, bool valid)
    {
        SetReg(i, v);
        if (valid) FpuValid |= (byte)(1 << Phys(i));
    }

    private void SetCc(ushort cc) => Fsw = (ushort)((Fsw & ~(C0 | C1 | C2 | C3)) | cc);

    private ushort StatusWord => (ushort)((Fsw & ~0x3800) | (FpuTop << 11));

    /// <summary>A memory operand as a register value; binary32/64 denormals report DE through <paramref name="denormal"/>.</summary>
    private Float80 ReadFpMem(ulong lin, MemorySize ms, out bool denormal)
    {
        denormal = false;
        switch (ms)
        {
            case MemorySize.Float32: return X87Math.FromBinary(ReadLin(lin, 4), 24, 8, out denormal);
            case MemorySize.Float64: return X87Math.FromBinary(ReadLin(lin, 8), 53, 11, out denormal);
            case MemorySize.Float80: return new Float80(ReadLin(lin, 8), (ushort)ReadLin(lin + 8, 2));
            case MemorySize.Int16: return X87Math.FromInt((short)ReadLin(lin, 2));
            case MemorySize.Int32: return X87Math.FromInt((int)ReadLin(lin, 4));
            case MemorySize.Int64: return X87Math.FromInt((long)ReadLin(lin, 8));
            default: throw UD();
        }
    }

    private static bool IsNaNOrUnsupported(Float80 v) => v.IsNaN || v.Class == FpClass.Unsupported;

    private void CompareResult(int r, bool eflags)
    {
        if (eflags)
        {
            ulong f = r switch { 2 => ZF | PF | CF, -1 => CF, 0 => ZF, _ => 0 };
            SetArith(f);
        }
        else SetCc(r switch { 2 => (ushort)(C0 | C2 | C3), -1 => C0, 0 => C3, _ => (ushort)0 });
    }

    private bool TryX87(ref DecodedInsn d)
    {
        var op = d.Op;
        switch (op)
        {
            case Mnemonic.Wait:
                if ((Cr0 & 0xA) == 0xA) throw Fault(7);
                if ((Fsw & FswEs) != 0 && (Cr0 & 0x20) != 0) throw Fault(16);
                return true;
            case Mnemonic.Fninit: FpuCheck(); Fcw = 0x37F; Fsw = 0; FpuTop = 0; FpuValid = 0; return true;
            case Mnemonic.Fnclex: FpuCheck(); Fsw &= 0x7F00; return true;
            case Mnemonic.Fnstcw: FpuCheck(); WriteLin(MemAddr(ref d), 2, Fcw); return true;
            case Mnemonic.Fldcw:
            {
                FpBegin();
                Fcw = (ushort)(ReadLin(MemAddr(ref d), 2) | 0x40);
                FpRecomputeSummary();
                return true;
            }
            case Mnemonic.Fnstsw:
                FpuCheck();
                if (d.I.Op0Kind == OpKind.Register) WriteReg(Register.AX, StatusWord);
                else WriteLin(MemAddr(ref d), 2, StatusWord);
                return true;
            case Mnemonic.Fnop: FpBegin(); return true;
            case Mnemonic.Fincstp: FpBegin(); FpuTop = (FpuTop + 1) & 7; Fsw &= unchecked((ushort)~C1); return true;
            case Mnemonic.Fdecstp: FpBegin(); FpuTop = (FpuTop - 1) & 7; Fsw &= unchecked((ushort)~C1); return true;
            case Mnemonic.Ffree: case Mnemonic.Ffreep:
                FpBegin();
                FpuValid &= (byte)~(1 << Phys(d.I.Op0Register - Register.ST0));
                Fsw &= unchecked((ushort)~C1);
                if (op == Mnemonic.Ffreep) FPop();
                return true;
            case Mnemonic.Fld: ExecFld(ref d); return true;
            case Mnemonic.Fild:
            {
                var s = FpBegin();
                var v = ReadFpMem(MemAddr(ref d), d.I.MemorySize, out _);
                FPush(ref s, v);
                FpEnd(s);
                return true;
            }
            case Mnemonic.Fbld:
            {
                var s = FpBegin();
                ulong lin = MemAddr(ref d);
                ulong lo = ReadLin(lin, 8);
                ulong hi = ReadLin(lin + 8, 2);
                long v = 0;
                for (int i = 8; i >= 0; i--)
                {
                    byte b = (byte)((i == 8 ? hi : lo >> (8 * i)) & 0xFF);
                    v = v * 100 + (b >> 4) * 10 + (b & 15);
                }
                var f = X87Math.FromInt(v);
                if ((hi & 0x8000) != 0) f = f.Negate();
                FPush(ref s, f);
                FpEnd(s);
                return true;
            }
            case Mnemonic.Fld1: return LoadConstant(Float80.One, 0);
            case Mnemonic.Fldz: return LoadConstant(Float80.Zero(false), 0);
            // The constants' significands with the two bits after bit 63, rounded by RC.
            case Mnemonic.Fldpi: return LoadConstant(new Float80(0xC90FDAA22168C234, 0x4000), 0b11);
            case Mnemonic.Fldl2e: return LoadConstant(new Float80(0xB8AA3B295C17F0BB, 0x3FFF), 0b11);
            case Mnemonic.Fldl2t: return LoadConstant(new Float80(0xD49A784BCD1B8AFE, 0x4000), 0b01);
            case Mnemonic.Fldlg2: return LoadConstant(new Float80(0x9A209A84FBCFF798, 0x3FFD), 0b11);
            case Mnemonic.Fldln2: return LoadConstant(new Float80(0xB17217F7D1CF79AB, 0x3FFE), 0b11);
            case Mnemonic.Fst: case Mnemonic.Fstp: ExecFst(ref d); return true;
            case Mnemonic.Fist: case Mnemonic.Fistp: case Mnemonic.Fisttp:
            {
                var s = FpBegin();
                ulong lin = MemAddr(ref d);
                int size = d.I.MemorySize.GetSize();
                if (op == Mnemonic.Fisttp) s.Rc = 3;
                ulong bits = Fetch(ref s, 0, out var v) ? X87Math.ToInt(ref s, v, size * 8) : 1UL << (size * 8 - 1);
                if ((s.Flags & FpEx.IE) != 0) s.Up = (s.Flags & FpEx.SF) != 0 && s.Up;
                if (FpAllowed(s, true)) WriteLin(lin, size, bits);
                else ProbeStore(lin, size);
                if (!FpEnd(s)) return true;
                if (op != Mnemonic.Fist) FPop();
                return true;
            }
            case Mnemonic.Fbstp:
            {
                var s = FpBegin();
                ulong lin = MemAddr(ref d);
                ulong lo = 0xC000_0000_0000_0000, hi = 0xFFFF; // the packed BCD indefinite
                if (Fetch(ref s, 0, out var v))
                {
                    ulong m = X87Math.ToInt(ref s, v, 64);
                    long iv = (long)m;
                    ulong mag = iv < 0 ? 0 - m : m;
                    if ((s.Flags & FpEx.IE) == 0 && mag < 1_000_000_000_000_000_000UL)
                    {
                        lo = 0; hi = v.Sign ? 0x8000UL : 0;
                        for (int i = 0; i < 9; i++)
                        {
                            ulong b = (mag % 10) | ((mag / 10 % 10) << 4);
                            mag /= 100;
                            if (i < 8) lo |= b << (8 * i); else hi |= b;
                        }
                    }
                    else if ((s.Flags & FpEx.IE) == 0) { s.Flags |= FpEx.IE; s.Flags &= ~FpEx.PE; }
                    if ((s.Flags & FpEx.IE) != 0) s.Up = false;
                }
                if (FpAllowed(s, true)) { WriteLin(lin, 8, lo); WriteLin(lin + 8, 2, hi); }
                else ProbeStore(lin, 10);
                if (!FpEnd(s)) return true;
                FPop();
                return true;
            }
            case Mnemonic.Fxch:
            {
                var s = FpBegin();
                int i = d.I.OpCount > 1 ? d.I.Op1Register - Register.ST0 : 1;
                Fetch(ref s, 0, out var a);
                Fetch(ref s, i, out var b);
                if (!FpEnd(s)) return true;
                SetReg(0, b, true);
                SetReg(i, a, true);
                return true;
            }
            case Mnemonic.Fchs: case Mnemonic.Fabs:
            {
                var s = FpBegin();
                if (Fetch(ref s, 0, out var v)) v = op == Mnemonic.Fchs ? v.Negate() : v.Abs();
                if (FpEnd(s)) SetReg(0, v, true);
                return true;
            }
            case Mnemonic.Fsqrt: Unary(X87Op.Sqrt, true); return true;
            case Mnemonic.Frndint: Unary(X87Op.RoundInt, false); return true;
            case Mnemonic.Fsin: Unary(X87Op.Sin, false); return true;
            case Mnemonic.Fcos: Unary(X87Op.Cos, false); return true;
            case Mnemonic.F2xm1: Unary(X87Op.Exp2m1, false); return true;
            case Mnemonic.Fsincos: case Mnemonic.Fptan: ExecSinCosTan(op == Mnemonic.Fptan); return true;
            case Mnemonic.Fpatan: case Mnemonic.Fyl2x: case Mnemonic.Fyl2xp1:
            {
                var s = FpBegin();
                bool ok = Fetch(ref s, 0, out var x) & Fetch(ref s, 1, out var y);
                Float80 r = ok ? op switch
                {
                    Mnemonic.Fpatan => X87Transcendental.Atan2(ref s, y, x),
                    Mnemonic.Fyl2x => X87Transcendental.YLog2X(ref s, y, x),
                    _ => X87Transcendental.YLog2XP1(ref s, y, x),
                } : Float80.Indefinite;
                if (!FpEnd(s)) return true;
                SetReg(1, r, true);
                FPop();
                return true;
            }
            case Mnemonic.Fscale:
            {
                var s = FpBegin();
                bool ok = Fetch(ref s, 0, out var a) & Fetch(ref s, 1, out var b);
                var r = ok ? X87Math.Scale(ref s, a, b) : Float80.Indefinite;
                if (FpEnd(s)) SetReg(0, r, true);
                return true;
            }
            case Mnemonic.Fxtract:
            {
                var s = FpBegin();
                if (!Fetch(ref s, 0, out var v))
                {
                    if (!FpEnd(s)) return true;
                    SetReg(0, Float80.Indefinite, true);
                    FPush(ref s, Float80.Indefinite);
                    FpEnd(s);
                    return true;
                }
                if (StValid(-1))
                {
                    // Stack overflow: masked, both ST(0) and the pushed register become indefinite.
                    s.Flags |= FpEx.IE | FpEx.SF; s.Up = true;
                    if (!FpEnd(s)) return true;
                    SetReg(0, Float80.Indefinite, true);
                    FpuValid &= (byte)~(1 << Phys(-1));
                    FPush(ref s, Float80.Indefinite);
                    return true;
                }
                X87Math.Extract(ref s, v, out var e, out var sig);
                if (!FpEnd(s)) return true;
                SetReg(0, e, true);
                FPush(ref s, sig);
                return true;
            }
            case Mnemonic.Fprem: case Mnemonic.Fprem1:
            {
                var s = FpBegin();
                int q = 0; bool partial = false;
                bool ok = Fetch(ref s, 0, out var a) & Fetch(ref s, 1, out var b);
                var r = ok ? X87Math.Remainder(ref s, a, b, op == Mnemonic.Fprem1, out q, out partial) : Float80.Indefinite;
                if (!FpEnd(s, false)) { SetCc(0); return true; }
                SetReg(0, r, true);
                // A partial remainder reports only C2; a complete one the quotient's low bits.
                if (partial) SetCc(C2);
                else if (ok && (s.Flags & FpEx.IE) == 0)
                    SetCc((ushort)(((q & 4) != 0 ? C0 : 0) | ((q & 2) != 0 ? C3 : 0) | ((q & 1) != 0 ? C1 : 0) | (partial ? C2 : 0)));
                else SetCc(0);
                return true;
            }
            case Mnemonic.Ftst:
            {
                var s = FpBegin();
                int r = Fetch(ref s, 0, out var a) ? X87Math.Compare(ref s, a, Float80.Zero(false), false) : 2;
                FpEnd(s);
                CompareResult(r, false);
                return true;
            }
            case Mnemonic.Fxam:
            {
                var s = FpBegin();
                var v = Reg(0);
                ushort c1 = v.Sign ? C1 : (ushort)0;
                ushort cls = !StValid(0) ? (ushort)(C3 | C0) : (ushort)(v.Class switch
                {
                    FpClass.Unsupported => (ushort)0,
                    FpClass.QNaN or FpClass.SNaN => C0,
                    FpClass.Normal => C2,
                    FpClass.Infinity => (ushort)(C2 | C0),
                    FpClass.Zero => C3,
                    _ => (ushort)(C3 | C2),
                });
                SetCc((ushort)(c1 | cls));
                return true;
            }
            case Mnemonic.Fcom: case Mnemonic.Fcomp: case Mnemonic.Fucom: case Mnemonic.Fucomp:
            case Mnemonic.Ficom: case Mnemonic.Ficomp:
            {
                var s = FpBegin();
                Float80 b;
                bool ok = true, den = false;
                if (d.I.OpCount == 0) ok = Fetch(ref s, 1, out b);
                else if (d.I.GetOpKind(d.I.OpCount - 1) == OpKind.Register) ok = Fetch(ref s, d.I.GetOpRegister(d.I.OpCount - 1) - Register.ST0, out b);
                else b = ReadFpMem(MemAddr(ref d), d.I.MemorySize, out den);
                ok &= Fetch(ref s, 0, out var a);
                int r = 2;
                if (ok)
                {
                    r = X87Math.Compare(ref s, a, b, op is Mnemonic.Fucom or Mnemonic.Fucomp);
                    if (den && r != 2) s.Flags |= FpEx.DE;
                }
                // An unmasked invalid operand still reports "unordered", but nothing is popped.
                bool done = FpEnd(s);
                CompareResult(r, false);
                if (done && op is Mnemonic.Fcomp or Mnemonic.Fucomp or Mnemonic.Ficomp) FPop();
                return true;
            }
            case Mnemonic.Fcompp: case Mnemonic.Fucompp:
            {
                var s = FpBegin();
                bool ok = Fetch(ref s, 0, out var a) & Fetch(ref s, 1, out var b);
                int r = ok ? X87Math.Compare(ref s, a, b, op == Mnemonic.Fucompp) : 2;
                bool done = FpEnd(s);
                CompareResult(r, false);
                if (done) { FPop(); FPop(); }
                return true;
            }
            case Mnemonic.Fcomi: case Mnemonic.Fcomip: case Mnemonic.Fucomi: case Mnemonic.Fucomip:
            {
                var s = FpBegin();
                bool ok = Fetch(ref s, 0, out var a) & Fetch(ref s, d.I.Op1Register - Register.ST0, out var b);
                int r = ok ? X87Math.Compare(ref s, a, b, op is Mnemonic.Fucomi or Mnemonic.Fucomip) : 2;
                // C1 is left alone unless a stack fault clears it.
                bool done = FpEnd(s, !ok);
                CompareResult(r, true);
                if (done && op is Mnemonic.Fcomip or Mnemonic.Fucomip) FPop();
                return true;
            }
            case Mnemonic.Fcmovb: case Mnemonic.Fcmove: case Mnemonic.Fcmovbe: case Mnemonic.Fcmovu:
            case Mnemonic.Fcmovnb: case Mnemonic.Fcmovne: case Mnemonic.Fcmovnbe: case Mnemonic.Fcmovnu:
            {
                var s = FpBegin();
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
                bool ok = Fetch(ref s, 0, out _) & Fetch(ref s, d.I.Op1Register - Register.ST0, out var b);
                // C1 is left alone unless a stack fault clears it.
                if (!FpEnd(s, !ok)) return true;
                if (!ok) SetReg(0, Float80.Indefinite, true);
                else if (c) SetReg(0, b, true);
                return true;
            }
        }
        return TryX87Arith(ref d);
    }

    private bool LoadConstant(Float80 truncated, int nextBits)
    {
        var s = FpBegin();
        var v = truncated;
        // Round the 66-bit constant by RC (no precision exception).
        bool up = s.Rc switch { 0 => nextBits >= 2 && (nextBits > 2 || (v.Mant & 1) != 0), 1 => v.Sign && nextBits != 0, 2 => !v.Sign && nextBits != 0, _ => false };
        if (up) v = new Float80(v.Mant + 1, v.Se);
        FPush(ref s, v);
        FpEnd(s);
        return true;
    }

    private void ExecFld(ref DecodedInsn d)
    {
        var s = FpBegin();
        Float80 v;
        bool underflow = false;
        if (d.I.Op0Kind == OpKind.Register)
            underflow = !Fetch(ref s, d.I.Op0Register - Register.ST0, out v);
        else
        {
            v = ReadFpMem(MemAddr(ref d), d.I.MemorySize, out bool den);
            // A stack overflow is the only exception then.
            if (d.I.MemorySize != MemorySize.Float80 && !StValid(-1))
            {
                if (v.Class == FpClass.SNaN) { s.Flags |= FpEx.IE; v = v.Quiet(); }
                else if (den) s.Flags |= FpEx.DE;
            }
        }
        // An unmasked denormal-operand exception does not stop a load.
        if ((s.Flags & ~Fcw & FpEx.IE) != 0) { FpEnd(s, true, FpEx.IE); return; }
        FPush(ref s, v);
        if (underflow) s.Up = false; // an empty source wins over a full destination
        FpEnd(s, true, FpEx.IE);
    }

    private void ExecFst(ref DecodedInsn d)
    {
        var s = FpBegin();
        bool pop = d.Op == Mnemonic.Fstp;
        bool ok = Fetch(ref s, 0, out var v);
        if (d.I.Op0Kind == OpKind.Register)
        {
            if (!FpEnd(s)) return;
            SetReg(d.I.Op0Register - Register.ST0, v, true);
        }
        else
        {
            ulong lin = MemAddr(ref d);
            switch (d.I.MemorySize)
            {
                case MemorySize.Float32:
                {
                    ulong b = ok ? X87Math.ToBinary(ref s, v, 24, 8) : 0xFFC0_0000;
                    if (FpAllowed(s, true)) WriteLin(lin, 4, b);
                    else ProbeStore(lin, 4);
                    if (!FpEnd(s, memory: true) || !FpAllowed(s, true)) return;
                    break;
                }
                case MemorySize.Float64:
                {
                    ulong b = ok ? X87Math.ToBinary(ref s, v, 53, 11) : 0xFFF8_0000_0000_0000;
                    if (FpAllowed(s, true)) WriteLin(lin, 8, b);
                    else ProbeStore(lin, 8);
                    if (!FpEnd(s, memory: true) || !FpAllowed(s, true)) return;
                    break;
                }
                default:
                    if (FpAllowed(s, true)) { WriteLin(lin, 8, v.Mant); WriteLin(lin + 8, 2, v.Se); }
                    else ProbeStore(lin, 10);
                    if (!FpEnd(s)) return;
                    break;
            }
        }
        if (pop) FPop();
    }

    private enum X87Op { Sqrt, RoundInt, Sin, Cos, Exp2m1 }

    private void Unary(X87Op kind, bool precisionControl)
    {
        var s = FpBegin(precisionControl);
        Float80 r = Float80.Indefinite;
        bool incomplete = false;
        if (Fetch(ref s, 0, out var v))
            r = kind switch
            {
                X87Op.Sqrt => X87Math.Sqrt(ref s, v),
                X87Op.RoundInt => X87Math.RoundToInt(ref s, v),
                X87Op.Sin => X87Transcendental.Sin(ref s, v, out incomplete),
                X87Op.Cos => X87Transcendental.Cos(ref s, v, out incomplete),
                _ => X87Transcendental.Exp2M1(ref s, v),
            };
        if (!FpEnd(s)) return;
        if (kind is X87Op.Sin or X87Op.Cos) Fsw = (ushort)(incomplete ? Fsw | C2 : Fsw & ~C2);
        if (!incomplete) SetReg(0, r, true);
    }

    private void ExecSinCosTan(bool tan)
    {
        var s = FpBegin();
        if (!Fetch(ref s, 0, out var v))
        {
            if (!FpEnd(s)) return;
            SetReg(0, Float80.Indefinite, true);
            FPush(ref s, Float80.Indefinite);
            FpEnd(s);
            return;
        }
        if (StValid(-1))
        {
            s.Flags |= FpEx.IE | FpEx.SF; s.Up = true;
            if (!FpEnd(s)) return;
            SetReg(0, Float80.Indefinite, true);
            FpuValid &= (byte)~(1 << Phys(-1));
            FPush(ref s, Float80.Indefinite);
            return;
        }
        Float80 first, second;
        bool incomplete;
        if (tan) { first = X87Transcendental.Tan(ref s, v, out incomplete); second = first.IsNaN ? first : Float80.One; }
        else X87Transcendental.SinCos(ref s, v, out first, out second, out incomplete);
        if (!FpEnd(s)) return;
        Fsw = (ushort)(incomplete ? Fsw | C2 : Fsw & ~C2);
        if (incomplete) return;
        // NaN operands give the same NaN in both registers.
        SetReg(0, first, true);
        FPush(ref s, second);
    }

    private bool TryX87Arith(ref DecodedInsn d)
    {
        var op = d.Op;
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
        var s = FpBegin(true);
        bool pop = op is Mnemonic.Faddp or Mnemonic.Fmulp or Mnemonic.Fsubp or Mnemonic.Fsubrp or Mnemonic.Fdivp or Mnemonic.Fdivrp;
        int di;
        Float80 x, y;
        bool ok, den = false;
        if (d.I.OpCount == 1 && d.I.Op0Kind == OpKind.Memory)
        {
            di = 0;
            y = ReadFpMem(MemAddr(ref d), d.I.MemorySize, out den);
            ok = Fetch(ref s, 0, out x);
        }
        else
        {
            int si;
            if (d.I.OpCount == 0) { di = 1; si = 0; }
            else { di = d.I.Op0Register - Register.ST0; si = d.I.Op1Register - Register.ST0; }
            ok = Fetch(ref s, di, out x) & Fetch(ref s, si, out y);
        }
        Float80 r = Float80.Indefinite;
        if (ok)
        {
            r = kind switch
            {
                0 => X87Math.Add(ref s, x, y, false),
                1 => X87Math.Mul(ref s, x, y),
                2 => X87Math.Add(ref s, x, y, true),
                3 => X87Math.Add(ref s, y, x, true),
                4 => X87Math.Div(ref s, x, y),
                _ => X87Math.Div(ref s, y, x),
            };
            if (den && !IsNaNOrUnsupported(x) && !IsNaNOrUnsupported(y) && (s.Flags & FpEx.ZE) == 0) s.Flags |= FpEx.DE;
        }
        if (!FpEnd(s)) return true;
        SetReg(di, r, true);
        if (pop) FPop();
        return true;
    }
}

/// <summary>Conversions between binary64 and the x87 80-bit extended format (the binary64 image
/// of the registers kept for the MMX aliasing).</summary>
internal static class Ext80
{
    public static void FromDouble(double v, out ulong mant, out ushort se)
    {
        var f = X87Math.FromBinary((ulong)BitConverter.DoubleToInt64Bits(v), 53, 11, out _);
        mant = f.Mant; se = f.Se;
    }

    public static double ToDouble(ulong mant, ushort se)
    {
        bool neg = (se & 0x8000) != 0;
        int exp = se & 0x7FFF;
        double r;
        if (exp == 0 && mant == 0) r = 0;
        else if (exp == 0x7FFF) r = (mant << 1) == 0 ? double.PositiveInfinity : double.NaN;
        else r = Math.ScaleB((double)mant, Math.Max(exp, 1) - 16383 - 63);
        return neg ? -r : r;
    }
}
