using System.Numerics;
using System.Runtime.CompilerServices;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>The fast forms: full-width register and simple memory shapes run from the
/// precomputed operand numbers instead of Iced's operand accessors.</summary>
internal unsafe partial class X86Vcpu
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Put(int reg, int size, ulong v) => R[reg] = size == 8 ? v : (uint)v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong FastEa(ref DecodedInsn d)
    {
        ulong a = d.MemDisp;
        if (d.MemBase != 0xFF) a += R[d.MemBase];
        if (d.MemIndex != 0xFF) a += R[d.MemIndex] << d.MemShift;
        return d.AddrSize == 8 ? a : (uint)a;
    }

    /// <summary>Linear address of the pre-split memory operand (fast forms exist only for 32/64-bit addressing).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong FastAddr(ref DecodedInsn d)
    {
        ulong ea = FastEa(ref d);
        ulong lin = Bitness == 64 ? (d.MemSeg >= FS ? Seg[d.MemSeg].Base + ea : ea) : Linear(d.MemSeg, ea, d.MemBytes);
        if (d.MemStack) CheckStackCanonical(lin, d.MemBytes);
        if (_acUser && (Rflags & 0x40000) != 0) CheckAlignment(lin, d.MemBytes);
        return lin;
    }

    /// <summary>An 8- or 16-bit GPR: <paramref name="sh"/> is 8 for AH..BH.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong GetN(int reg, int sh, int size) => size == 1 ? (byte)(R[reg] >> sh) : (ushort)R[reg];

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void PutN(int reg, int sh, int size, ulong v)
    {
        ulong m = (size == 1 ? 0xFFUL : 0xFFFFUL) << sh;
        R[reg] = (R[reg] & ~m) | ((v << sh) & m);
    }

    /// <summary>The fast forms' dispatch: the simplest run here, every other form in its own small method, so
    /// that this switch keeps a frame of almost nothing (every instruction pays its prologue) and each handler
    /// gets its helpers inlined (one big method runs out of the JIT's inlining budget).</summary>
    private void ExecFast(ref DecodedInsn d)
    {
        switch (d.Form)
        {
            case FastForm.MovRR: Put(d.R0, d.OpSize, R[d.R1]); return;
            case FastForm.MovRI: R[d.R0] = d.Imm; return;
            case FastForm.Jcc:
                if (Cond((Iced.Intel.ConditionCode)d.AluKind)) Rip = d.Imm;
                return;
            case FastForm.JmpRel: Rip = d.Imm; return;
            case FastForm.Nop: return;
            case FastForm.AddRR: FastAluReg(ref d, AluOp.Add, false); return;
            case FastForm.OrRR: FastAluReg(ref d, AluOp.Or, false); return;
            case FastForm.AndRR: FastAluReg(ref d, AluOp.And, false); return;
            case FastForm.SubRR: FastAluReg(ref d, AluOp.Sub, false); return;
            case FastForm.XorRR: FastAluReg(ref d, AluOp.Xor, false); return;
            case FastForm.CmpRR: FastAluReg(ref d, AluOp.Cmp, false); return;
            case FastForm.TestRR: FastAluReg(ref d, AluOp.Test, false); return;
            case FastForm.AddRI: FastAluReg(ref d, AluOp.Add, true); return;
            case FastForm.OrRI: FastAluReg(ref d, AluOp.Or, true); return;
            case FastForm.AndRI: FastAluReg(ref d, AluOp.And, true); return;
            case FastForm.SubRI: FastAluReg(ref d, AluOp.Sub, true); return;
            case FastForm.XorRI: FastAluReg(ref d, AluOp.Xor, true); return;
            case FastForm.CmpRI: FastAluReg(ref d, AluOp.Cmp, true); return;
            case FastForm.TestRI: FastAluReg(ref d, AluOp.Test, true); return;
            case FastForm.AluRR:
            case FastForm.AluRI: FastAluRegAny(ref d); return;
            case FastForm.MovRM: FastMovRM(ref d); return;
            case FastForm.MovMR: FastMovMR(ref d); return;
            case FastForm.MovMI: FastMovMI(ref d); return;
            case FastForm.Lea: FastLea(ref d); return;
            case FastForm.IncR:
            case FastForm.DecR: FastIncDec(ref d); return;
            case FastForm.AluRM: FastAluRM(ref d); return;
            case FastForm.AluMR:
            case FastForm.AluMI: FastAluMem(ref d); return;
            case FastForm.MovzxRM: FastMovzxRM(ref d); return;
            case FastForm.CallRel: FastCall(ref d); return;
            case FastForm.RetNear: FastRet(ref d); return;
            case FastForm.PushR: FastPush(ref d); return;
            case FastForm.PopR: FastPop(ref d); return;
            case FastForm.AluRRn:
            case FastForm.AluRIn:
            case FastForm.AluRMn: FastAluNarrow(ref d); return;
            case FastForm.ShiftRI:
            case FastForm.ShiftRC: FastShift(ref d); return;
            case FastForm.MovxRR: FastMovx(ref d); return;
            case FastForm.CmovRR: FastCmov(ref d); return;
            case FastForm.SetccR: FastSetcc(ref d); return;
            case FastForm.ImulRR:
            case FastForm.ImulRRI: FastImul(ref d); return;
            case FastForm.NotR: FastNot(ref d); return;
            case FastForm.NegR: FastNeg(ref d); return;
        }
    }

    /// <summary>op r32/64, r32/64 or imm with <paramref name="op"/> a constant at each call site, so that each
    /// copy holds only that operation's code.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastAluReg(ref DecodedInsn d, AluOp op, bool imm)
    {
        int size = d.OpSize;
        ulong m = size == 8 ? ulong.MaxValue : 0xFFFF_FFFF;
        ulong res = Alu(op, R[d.R0] & m, imm ? d.Imm : R[d.R1] & m, size, out ulong f);
        if (op != AluOp.Cmp && op != AluOp.Test) Put(d.R0, size, res);
        Rflags = (Rflags & ~ArithFlags) | f;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastAluRegAny(ref DecodedInsn d)
    {
        int size = d.OpSize;
        ulong m = size == 8 ? ulong.MaxValue : 0xFFFF_FFFF;
        var op = (AluOp)d.AluKind;
        ulong res = Alu(op, R[d.R0] & m, d.Form == FastForm.AluRI ? d.Imm : R[d.R1] & m, size, out ulong f);
        if (op != AluOp.Cmp && op != AluOp.Test) Put(d.R0, size, res);
        Rflags = (Rflags & ~ArithFlags) | f;
    }

    // The fast forms' memory accesses record a page fault in Abort (RunBlock returns at once and the run loop
    // delivers it) rather than throwing it: cold code meets not-present pages all the time (a program's first touch
    // of its stack, heap and data, copy-on-write after fork), and a thrown fault costs microseconds. Nothing is
    // written back after a faulting access.

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastMovRM(ref DecodedInsn d)
    {
        int size = d.OpSize;
        ulong v = ReadLinSoft(FastAddr(ref d), size);
        if (Abort != 0) return;
        Put(d.R0, size, v);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastMovMR(ref DecodedInsn d) => WriteLinSoft(FastAddr(ref d), d.OpSize, R[d.R1]);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastMovMI(ref DecodedInsn d) => WriteLinSoft(FastAddr(ref d), d.OpSize, d.Imm);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastLea(ref DecodedInsn d) => Put(d.R0, d.OpSize, FastEa(ref d));

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastIncDec(ref DecodedInsn d)
    {
        int size = d.OpSize;
        ulong m = size == 8 ? ulong.MaxValue : 0xFFFF_FFFF;
        ulong a = R[d.R0] & m;
        ulong res = Unary(d.Form == FastForm.IncR ? UnOp.Inc : UnOp.Dec, a, size, out ulong f);
        Put(d.R0, size, res);
        Rflags = (Rflags & ~ArithFlags) | f;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastAluRM(ref DecodedInsn d)
    {
        int size = d.OpSize;
        ulong m = size == 8 ? ulong.MaxValue : 0xFFFF_FFFF;
        var op = (AluOp)d.AluKind;
        ulong b = ReadLinSoft(FastAddr(ref d), size);
        if (Abort != 0) return;
        ulong res = Alu(op, R[d.R0] & m, b, size, out ulong f);
        if (op != AluOp.Cmp && op != AluOp.Test) Put(d.R0, size, res);
        Rflags = (Rflags & ~ArithFlags) | f;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastAluMem(ref DecodedInsn d)
    {
        int size = d.OpSize;
        var op = (AluOp)d.AluKind;
        ulong lin = FastAddr(ref d);
        ulong a = ReadLinSoft(lin, size);
        if (Abort != 0) return;
        ulong b = d.Form == FastForm.AluMI ? d.Imm : (size == 8 ? R[d.R1] : (uint)R[d.R1]);
        ulong res = Alu(op, a, b, size, out ulong f);
        if (op != AluOp.Cmp && op != AluOp.Test)
        {
            WriteLinSoft(lin, size, res);
            if (Abort != 0) return;
        }
        Rflags = (Rflags & ~ArithFlags) | f;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastMovzxRM(ref DecodedInsn d)
    {
        ulong v = ReadLinSoft(FastAddr(ref d), d.AluKind);
        if (Abort != 0) return;
        Put(d.R0, d.OpSize, v);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastCall(ref DecodedInsn d)
    {
        if (!PushSoft(Rip, d.AluKind)) return;
        Rip = d.Imm;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastRet(ref DecodedInsn d) => Rip = Pop(d.AluKind);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastPush(ref DecodedInsn d) => PushSoft(R[d.R0], d.OpSize);

    /// <summary><see cref="Push"/> with a page fault in 64-bit code recorded in Abort (false, RSP unchanged).</summary>
    private bool PushSoft(ulong v, int size)
    {
        if (Bitness != 64)
        {
            Push(v, size);
            return true;
        }
        ulong sp = R[4] - (ulong)size;
        CheckStackCanonical(sp, (uint)size);
        if (_acUser && (Rflags & 0x40000) != 0) CheckAlignment(sp, (uint)size);
        WriteLinSoft(sp, size, v);
        if (Abort != 0) return false;
        R[4] = sp;
        return true;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastPop(ref DecodedInsn d)
    {
        int size = d.OpSize;
        ulong v = Pop(size);
        Put(d.R0, size, v);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastAluNarrow(ref DecodedInsn d)
    {
        int size = d.OpSize;
        var op = (AluOp)d.AluKind;
        ulong b = d.Form switch
        {
            FastForm.AluRRn => GetN(d.R1, d.Sh1, size),
            FastForm.AluRIn => d.Imm,
            _ => ReadLin(FastAddr(ref d), size),
        };
        ulong res = Alu(op, GetN(d.R0, d.Sh0, size), b, size, out ulong f);
        if (op != AluOp.Cmp && op != AluOp.Test) PutN(d.R0, d.Sh0, size, res);
        Rflags = (Rflags & ~ArithFlags) | f;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastShift(ref DecodedInsn d)
    {
        int size = d.OpSize;
        int count = d.Form == FastForm.ShiftRI ? (int)d.Imm : (int)R[1] & (size == 8 ? 63 : 31);
        ulong a = size == 8 ? R[d.R0] : (uint)R[d.R0];
        if (count == 0)
        {
            // Flags unchanged; a 32-bit destination is still written (bits 63:32 cleared).
            Put(d.R0, size, a);
            return;
        }
        // The count is below the operand width here.
        int top = size * 8 - 1;
        ulong res, f;
        switch (d.AluKind)
        {
            case 0:
            {
                res = size == 8 ? a << count : (uint)(a << count);
                bool cf = ((a >> (top + 1 - count)) & 1) != 0;
                f = Szp(res, size) | (cf ? CF : 0);
                if ((((res >> top) & 1) != 0) != cf) f |= OF;
                break;
            }
            case 1:
            {
                res = a >> count;
                f = Szp(res, size) | ((a >> (count - 1)) & 1);
                if (((a >> top) & 1) != 0 && count == 1) f |= OF;
                break;
            }
            case 2:
            {
                long sa = size == 8 ? (long)a : (int)(uint)a;
                res = size == 8 ? (ulong)(sa >> count) : (uint)(sa >> count);
                f = Szp(res, size) | ((ulong)(sa >> (count - 1)) & 1);
                break;
            }
            case 3:
            {
                res = size == 8 ? BitOperations.RotateLeft(a, count) : BitOperations.RotateLeft((uint)a, count);
                ulong cf = res & 1;
                f = (Rflags & ArithFlags & ~(CF | OF)) | cf;
                if (((res >> top) & 1) != cf) f |= OF;
                break;
            }
            default:
            {
                res = size == 8 ? BitOperations.RotateRight(a, count) : BitOperations.RotateRight((uint)a, count);
                ulong msb = (res >> top) & 1;
                f = (Rflags & ArithFlags & ~(CF | OF)) | msb;
                if (msb != ((res >> (top - 1)) & 1)) f |= OF;
                break;
            }
        }
        Put(d.R0, size, res);
        Rflags = (Rflags & ~ArithFlags) | f;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastMovx(ref DecodedInsn d)
    {
        int ss = d.AluKind;
        ulong v = ss == 4 ? (uint)R[d.R1] : GetN(d.R1, d.Sh1, ss);
        if (d.Imm != 0) v = SignExtend(v, ss);
        Put(d.R0, d.OpSize, v);
    }

    /// <summary>A false condition still writes a 32-bit destination (bits 63:32 cleared).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastCmov(ref DecodedInsn d)
        => Put(d.R0, d.OpSize, Cond((Iced.Intel.ConditionCode)d.AluKind) ? R[d.R1] : R[d.R0]);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastSetcc(ref DecodedInsn d)
        => PutN(d.R0, d.Sh0, 1, Cond((Iced.Intel.ConditionCode)d.AluKind) ? 1UL : 0);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastImul(ref DecodedInsn d)
    {
        int size = d.OpSize;
        ulong a, b;
        if (d.Form == FastForm.ImulRR) { a = R[d.R0]; b = R[d.R1]; }
        else { a = R[d.R1]; b = d.Imm; }
        ulong res; bool ov;
        if (size == 4) { long r = (long)(int)a * (int)b; res = (uint)r; ov = r != (int)r; }
        else { long hi = Math.BigMul((long)a, (long)b, out long lo); res = (ulong)lo; ov = hi != (lo >> 63); }
        Put(d.R0, size, res);
        Rflags = (Rflags & ~ArithFlags) | Szp(res, size) | (ov ? CF | OF : 0);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastNot(ref DecodedInsn d) => Put(d.R0, d.OpSize, ~R[d.R0]);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FastNeg(ref DecodedInsn d)
    {
        int size = d.OpSize;
        ulong res = Unary(UnOp.Neg, size == 8 ? R[d.R0] : (uint)R[d.R0], size, out ulong f);
        Put(d.R0, size, res);
        Rflags = (Rflags & ~ArithFlags) | f;
    }
}
