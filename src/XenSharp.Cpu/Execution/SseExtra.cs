using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Iced.Intel;
using XenSharp.Cpu.Decoding;
using V = System.Runtime.Intrinsics.Vector128<byte>;

namespace XenSharp.Cpu;

/// <summary>The rest of SSSE3 and SSE4.1, PCLMULQDQ, and AES-NI (on hosts that have it).</summary>
internal unsafe partial class X86Vcpu
{
    /// <summary>SSSE3 horizontal, sign and multiply operations on 128-bit values (the MMX forms
    /// pass their operands in the low halves, or side by side for the horizontal ones).</summary>
    private static V Ssse3Op(Mnemonic op, V av, V bv)
    {
        switch (op)
        {
            case Mnemonic.Phaddw: case Mnemonic.Phaddsw: case Mnemonic.Phsubw: case Mnemonic.Phsubsw:
            {
                var a = av.AsInt16(); var b = bv.AsInt16();
                bool sub = op is Mnemonic.Phsubw or Mnemonic.Phsubsw;
                bool sat = op is Mnemonic.Phaddsw or Mnemonic.Phsubsw;
                Span<short> r = stackalloc short[8];
                for (int i = 0; i < 4; i++)
                {
                    int x = sub ? a[2 * i] - a[2 * i + 1] : a[2 * i] + a[2 * i + 1];
                    int y = sub ? b[2 * i] - b[2 * i + 1] : b[2 * i] + b[2 * i + 1];
                    r[i] = sat ? (short)Math.Clamp(x, -32768, 32767) : (short)x;
                    r[i + 4] = sat ? (short)Math.Clamp(y, -32768, 32767) : (short)y;
                }
                return Vector128.Create((ReadOnlySpan<short>)r).AsByte();
            }
            case Mnemonic.Phaddd: case Mnemonic.Phsubd:
            {
                var a = av.AsInt32(); var b = bv.AsInt32();
                return (op == Mnemonic.Phsubd
                    ? Vector128.Create(a[0] - a[1], a[2] - a[3], b[0] - b[1], b[2] - b[3])
                    : Vector128.Create(a[0] + a[1], a[2] + a[3], b[0] + b[1], b[2] + b[3])).AsByte();
            }
            case Mnemonic.Pmaddubsw:
            {
                var a = av; var b = bv.AsSByte();
                Span<short> r = stackalloc short[8];
                for (int i = 0; i < 8; i++) r[i] = (short)Math.Clamp(a[2 * i] * b[2 * i] + a[2 * i + 1] * b[2 * i + 1], -32768, 32767);
                return Vector128.Create((ReadOnlySpan<short>)r).AsByte();
            }
            case Mnemonic.Pmulhrsw:
            {
                var a = av.AsInt16(); var b = bv.AsInt16();
                Span<short> r = stackalloc short[8];
                for (int i = 0; i < 8; i++) r[i] = (short)((((a[i] * b[i]) >> 14) + 1) >> 1);
                return Vector128.Create((ReadOnlySpan<short>)r).AsByte();
            }
            case Mnemonic.Psignb: return Sign(av.AsSByte(), bv.AsSByte()).AsByte();
            case Mnemonic.Psignw: return Sign(av.AsInt16(), bv.AsInt16()).AsByte();
            default: return Sign(av.AsInt32(), bv.AsInt32()).AsByte();
        }
    }

