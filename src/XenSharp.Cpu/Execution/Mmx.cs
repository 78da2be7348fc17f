using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Iced.Intel;
using XenSharp.Cpu.Decoding;
using V = System.Runtime.Intrinsics.Vector128<byte>;

namespace XenSharp.Cpu;

[InlineArray(8)]
internal struct FpuRaw { private ulong _e; }

[InlineArray(8)]
internal struct FpuRawExp { private ushort _e; }

/// <summary>
/// MMX: MM0-MM7 are the 64-bit mantissas of the physical x87 registers R0-R7. Because the x87
/// file holds binary64 values, the exact 80-bit contents written by MMX instructions (and by the
/// state-restore instructions) are kept beside it and stay authoritative for as long as the
/// register's binary64 value is the one they produced.
/// </summary>
internal unsafe partial class X86Vcpu
{
    private FpuRaw _rawMant, _rawShadow;
    private FpuRawExp _rawExp;
    private byte _rawValid;

    /// <summary>The 80-bit contents of physical register <paramref name="phys"/>.</summary>
    private void GetRaw80(int phys, out ulong mant, out ushort se)
    {
        if ((_rawValid & (1 << phys)) != 0 && BitConverter.DoubleToInt64Bits(St[phys]) == (long)_rawShadow[phys])
        {
            mant = _rawMant[phys]; se = _rawExp[phys];
            return;
        }
        Ext80.FromDouble(St[phys], out mant, out se);
    }

    private void SetRaw80(int phys, ulong mant, ushort se)
    {
        St[phys] = Ext80.ToDouble(mant, se);
        _rawMant[phys] = mant; _rawExp[phys] = se;
        _rawShadow[phys] = (ulong)BitConverter.DoubleToInt64Bits(St[phys]);
        _rawValid |= (byte)(1 << phys);
    }

    private void MmxCheck()
    {
        if ((Cr0 & 4) != 0) throw UD();
        if ((Cr0 & 8) != 0) throw Fault(7);
    }

    private ulong MmRead(Register r) { GetRaw80(r - Register.MM0, out ulong m, out _); return m; }

    /// <summary>An MMX register write: bits 79:64 of the x87 register become all ones.</summary>
    private void MmWrite(Register r, ulong v) => SetRaw80(r - Register.MM0, v, 0xFFFF);

    /// <summary>Operand <paramref name="n"/> as 64 bits: an MM or XMM register, or memory of its own size.</summary>
    private ulong MmOp(ref DecodedInsn d, int n)
    {
        if (d.I.GetOpKind(n) == OpKind.Register)
        {
            var r = d.I.GetOpRegister(n);
            if (r.IsMM()) return MmRead(r);
            if (r.IsXMM()) return XReg(r).AsUInt64().GetElement(0);
            return ReadReg(r);
        }
        ulong lin = MemAddr(ref d);
        int size = d.I.MemorySize.GetSize();
        return ReadLin(lin, size >= 8 ? 8 : size);
    }

    private static V Lo(ulong v) => Vector128.CreateScalar(v).AsByte();
    private static ulong Lo(V v) => v.AsUInt64().GetElement(0);

