using System.Buffers.Binary;
using System.Reflection;
using System.Reflection.Emit;
using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu.Jit;

/// <summary>Inline IL for moves, ALU operations, INC/DEC/NEG/NOT, shifts and rotates, MUL, IMUL, DIV,
/// BSWAP, XCHG and the sign extensions.</summary>
internal sealed partial class BlockTranslator
{
    private static readonly MethodInfo MBigMul = typeof(Math).GetMethod(nameof(Math.BigMul), [typeof(long), typeof(long), typeof(long).MakeByRefType()])!;
    private static readonly MethodInfo MBigMulU = typeof(Math).GetMethod(nameof(Math.BigMul), [typeof(ulong), typeof(ulong), typeof(ulong).MakeByRefType()])!;
    private static readonly MethodInfo MSwap32 = typeof(BinaryPrimitives).GetMethod(nameof(BinaryPrimitives.ReverseEndianness), [typeof(uint)])!;
    private static readonly MethodInfo MSwap64 = typeof(BinaryPrimitives).GetMethod(nameof(BinaryPrimitives.ReverseEndianness), [typeof(ulong)])!;

    /// <summary>Pushes operand k (register, immediate or memory) zero-extended from <paramref name="size"/> bytes.</summary>
    private void ReadOperand(ref DecodedInsn d, int k, int size, int i)
    {
        switch (d.I.GetOpKind(k))
        {
            case OpKind.Register: ReadGpr(d.I.GetOpRegister(k)); return;
            case OpKind.Memory:
                EmitLinear(ref d);
                EmitLoad(size, i);
                _il.Emit(OpCodes.Ldloc, _val);
                return;
            default:
                LdcU8(d.I.GetImmediate(k) & X86Vcpu.Mask(size));
                return;
        }
    }