    private bool TrySseExtra(ref DecodedInsn d)
    {
        switch (d.Op)
        {
            case Mnemonic.Phaddw: case Mnemonic.Phaddsw: case Mnemonic.Phsubw: case Mnemonic.Phsubsw:
            case Mnemonic.Phaddd: case Mnemonic.Phsubd: case Mnemonic.Pmaddubsw: case Mnemonic.Pmulhrsw:
            case Mnemonic.Psignb: case Mnemonic.Psignw: case Mnemonic.Psignd:
            {
                SseCheck();
                var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory);
                XReg(d.I.Op0Register) = Ssse3Op(d.Op, Dst(ref d), b);
                return true;
            }
            case Mnemonic.Insertps:
            {
                SseCheck();
                int imm = d.I.Immediate8;
                uint v = d.I.Op1Kind == OpKind.Register ? XReg(d.I.Op1Register).AsUInt32()[(imm >> 6) & 3] : (uint)ReadLin(MemAddr(ref d), 4);
                var r = Dst(ref d).AsUInt32().WithElement((imm >> 4) & 3, v);
                for (int i = 0; i < 4; i++) if (((imm >> i) & 1) != 0) r = r.WithElement(i, 0u);
                XReg(d.I.Op0Register) = r.AsByte();
                return true;
            }
            case Mnemonic.Extractps:
            {
                SseCheck();
                uint v = XReg(d.I.Op1Register).AsUInt32()[d.I.Immediate8 & 3];
                if (d.I.Op0Kind == OpKind.Register) WriteReg(d.I.Op0Register, v); else WriteLin(MemAddr(ref d), 4, v);
                return true;
            }
            case Mnemonic.Dpps:
            {
                // Each selected product is rounded, then the four (+0.0 where not selected) are
                // added pairwise, (p0 + p1) + (p2 + p3), every step rounding and flagging as MXCSR
                // says; an unmasked exception in one step faults before the next.
                SseCheck();
                var a = Dst(ref d).AsUInt32(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt32();
                int imm = d.I.Immediate8;
                uint fl = 0;
                ulong p0 = (imm & 0x10) != 0 ? FpLane(SoftFloat.Op.Mul, a[0], b[0], false, ref fl) : 0;
                ulong p1 = (imm & 0x20) != 0 ? FpLane(SoftFloat.Op.Mul, a[1], b[1], false, ref fl) : 0;
                ulong p2 = (imm & 0x40) != 0 ? FpLane(SoftFloat.Op.Mul, a[2], b[2], false, ref fl) : 0;
                ulong p3 = (imm & 0x80) != 0 ? FpLane(SoftFloat.Op.Mul, a[3], b[3], false, ref fl) : 0;
                SimdFlags(fl); // an unmasked exception in one step stops before the next
                fl = 0;
                ulong lo = FpLane(SoftFloat.Op.Add, p0, p1, false, ref fl), hi = FpLane(SoftFloat.Op.Add, p2, p3, false, ref fl);
                SimdFlags(fl);
                fl = 0;
                uint sum = (uint)FpLane(SoftFloat.Op.Add, lo, hi, false, ref fl);
                SimdFlags(fl);
                XReg(d.I.Op0Register) = Vector128.Create((imm & 1) != 0 ? sum : 0, (imm & 2) != 0 ? sum : 0, (imm & 4) != 0 ? sum : 0, (imm & 8) != 0 ? sum : 0).AsByte();
                return true;
            }
            case Mnemonic.Dppd:
            {
                SseCheck();
                var a = Dst(ref d).AsUInt64(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt64();
                int imm = d.I.Immediate8;
                uint fl = 0;
                ulong p0 = (imm & 0x10) != 0 ? FpLane(SoftFloat.Op.Mul, a[0], b[0], true, ref fl) : 0;
                ulong p1 = (imm & 0x20) != 0 ? FpLane(SoftFloat.Op.Mul, a[1], b[1], true, ref fl) : 0;
                SimdFlags(fl);
                fl = 0;
                ulong sum = FpLane(SoftFloat.Op.Add, p0, p1, true, ref fl);
                SimdFlags(fl);
                XReg(d.I.Op0Register) = Vector128.Create((imm & 1) != 0 ? sum : 0, (imm & 2) != 0 ? sum : 0).AsByte();
                return true;
            }
            case Mnemonic.Mpsadbw:
            {
                SseCheck();
                var a = Dst(ref d); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory);
                int imm = d.I.Immediate8;
                int ao = ((imm >> 2) & 1) * 4, bo = (imm & 3) * 4;
                Span<ushort> r = stackalloc ushort[8];
                for (int i = 0; i < 8; i++)
                {
                    int s = 0;
                    for (int k = 0; k < 4; k++) s += Math.Abs(a[ao + i + k] - b[bo + k]);
                    r[i] = (ushort)s;
                }
                XReg(d.I.Op0Register) = Vector128.Create((ReadOnlySpan<ushort>)r).AsByte();
                return true;
            }
            case Mnemonic.Phminposuw:
            {
                SseCheck();
                var s = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt16();
                int idx = 0;
                for (int i = 1; i < 8; i++) if (s[i] < s[idx]) idx = i;
                XReg(d.I.Op0Register) = Vector128.Create(s[idx], (ushort)idx, 0, 0, 0, 0, 0, 0).AsByte();
                return true;
            }
            case Mnemonic.Pclmulqdq:
            {
                SseCheck();
                var a = Dst(ref d).AsUInt64(); var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory).AsUInt64();
                int imm = d.I.Immediate8;
                ulong x = a[imm & 1], y = b[(imm >> 4) & 1];
                ulong lo = 0, hi = 0;
                for (int i = 0; i < 64; i++)
                    if (((y >> i) & 1) != 0) { lo ^= x << i; if (i != 0) hi ^= x >> (64 - i); }
                XReg(d.I.Op0Register) = Vector128.Create(lo, hi).AsByte();
                return true;
            }
            case Mnemonic.Aesenc: case Mnemonic.Aesenclast: case Mnemonic.Aesdec: case Mnemonic.Aesdeclast:
            case Mnemonic.Aesimc: case Mnemonic.Aeskeygenassist:
            {
                if (!Aes.IsSupported) throw UD();
                SseCheck();
                var b = VecOp(ref d, 1, d.I.Op1Kind == OpKind.Memory);
                XReg(d.I.Op0Register) = d.Op switch
                {
                    Mnemonic.Aesenc => Aes.Encrypt(Dst(ref d), b),
                    Mnemonic.Aesenclast => Aes.EncryptLast(Dst(ref d), b),
                    Mnemonic.Aesdec => Aes.Decrypt(Dst(ref d), b),
                    Mnemonic.Aesdeclast => Aes.DecryptLast(Dst(ref d), b),
                    Mnemonic.Aesimc => Aes.InverseMixColumns(b),
                    _ => KeygenAssist(b, d.I.Immediate8),
                };
                return true;
            }
        }
        return false;
    }

    /// <summary>The AES S-box, read off the host's AESENCLAST (a state of equal bytes is unchanged by ShiftRows).</summary>
    private static readonly byte[] s_sbox = BuildSbox();

    private static byte[] BuildSbox()
    {
        var t = new byte[256];
        if (!Aes.IsSupported) return t;
        for (int x = 0; x < 256; x++) t[x] = Aes.EncryptLast(Vector128.Create((byte)x), V.Zero).GetElement(0);
        return t;
    }

    private static uint SubWord(uint w)
        => s_sbox[w & 0xFF] | ((uint)s_sbox[(w >> 8) & 0xFF] << 8) | ((uint)s_sbox[(w >> 16) & 0xFF] << 16) | ((uint)s_sbox[w >> 24] << 24);

    private static V KeygenAssist(V src, byte rcon)
    {
        var s = src.AsUInt32();
        uint x1 = SubWord(s[1]), x3 = SubWord(s[3]);
        return Vector128.Create(x1, System.Numerics.BitOperations.RotateRight(x1, 8) ^ rcon, x3, System.Numerics.BitOperations.RotateRight(x3, 8) ^ rcon).AsByte();
    }

    private static Vector128<T> Sign<T>(Vector128<T> a, Vector128<T> b) where T : unmanaged, System.Numerics.INumber<T>
    {
        var neg = Vector128.LessThan(b, Vector128<T>.Zero);
        var zero = Vector128.Equals(b, Vector128<T>.Zero);
        return Vector128.ConditionalSelect(zero, Vector128<T>.Zero, Vector128.ConditionalSelect(neg, -a, a));
    }
}
