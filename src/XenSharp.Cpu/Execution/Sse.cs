using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Iced.Intel;
using XenSharp.Cpu.Decoding;
using V = System.Runtime.Intrinsics.Vector128<byte>;
using X86S = System.Runtime.Intrinsics.X86.Sse2;

namespace XenSharp.Cpu;

/// <summary>SSE, SSE2, SSE3, SSSE3, SSE4.1 and SSE4.2 instructions (legacy encodings) on XMM registers.</summary>
internal unsafe partial class X86Vcpu
{
    internal XmmFile X;
    internal uint Mxcsr = 0x1F80;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref V XReg(Register r) => ref Unsafe.As<Xmm, V>(ref X[r - Register.XMM0]);

    private void SseCheck()
    {
        if ((Cr0 & 4) != 0 || (Cr4 & 0x200) == 0) throw UD();
        if ((Cr0 & 8) != 0) throw Fault(7);
    }

    /// <summary>Operand <paramref name="n"/> as a vector; memory operands read their own size.</summary>
    private V VecOp(ref DecodedInsn d, int n, bool aligned = false)
    {
        var k = d.I.GetOpKind(n);
        if (k == OpKind.Register)
        {
            var r = d.I.GetOpRegister(n);
            if (r.IsXMM()) return XReg(r);
            return Vector128.CreateScalar(ReadReg(r)).AsByte();
        }
        int size = d.I.MemorySize.GetSize();
        ulong lin = VecAddr(ref d, aligned || (size == 16 && !UnalignedOk(d.Op)));
        switch (size)
        {
            case 16: return Vector128.Create(ReadLin(lin, 8), ReadLin(lin + 8, 8)).AsByte();
            case 8: return Vector128.CreateScalar(ReadLin(lin, 8)).AsByte();
            case 4: return Vector128.CreateScalar((uint)ReadLin(lin, 4)).AsByte();
            case 2: return Vector128.CreateScalar((ushort)ReadLin(lin, 2)).AsByte();
            default: return Vector128.CreateScalar((byte)ReadLin(lin, 1)).AsByte();
        }
    }

    private void WriteVecMem(ulong lin, V v, int size)
    {
        if (size == 16)
        {
            if ((lin & 0xFFF) > 0xFF0) Translate(lin + 15, Access.Write, Cpl == 3);
            WriteLin(lin, 8, v.AsUInt64().GetElement(0));
            WriteLin(lin + 8, 8, v.AsUInt64().GetElement(1));
        }
        else if (size == 8) WriteLin(lin, 8, v.AsUInt64().GetElement(0));
        else WriteLin(lin, size, v.AsUInt32().GetElement(0));
    }

    /// <summary>Writes a full 128-bit result to operand 0 (register or 16-byte memory).</summary>
    private void SetVec0(ref DecodedInsn d, V v, bool aligned = false)
    {
        if (d.I.Op0Kind == OpKind.Register) { XReg(d.I.Op0Register) = v; return; }
        int size = d.I.MemorySize.GetSize();
        ulong lin = VecAddr(ref d, aligned || (size == 16 && !UnalignedOk(d.Op)));
        WriteVecMem(lin, v, size);
    }

    /// <summary>The memory operand's linear address. A misaligned operand that must be 16-byte
    /// aligned raises #GP(0), which takes precedence over the alignment check (#AC).</summary>
    private ulong VecAddr(ref DecodedInsn d, bool aligned)
    {
        if (!aligned) return MemAddr(ref d);
        ulong lin;
        if (!d.MemSplit) lin = Linear(d.I.MemorySegment - Register.ES, Ea(ref d), d.MemBytes);
        else
        {
            ulong ea = FastEa(ref d);
            lin = Bitness == 64 ? (d.MemSeg >= FS ? Seg[d.MemSeg].Base + ea : ea) : Linear(d.MemSeg, ea, d.MemBytes);
        }
        if ((lin & 15) != 0) throw GP(); // aligned, it cannot fail the alignment check either
        // An aligned but non-canonical stack address is #SS (misalignment wins over it).
        if (d.MemStack) CheckStackCanonical(lin, d.MemBytes);
        return lin;
    }

    /// <summary>The legacy SSE instructions whose 128-bit memory operand may be misaligned; every
    /// other one raises #GP(0) unless it is 16-byte aligned.</summary>
    private static bool UnalignedOk(Mnemonic op) => op is Mnemonic.Movups or Mnemonic.Movupd or Mnemonic.Movdqu
        or Mnemonic.Lddqu or Mnemonic.Pcmpestri or Mnemonic.Pcmpestrm or Mnemonic.Pcmpistri or Mnemonic.Pcmpistrm
        or Mnemonic.Pcmpestri64 or Mnemonic.Pcmpestrm64;