    private bool TryMmx(ref DecodedInsn d)
    {
        var op0 = d.I.OpCount > 0 && d.I.Op0Kind == OpKind.Register ? d.I.Op0Register : Register.None;
        var f = IntLaneOp(d.Op);
        if (f != null && op0.IsMM())
        {
            MmxCheck();
            ulong a = MmRead(op0), b = MmOp(ref d, 1);
            ulong r = d.Op switch
            {
                // The high halves of 64-bit operands are bytes 4-7.
                Mnemonic.Punpckhbw or Mnemonic.Punpckhwd or Mnemonic.Punpckhdq => Lo(IntLaneOp(LowForm(d.Op))!(Lo(a >> 32), Lo(b >> 32))),
                // Packing: both sources side by side in one 128-bit register.
                Mnemonic.Packsswb or Mnemonic.Packssdw or Mnemonic.Packuswb => Lo(f(Vector128.Create(a, b).AsByte(), V.Zero)),
                Mnemonic.Pshufb => Lo(f(Lo(a), Lo(b & 0x8787_8787_8787_8787UL))),
                _ => Lo(f(Lo(a), Lo(b))),
            };
            MmWrite(op0, r);
            MmxDone();
            return true;
        }
        switch (d.Op)
        {
            case Mnemonic.Phaddw: case Mnemonic.Phaddsw: case Mnemonic.Phsubw: case Mnemonic.Phsubsw:
            case Mnemonic.Phaddd: case Mnemonic.Phsubd:
            {
                MmxCheck();
                ulong b = MmOp(ref d, 1), a = MmRead(op0);
                MmWrite(op0, Lo(Ssse3Op(d.Op, Vector128.Create(a, b).AsByte(), V.Zero)));
                MmxDone();
                return true;
            }
            case Mnemonic.Pmaddubsw: case Mnemonic.Pmulhrsw: case Mnemonic.Psignb: case Mnemonic.Psignw: case Mnemonic.Psignd:
            {
                MmxCheck();
                ulong b = MmOp(ref d, 1), a = MmRead(op0);
                MmWrite(op0, Lo(Ssse3Op(d.Op, Lo(a), Lo(b))));
                MmxDone();
                return true;
            }
            case Mnemonic.Cvtpi2ps: case Mnemonic.Cvtpi2pd:
            {
                SseCheck();
                bool fromMm = d.I.Op1Kind == OpKind.Register;
                if (fromMm) MmxCheck();
                ulong s = MmOp(ref d, 1);
                int lo = (int)s, hi = (int)(s >> 32);
                uint fl = 0;
                V r = d.Op == Mnemonic.Cvtpi2pd
                    ? Vector128.Create((double)lo, hi).AsByte()
                    : XReg(op0).AsUInt32().WithElement(0, (uint)SoftFloat.FromInt(lo, false, Mxcsr, ref fl))
                        .WithElement(1, (uint)SoftFloat.FromInt(hi, false, Mxcsr, ref fl)).AsByte();
                // Only an MMX register source is an MMX instruction (TOP and tags change), even when it faults.
                if (fromMm) MmxDone();
                SimdFlags(fl);
                XReg(op0) = r;
                return true;
            }
            case Mnemonic.Cvtps2pi: case Mnemonic.Cvttps2pi: case Mnemonic.Cvtpd2pi: case Mnemonic.Cvttpd2pi:
            {
                SseCheck();
                MmxCheck();
                bool t = d.Op is Mnemonic.Cvttps2pi or Mnemonic.Cvttpd2pi;
                bool dbl = d.Op is Mnemonic.Cvtpd2pi or Mnemonic.Cvttpd2pi;
                ulong x, y;
                if (dbl)
                {
                    var v = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt64();
                    x = v[0]; y = v[1];
                }
                else
                {
                    var v = VecOp(ref d, 1).AsUInt32();
                    x = v[0]; y = v[1];
                }
                uint fl = 0;
                ulong r0 = SoftFloat.ToInt(x, dbl, 4, t, Mxcsr, ref fl), r1 = SoftFloat.ToInt(y, dbl, 4, t, Mxcsr, ref fl);
                MmxDone(); // the x87 state becomes MMX state even when the conversion faults
                SimdFlags(fl);
                MmWrite(op0, r0 | (r1 << 32));
                return true;
            }
            case Mnemonic.Maskmovq:
                MmxCheck();
                MmxDone(); // the x87 state becomes MMX state even when a store faults
                MaskMove(ref d, Lo(MmRead(d.I.Op1Register)), Lo(MmRead(d.I.Op2Register)), 8);
                return true;
            case Mnemonic.Psllw: case Mnemonic.Pslld: case Mnemonic.Psllq:
            case Mnemonic.Psrlw: case Mnemonic.Psrld: case Mnemonic.Psrlq:
            case Mnemonic.Psraw: case Mnemonic.Psrad:
            {
                MmxCheck();
                ulong count = d.I.GetOpKind(1) is OpKind.Immediate8 ? d.I.Immediate8 : MmOp(ref d, 1);
                MmWrite(op0, Lo(Sat.Shift(Lo(MmRead(op0)), d.Op, count)));
                MmxDone();
                return true;
            }
            case Mnemonic.Movd: case Mnemonic.Movq: case Mnemonic.Movntq: case Mnemonic.Movdq2q: case Mnemonic.Movq2dq:
            {
                MmxCheck();
                ulong v = MmOp(ref d, 1);
                int size = d.Op == Mnemonic.Movd ? 4 : 8;
                if (size == 4) v = (uint)v;
                if (d.I.Op0Kind == OpKind.Memory) WriteLin(MemAddr(ref d), size, v);
                else if (op0.IsMM()) MmWrite(op0, v);
                else if (op0.IsXMM()) XReg(op0) = Lo(v);
                else WriteReg(op0, v);
                MmxDone();
                return true;
            }
            case Mnemonic.Pshufw:
            {
                MmxCheck();
                ulong s = MmOp(ref d, 1), r = 0;
                int imm = d.I.Immediate8;
                for (int i = 0; i < 4; i++) r |= ((s >> (16 * ((imm >> (2 * i)) & 3))) & 0xFFFF) << (16 * i);
                MmWrite(op0, r);
                MmxDone();
                return true;
            }
            case Mnemonic.Pextrw:
            {
                MmxCheck();
                ulong v = (MmRead(d.I.Op1Register) >> (16 * (d.I.Immediate8 & 3))) & 0xFFFF;
                WriteReg(op0, v);
                MmxDone();
                return true;
            }
            case Mnemonic.Pinsrw:
            {
                MmxCheck();
                ulong v = d.I.Op1Kind == OpKind.Register ? ReadReg(d.I.Op1Register) & 0xFFFF : ReadLin(MemAddr(ref d), 2);
                int sh = 16 * (d.I.Immediate8 & 3);
                MmWrite(op0, (MmRead(op0) & ~(0xFFFFUL << sh)) | (v << sh));
                MmxDone();
                return true;
            }
            case Mnemonic.Pmovmskb:
            {
                MmxCheck();
                ulong s = MmRead(d.I.Op1Register), m = 0;
                for (int i = 0; i < 8; i++) m |= ((s >> (8 * i + 7)) & 1) << i;
                WriteReg(op0, m);
                MmxDone();
                return true;
            }
            case Mnemonic.Palignr:
            {
                MmxCheck();
                ulong b = MmOp(ref d, 1), a = MmRead(op0);
                int n = d.I.Immediate8;
                // The 16-byte concatenation a:b shifted right by n bytes.
                var cat = Vector128.Create(b, a).AsByte();
                ulong r = 0;
                for (int i = 0; i < 8; i++)
                    if (n + i < 16) r |= (ulong)cat.GetElement(n + i) << (8 * i);
                MmWrite(op0, r);
                MmxDone();
                return true;
            }
        }
        return false;
    }

    private static Mnemonic LowForm(Mnemonic op) => op switch
    {
        Mnemonic.Punpckhbw => Mnemonic.Punpcklbw,
        Mnemonic.Punpckhwd => Mnemonic.Punpcklwd,
        _ => Mnemonic.Punpckldq,
    };

    /// <summary>Every MMX instruction but EMMS sets TOP to 0 and tags all registers valid.</summary>
    private void MmxDone()
    {
        FpuTop = 0;
        FpuValid = 0xFF;
    }
}