    /// <summary>Emits instruction i; true when it ended the block (emitted its exits).</summary>
    private bool EmitInline(ref DecodedInsn d, int i)
    {
        var op = d.Op;
        if (s_sse.ContainsKey(d.I.Code)) { EmitSse(ref d, i); return false; }
        if (IsAlu(op)) { EmitAlu(ref d, i); return false; }
        if (IsShift(op)) { EmitShift(ref d, i); return false; }
        if (d.I.IsJccShortOrNear) { EmitJcc(ref d, i); return true; }
        if (IsCmov(d.Op)) { EmitCmov(ref d, i); return false; }
        if (IsSet(d.Op)) { EmitSetcc(ref d, i); return false; }
        switch (op)
        {
            case Mnemonic.Mov: EmitMov(ref d, i); return false;
            case Mnemonic.Movzx:
            case Mnemonic.Movsx:
            case Mnemonic.Movsxd:
            {
                int src = d.I.Op1Kind == OpKind.Register ? d.I.Op1Register.GetSize() : d.I.MemorySize.GetSize();
                ReadOperand(ref d, 1, src, i);
                if (op != Mnemonic.Movzx) SignExt(src);
                _il.Emit(OpCodes.Stloc, _ta);
                WriteGpr(d.I.Op0Register, _ta);
                return false;
            }
            case Mnemonic.Lea:
                EmitEa(ref d);
                _il.Emit(OpCodes.Stloc, _ta);
                WriteGpr(d.I.Op0Register, _ta);
                return false;
            case Mnemonic.Inc:
            case Mnemonic.Dec:
            case Mnemonic.Neg:
            case Mnemonic.Not:
                EmitUnary(ref d, i);
                return false;
            case Mnemonic.Imul when d.I.OpCount == 1: EmitMulWide(ref d, i, signed: true); return false;
            case Mnemonic.Imul: EmitImul(ref d, i); return false;
            case Mnemonic.Mul: EmitMulWide(ref d, i, signed: false); return false;
            case Mnemonic.Div: EmitDiv(ref d, i); return false;
            case Mnemonic.Bswap:
                ReadGpr(d.I.Op0Register);
                if (d.OpSize == 4) { _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Call, MSwap32); _il.Emit(OpCodes.Conv_U8); }
                else _il.Emit(OpCodes.Call, MSwap64);
                _il.Emit(OpCodes.Stloc, _ta);
                WriteGpr(d.I.Op0Register, _ta);
                return false;
            case Mnemonic.Xchg:
                ReadGpr(d.I.Op0Register); _il.Emit(OpCodes.Stloc, _ta);
                ReadGpr(d.I.Op1Register); _il.Emit(OpCodes.Stloc, _tb);
                WriteGpr(d.I.Op0Register, _tb);
                WriteGpr(d.I.Op1Register, _ta);
                return false;
            case Mnemonic.Nop:
                return false;
            case Mnemonic.Cdqe:
                _il.Emit(OpCodes.Ldloc, _gpr[0]); SignExt(4); _il.Emit(OpCodes.Stloc, _gpr[0]);
                _dirty |= 1;
                return false;
            case Mnemonic.Cdq:
                _il.Emit(OpCodes.Ldloc, _gpr[0]); _il.Emit(OpCodes.Conv_I4); LdcI4(31); _il.Emit(OpCodes.Shr);
                _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Stloc, _gpr[2]);
                _dirty |= 4;
                return false;
            case Mnemonic.Cqo:
                _il.Emit(OpCodes.Ldloc, _gpr[0]); LdcI4(63); _il.Emit(OpCodes.Shr); _il.Emit(OpCodes.Stloc, _gpr[2]);
                _dirty |= 4;
                return false;
            case Mnemonic.Push: EmitPush(ref d, i); return false;
            case Mnemonic.Pop: EmitPop(ref d, i); return false;
            case Mnemonic.Call: return EmitCall(ref d, i);
            case Mnemonic.Ret: EmitRet(ref d, i); return true;
            case Mnemonic.Jmp: return EmitJmp(ref d, i);
        }
        throw new NotSupportedException($"no inline form for {d.I}");
    }

    private void EmitMov(ref DecodedInsn d, int i)
    {
        int size = d.OpSize;
        if (d.I.Op0Kind == OpKind.Memory)
        {
            EmitLinear(ref d);
            ReadOperand(ref d, 1, size, i);
            _il.Emit(OpCodes.Stloc, _val);
            EmitStore(size, i);
            EmitStopCheck(i);
            return;
        }
        ReadOperand(ref d, 1, size, i);
        _il.Emit(OpCodes.Stloc, _ta);
        WriteGpr(d.I.Op0Register, _ta);
    }

    private void EmitAlu(ref DecodedInsn d, int i)
    {
        int size = d.OpSize;
        var op = d.Op;
        bool writes = op is not (Mnemonic.Cmp or Mnemonic.Test);
        bool mem0 = d.I.Op0Kind == OpKind.Memory;
        bool carry = op is Mnemonic.Adc or Mnemonic.Sbb;
        if (carry) MaterializeFlags();
        if (mem0) { EmitLinear(ref d); EmitLoad(size, i); _il.Emit(OpCodes.Ldloc, _val); }
        else ReadGpr(d.I.Op0Register);
        _il.Emit(OpCodes.Stloc, _ta);
        if (mem0)
        {
            // Keep the address: the operand-1 read below must not disturb _lin.
            if (d.I.Op1Kind == OpKind.Register) ReadGpr(d.I.Op1Register);
            else LdcU8(d.I.GetImmediate(1) & X86Vcpu.Mask(size));
        }
        else ReadOperand(ref d, 1, size, i);
        _il.Emit(OpCodes.Stloc, _tb);

        _il.Emit(OpCodes.Ldloc, _ta);
        _il.Emit(OpCodes.Ldloc, _tb);
        FlagKind kind;
        switch (op)
        {
            case Mnemonic.Add: _il.Emit(OpCodes.Add); Trunc(size); kind = FlagKind.Add; break;
            case Mnemonic.Adc:
                _il.Emit(OpCodes.Add); _il.Emit(OpCodes.Ldloc, _fl); LdcU8(1); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Add); Trunc(size);
                kind = FlagKind.Adc; break;
            case Mnemonic.Sub: case Mnemonic.Cmp: _il.Emit(OpCodes.Sub); Trunc(size); kind = FlagKind.Sub; break;
            case Mnemonic.Sbb:
                _il.Emit(OpCodes.Sub); _il.Emit(OpCodes.Ldloc, _fl); LdcU8(1); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Sub); Trunc(size);
                kind = FlagKind.Sbb; break;
            case Mnemonic.And: case Mnemonic.Test: _il.Emit(OpCodes.And); kind = FlagKind.Logic; break;
            case Mnemonic.Or: _il.Emit(OpCodes.Or); kind = FlagKind.Logic; break;
            default: _il.Emit(OpCodes.Xor); kind = FlagKind.Logic; break;
        }
        _il.Emit(OpCodes.Stloc, _tr);
        if (writes)
        {
            if (mem0)
            {
                _il.Emit(OpCodes.Ldloc, _tr); _il.Emit(OpCodes.Stloc, _val);
                EmitStore(size, i);
            }
            else WriteGpr(d.I.Op0Register, _tr);
        }
        SetFlags(i, kind, size);
        if (mem0 && writes) EmitStopCheck(i);
    }

    private void EmitUnary(ref DecodedInsn d, int i)
    {
        int size = d.OpSize;
        bool mem0 = d.I.Op0Kind == OpKind.Memory;
        if (mem0) { EmitLinear(ref d); EmitLoad(size, i); _il.Emit(OpCodes.Ldloc, _val); }
        else ReadGpr(d.I.Op0Register);
        _il.Emit(OpCodes.Stloc, _ta);
        FlagKind kind = FlagKind.Logic;
        switch (d.Op)
        {
            case Mnemonic.Inc: _il.Emit(OpCodes.Ldloc, _ta); LdcU8(1); _il.Emit(OpCodes.Add); kind = FlagKind.Inc; break;
            case Mnemonic.Dec: _il.Emit(OpCodes.Ldloc, _ta); LdcU8(1); _il.Emit(OpCodes.Sub); kind = FlagKind.Dec; break;
            case Mnemonic.Neg: LdcU8(0); _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Sub); kind = FlagKind.Neg; break;
            default: _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Not); break;
        }
        Trunc(size);
        _il.Emit(OpCodes.Stloc, _tr);
        if (mem0)
        {
            _il.Emit(OpCodes.Ldloc, _tr); _il.Emit(OpCodes.Stloc, _val);
            EmitStore(size, i);
        }
        else WriteGpr(d.I.Op0Register, _tr);
        if (d.Op != Mnemonic.Not) SetFlags(i, kind, size);
        if (mem0) EmitStopCheck(i);
    }

    private static FlagKind ShiftKind(Mnemonic m) => m switch
    {
        Mnemonic.Shl or Mnemonic.Sal => FlagKind.Shl,
        Mnemonic.Shr => FlagKind.Shr,
        Mnemonic.Sar => FlagKind.Sar,
        Mnemonic.Rol => FlagKind.Rol,
        _ => FlagKind.Ror,
    };

    private void EmitShift(ref DecodedInsn d, int i)
    {
        int size = d.OpSize, bits = size * 8;
        var reg = d.I.Op0Register;
        var kind = ShiftKind(d.Op);
        ReadGpr(reg);
        _il.Emit(OpCodes.Stloc, _ta);
        if (d.I.Op1Kind == OpKind.Register)
        {
            // By CL: the count may be 0, which leaves the flags alone.
            // Inline, without a branch: a count of 0 gives back the operand, as a shift by 0 does.
            ReadGpr(Register.CL); LdcU8(size == 8 ? 63UL : 31UL); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Stloc, _tb);
            switch (kind)
            {
                case FlagKind.Shl:
                    _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Shl); Trunc(size);
                    break;
                case FlagKind.Shr:
                    _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Shr_Un);
                    break;
                case FlagKind.Sar:
                    _il.Emit(OpCodes.Ldloc, _ta); SignExt(size); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Shr); Trunc(size);
                    break;
                default:
                {
                    // Rotate by count mod the width; the other half's shift is (width - count) mod the
                    // width, so a rotate by 0 ORs the operand with itself.
                    bool left = kind == FlagKind.Rol;
                    _il.Emit(OpCodes.Ldloc, _tb); LdcU8((ulong)(bits - 1)); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Stloc, _val);
                    _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Conv_I4); _il.Emit(left ? OpCodes.Shl : OpCodes.Shr_Un);
                    _il.Emit(OpCodes.Ldloc, _ta);
                    LdcI4(bits); _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Sub); LdcI4(bits - 1); _il.Emit(OpCodes.And);
                    _il.Emit(left ? OpCodes.Shr_Un : OpCodes.Shl);
                    _il.Emit(OpCodes.Or);
                    Trunc(size);
                    break;
                }
            }
            _il.Emit(OpCodes.Stloc, _tr);
            WriteGpr(reg, _tr);
            SetFlags(i, kind, size, maybeNone: true);
            return;
        }
        int c = (int)d.I.GetImmediate(1) & (size == 8 ? 63 : 31);
        if (c == 0)
        {
            // Nothing changes, but a 32-bit destination is still written (bits 63:32 cleared).
            if (size == 4) WriteGpr(reg, _ta);
            return;
        }
        switch (kind)
        {
            case FlagKind.Shl: _il.Emit(OpCodes.Ldloc, _ta); LdcI4(c); _il.Emit(OpCodes.Shl); Trunc(size); break;
            case FlagKind.Shr: _il.Emit(OpCodes.Ldloc, _ta); LdcI4(c); _il.Emit(OpCodes.Shr_Un); break;
            case FlagKind.Sar: _il.Emit(OpCodes.Ldloc, _ta); SignExt(size); LdcI4(Math.Min(c, 63)); _il.Emit(OpCodes.Shr); Trunc(size); break;
            default:
            {
                int r = c % bits;
                _il.Emit(OpCodes.Ldloc, _ta);
                if (r != 0)
                {
                    bool left = kind == FlagKind.Rol;
                    LdcI4(r); _il.Emit(left ? OpCodes.Shl : OpCodes.Shr_Un);
                    _il.Emit(OpCodes.Ldloc, _ta); LdcI4(bits - r); _il.Emit(left ? OpCodes.Shr_Un : OpCodes.Shl);
                    _il.Emit(OpCodes.Or);
                    Trunc(size);
                }
                break;
            }
        }
        _il.Emit(OpCodes.Stloc, _tr);
        LdcU8((ulong)c); _il.Emit(OpCodes.Stloc, _tb);
        WriteGpr(reg, _tr);
        SetFlags(i, kind, size);
    }

    private void EmitImul(ref DecodedInsn d, int i)
    {
        int size = d.OpSize;
        if (d.I.OpCount == 3)
        {
            ReadOperand(ref d, 1, size, i); _il.Emit(OpCodes.Stloc, _ta);
            LdcU8(d.I.GetImmediate(2) & X86Vcpu.Mask(size)); _il.Emit(OpCodes.Stloc, _tb);
        }
        else
        {
            ReadGpr(d.I.Op0Register); _il.Emit(OpCodes.Stloc, _ta);
            ReadOperand(ref d, 1, size, i); _il.Emit(OpCodes.Stloc, _tb);
        }
        bool flags = (_liveAfter[i] & X86Vcpu.ArithFlags) != 0;
        if (!flags)
        {
            _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Mul); Trunc(size);
            _il.Emit(OpCodes.Stloc, _tr);
            WriteGpr(d.I.Op0Register, _tr);
            return;
        }
        if (size == 8)
        {
            // High half beside the low half: overflow when it is not the low half's sign.
            _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Ldloca, _val);
            _il.Emit(OpCodes.Call, MBigMul);
            _il.Emit(OpCodes.Ldloc, _val); LdcI4(63); _il.Emit(OpCodes.Shr);
            _il.Emit(OpCodes.Ceq); Not();
            _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Stloc, _tr);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _ta); SignExt(size); _il.Emit(OpCodes.Ldloc, _tb); SignExt(size); _il.Emit(OpCodes.Mul);
            _il.Emit(OpCodes.Stloc, _val);
            _il.Emit(OpCodes.Ldloc, _val); Trunc(size); _il.Emit(OpCodes.Stloc, _tr);
            _il.Emit(OpCodes.Ldloc, _tr); SignExt(size); _il.Emit(OpCodes.Ldloc, _val);
            _il.Emit(OpCodes.Ceq); Not();
            _il.Emit(OpCodes.Conv_U8);
        }
        // b of a pending IMUL is its overflow bit.
        _il.Emit(OpCodes.Stloc, _tb);
        WriteGpr(d.I.Op0Register, _tr);
        SetFlags(i, FlagKind.Imul, size);
    }

    /// <summary>One-operand MUL and IMUL of 32 or 64 bits: RDX:RAX = RAX * operand. CF and OF say the high half
    /// is more than the low half's extension; SF, ZF and PF follow the low half, as the interpreter sets them.</summary>
    private void EmitMulWide(ref DecodedInsn d, int i, bool signed)
    {
        int size = d.OpSize;
        ReadOperand(ref d, 0, size, i); _il.Emit(OpCodes.Stloc, _tb);
        if (size == 8)
        {
            // hi into _lin, lo into _val.
            _il.Emit(OpCodes.Ldloc, _gpr[0]); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Ldloca, _val);
            _il.Emit(OpCodes.Call, signed ? MBigMul : MBigMulU);
            _il.Emit(OpCodes.Stloc, _lin);
            _il.Emit(OpCodes.Ldloc, _lin);
            if (signed) { _il.Emit(OpCodes.Ldloc, _val); LdcI4(63); _il.Emit(OpCodes.Shr); }
            else LdcU8(0);
            _il.Emit(OpCodes.Ceq); Not(); _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Stloc, _ta);
            SetFull(0, _val);
            SetFull(2, _lin);
            _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Stloc, _tr);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _gpr[0]);
            if (signed) SignExt(4); else Trunc(4);
            _il.Emit(OpCodes.Ldloc, _tb);
            if (signed) SignExt(4);
            _il.Emit(OpCodes.Mul); _il.Emit(OpCodes.Stloc, _val);
            // Overflow: the product is not its low half extended.
            _il.Emit(OpCodes.Ldloc, _val);
            _il.Emit(OpCodes.Ldloc, _val);
            if (signed) SignExt(4); else Trunc(4);
            _il.Emit(OpCodes.Ceq); Not(); _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Stloc, _ta);
            _il.Emit(OpCodes.Ldloc, _val); Trunc(4); _il.Emit(OpCodes.Stloc, _tr);
            _il.Emit(OpCodes.Ldloc, _val); LdcI4(32); _il.Emit(OpCodes.Shr_Un); _il.Emit(OpCodes.Stloc, _lin);
            WriteGpr(Register.EAX, _tr);
            WriteGpr(Register.EDX, _lin);
        }
        // b of a pending IMUL is its overflow bit.
        _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Stloc, _tb);
        SetFlags(i, FlagKind.Imul, size);
    }

    /// <summary>Unsigned DIV of 32 or 64 bits by a register: RAX = RDX:RAX / divisor, RDX = the remainder, the flags
    /// as they were. A divisor of 0 or a quotient too wide for RAX (#DE), and a 64-bit division of a dividend with
    /// a high half (a 128-bit division), run the instruction in the interpreter.</summary>
    private void EmitDiv(ref DecodedInsn d, int i)
    {
        int size = d.OpSize;
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        int dirtyBefore = _dirty;
        ReadGpr(d.I.Op0Register); _il.Emit(OpCodes.Stloc, _tb);
        _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Brfalse, slow);
        if (size == 8)
        {
            _il.Emit(OpCodes.Ldloc, _gpr[2]); _il.Emit(OpCodes.Brtrue, slow);
            _il.Emit(OpCodes.Ldloc, _gpr[0]); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Div_Un); _il.Emit(OpCodes.Stloc, _ta);
            _il.Emit(OpCodes.Ldloc, _gpr[0]); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Rem_Un); _il.Emit(OpCodes.Stloc, _tr);
            SetFull(0, _ta);
            SetFull(2, _tr);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, _gpr[2]); Trunc(4); LdcI4(32); _il.Emit(OpCodes.Shl);
            _il.Emit(OpCodes.Ldloc, _gpr[0]); Trunc(4); _il.Emit(OpCodes.Or); _il.Emit(OpCodes.Stloc, _val);
            _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Div_Un); _il.Emit(OpCodes.Stloc, _ta);
            _il.Emit(OpCodes.Ldloc, _ta); LdcU8(0xFFFF_FFFFUL); _il.Emit(OpCodes.Bgt_Un, slow);
            _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Rem_Un); _il.Emit(OpCodes.Stloc, _tr);
            WriteGpr(Register.EAX, _ta);
            WriteGpr(Register.EDX, _tr);
        }
        _il.Emit(OpCodes.Br, done);

        // The interpreter, with the state as it was before the instruction.
        _il.MarkLabel(slow);
        _dirty = dirtyBefore;
        SyncForSlowPath();
        EmitInterpret(ref d, i);
        LoadGprFromCpu(0);
        LoadGprFromCpu(2);
        // Both ways: RAX and RDX newer than the vCPU's (on this one, equal to them).
        _dirty = dirtyBefore | 1 | 4;
        _il.MarkLabel(done);
    }
}