    /// <summary>MASKMOVDQU/MASKMOVQ: the bytes of <paramref name="v"/> whose mask byte has its top
    /// bit set are stored at seg:rDI (DS unless overridden), one by one.</summary>
    private void MaskMove(ref DecodedInsn d, V v, V mask, int n)
    {
        int seg = d.I.MemorySegment - Register.ES;
        ulong di = Idx(7, d.AddrSize);
        ulong wrap = d.AddrSize switch { 2 => 0xFFFF, 4 => 0xFFFF_FFFF, _ => ulong.MaxValue };
        if (_acUser) CheckAlignment(Linear(seg, di), (uint)n);
        uint bits = mask.ExtractMostSignificantBits() & (uint)((1 << n) - 1);
        if (bits == 0) return;
        // The store is one access of the full width: a fault on its last byte (selected or not)
        // leaves every byte unwritten.
        Translate(Linear(seg, (di + (ulong)n - 1) & wrap), Access.Write, Cpl == 3);
        for (int i = 0; i < n; i++)
            if ((mask.GetElement(i) & 0x80) != 0) WriteLin(Linear(seg, (di + (ulong)i) & wrap), 1, v.GetElement(i));
    }

    private V Dst(ref DecodedInsn d) => XReg(d.I.Op0Register);

    private void ExecSse(ref DecodedInsn d)
    {
        if (!TrySse(ref d)) throw Unsupported(d.I);
    }

    private bool TrySse(ref DecodedInsn d)
    {
        if (d.I.OpCount > 0 && d.I.Op0Kind == OpKind.Register && d.I.Op0Register.IsMM()) return TryMmx(ref d);
        if (d.I.OpCount > 1 && d.I.Op1Kind == OpKind.Register && d.I.Op1Register.IsMM()) return TryMmx(ref d);
        if (d.Op == Mnemonic.Emms) { MmxCheck(); FpuValid = 0; return true; }
        if (d.Op is Mnemonic.Cvtpi2ps or Mnemonic.Cvtpi2pd) return TryMmx(ref d);
        switch (d.Op)
        {
            // ---- moves ----
            case Mnemonic.Movaps: case Mnemonic.Movapd: case Mnemonic.Movdqa:
            case Mnemonic.Movntps: case Mnemonic.Movntpd: case Mnemonic.Movntdq: case Mnemonic.Movntdqa:
                SseCheck();
                SetVec0(ref d, VecOp(ref d, 1, true), true);
                return true;
            case Mnemonic.Movups: case Mnemonic.Movupd: case Mnemonic.Movdqu: case Mnemonic.Lddqu:
                SseCheck();
                SetVec0(ref d, VecOp(ref d, 1));
                return true;
            case Mnemonic.Movq:
            case Mnemonic.Movd:
            {
                SseCheck();
                int size = d.Op == Mnemonic.Movd ? 4 : 8;
                if (d.I.Op0Kind == OpKind.Register && d.I.Op0Register.IsXMM())
                {
                    ulong v = d.I.Op1Kind == OpKind.Register && d.I.Op1Register.IsXMM()
                        ? XReg(d.I.Op1Register).AsUInt64().GetElement(0)
                        : ReadOp(ref d, 1, size);
                    XReg(d.I.Op0Register) = Vector128.CreateScalar(size == 4 ? (uint)v : v).AsByte();
                }
                else
                {
                    ulong v = XReg(d.I.Op1Register).AsUInt64().GetElement(0);
                    if (size == 4) v = (uint)v;
                    if (d.I.Op0Kind == OpKind.Register) WriteReg(d.I.Op0Register, v);
                    else WriteLin(MemAddr(ref d), size, v);
                }
                return true;
            }
            case Mnemonic.Movss:
            case Mnemonic.Movsd:
            {
                SseCheck();
                int size = d.Op == Mnemonic.Movss ? 4 : 8;
                if (d.I.Op0Kind == OpKind.Memory) { WriteVecMem(MemAddr(ref d), XReg(d.I.Op1Register), size); return true; }
                if (d.I.Op1Kind == OpKind.Memory) { XReg(d.I.Op0Register) = VecOp(ref d, 1); return true; }
                var a = Dst(ref d); var b = XReg(d.I.Op1Register);
                XReg(d.I.Op0Register) = size == 4
                    ? a.AsUInt32().WithElement(0, b.AsUInt32().GetElement(0)).AsByte()
                    : a.AsUInt64().WithElement(0, b.AsUInt64().GetElement(0)).AsByte();
                return true;
            }
            case Mnemonic.Movlps: case Mnemonic.Movlpd: case Mnemonic.Movhps: case Mnemonic.Movhpd:
            {
                SseCheck();
                int half = d.Op is Mnemonic.Movhps or Mnemonic.Movhpd ? 1 : 0;
                if (d.I.Op0Kind == OpKind.Memory)
                    WriteLin(MemAddr(ref d), 8, XReg(d.I.Op1Register).AsUInt64().GetElement(half));
                else
                    XReg(d.I.Op0Register) = Dst(ref d).AsUInt64().WithElement(half, ReadLin(MemAddr(ref d), 8)).AsByte();
                return true;
            }
            case Mnemonic.Movhlps:
                SseCheck();
                XReg(d.I.Op0Register) = Dst(ref d).AsUInt64().WithElement(0, XReg(d.I.Op1Register).AsUInt64().GetElement(1)).AsByte();
                return true;
            case Mnemonic.Movlhps:
                SseCheck();
                XReg(d.I.Op0Register) = Dst(ref d).AsUInt64().WithElement(1, XReg(d.I.Op1Register).AsUInt64().GetElement(0)).AsByte();
                return true;
            case Mnemonic.Movddup:
            {
                SseCheck();
                ulong v = VecOp(ref d, 1).AsUInt64().GetElement(0);
                XReg(d.I.Op0Register) = Vector128.Create(v, v).AsByte();
                return true;
            }
            case Mnemonic.Movshdup: case Mnemonic.Movsldup:
            {
                SseCheck();
                var s = VecOp(ref d, 1).AsUInt32();
                int o = d.Op == Mnemonic.Movshdup ? 1 : 0;
                XReg(d.I.Op0Register) = Vector128.Create(s.GetElement(o), s.GetElement(o), s.GetElement(2 + o), s.GetElement(2 + o)).AsByte();
                return true;
            }
            case Mnemonic.Movmskps:
            {
                SseCheck();
                WriteReg(d.I.Op0Register, XReg(d.I.Op1Register).AsUInt32().ExtractMostSignificantBits());
                return true;
            }
            case Mnemonic.Movmskpd:
                SseCheck();
                WriteReg(d.I.Op0Register, XReg(d.I.Op1Register).AsUInt64().ExtractMostSignificantBits());
                return true;
            case Mnemonic.Pmovmskb:
                SseCheck();
                WriteReg(d.I.Op0Register, XReg(d.I.Op1Register).ExtractMostSignificantBits());
                return true;
            case Mnemonic.Maskmovdqu:
                SseCheck();
                MaskMove(ref d, XReg(d.I.Op1Register), XReg(d.I.Op2Register), 16);
                return true;
            case Mnemonic.Movnti:
                WriteLin(MemAddr(ref d), d.OpSize, ReadReg(d.I.Op1Register));
                return true;
            case Mnemonic.Ldmxcsr:
            {
                SseCheck();
                uint v = (uint)ReadLin(MemAddr(ref d), 4);
                if ((v & ~MxcsrMask) != 0) throw GP();
                Mxcsr = v;
                return true;
            }
            case Mnemonic.Stmxcsr:
                SseCheck();
                WriteLin(MemAddr(ref d), 4, Mxcsr);
                return true;
        }
        if (TrySseInt(ref d)) return true;
        if (TrySseFloat(ref d)) return true;
        if (TrySseExtra(ref d)) return true;
        return TrySse42(ref d);
    }

