using System.Numerics;
using System.Runtime.CompilerServices;
using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

internal enum AluOp { Add, Or, Adc, Sbb, And, Sub, Xor, Cmp, Test }

/// <summary>Integer arithmetic and logic: ADD..CMP, TEST, INC/DEC/NEG/NOT, MUL/DIV, XADD, CMPXCHG.</summary>
internal unsafe partial class X86Vcpu
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong Alu(AluOp op, ulong a, ulong b, int size, out ulong f)
    {
        ulong m = Mask(size);
        int top = size * 8 - 1;
        ulong res;
        switch (op)
        {
            case AluOp.Add:
            case AluOp.Adc:
            {
                ulong c = op == AluOp.Adc ? Rflags & CF : 0;
                res = (a + b + c) & m;
                f = Szp(res, size) | ((a ^ b ^ res) & AF);
                if (c != 0 ? res <= a : res < a) f |= CF;
                if ((((a ^ res) & (b ^ res)) >> top & 1) != 0) f |= OF;
                return res;
            }
            case AluOp.Sub:
            case AluOp.Sbb:
            case AluOp.Cmp:
            {
                ulong c = op == AluOp.Sbb ? Rflags & CF : 0;
                res = (a - b - c) & m;
                f = Szp(res, size) | ((a ^ b ^ res) & AF);
                if (c != 0 ? a <= b : a < b) f |= CF;
                if ((((a ^ b) & (a ^ res)) >> top & 1) != 0) f |= OF;
                return res;
            }
            case AluOp.And:
            case AluOp.Test:
                res = a & b; f = Szp(res, size); return res;
            case AluOp.Or:
                res = a | b; f = Szp(res, size); return res;
            default:
                res = (a ^ b) & m; f = Szp(res, size); return res;
        }
    }

    private void ExecAlu(ref DecodedInsn d, AluOp op)
    {
        int size = d.OpSize;
        ulong src = ReadOp1(ref d, size);
        bool writes = op != AluOp.Cmp && op != AluOp.Test;
        ulong f;
        if (d.I.Op0Kind == OpKind.Register)
        {
            var r = d.I.Op0Register;
            ulong res = Alu(op, ReadReg(r), src, size, out f);
            if (writes) WriteReg(r, res);
        }
        else
        {
            ulong lin = MemAddr(ref d);
            if (writes && d.I.HasLockPrefix)
            {
                byte* p = HostForRmw(lin, size);
                if (Abort != 0) return;
                if (p != null)
                {
                    ulong old;
                    do { old = AtomicLoad(p, size); Alu(op, old, src, size, out f); }
                    while (!Cas(p, size, old, Alu(op, old, src, size, out f)));
                    SetArith(f);
                    return;
                }
            }
            ulong a = ReadLin(lin, size);
            ulong res = Alu(op, a, src, size, out f);
            if (writes) WriteLin(lin, size, res);
        }
        SetArith(f);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong AtomicLoad(byte* p, int size) => size switch
    {
        1 => Volatile.Read(ref *p),
        2 => Volatile.Read(ref *(ushort*)p),
        4 => Volatile.Read(ref *(uint*)p),
        _ => Volatile.Read(ref *(ulong*)p),
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static bool Cas(byte* p, int size, ulong expected, ulong value) => size switch
    {
        1 => Interlocked.CompareExchange(ref *p, (byte)value, (byte)expected) == (byte)expected,
        2 => Interlocked.CompareExchange(ref *(ushort*)p, (ushort)value, (ushort)expected) == (ushort)expected,
        4 => Interlocked.CompareExchange(ref *(uint*)p, (uint)value, (uint)expected) == (uint)expected,
        _ => Interlocked.CompareExchange(ref *(ulong*)p, value, expected) == expected,
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong AtomicSwap(byte* p, int size, ulong value) => size switch
    {
        1 => Interlocked.Exchange(ref *p, (byte)value),
        2 => Interlocked.Exchange(ref *(ushort*)p, (ushort)value),
        4 => Interlocked.Exchange(ref *(uint*)p, (uint)value),
        _ => Interlocked.Exchange(ref *(ulong*)p, value),
    };

    /// <summary>Read-modify-write of operand 0 with a function of its old value; atomic with LOCK.</summary>
    private delegate ulong RmwFn(X86Vcpu cpu, ulong old, int size, out ulong flags);

    private enum UnOp { Inc, Dec, Neg, Not }

    private ulong Unary(UnOp op, ulong a, int size, out ulong f)
    {
        ulong m = Mask(size);
        int top = size * 8 - 1;
        ulong res;
        switch (op)
        {
            case UnOp.Inc:
                res = (a + 1) & m;
                f = Szp(res, size) | ((a ^ res) & AF) | (Rflags & CF);
                if (res == 1UL << top) f |= OF;
                return res;
            case UnOp.Dec:
                res = (a - 1) & m;
                f = Szp(res, size) | ((a ^ res) & AF) | (Rflags & CF);
                if (a == 1UL << top) f |= OF;
                return res;
            case UnOp.Neg:
                res = (0 - a) & m;
                f = Szp(res, size) | ((a ^ res) & AF);
                if (a != 0) f |= CF;
                if (a == 1UL << top) f |= OF;
                return res;
            default:
                f = Rflags & ArithFlags;
                return ~a & m;
        }
    }

    private void ExecUnary(ref DecodedInsn d, UnOp op)
    {
        int size = d.OpSize;
        ulong f;
        if (d.I.Op0Kind == OpKind.Register)
        {
            var r = d.I.Op0Register;
            WriteReg(r, Unary(op, ReadReg(r), size, out f));
        }
        else
        {
            ulong lin = MemAddr(ref d);
            if (d.I.HasLockPrefix)
            {
                byte* p = HostForRmw(lin, size);
                if (Abort != 0) return;
                if (p != null)
                {
                    ulong old;
                    do { old = AtomicLoad(p, size); }
                    while (!Cas(p, size, old, Unary(op, old, size, out f)));
                    SetArith(f);
                    return;
                }
            }
            ulong res = Unary(op, ReadLin(lin, size), size, out f);
            WriteLin(lin, size, res);
        }
        SetArith(f);
    }

    private void ExecXadd(ref DecodedInsn d)
    {
        int size = d.OpSize;
        var src = d.I.Op1Register;
        ulong b = ReadReg(src);
        ulong f;
        if (d.I.Op0Kind == OpKind.Register)
        {
            var r = d.I.Op0Register;
            ulong a = ReadReg(r);
            ulong res = Alu(AluOp.Add, a, b, size, out f);
            WriteReg(src, a);
            WriteReg(r, res);
        }
        else
        {
            ulong lin = MemAddr(ref d);
            byte* p = HostForRmw(lin, size);
            if (Abort != 0) return;
            ulong old;
            if (p != null)
            {
                do { old = AtomicLoad(p, size); }
                while (!Cas(p, size, old, Alu(AluOp.Add, old, b, size, out f)));
            }
            else
            {
                old = ReadLin(lin, size);
                WriteLin(lin, size, Alu(AluOp.Add, old, b, size, out f));
            }
            WriteReg(src, old);
        }
        SetArith(f);
    }

    private void ExecXchg(ref DecodedInsn d)
    {
        int size = d.OpSize;
        if (d.I.Op0Kind == OpKind.Register && d.I.Op1Kind == OpKind.Register)
        {
            var a = d.I.Op0Register; var b = d.I.Op1Register;
            ulong va = ReadReg(a), vb = ReadReg(b);
            WriteReg(a, vb); WriteReg(b, va);
            return;
        }
        var reg = d.I.Op0Kind == OpKind.Register ? d.I.Op0Register : d.I.Op1Register;
        ulong lin = MemAddr(ref d);
        ulong v = ReadReg(reg);
        byte* p = HostForRmw(lin, size);
        if (Abort != 0) return;
        ulong old;
        if (p != null) old = AtomicSwap(p, size, v);
        else { old = ReadLin(lin, size); WriteLin(lin, size, v); }
        WriteReg(reg, old);
    }

    private void ExecCmpxchg(ref DecodedInsn d)
    {
        int size = d.OpSize;
        var src = d.I.Op1Register;
        ulong acc = R[0] & Mask(size);
        ulong nv = ReadReg(src);
        ulong cur, f;
        if (d.I.Op0Kind == OpKind.Register)
        {
            var r = d.I.Op0Register;
            cur = ReadReg(r);
            Alu(AluOp.Cmp, acc, cur, size, out f);
            if (cur == acc) WriteReg(r, nv);
            else WriteAcc(size, cur);
        }
        else
        {
            ulong lin = MemAddr(ref d);
            byte* p = HostForRmw(lin, size);
            if (Abort != 0) return;
            if (p != null)
            {
                while (true)
                {
                    cur = AtomicLoad(p, size);
                    if (cur != acc) break;
                    if (Cas(p, size, acc, nv)) break;
                }
            }
            else
            {
                cur = ReadLin(lin, size);
                // The destination is always written (with the old value on failure).
                WriteLin(lin, size, cur == acc ? nv : cur);
            }
            Alu(AluOp.Cmp, acc, cur, size, out f);
            if (cur != acc) WriteAcc(size, cur);
        }
        SetArith(f);
    }

    private void WriteAcc(int size, ulong v)
    {
        switch (size)
        {
            case 1: R[0] = (R[0] & ~0xFFUL) | (byte)v; break;
            case 2: R[0] = (R[0] & ~0xFFFFUL) | (ushort)v; break;
            case 4: R[0] = (uint)v; break;
            default: R[0] = v; break;
        }
    }

    private void ExecCmpxchgWide(ref DecodedInsn d, bool is16)
    {
        if (is16)
        {
            // Misalignment (#GP) is checked before a non-canonical stack address (#SS).
            int seg = d.MemSplit ? d.MemSeg : d.I.MemorySegment - Register.ES;
            ulong ea = d.MemSplit ? FastEa(ref d) : Ea(ref d);
            if ((((Bitness == 64 && seg < FS) ? 0 : Seg[seg].Base) + ea & 15) != 0) throw GP();
        }
        ulong lin = MemAddr(ref d);
        if (is16)
        {
            if ((lin & 15) != 0) throw GP();
            ulong lo, hi;
            // The destination is written either way (a locked read-modify-write), so it is probed for writing first.
            byte* p = HostForRmw(lin, 16);
            if (Abort != 0) return;
            if (p != null)
            {
                // .NET has no 16-byte CAS: the pair is compared and swapped under the engine-wide lock that every
                // CMPXCHG16B on RAM takes. A failed compare writes nothing: writing back what was read would undo
                // another vCPU's CMPXCHG16B that completed after the read (Linux's SLUB updates a slab's freelist
                // and counters so from every CPU).
                lock (s_wideLock)
                {
                    lo = *(ulong*)p; hi = *(ulong*)(p + 8);
                    if (lo == R[0] && hi == R[2])
                    {
                        *(ulong*)p = R[3]; *(ulong*)(p + 8) = R[1];
                        Rflags |= ZF; return;
                    }
                }
            }
            else
            {
                lo = ReadLin(lin, 8); hi = ReadLin(lin + 8, 8);
                bool equal = lo == R[0] && hi == R[2];
                // Not plain RAM (MMIO, a watched page): the write cycle goes out, with the old value on failure.
                WriteLin(lin, 8, equal ? R[3] : lo); WriteLin(lin + 8, 8, equal ? R[1] : hi);
                if (equal) { Rflags |= ZF; return; }
            }
            R[0] = lo; R[2] = hi; Rflags &= ~ZF;
        }
        else
        {
            ulong expected = (uint)R[0] | ((ulong)(uint)R[2] << 32);
            ulong nv = (uint)R[3] | ((ulong)(uint)R[1] << 32);
            byte* p = HostForRmw(lin, 8);
            if (Abort != 0) return;
            ulong cur;
            if (p != null)
            {
                cur = Interlocked.CompareExchange(ref *(ulong*)p, nv, expected);
            }
            else
            {
                cur = ReadLin(lin, 8);
                WriteLin(lin, 8, cur == expected ? nv : cur);
            }
            if (cur == expected) Rflags |= ZF;
            else { Rflags &= ~ZF; R[0] = (uint)cur; R[2] = cur >> 32; }
        }
    }
    private static readonly object s_wideLock = new();

    // ---- multiply / divide ----

    private void ExecMul(ref DecodedInsn d, bool signed)
    {
        int size = d.OpSize;
        ulong src = ReadOp0(ref d, size);
        bool ov;
        ulong lowRes;
        switch (size)
        {
            case 1:
            {
                ulong r = signed ? (ulong)(ushort)((sbyte)(byte)R[0] * (sbyte)(byte)src) : (ulong)((byte)R[0] * (byte)src);
                R[0] = (R[0] & ~0xFFFFUL) | (ushort)r;
                ov = signed ? (short)(ushort)r != (sbyte)(byte)r : (r >> 8) != 0;
                lowRes = (byte)r;
                break;
            }
            case 2:
            {
                uint r = signed ? (uint)((short)(ushort)R[0] * (short)(ushort)src) : (uint)((ushort)R[0] * (ushort)src);
                R[0] = (R[0] & ~0xFFFFUL) | (ushort)r;
                R[2] = (R[2] & ~0xFFFFUL) | (ushort)(r >> 16);
                ov = signed ? (int)r != (short)(ushort)r : (r >> 16) != 0;
                lowRes = (ushort)r;
                break;
            }
            case 4:
            {
                ulong r = signed ? (ulong)((long)(int)(uint)R[0] * (int)(uint)src) : (ulong)(uint)R[0] * (uint)src;
                R[0] = (uint)r; R[2] = (uint)(r >> 32);
                ov = signed ? (long)r != (int)(uint)r : (r >> 32) != 0;
                lowRes = (uint)r;
                break;
            }
            default:
            {
                if (signed)
                {
                    long hi = Math.BigMul((long)R[0], (long)src, out long lo);
                    R[0] = (ulong)lo; R[2] = (ulong)hi;
                    ov = hi != (lo >> 63);
                }
                else
                {
                    ulong hi = Math.BigMul(R[0], src, out ulong lo);
                    R[0] = lo; R[2] = hi;
                    ov = hi != 0;
                }
                lowRes = R[0];
                break;
            }
        }
        SetArith(Szp(lowRes, size) | (ov ? CF | OF : 0));
    }

    /// <summary>IMUL with two or three operands: dest = src1 * src2 truncated.</summary>
    private void ExecImulN(ref DecodedInsn d)
    {
        int size = d.OpSize;
        ulong a, b;
        if (d.I.OpCount == 3) { a = ReadOp(ref d, 1, size); b = d.I.GetImmediate(2); }
        else { a = ReadReg(d.I.Op0Register); b = ReadOp(ref d, 1, size); }
        ulong res; bool ov;
        switch (size)
        {
            case 2: { int r = (short)a * (short)b; res = (ushort)r; ov = r != (short)r; break; }
            case 4: { long r = (long)(int)a * (int)b; res = (uint)r; ov = r != (int)r; break; }
            default: { long hi = Math.BigMul((long)a, (long)b, out long lo); res = (ulong)lo; ov = hi != (lo >> 63); break; }
        }
        WriteReg(d.I.Op0Register, res);
        SetArith(Szp(res, size) | (ov ? CF | OF : 0));
    }

    private void ExecDiv(ref DecodedInsn d, bool signed)
    {
        int size = d.OpSize;
        ulong src = ReadOp0(ref d, size);
        if (src == 0) throw Fault(0);
        switch (size)
        {
            case 1:
            {
                ushort n = (ushort)R[0];
                if (signed)
                {
                    int q = (short)n / (sbyte)(byte)src, r = (short)n % (sbyte)(byte)src;
                    if (q != (sbyte)q) throw Fault(0);
                    R[0] = (R[0] & ~0xFFFFUL) | (byte)q | ((ulong)(byte)r << 8);
                }
                else
                {
                    uint q = (uint)n / (byte)src, r = (uint)n % (byte)src;
                    if (q > 0xFF) throw Fault(0);
                    R[0] = (R[0] & ~0xFFFFUL) | q | ((ulong)r << 8);
                }
                break;
            }
            case 2:
            {
                uint n = (ushort)R[0] | ((uint)(ushort)R[2] << 16);
                ulong q, r;
                if (signed)
                {
                    // -2^31 / -1 overflows .NET's int division; on x86 it is #DE like any quotient overflow.
                    if ((int)n == int.MinValue && (short)src == -1) throw Fault(0);
                    int sq = (int)n / (short)src, sr = (int)n % (short)src;
                    if (sq != (short)sq) throw Fault(0);
                    q = (ushort)sq; r = (ushort)sr;
                }
                else
                {
                    q = n / (ushort)src; r = n % (ushort)src;
                    if (q > 0xFFFF) throw Fault(0);
                }
                R[0] = (R[0] & ~0xFFFFUL) | q; R[2] = (R[2] & ~0xFFFFUL) | r;
                break;
            }
            case 4:
            {
                ulong n = (uint)R[0] | ((ulong)(uint)R[2] << 32);
                if (signed)
                {
                    long dv = (int)(uint)src;
                    if ((long)n == long.MinValue && dv == -1) throw Fault(0);
                    long sq = (long)n / dv, sr = (long)n % dv;
                    if (sq != (int)sq) throw Fault(0);
                    R[0] = (uint)sq; R[2] = (uint)sr;
                }
                else
                {
                    ulong q = n / (uint)src;
                    if (q > 0xFFFF_FFFF) throw Fault(0);
                    R[0] = (uint)q; R[2] = (uint)(n % (uint)src);
                }
                break;
            }
            default:
            {
                if (signed)
                {
                    Int128 n = (Int128)(((UInt128)R[2] << 64) | R[0]);
                    Int128 dv = (long)src;
                    if (n == Int128.MinValue && dv == -1) throw Fault(0);
                    Int128 q = n / dv, r = n % dv;
                    if (q > long.MaxValue || q < long.MinValue) throw Fault(0);
                    R[0] = (ulong)(long)q; R[2] = (ulong)(long)r;
                }
                else
                {
                    if (R[2] >= src) throw Fault(0);
                    UInt128 n = ((UInt128)R[2] << 64) | R[0];
                    R[0] = (ulong)(n / src); R[2] = (ulong)(n % src);
                }
                break;
            }
        }
    }

    // ---- bit operations ----

    private void ExecBitTest(ref DecodedInsn d, int kind /*0 bt 1 bts 2 btr 3 btc*/)
    {
        int size = d.OpSize;
        int bits = size * 8;
        if (d.I.Op0Kind == OpKind.Register)
        {
            ulong off = ReadOp1(ref d, size) & (ulong)(bits - 1);
            var r = d.I.Op0Register;
            ulong v = ReadReg(r);
            bool bit = ((v >> (int)off) & 1) != 0;
            Rflags = (Rflags & ~CF) | (bit ? CF : 0);
            if (kind == 0) return;
            ulong m = 1UL << (int)off;
            WriteReg(r, kind == 1 ? v | m : kind == 2 ? v & ~m : v ^ m);
            return;
        }
        ulong lin;
        int bitIdx;
        if (d.I.Op1Kind == OpKind.Register)
        {
            // Register bit offsets address a bit string around the operand.
            long o = size switch { 2 => (short)ReadReg(d.I.Op1Register), 4 => (int)ReadReg(d.I.Op1Register), _ => (long)ReadReg(d.I.Op1Register) };
            ulong ea = Ea(ref d) + (ulong)((o >> 3) & ~(long)(size - 1));
            ea = d.AddrSize switch { 8 => ea, 4 => (uint)ea, _ => (ushort)ea };
            lin = Linear(d.I.MemorySegment - Register.ES, ea);
            if (d.MemStack) CheckStackCanonical(lin, (uint)size);
            bitIdx = (int)(o & (bits - 1));
        }
        else
        {
            lin = MemAddr(ref d);
            bitIdx = (int)(d.I.GetImmediate(1) & (ulong)(bits - 1));
        }
        ulong mask = 1UL << bitIdx;
        ulong old;
        byte* p = kind != 0 && d.I.HasLockPrefix ? HostForRmw(lin, size) : null;
        if (Abort != 0) return;
        if (p != null)
        {
            ulong nv;
            do
            {
                old = AtomicLoad(p, size);
                nv = kind == 1 ? old | mask : kind == 2 ? old & ~mask : old ^ mask;
            } while (!Cas(p, size, old, nv));
        }
        else
        {
            old = ReadLin(lin, size);
            if (kind != 0) WriteLin(lin, size, kind == 1 ? old | mask : kind == 2 ? old & ~mask : old ^ mask);
        }
        Rflags = (Rflags & ~CF) | ((old & mask) != 0 ? CF : 0);
    }

    private void ExecBitScan(ref DecodedInsn d, Mnemonic op)
    {
        int size = d.OpSize;
        ulong src = ReadOp1(ref d, size);
        int bits = size * 8;
        ulong res;
        switch (op)
        {
            case Mnemonic.Bsf:
            case Mnemonic.Bsr:
                if (src == 0) { SetArith((Rflags & ArithFlags & ~ZF) | ZF); return; }
                res = op == Mnemonic.Bsf ? (ulong)BitOperations.TrailingZeroCount(src) : (ulong)(63 - BitOperations.LeadingZeroCount(src));
                WriteReg(d.I.Op0Register, res);
                SetArith(Szp(res, size) & ~ZF);
                return;
            case Mnemonic.Tzcnt:
                res = src == 0 ? (ulong)bits : (ulong)BitOperations.TrailingZeroCount(src);
                break;
            case Mnemonic.Lzcnt:
                res = src == 0 ? (ulong)bits : (ulong)(BitOperations.LeadingZeroCount(src) - (64 - bits));
                break;
            default: // popcnt
                res = (ulong)BitOperations.PopCount(src);
                WriteReg(d.I.Op0Register, res);
                SetArith(src == 0 ? ZF : 0);
                return;
        }
        WriteReg(d.I.Op0Register, res);
        SetArith((src == 0 ? CF : 0) | (res == 0 ? ZF : 0) | (Rflags & (PF | AF | SF | OF)));
    }

    // ---- BCD ----

    private void ExecBcd(Mnemonic op, ref DecodedInsn d)
    {
        byte al = (byte)R[0];
        ulong f = Rflags;
        bool cf = (f & CF) != 0, af = (f & AF) != 0;
        switch (op)
        {
            case Mnemonic.Daa:
            {
                byte old = al; bool oldCf = cf;
                cf = false;
                if ((al & 0xF) > 9 || af) { al += 6; af = true; cf = oldCf || old > 0xF9; } else af = false;
                if (old > 0x99 || oldCf) { al += 0x60; cf = true; }
                R[0] = (R[0] & ~0xFFUL) | al;
                SetArith(Szp(al, 1) | (cf ? CF : 0) | (af ? AF : 0));
                return;
            }
            case Mnemonic.Das:
            {
                byte old = al; bool oldCf = cf;
                cf = false;
                if ((al & 0xF) > 9 || af) { cf = oldCf || al < 6; al -= 6; af = true; } else af = false;
                if (old > 0x99 || oldCf) { al -= 0x60; cf = true; }
                R[0] = (R[0] & ~0xFFUL) | al;
                SetArith(Szp(al, 1) | (cf ? CF : 0) | (af ? AF : 0));
                return;
            }
            case Mnemonic.Aaa:
            case Mnemonic.Aas:
            {
                ulong ax = (ushort)R[0];
                if ((al & 0xF) > 9 || af)
                {
                    ax = op == Mnemonic.Aaa ? ax + 0x106 : ax - 0x106;
                    af = cf = true;
                }
                else af = cf = false;
                ax &= 0xFF0F;
                R[0] = (R[0] & ~0xFFFFUL) | (ushort)ax;
                SetArith(Szp(ax & 0xFF, 1) | (cf ? CF : 0) | (af ? AF : 0));
                return;
            }
            case Mnemonic.Aam:
            {
                byte b = (byte)d.I.Immediate8;
                if (b == 0) throw Fault(0);
                byte ah = (byte)(al / b); al = (byte)(al % b);
                R[0] = (R[0] & ~0xFFFFUL) | al | ((ulong)ah << 8);
                SetArith(Szp(al, 1));
                return;
            }
            default: // AAD
            {
                byte b = (byte)d.I.Immediate8;
                byte ah = (byte)(R[0] >> 8);
                al = (byte)(al + ah * b);
                R[0] = (R[0] & ~0xFFFFUL) | al;
                SetArith(Szp(al, 1));
                return;
            }
        }
    }
}
