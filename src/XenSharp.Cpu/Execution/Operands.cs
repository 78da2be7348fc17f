using System.Runtime.CompilerServices;
using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>Register, memory and immediate operands of decoded instructions.</summary>
internal unsafe partial class X86Vcpu
{
    private static readonly sbyte[] s_gpr;
    private static readonly byte[] s_size;
    private static readonly bool[] s_high;

    static X86Vcpu()
    {
        var all = Enum.GetValues<Register>();
        int max = 0;
        foreach (var r in all) max = Math.Max(max, (int)r);
        s_gpr = new sbyte[max + 1];
        s_size = new byte[max + 1];
        s_high = new bool[max + 1];
        foreach (var r in all)
        {
            s_gpr[(int)r] = -1;
            if (r == Register.None) continue;
            if (r.IsGPR())
            {
                s_gpr[(int)r] = (sbyte)r.GetFullRegister().GetNumber();
                s_size[(int)r] = (byte)r.GetSize();
                s_high[(int)r] = r is Register.AH or Register.CH or Register.DH or Register.BH;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong Mask(int size) => size >= 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong ReadReg(Register r)
    {
        int i = (int)r;
        int g = s_gpr[i];
        switch (s_size[i])
        {
            case 8: return R[g];
            case 4: return (uint)R[g];
            case 2: return (ushort)R[g];
            case 1: return s_high[i] ? (byte)(R[g] >> 8) : (byte)R[g];
        }
        return ReadOtherReg(r);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void WriteReg(Register r, ulong v)
    {
        int i = (int)r;
        int g = s_gpr[i];
        switch (s_size[i])
        {
            case 8: R[g] = v; return;
            case 4: R[g] = (uint)v; return;
            case 2: R[g] = (R[g] & ~0xFFFFUL) | (ushort)v; return;
            case 1:
                if (s_high[i]) R[g] = (R[g] & ~0xFF00UL) | ((v & 0xFF) << 8);
                else R[g] = (R[g] & ~0xFFUL) | (byte)v;
                return;
        }
        WriteOtherReg(r, v);
    }

    private ulong ReadOtherReg(Register r)
    {
        if (r.IsSegmentRegister()) return Seg[r - Register.ES].Sel;
        throw Exit(VcpuExitReason.InternalError, $"register operand {r} not supported here");
    }

    private void WriteOtherReg(Register r, ulong v)
    {
        if (r.IsSegmentRegister()) { LoadSegment(r - Register.ES, (ushort)v); return; }
        throw Exit(VcpuExitReason.InternalError, $"register operand {r} not supported here");
    }

    /// <summary>The offset part of the memory operand, wrapped to the address size.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong Ea(ref DecodedInsn d)
    {
        if (d.MemSplit) return FastEa(ref d);
        ref Instruction i = ref d.I;
        ulong a = i.MemoryDisplacement64;
        var b = i.MemoryBase;
        if (b != Register.None)
        {
            if (b == Register.RIP || b == Register.EIP) return d.AddrSize == 4 ? (uint)a : a;
            a += ReadReg(b);
        }
        var x = i.MemoryIndex;
        if (x != Register.None) a += ReadReg(x) * (ulong)i.MemoryIndexScale;
        return d.AddrSize switch { 8 => a, 4 => (uint)a, _ => (ushort)a };
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong SegBase(int seg) => Seg[seg].Base;

    /// <summary>Linear address of segment:offset (64-bit mode ignores all bases but FS and GS).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong Linear(int seg, ulong off) => Linear(seg, off, 1);

    /// <summary>Linear address of a <paramref name="len"/>-byte access at segment:offset; outside
    /// 64-bit mode every byte of it must lie within the segment limit.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong Linear(int seg, ulong off, uint len)
    {
        if (Bitness == 64) return seg >= FS ? Seg[seg].Base + off : off;
        ref SegReg s = ref Seg[seg];
        if (off + len - 1 > s.Limit || (s.Attr & 0x1C) == 0x14) CheckLimit(seg, off, len);
        return (uint)(s.Base + off);
    }

    /// <summary>Segment limit check outside 64-bit mode (first and last byte of the access): #GP,
    /// or #SS for the stack segment (pushes and pops too). Expand-down data segments hold
    /// (limit, 0xFFFF or 0xFFFFFFFF].</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CheckLimit(int seg, ulong off, uint len)
    {
        ref SegReg s = ref Seg[seg];
        if ((s.Attr & 0x80) == 0) return; // unusable: left to the descriptor checks at load time
        ulong last = off + len - 1;
        bool ok;
        if ((s.Attr & 0x1C) == 0x14) ok = off > s.Limit && last <= (s.Big ? 0xFFFF_FFFFUL : 0xFFFFUL);
        else ok = last <= s.Limit;
        if (!ok) throw seg == SS ? Fault(12, 0) : GP();
    }

    /// <summary>#AC(0) for a misaligned data access; called only while CR0.AM is set at CPL 3 and EFLAGS.AC is set
    /// (<see cref="_acUser"/>), so the common case costs one flag test.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CheckAlignment(ulong lin, uint len)
    {
        if ((Rflags & 0x40000) == 0) return;
        // Natural alignment for 2/4/8/16 bytes; 8 for x87 80-bit values, 4 for far pointers,
        // 16 for the FXSAVE/XSAVE areas, 2 or 4 for the x87 environment images.
        uint align = len switch { 10 => 8, 6 => 4, >= 16 => 16, _ => len >= 8 ? 8u : len >= 4 ? 4u : len >= 2 ? 2u : 1u };
        if ((lin & (align - 1)) != 0) throw Fault(17, 0);
    }

    /// <summary>In 64-bit mode a non-canonical stack address (push, pop, an RSP/RBP-based operand:
    /// <see cref="DecodedInsn.MemStack"/>) raises #SS(0), not the #GP(0) of other accesses.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void CheckStackCanonical(ulong lin, uint len)
    {
        if (Bitness == 64 && (!Canonical(lin) || !Canonical(lin + len - 1))) throw Fault(12, 0);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong MemAddr(ref DecodedInsn d)
    {
        if (d.MemSplit) return FastAddr(ref d);
        int seg = d.I.MemorySegment - Register.ES;
        ulong lin = Linear(seg, Ea(ref d), d.MemBytes);
        if (d.MemStack) CheckStackCanonical(lin, d.MemBytes);
        if (_acUser && (Rflags & 0x40000) != 0) CheckAlignment(lin, d.MemBytes);
        return lin;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong ReadOp(ref DecodedInsn d, int n, int size)
    {
        switch (d.I.GetOpKind(n))
        {
            case OpKind.Register: return ReadReg(d.I.GetOpRegister(n));
            case OpKind.Memory: return ReadLin(MemAddr(ref d), size);
            default: return d.I.GetImmediate(n) & Mask(size);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong ReadOp0(ref DecodedInsn d, int size)
    {
        if (d.I.Op0Kind == OpKind.Register) return ReadReg(d.I.Op0Register);
        return ReadLin(MemAddr(ref d), size);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong ReadOp1(ref DecodedInsn d, int size)
    {
        switch (d.I.Op1Kind)
        {
            case OpKind.Register: return ReadReg(d.I.Op1Register);
            case OpKind.Memory: return ReadLin(MemAddr(ref d), size);
            default: return d.I.GetImmediate(1) & Mask(size);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void WriteOp0(ref DecodedInsn d, int size, ulong v)
    {
        if (d.I.Op0Kind == OpKind.Register) WriteReg(d.I.Op0Register, v);
        else WriteLin(MemAddr(ref d), size, v);
    }

    // ---- stack ----

    internal int StackSize => Bitness == 64 ? 8 : Seg[SS].Big ? 4 : 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Push(ulong v, int size)
    {
        ulong sp;
        if (Bitness == 64)
        {
            sp = R[4] - (ulong)size;
            CheckStackCanonical(sp, (uint)size);
            if (_acUser && (Rflags & 0x40000) != 0) CheckAlignment(sp, (uint)size);
            WriteLin(sp, size, v);
            R[4] = sp;
        }
        else if (Seg[SS].Big)
        {
            sp = (uint)(R[4] - (ulong)size);
            ulong lin = Linear(SS, sp, (uint)size);
            if (_acUser && (Rflags & 0x40000) != 0) CheckAlignment(lin, (uint)size);
            WriteLin(lin, size, v);
            R[4] = sp;
        }
        else
        {
            sp = (ushort)(R[4] - (ulong)size);
            ulong lin = Linear(SS, sp, (uint)size);
            if (_acUser && (Rflags & 0x40000) != 0) CheckAlignment(lin, (uint)size);
            WriteLin(lin, size, v);
            R[4] = (R[4] & ~0xFFFFUL) | sp;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong Pop(int size)
    {
        ulong v;
        if (Bitness == 64)
        {
            CheckStackCanonical(R[4], (uint)size);
            if (_acUser && (Rflags & 0x40000) != 0) CheckAlignment(R[4], (uint)size);
            v = ReadLin(R[4], size);
            R[4] += (ulong)size;
        }
        else if (Seg[SS].Big)
        {
            ulong lin = Linear(SS, (uint)R[4], (uint)size);
            if (_acUser && (Rflags & 0x40000) != 0) CheckAlignment(lin, (uint)size);
            v = ReadLin(lin, size);
            R[4] = (uint)(R[4] + (ulong)size);
        }
        else
        {
            ulong lin = Linear(SS, (ushort)R[4], (uint)size);
            if (_acUser && (Rflags & 0x40000) != 0) CheckAlignment(lin, (uint)size);
            v = ReadLin(lin, size);
            R[4] = (R[4] & ~0xFFFFUL) | (ushort)(R[4] + (ulong)size);
        }
        return v;
    }

    /// <summary>Reads the stack slot <paramref name="offset"/> bytes above SP without popping.</summary>
    internal ulong PeekStack(ulong offset, int size)
    {
        ulong lin = Bitness == 64 ? R[4] + offset
            : Linear(SS, Seg[SS].Big ? (uint)(R[4] + offset) : (ushort)(R[4] + offset), (uint)size);
        if (_acUser && (Rflags & 0x40000) != 0) CheckAlignment(lin, (uint)size);
        return ReadLin(lin, size);
    }

    internal void AddSp(long delta)
    {
        if (Bitness == 64) R[4] += (ulong)delta;
        else if (Seg[SS].Big) R[4] = (uint)(R[4] + (ulong)delta);
        else R[4] = (R[4] & ~0xFFFFUL) | (ushort)(R[4] + (ulong)delta);
    }

    // ---- flags ----

    internal static readonly byte[] s_parity = BuildParity();
    private static byte[] BuildParity()
    {
        var t = new byte[256];
        for (int i = 0; i < 256; i++) t[i] = (byte)((System.Numerics.BitOperations.PopCount((uint)i) & 1) == 0 ? 4 : 0);
        return t;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong Szp(ulong res, int size)
    {
        ulong f = s_parity[(byte)res];
        if ((res & Mask(size)) == 0) f |= ZF;
        if (((res >> (size * 8 - 1)) & 1) != 0) f |= SF;
        return f;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void SetArith(ulong f) => Rflags = (Rflags & ~ArithFlags) | f;

    /// <summary>Whether condition <paramref name="cc"/> holds. Iced numbers the conditions in x86's pairs (o/no,
    /// b/ae, e/ne, be/a, s/ns, p/np, l/ge, le/g), the second of each the negation: all eight tests are taken at
    /// once into a byte and one bit picked, so the interpreter's hot branches cost no indirect jump.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool Cond(ConditionCode cc)
    {
        if (cc == ConditionCode.None) return true;
        uint f = (uint)Rflags;
        uint cf = f & 1, pf = (f >> 2) & 1, zf = (f >> 6) & 1, sf = (f >> 7) & 1, of = (f >> 11) & 1;
        uint lt = sf ^ of;
        uint tests = of | (cf << 1) | (zf << 2) | ((cf | zf) << 3) | (sf << 4) | (pf << 5) | (lt << 6) | ((zf | lt) << 7);
        int k = (int)cc - 1;
        return (((tests >> (k >> 1)) ^ (uint)k) & 1) != 0;
    }
}