    // ---- integer SIMD ----

    private bool TrySseInt(ref DecodedInsn d)
    {
        Func2? f = IntLaneOp(d.Op);
        if (f != null)
        {
            SseCheck();
            var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory);
            XReg(d.I.Op0Register) = f(Dst(ref d), b);
            return true;
        }
        return TrySseIntOther(ref d);
    }

    /// <summary>The lane-wise integer operation of a two-operand SIMD instruction, shared by its
    /// XMM and MMX forms (MMX operands sit in the low 64 bits).</summary>
    private static Func2? IntLaneOp(Mnemonic op) => op switch
        {
            Mnemonic.Pxor => static (a, b) => a ^ b,
            Mnemonic.Xorps or Mnemonic.Xorpd => static (a, b) => a ^ b,
            Mnemonic.Por or Mnemonic.Orps or Mnemonic.Orpd => static (a, b) => a | b,
            Mnemonic.Pand or Mnemonic.Andps or Mnemonic.Andpd => static (a, b) => a & b,
            Mnemonic.Pandn or Mnemonic.Andnps or Mnemonic.Andnpd => static (a, b) => Vector128.AndNot(b, a),
            Mnemonic.Paddb => static (a, b) => a + b,
            Mnemonic.Paddw => static (a, b) => (a.AsUInt16() + b.AsUInt16()).AsByte(),
            Mnemonic.Paddd => static (a, b) => (a.AsUInt32() + b.AsUInt32()).AsByte(),
            Mnemonic.Paddq => static (a, b) => (a.AsUInt64() + b.AsUInt64()).AsByte(),
            Mnemonic.Psubb => static (a, b) => a - b,
            Mnemonic.Psubw => static (a, b) => (a.AsUInt16() - b.AsUInt16()).AsByte(),
            Mnemonic.Psubd => static (a, b) => (a.AsUInt32() - b.AsUInt32()).AsByte(),
            Mnemonic.Psubq => static (a, b) => (a.AsUInt64() - b.AsUInt64()).AsByte(),
            Mnemonic.Paddusb => static (a, b) => Sat.AddU8(a, b),
            Mnemonic.Paddusw => static (a, b) => Sat.AddU16(a, b),
            Mnemonic.Psubusb => static (a, b) => Sat.SubU8(a, b),
            Mnemonic.Psubusw => static (a, b) => Sat.SubU16(a, b),
            Mnemonic.Paddsb => static (a, b) => Sat.AddS8(a, b),
            Mnemonic.Paddsw => static (a, b) => Sat.AddS16(a, b),
            Mnemonic.Psubsb => static (a, b) => Sat.SubS8(a, b),
            Mnemonic.Psubsw => static (a, b) => Sat.SubS16(a, b),
            Mnemonic.Pcmpeqb => static (a, b) => Vector128.Equals(a, b),
            Mnemonic.Pcmpeqw => static (a, b) => Vector128.Equals(a.AsUInt16(), b.AsUInt16()).AsByte(),
            Mnemonic.Pcmpeqd => static (a, b) => Vector128.Equals(a.AsUInt32(), b.AsUInt32()).AsByte(),
            Mnemonic.Pcmpeqq => static (a, b) => Vector128.Equals(a.AsUInt64(), b.AsUInt64()).AsByte(),
            Mnemonic.Pcmpgtb => static (a, b) => Vector128.GreaterThan(a.AsSByte(), b.AsSByte()).AsByte(),
            Mnemonic.Pcmpgtw => static (a, b) => Vector128.GreaterThan(a.AsInt16(), b.AsInt16()).AsByte(),
            Mnemonic.Pcmpgtd => static (a, b) => Vector128.GreaterThan(a.AsInt32(), b.AsInt32()).AsByte(),
            Mnemonic.Pcmpgtq => static (a, b) => Vector128.GreaterThan(a.AsInt64(), b.AsInt64()).AsByte(),
            Mnemonic.Pminub => static (a, b) => Vector128.Min(a, b),
            Mnemonic.Pmaxub => static (a, b) => Vector128.Max(a, b),
            Mnemonic.Pminsw => static (a, b) => Vector128.Min(a.AsInt16(), b.AsInt16()).AsByte(),
            Mnemonic.Pmaxsw => static (a, b) => Vector128.Max(a.AsInt16(), b.AsInt16()).AsByte(),
            Mnemonic.Pminsb => static (a, b) => Vector128.Min(a.AsSByte(), b.AsSByte()).AsByte(),
            Mnemonic.Pmaxsb => static (a, b) => Vector128.Max(a.AsSByte(), b.AsSByte()).AsByte(),
            Mnemonic.Pminuw => static (a, b) => Vector128.Min(a.AsUInt16(), b.AsUInt16()).AsByte(),
            Mnemonic.Pmaxuw => static (a, b) => Vector128.Max(a.AsUInt16(), b.AsUInt16()).AsByte(),
            Mnemonic.Pminsd => static (a, b) => Vector128.Min(a.AsInt32(), b.AsInt32()).AsByte(),
            Mnemonic.Pmaxsd => static (a, b) => Vector128.Max(a.AsInt32(), b.AsInt32()).AsByte(),
            Mnemonic.Pminud => static (a, b) => Vector128.Min(a.AsUInt32(), b.AsUInt32()).AsByte(),
            Mnemonic.Pmaxud => static (a, b) => Vector128.Max(a.AsUInt32(), b.AsUInt32()).AsByte(),
            Mnemonic.Pavgb => static (a, b) => Sat.AvgU8(a, b),
            Mnemonic.Pavgw => static (a, b) => Sat.AvgU16(a, b),
            Mnemonic.Pmullw => static (a, b) => (a.AsInt16() * b.AsInt16()).AsByte(),
            Mnemonic.Pmulld => static (a, b) => (a.AsInt32() * b.AsInt32()).AsByte(),
            Mnemonic.Pmulhw => static (a, b) => Sat.MulHi16(a, b, true),
            Mnemonic.Pmulhuw => static (a, b) => Sat.MulHi16(a, b, false),
            Mnemonic.Pmuludq => static (a, b) => Vector128.Create((ulong)a.AsUInt32().GetElement(0) * b.AsUInt32().GetElement(0), (ulong)a.AsUInt32().GetElement(2) * b.AsUInt32().GetElement(2)).AsByte(),
            Mnemonic.Pmuldq => static (a, b) => Vector128.Create((long)a.AsInt32().GetElement(0) * b.AsInt32().GetElement(0), (long)a.AsInt32().GetElement(2) * b.AsInt32().GetElement(2)).AsByte(),
            Mnemonic.Pmaddwd => static (a, b) => Sat.MaddWd(a, b),
            Mnemonic.Psadbw => static (a, b) => Sat.Sad(a, b),
            Mnemonic.Punpcklbw => static (a, b) => Sat.Unpack(a, b, 1, false),
            Mnemonic.Punpcklwd => static (a, b) => Sat.Unpack(a, b, 2, false),
            Mnemonic.Punpckldq or Mnemonic.Unpcklps => static (a, b) => Sat.Unpack(a, b, 4, false),
            Mnemonic.Punpcklqdq or Mnemonic.Unpcklpd => static (a, b) => Sat.Unpack(a, b, 8, false),
            Mnemonic.Punpckhbw => static (a, b) => Sat.Unpack(a, b, 1, true),
            Mnemonic.Punpckhwd => static (a, b) => Sat.Unpack(a, b, 2, true),
            Mnemonic.Punpckhdq or Mnemonic.Unpckhps => static (a, b) => Sat.Unpack(a, b, 4, true),
            Mnemonic.Punpckhqdq or Mnemonic.Unpckhpd => static (a, b) => Sat.Unpack(a, b, 8, true),
            Mnemonic.Packsswb => static (a, b) => Sat.PackSsWb(a, b),
            Mnemonic.Packssdw => static (a, b) => Sat.PackSsDw(a, b),
            Mnemonic.Packuswb => static (a, b) => Sat.PackUsWb(a, b),
            Mnemonic.Packusdw => static (a, b) => Sat.PackUsDw(a, b),
            Mnemonic.Pshufb => static (a, b) => Sat.Pshufb(a, b),
            Mnemonic.Pabsb => static (a, b) => Vector128.Abs(b.AsSByte()).AsByte(),
            Mnemonic.Pabsw => static (a, b) => Vector128.Abs(b.AsInt16()).AsByte(),
            Mnemonic.Pabsd => static (a, b) => Vector128.Abs(b.AsInt32()).AsByte(),
            _ => null,
        };

    private bool TrySseIntOther(ref DecodedInsn d)
    {
        switch (d.Op)
        {
            case Mnemonic.Psllw: case Mnemonic.Pslld: case Mnemonic.Psllq:
            case Mnemonic.Psrlw: case Mnemonic.Psrld: case Mnemonic.Psrlq:
            case Mnemonic.Psraw: case Mnemonic.Psrad:
            {
                SseCheck();
                ulong count = d.I.GetOpKind(1) is OpKind.Immediate8 ? d.I.Immediate8 : VecOp(ref d, 1).AsUInt64().GetElement(0);
                XReg(d.I.Op0Register) = Sat.Shift(Dst(ref d), d.Op, count);
                return true;
            }
            case Mnemonic.Pslldq: case Mnemonic.Psrldq:
            {
                SseCheck();
                int n = Math.Min((int)d.I.Immediate8, 16);
                var a = Dst(ref d);
                Span<byte> src = stackalloc byte[16], dst = stackalloc byte[16];
                a.CopyTo(src);
                dst.Clear();
                if (d.Op == Mnemonic.Pslldq) src[..(16 - n)].CopyTo(dst[n..]);
                else src[n..].CopyTo(dst);
                XReg(d.I.Op0Register) = Vector128.Create((ReadOnlySpan<byte>)dst);
                return true;
            }
            case Mnemonic.Pshufd:
            {
                SseCheck();
                var s = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt32();
                int imm = d.I.Immediate8;
                XReg(d.I.Op0Register) = Vector128.Create(s.GetElement(imm & 3), s.GetElement((imm >> 2) & 3), s.GetElement((imm >> 4) & 3), s.GetElement((imm >> 6) & 3)).AsByte();
                return true;
            }
            case Mnemonic.Pshuflw: case Mnemonic.Pshufhw:
            {
                SseCheck();
                var s = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt16();
                int imm = d.I.Immediate8;
                int o = d.Op == Mnemonic.Pshufhw ? 4 : 0;
                var r = s;
                for (int i = 0; i < 4; i++) r = r.WithElement(o + i, s.GetElement(o + ((imm >> (2 * i)) & 3)));
                XReg(d.I.Op0Register) = r.AsByte();
                return true;
            }
            case Mnemonic.Shufps:
            {
                SseCheck();
                var a = Dst(ref d).AsUInt32(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt32();
                int imm = d.I.Immediate8;
                XReg(d.I.Op0Register) = Vector128.Create(a.GetElement(imm & 3), a.GetElement((imm >> 2) & 3), b.GetElement((imm >> 4) & 3), b.GetElement((imm >> 6) & 3)).AsByte();
                return true;
            }
            case Mnemonic.Shufpd:
            {
                SseCheck();
                var a = Dst(ref d).AsUInt64(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt64();
                int imm = d.I.Immediate8;
                XReg(d.I.Op0Register) = Vector128.Create(a.GetElement(imm & 1), b.GetElement((imm >> 1) & 1)).AsByte();
                return true;
            }
            case Mnemonic.Palignr:
            {
                SseCheck();
                Span<byte> buf = stackalloc byte[48];
                buf.Clear();
                VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).CopyTo(buf);
                Dst(ref d).CopyTo(buf[16..]);
                int n = Math.Min((int)d.I.Immediate8, 32);
                XReg(d.I.Op0Register) = Vector128.Create((ReadOnlySpan<byte>)buf.Slice(n, 16));
                return true;
            }
            case Mnemonic.Pextrw:
            {
                SseCheck();
                ushort v = XReg(d.I.Op1Register).AsUInt16().GetElement(d.I.Immediate8 & 7);
                if (d.I.Op0Kind == OpKind.Register) WriteReg(d.I.Op0Register, v); else WriteLin(MemAddr(ref d), 2, v);
                return true;
            }
            case Mnemonic.Pextrb: case Mnemonic.Pextrd: case Mnemonic.Pextrq:
            {
                SseCheck();
                var s = XReg(d.I.Op1Register);
                ulong v = d.Op switch
                {
                    Mnemonic.Pextrb => s.GetElement(d.I.Immediate8 & 15),
                    Mnemonic.Pextrd => s.AsUInt32().GetElement(d.I.Immediate8 & 3),
                    _ => s.AsUInt64().GetElement(d.I.Immediate8 & 1),
                };
                int size = d.Op switch { Mnemonic.Pextrb => 1, Mnemonic.Pextrd => 4, _ => 8 };
                if (d.I.Op0Kind == OpKind.Register) WriteReg(d.I.Op0Register, v); else WriteLin(MemAddr(ref d), size, v);
                return true;
            }
            case Mnemonic.Pinsrw: case Mnemonic.Pinsrb: case Mnemonic.Pinsrd: case Mnemonic.Pinsrq:
            {
                SseCheck();
                int size = d.Op switch { Mnemonic.Pinsrb => 1, Mnemonic.Pinsrw => 2, Mnemonic.Pinsrd => 4, _ => 8 };
                ulong v = d.I.Op1Kind == OpKind.Register ? ReadReg(d.I.Op1Register) : ReadLin(MemAddr(ref d), size);
                var a = Dst(ref d);
                int imm = d.I.Immediate8;
                XReg(d.I.Op0Register) = size switch
                {
                    1 => a.WithElement(imm & 15, (byte)v),
                    2 => a.AsUInt16().WithElement(imm & 7, (ushort)v).AsByte(),
                    4 => a.AsUInt32().WithElement(imm & 3, (uint)v).AsByte(),
                    _ => a.AsUInt64().WithElement(imm & 1, v).AsByte(),
                };
                return true;
            }
            case Mnemonic.Ptest:
            {
                SseCheck();
                var a = Dst(ref d); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory);
                SetArith(((a & b) == V.Zero ? ZF : 0) | (Vector128.AndNot(b, a) == V.Zero ? CF : 0));
                return true;
            }
            case Mnemonic.Pmovzxbw: case Mnemonic.Pmovzxbd: case Mnemonic.Pmovzxbq: case Mnemonic.Pmovzxwd: case Mnemonic.Pmovzxwq: case Mnemonic.Pmovzxdq:
            case Mnemonic.Pmovsxbw: case Mnemonic.Pmovsxbd: case Mnemonic.Pmovsxbq: case Mnemonic.Pmovsxwd: case Mnemonic.Pmovsxwq: case Mnemonic.Pmovsxdq:
            {
                SseCheck();
                var s = VecOp(ref d, 1);
                var (sx, from, to) = d.Op switch
                {
                    Mnemonic.Pmovzxbw => (false, 1, 2), Mnemonic.Pmovzxbd => (false, 1, 4), Mnemonic.Pmovzxbq => (false, 1, 8),
                    Mnemonic.Pmovzxwd => (false, 2, 4), Mnemonic.Pmovzxwq => (false, 2, 8), Mnemonic.Pmovzxdq => (false, 4, 8),
                    Mnemonic.Pmovsxbw => (true, 1, 2), Mnemonic.Pmovsxbd => (true, 1, 4), Mnemonic.Pmovsxbq => (true, 1, 8),
                    Mnemonic.Pmovsxwd => (true, 2, 4), Mnemonic.Pmovsxwq => (true, 2, 8), _ => (true, 4, 8),
                };
                Span<byte> src = stackalloc byte[16], dst = stackalloc byte[16];
                s.CopyTo(src);
                int count = 16 / to;
                for (int i = 0; i < count; i++)
                {
                    ulong v = 0;
                    for (int k = 0; k < from; k++) v |= (ulong)src[i * from + k] << (8 * k);
                    if (sx) v = SignExtend(v, from);
                    for (int k = 0; k < to; k++) dst[i * to + k] = (byte)(v >> (8 * k));
                }
                XReg(d.I.Op0Register) = Vector128.Create((ReadOnlySpan<byte>)dst);
                return true;
            }
            case Mnemonic.Pblendw: case Mnemonic.Blendps: case Mnemonic.Blendpd:
            {
                SseCheck();
                var a = Dst(ref d); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory);
                int imm = d.I.Immediate8;
                int es = d.Op switch { Mnemonic.Pblendw => 2, Mnemonic.Blendps => 4, _ => 8 };
                Span<byte> ra = stackalloc byte[16], rb = stackalloc byte[16];
                a.CopyTo(ra); b.CopyTo(rb);
                for (int i = 0; i < 16 / es; i++)
                    if (((imm >> i) & 1) != 0) rb.Slice(i * es, es).CopyTo(ra.Slice(i * es, es));
                XReg(d.I.Op0Register) = Vector128.Create((ReadOnlySpan<byte>)ra);
                return true;
            }
            case Mnemonic.Pblendvb: case Mnemonic.Blendvps: case Mnemonic.Blendvpd:
            {
                SseCheck();
                var a = Dst(ref d); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory);
                var mask = X[0];
                var m = Unsafe.As<Xmm, V>(ref mask);
                V sel = d.Op switch
                {
                    Mnemonic.Pblendvb => Vector128.ShiftRightArithmetic(m.AsSByte(), 7).AsByte(),
                    Mnemonic.Blendvps => Vector128.ShiftRightArithmetic(m.AsInt32(), 31).AsByte(),
                    _ => Vector128.ShiftRightArithmetic(m.AsInt64(), 63).AsByte(),
                };
                XReg(d.I.Op0Register) = Vector128.ConditionalSelect(sel, b, a);
                return true;
            }
        }
        return false;
    }

    private delegate V Func2(V a, V b);
}

