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

    private void ExecFast(ref DecodedInsn d)
    {
        int size = d.OpSize;
        switch (d.Form)
        {
            case FastForm.AluRR:
            {
                ulong m = size == 8 ? ulong.MaxValue : 0xFFFF_FFFF;
                var op = (AluOp)d.AluKind;
                ulong res = Alu(op, R[d.R0] & m, R[d.R1] & m, size, out ulong f);
                if (op != AluOp.Cmp && op != AluOp.Test) Put(d.R0, size, res);
                Rflags = (Rflags & ~ArithFlags) | f;
                return;
            }
            case FastForm.AluRI:
            {
                ulong m = size == 8 ? ulong.MaxValue : 0xFFFF_FFFF;
                var op = (AluOp)d.AluKind;
                ulong res = Alu(op, R[d.R0] & m, d.Imm, size, out ulong f);
                if (op != AluOp.Cmp && op != AluOp.Test) Put(d.R0, size, res);
                Rflags = (Rflags & ~ArithFlags) | f;
                return;
            }
            case FastForm.MovRR: Put(d.R0, size, R[d.R1]); return;
            case FastForm.MovRI: R[d.R0] = d.Imm; return;
            case FastForm.MovRM:
            {
                ulong lin = FastAddr(ref d);
                Put(d.R0, size, size == 8 ? Read64(lin) : Read32(lin));
                return;
            }
            case FastForm.MovMR: WriteLin(FastAddr(ref d), size, R[d.R1]); return;
            case FastForm.Lea: Put(d.R0, size, FastEa(ref d)); return;
            case FastForm.IncR:
            case FastForm.DecR:
            {
                ulong m = size == 8 ? ulong.MaxValue : 0xFFFF_FFFF;
                ulong a = R[d.R0] & m;
                ulong res = Unary(d.Form == FastForm.IncR ? UnOp.Inc : UnOp.Dec, a, size, out ulong f);
                Put(d.R0, size, res);
                Rflags = (Rflags & ~ArithFlags) | f;
                return;
            }
            case FastForm.Jcc:
                if (Cond((Iced.Intel.ConditionCode)d.AluKind)) Rip = d.Imm;
                return;
            case FastForm.AluRM:
            {
                ulong m = size == 8 ? ulong.MaxValue : 0xFFFF_FFFF;
                var op = (AluOp)d.AluKind;
                ulong b = ReadLin(FastAddr(ref d), size);
                ulong res = Alu(op, R[d.R0] & m, b, size, out ulong f);
                if (op != AluOp.Cmp && op != AluOp.Test) Put(d.R0, size, res);
                Rflags = (Rflags & ~ArithFlags) | f;
                return;
            }
            case FastForm.AluMR:
            case FastForm.AluMI:
            {
                var op = (AluOp)d.AluKind;
                ulong lin = FastAddr(ref d);
                ulong a = ReadLin(lin, size);
                ulong b = d.Form == FastForm.AluMI ? d.Imm : (size == 8 ? R[d.R1] : (uint)R[d.R1]);
                ulong res = Alu(op, a, b, size, out ulong f);
                if (op != AluOp.Cmp && op != AluOp.Test) WriteLin(lin, size, res);
                Rflags = (Rflags & ~ArithFlags) | f;
                return;
            }
            case FastForm.MovzxRM:
                Put(d.R0, size, ReadLin(FastAddr(ref d), d.AluKind));
                return;
            case FastForm.JmpRel: Rip = d.Imm; return;
            case FastForm.CallRel: Push(Rip, d.AluKind); Rip = d.Imm; return;
            case FastForm.RetNear: Rip = Pop(d.AluKind); return;
            case FastForm.PushR: Push(R[d.R0], size); return;
            case FastForm.PopR:
            {
                ulong v = Pop(size);
                Put(d.R0, size, v);
                return;
            }
        }
    }
}