/// <summary>Lane-wise helpers for the integer SIMD instructions: the host's SSE2/SSSE3/SSE4.1 when
/// present (the semantics are the guest's, lane for lane), portable loops otherwise.</summary>
internal static class Sat
{
    private static readonly bool Host = System.Runtime.Intrinsics.X86.Sse2.IsSupported;
    private static readonly bool Host41 = System.Runtime.Intrinsics.X86.Sse41.IsSupported;
    private static readonly bool HostSsse3 = System.Runtime.Intrinsics.X86.Ssse3.IsSupported;

    public static V AddU8(V a, V b) { if (Host) return X86S.AddSaturate(a, b); Span<byte> r = stackalloc byte[16]; for (int i = 0; i < 16; i++) r[i] = (byte)Math.Min(255, a[i] + b[i]); return Vector128.Create((ReadOnlySpan<byte>)r); }
    public static V SubU8(V a, V b) { if (Host) return X86S.SubtractSaturate(a, b); Span<byte> r = stackalloc byte[16]; for (int i = 0; i < 16; i++) r[i] = (byte)Math.Max(0, a[i] - b[i]); return Vector128.Create((ReadOnlySpan<byte>)r); }
    public static V AddS8(V a, V b) { if (Host) return X86S.AddSaturate(a.AsSByte(), b.AsSByte()).AsByte(); Span<sbyte> r = stackalloc sbyte[16]; var x = a.AsSByte(); var y = b.AsSByte(); for (int i = 0; i < 16; i++) r[i] = (sbyte)Math.Clamp(x[i] + y[i], -128, 127); return Vector128.Create((ReadOnlySpan<sbyte>)r).AsByte(); }
    public static V SubS8(V a, V b) { if (Host) return X86S.SubtractSaturate(a.AsSByte(), b.AsSByte()).AsByte(); Span<sbyte> r = stackalloc sbyte[16]; var x = a.AsSByte(); var y = b.AsSByte(); for (int i = 0; i < 16; i++) r[i] = (sbyte)Math.Clamp(x[i] - y[i], -128, 127); return Vector128.Create((ReadOnlySpan<sbyte>)r).AsByte(); }
    public static V AddU16(V a, V b) { if (Host) return X86S.AddSaturate(a.AsUInt16(), b.AsUInt16()).AsByte(); Span<ushort> r = stackalloc ushort[8]; var x = a.AsUInt16(); var y = b.AsUInt16(); for (int i = 0; i < 8; i++) r[i] = (ushort)Math.Min(65535, x[i] + y[i]); return Vector128.Create((ReadOnlySpan<ushort>)r).AsByte(); }
    public static V SubU16(V a, V b) { if (Host) return X86S.SubtractSaturate(a.AsUInt16(), b.AsUInt16()).AsByte(); Span<ushort> r = stackalloc ushort[8]; var x = a.AsUInt16(); var y = b.AsUInt16(); for (int i = 0; i < 8; i++) r[i] = (ushort)Math.Max(0, x[i] - y[i]); return Vector128.Create((ReadOnlySpan<ushort>)r).AsByte(); }
    public static V AddS16(V a, V b) { if (Host) return X86S.AddSaturate(a.AsInt16(), b.AsInt16()).AsByte(); Span<short> r = stackalloc short[8]; var x = a.AsInt16(); var y = b.AsInt16(); for (int i = 0; i < 8; i++) r[i] = (short)Math.Clamp(x[i] + y[i], -32768, 32767); return Vector128.Create((ReadOnlySpan<short>)r).AsByte(); }
    public static V SubS16(V a, V b) { if (Host) return X86S.SubtractSaturate(a.AsInt16(), b.AsInt16()).AsByte(); Span<short> r = stackalloc short[8]; var x = a.AsInt16(); var y = b.AsInt16(); for (int i = 0; i < 8; i++) r[i] = (short)Math.Clamp(x[i] - y[i], -32768, 32767); return Vector128.Create((ReadOnlySpan<short>)r).AsByte(); }
    public static V AvgU8(V a, V b) { if (Host) return X86S.Average(a, b); Span<byte> r = stackalloc byte[16]; for (int i = 0; i < 16; i++) r[i] = (byte)((a[i] + b[i] + 1) >> 1); return Vector128.Create((ReadOnlySpan<byte>)r); }
    public static V AvgU16(V a, V b) { if (Host) return X86S.Average(a.AsUInt16(), b.AsUInt16()).AsByte(); Span<ushort> r = stackalloc ushort[8]; var x = a.AsUInt16(); var y = b.AsUInt16(); for (int i = 0; i < 8; i++) r[i] = (ushort)((x[i] + y[i] + 1) >> 1); return Vector128.Create((ReadOnlySpan<ushort>)r).AsByte(); }
    public static V MulHi16(V a, V b, bool signed)
    {
        if (Host) return signed ? X86S.MultiplyHigh(a.AsInt16(), b.AsInt16()).AsByte() : X86S.MultiplyHigh(a.AsUInt16(), b.AsUInt16()).AsByte();
        Span<ushort> r = stackalloc ushort[8];
        for (int i = 0; i < 8; i++)
            r[i] = signed ? (ushort)((a.AsInt16()[i] * b.AsInt16()[i]) >> 16) : (ushort)((a.AsUInt16()[i] * b.AsUInt16()[i]) >> 16);
        return Vector128.Create((ReadOnlySpan<ushort>)r).AsByte();
    }
    public static V MaddWd(V a, V b)
    {
        if (Host) return X86S.MultiplyAddAdjacent(a.AsInt16(), b.AsInt16()).AsByte();
        Span<int> r = stackalloc int[4];
        var x = a.AsInt16(); var y = b.AsInt16();
        for (int i = 0; i < 4; i++) r[i] = unchecked(x[2 * i] * y[2 * i] + x[2 * i + 1] * y[2 * i + 1]);
        return Vector128.Create((ReadOnlySpan<int>)r).AsByte();
    }
    public static V Sad(V a, V b)
    {
        if (Host) return X86S.SumAbsoluteDifferences(a, b).AsByte();
        ulong lo = 0, hi = 0;
        for (int i = 0; i < 8; i++) lo += (ulong)Math.Abs(a[i] - b[i]);
        for (int i = 8; i < 16; i++) hi += (ulong)Math.Abs(a[i] - b[i]);
        return Vector128.Create(lo, hi).AsByte();
    }
    public static V Unpack(V a, V b, int es, bool high)
    {
        if (Host)
        {
            return es switch
            {
                1 => high ? X86S.UnpackHigh(a, b) : X86S.UnpackLow(a, b),
                2 => (high ? X86S.UnpackHigh(a.AsUInt16(), b.AsUInt16()) : X86S.UnpackLow(a.AsUInt16(), b.AsUInt16())).AsByte(),
                4 => (high ? X86S.UnpackHigh(a.AsUInt32(), b.AsUInt32()) : X86S.UnpackLow(a.AsUInt32(), b.AsUInt32())).AsByte(),
                _ => (high ? X86S.UnpackHigh(a.AsUInt64(), b.AsUInt64()) : X86S.UnpackLow(a.AsUInt64(), b.AsUInt64())).AsByte(),
            };
        }
        Span<byte> x = stackalloc byte[16], y = stackalloc byte[16], r = stackalloc byte[16];
        a.CopyTo(x); b.CopyTo(y);
        int off = high ? 8 : 0;
        for (int i = 0; i < 8 / es; i++)
        {
            x.Slice(off + i * es, es).CopyTo(r.Slice(2 * i * es, es));
            y.Slice(off + i * es, es).CopyTo(r.Slice((2 * i + 1) * es, es));
        }
        return Vector128.Create((ReadOnlySpan<byte>)r);
    }
    public static V PackSsWb(V a, V b) { if (Host) return X86S.PackSignedSaturate(a.AsInt16(), b.AsInt16()).AsByte(); Span<sbyte> r = stackalloc sbyte[16]; var x = a.AsInt16(); var y = b.AsInt16(); for (int i = 0; i < 8; i++) { r[i] = (sbyte)Math.Clamp((int)x[i], -128, 127); r[i + 8] = (sbyte)Math.Clamp((int)y[i], -128, 127); } return Vector128.Create((ReadOnlySpan<sbyte>)r).AsByte(); }
    public static V PackUsWb(V a, V b) { if (Host) return X86S.PackUnsignedSaturate(a.AsInt16(), b.AsInt16()); Span<byte> r = stackalloc byte[16]; var x = a.AsInt16(); var y = b.AsInt16(); for (int i = 0; i < 8; i++) { r[i] = (byte)Math.Clamp((int)x[i], 0, 255); r[i + 8] = (byte)Math.Clamp((int)y[i], 0, 255); } return Vector128.Create((ReadOnlySpan<byte>)r); }
    public static V PackSsDw(V a, V b) { if (Host) return X86S.PackSignedSaturate(a.AsInt32(), b.AsInt32()).AsByte(); Span<short> r = stackalloc short[8]; var x = a.AsInt32(); var y = b.AsInt32(); for (int i = 0; i < 4; i++) { r[i] = (short)Math.Clamp(x[i], -32768, 32767); r[i + 4] = (short)Math.Clamp(y[i], -32768, 32767); } return Vector128.Create((ReadOnlySpan<short>)r).AsByte(); }
    public static V PackUsDw(V a, V b) { if (Host41) return System.Runtime.Intrinsics.X86.Sse41.PackUnsignedSaturate(a.AsInt32(), b.AsInt32()).AsByte(); Span<ushort> r = stackalloc ushort[8]; var x = a.AsInt32(); var y = b.AsInt32(); for (int i = 0; i < 4; i++) { r[i] = (ushort)Math.Clamp(x[i], 0, 65535); r[i + 4] = (ushort)Math.Clamp(y[i], 0, 65535); } return Vector128.Create((ReadOnlySpan<ushort>)r).AsByte(); }
    public static V Pshufb(V a, V b) { if (HostSsse3) return System.Runtime.Intrinsics.X86.Ssse3.Shuffle(a, b); Span<byte> r = stackalloc byte[16]; for (int i = 0; i < 16; i++) r[i] = (b[i] & 0x80) != 0 ? (byte)0 : a[b[i] & 15]; return Vector128.Create((ReadOnlySpan<byte>)r); }

    public static V Shift(V a, Mnemonic op, ulong count)
    {
        switch (op)
        {
            case Mnemonic.Psllw: return count > 15 ? V.Zero : Vector128.ShiftLeft(a.AsUInt16(), (int)count).AsByte();
            case Mnemonic.Pslld: return count > 31 ? V.Zero : Vector128.ShiftLeft(a.AsUInt32(), (int)count).AsByte();
            case Mnemonic.Psllq: return count > 63 ? V.Zero : Vector128.ShiftLeft(a.AsUInt64(), (int)count).AsByte();
            case Mnemonic.Psrlw: return count > 15 ? V.Zero : Vector128.ShiftRightLogical(a.AsUInt16(), (int)count).AsByte();
            case Mnemonic.Psrld: return count > 31 ? V.Zero : Vector128.ShiftRightLogical(a.AsUInt32(), (int)count).AsByte();
            case Mnemonic.Psrlq: return count > 63 ? V.Zero : Vector128.ShiftRightLogical(a.AsUInt64(), (int)count).AsByte();
            case Mnemonic.Psraw: return Vector128.ShiftRightArithmetic(a.AsInt16(), (int)Math.Min(count, 15)).AsByte();
            default: return Vector128.ShiftRightArithmetic(a.AsInt32(), (int)Math.Min(count, 31)).AsByte();
        }
    }
}
