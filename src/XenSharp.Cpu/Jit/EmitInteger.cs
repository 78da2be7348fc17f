using System.Buffers.Binary;
using System.Numerics;
using System.Reflection;
using System.Reflection.Emit;
using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu.Jit;

/// <summary>Inline IL for moves, ALU operations, INC/DEC/NEG/NOT, shifts and rotates, SHLD/SHRD, the bit scans,
/// MUL, IMUL, DIV, BSWAP, XCHG and the sign extensions.</summary>
internal sealed partial class BlockTranslator
{
    private static readonly MethodInfo MBigMul = typeof(Math).GetMethod(nameof(Math.BigMul), [typeof(long), typeof(long), typeof(long).MakeByRefType()])!;
    private static readonly MethodInfo MBigMulU = typeof(Math).GetMethod(nameof(Math.BigMul), [typeof(ulong), typeof(ulong), typeof(ulong).MakeByRefType()])!;
    private static readonly MethodInfo MSwap32 = typeof(BinaryPrimitives).GetMethod(nameof(BinaryPrimitives.ReverseEndianness), [typeof(uint)])!;
    private static readonly MethodInfo MSwap64 = typeof(BinaryPrimitives).GetMethod(nameof(BinaryPrimitives.ReverseEndianness), [typeof(ulong)])!;
    private static readonly MethodInfo MTzcnt = typeof(BitOperations).GetMethod(nameof(BitOperations.TrailingZeroCount), [typeof(ulong)])!;
    private static readonly MethodInfo MLzcnt = typeof(BitOperations).GetMethod(nameof(BitOperations.LeadingZeroCount), [typeof(ulong)])!;
    private static readonly MethodInfo MPopcnt = typeof(BitOperations).GetMethod(nameof(BitOperations.PopCount), [typeof(ulong)])!;
    private static readonly MethodInfo MDiv128 = typeof(BlockTranslator).GetMethod(nameof(Div128), BindingFlags.Static | BindingFlags.NonPublic)!;
    private static readonly MethodInfo MShiftDouble16 = typeof(BlockTranslator).GetMethod(nameof(ShiftDouble16), BindingFlags.Static | BindingFlags.NonPublic)!;
    private static readonly MethodInfo MJitDivideError = Cpu.GetMethod(nameof(X86Vcpu.JitDivideError), Inst)!;

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
        if (op is Mnemonic.Shld or Mnemonic.Shrd) { EmitShiftDouble(ref d, i); return false; }
        if (op is Mnemonic.Bsf or Mnemonic.Bsr or Mnemonic.Tzcnt or Mnemonic.Lzcnt or Mnemonic.Popcnt) { EmitBitScan(ref d, i); return false; }
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
            case Mnemonic.Xchg when d.I.Op0Kind == OpKind.Memory || d.I.Op1Kind == OpKind.Memory:
                EmitXchgMemory(ref d, i);
                return false;
            case Mnemonic.Cmpxchg: EmitCmpxchg(ref d, i); return false;
            case Mnemonic.Xadd: EmitXadd(ref d, i); return false;
            case Mnemonic.Bt: case Mnemonic.Bts: case Mnemonic.Btr: case Mnemonic.Btc: EmitBitTest(ref d, i); return false;
            case Mnemonic.Pushfq: EmitPushf(i); return false;
            case Mnemonic.Cli: EmitCli(i); return false;
            case Mnemonic.Sti: EmitSti(i); return false;
            case Mnemonic.Swapgs: EmitSwapgs(i); return false;
            case Mnemonic.Rdtsc: case Mnemonic.Rdtscp: EmitRdtsc(ref d, i); return false;
            case Mnemonic.Prefetchnta: case Mnemonic.Prefetcht0: case Mnemonic.Prefetcht1: case Mnemonic.Prefetcht2: case Mnemonic.Prefetchw:
            case Mnemonic.Pause: case Mnemonic.Lfence: case Mnemonic.Sfence: case Mnemonic.Endbr32: case Mnemonic.Endbr64:
                return false;
            case Mnemonic.Mfence: _il.Emit(OpCodes.Call, MMemoryBarrier); return false;
            case Mnemonic.Cld: case Mnemonic.Std: EmitFlagBit(X86Vcpu.DF, d.Op == Mnemonic.Std); return false;
            case Mnemonic.Clac: case Mnemonic.Stac: EmitSmapAc(d.Op == Mnemonic.Stac, i); return false;
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
            case Mnemonic.Leave: EmitLeave(ref d, i); return false;
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
        if (d.I.Op1Kind == OpKind.Register && d.I.Op1Register.IsSegmentRegister())
        {
            EmitMovFromSegment(ref d);
            return;
        }
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
        // A memory destination is read, then written (as the interpreter does: a read-only page faults at the write),
        // with _lin kept for the store.
        bool mem0 = d.I.Op0Kind == OpKind.Memory;
        if (mem0) { EmitLinear(ref d); EmitLoad(size, i); _il.Emit(OpCodes.Ldloc, _val); }
        else ReadGpr(reg);
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
            WriteShifted(ref d, i, size, zeroCount: true);
            SetFlags(i, kind, size, maybeNone: true);
            if (mem0) EmitStopCheck(i);
            return;
        }
        int c = (int)d.I.GetImmediate(1) & (size == 8 ? 63 : 31);
        if (c == 0)
        {
            // Nothing changes, but a 32-bit register destination is still written (bits 63:32 cleared).
            if (size == 4 && !mem0) WriteGpr(reg, _ta);
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
        WriteShifted(ref d, i, size, zeroCount: false);
        SetFlags(i, kind, size);
        if (mem0) EmitStopCheck(i);
    }

    /// <summary>A shift's or rotate's result (_tr) to its destination. A memory destination shifted by a CL of 0 (the
    /// masked count in _tb, <paramref name="zeroCount"/>) is only read, not written.</summary>
    private void WriteShifted(ref DecodedInsn d, int i, int size, bool zeroCount)
    {
        if (d.I.Op0Kind != OpKind.Memory) { WriteGpr(d.I.Op0Register, _tr); return; }
        var skip = _il.DefineLabel();
        if (zeroCount) { _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Brfalse, skip); }
        _il.Emit(OpCodes.Ldloc, _tr); _il.Emit(OpCodes.Stloc, _val);
        EmitStore(size, i);
        _il.MarkLabel(skip);
    }

    /// <summary>SHLD/SHRD of a register or memory by an immediate or CL, as the interpreter computes them: the count
    /// masked to 5 bits (6 for 64-bit operands); a count of 0 changes nothing (a 32-bit register is still written);
    /// 16-bit operands go through <see cref="ShiftDouble16"/>, which also gives counts above 16 the interpreter's result.</summary>
    private void EmitShiftDouble(ref DecodedInsn d, int i)
    {
        int size = d.OpSize, bits = size * 8;
        bool left = d.Op == Mnemonic.Shld;
        bool mem0 = d.I.Op0Kind == OpKind.Memory;
        bool byCl = d.I.Op2Kind == OpKind.Register;
        int c = byCl ? -1 : (int)d.I.GetImmediate(2) & (size == 8 ? 63 : 31);
        // _lin keeps a memory destination's address for the store.
        if (mem0) { EmitLinear(ref d); EmitLoad(size, i); _il.Emit(OpCodes.Ldloc, _val); }
        else ReadGpr(d.I.Op0Register);
        _il.Emit(OpCodes.Stloc, _ta);
        if (c == 0)
        {
            if (!mem0 && size == 4) WriteGpr(d.I.Op0Register, _ta);
            return;
        }
        ReadGpr(d.I.Op1Register); _il.Emit(OpCodes.Stloc, _tb);
        // The count into _val (CL's, or the immediate's).
        if (byCl) { ReadGpr(Register.CL); LdcU8(size == 8 ? 63UL : 31UL); _il.Emit(OpCodes.And); }
        else LdcU8((ulong)c);
        _il.Emit(OpCodes.Stloc, _val);
        if (size == 2)
        {
            // Result in bits 15:0, the pending flags' b above.
            _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Conv_I4);
            _il.Emit(left ? OpCodes.Ldc_I4_1 : OpCodes.Ldc_I4_0);
            _il.Emit(OpCodes.Call, MShiftDouble16);
            _il.Emit(OpCodes.Stloc, _tr);
            _il.Emit(OpCodes.Ldloc, _tr); LdcI4(16); _il.Emit(OpCodes.Shr_Un); _il.Emit(OpCodes.Stloc, _tb);
            _il.Emit(OpCodes.Ldloc, _tr); Trunc(2); _il.Emit(OpCodes.Stloc, _tr);
        }
        else
        {
            // a << c | b >> (bits - c) (SHRD: the mirror), with the second shift split into a shift by 1 and one by
            // bits - 1 - c, which leaves nothing of b for a count of 0 where a shift by the width would not.
            _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Conv_I4); _il.Emit(left ? OpCodes.Shl : OpCodes.Shr_Un);
            _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Ldc_I4_1); _il.Emit(left ? OpCodes.Shr_Un : OpCodes.Shl);
            LdcI4(bits - 1); _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Sub);
            _il.Emit(left ? OpCodes.Shr_Un : OpCodes.Shl);
            _il.Emit(OpCodes.Or); Trunc(size);
            _il.Emit(OpCodes.Stloc, _tr);
            // The carry: the last bit shifted out of a, bit (bits - c) for SHLD, bit (c - 1) for SHRD; 0 for a count of 0.
            _il.Emit(OpCodes.Ldloc, _ta);
            if (left)
            {
                _il.Emit(OpCodes.Ldc_I4_1); _il.Emit(OpCodes.Shr_Un);
                LdcI4(bits - 1); _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Sub); _il.Emit(OpCodes.Shr_Un);
            }
            else
            {
                _il.Emit(OpCodes.Ldc_I4_1); _il.Emit(OpCodes.Shl);
                _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Shr_Un);
            }
            LdcU8(1); _il.Emit(OpCodes.And);
            // | 2 when the count is not 0 (see FlagKind.Shd).
            _il.Emit(OpCodes.Ldloc, _val); LdcU8(0); _il.Emit(OpCodes.Cgt_Un); _il.Emit(OpCodes.Ldc_I4_1); _il.Emit(OpCodes.Shl); _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Or);
            _il.Emit(OpCodes.Stloc, _tb);
        }
        if (mem0)
        {
            // By CL, a count of 0 writes nothing (as the interpreter, which only reads the operand).
            var skip = _il.DefineLabel();
            if (byCl) { _il.Emit(OpCodes.Ldloc, _tb); LdcU8(2); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Brfalse, skip); }
            _il.Emit(OpCodes.Ldloc, _tr); _il.Emit(OpCodes.Stloc, _val);
            EmitStore(size, i);
            _il.MarkLabel(skip);
        }
        else WriteGpr(d.I.Op0Register, _tr);
        SetFlags(i, FlagKind.Shd, size, maybeNone: byCl);
        if (mem0) EmitStopCheck(i);
    }

    /// <summary>16-bit SHLD/SHRD of <paramref name="a"/> with <paramref name="b"/> by a count of 0 to 31 as the
    /// interpreter does it, counts above 16 included (left undefined by the manuals; hardware shifts b:a:b as 32 bits):
    /// the result in bits 15:0, above them the carry out (bit 16) and whether the count was not 0 (bit 17).</summary>
    private static ulong ShiftDouble16(ulong a, ulong b, int count, bool left)
    {
        if (count == 0) return a;
        ulong res;
        bool cf;
        if (count > 16)
        {
            ulong wide = ((a << 32) | (b << 16) | (left ? a : b)) & 0xFFFF_FFFF_FFFF;
            if (left) { res = (wide << count >> 32) & 0xFFFF; cf = ((wide >> (48 - count)) & 1) != 0; }
            else { ulong w2 = (b << 32) | (a << 16) | a; res = (w2 >> count) & 0xFFFF; cf = ((w2 >> (count - 1)) & 1) != 0; }
        }
        else if (left)
        {
            res = ((a << count) | (count == 16 ? b : b >> (16 - count))) & 0xFFFF;
            cf = ((a >> (16 - count)) & 1) != 0;
        }
        else
        {
            res = ((a >> count) | (count == 16 ? b : b << (16 - count))) & 0xFFFF;
            cf = ((a >> (count - 1)) & 1) != 0;
        }
        return res | (cf ? 1UL << 16 : 0) | 2UL << 16;
    }

    /// <summary>BSF, BSR, TZCNT, LZCNT and POPCNT of a register or memory, as the interpreter computes them. BSF and
    /// BSR of 0 leave the destination as it was (not even a 32-bit one's high half is cleared) and set ZF, keeping
    /// the other flags; otherwise they clear every flag but PF, which follows the index. TZCNT and LZCNT set CF
    /// for a zero source and ZF for a zero count and keep the rest; POPCNT clears all but ZF (a zero source).
    /// The flags are computed into RFLAGS here, and only when something can observe them.</summary>
    private void EmitBitScan(ref DecodedInsn d, int i)
    {
        int size = d.OpSize, bits = size * 8;
        var op = d.Op;
        var reg = d.I.Op0Register;
        ReadOperand(ref d, 1, size, i);
        _il.Emit(OpCodes.Stloc, _tb);
        bool flags = (_liveAfter[i] & X86Vcpu.ArithFlags) != 0;
        if (op is Mnemonic.Bsf or Mnemonic.Bsr)
        {
            // The flags kept on a zero source include the pending results'.
            if (flags) MaterializeFlags();
            var zero = _il.DefineLabel();
            var done = _il.DefineLabel();
            _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Brfalse, zero);
            if (op == Mnemonic.Bsf) { _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Call, MTzcnt); }
            else { LdcI4(63); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Call, MLzcnt); _il.Emit(OpCodes.Sub); }
            _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Stloc, _tr);
            WriteGpr(reg, _tr);
            if (flags)
            {
                _il.Emit(OpCodes.Ldloc, _fl); LdcU8(~X86Vcpu.ArithFlags); _il.Emit(OpCodes.And);
                _il.Emit(OpCodes.Ldsfld, FParity); _il.Emit(OpCodes.Ldloc, _tr); _il.Emit(OpCodes.Conv_U1); _il.Emit(OpCodes.Ldelem_U1); _il.Emit(OpCodes.Conv_U8);
                _il.Emit(OpCodes.Or); _il.Emit(OpCodes.Stloc, _fl);
            }
            _il.Emit(OpCodes.Br, done);
            _il.MarkLabel(zero);
            if (flags) { _il.Emit(OpCodes.Ldloc, _fl); LdcU8(X86Vcpu.ZF); _il.Emit(OpCodes.Or); _il.Emit(OpCodes.Stloc, _fl); }
            _il.MarkLabel(done);
            if (flags) _flDirty = true;
            return;
        }
        switch (op)
        {
            case Mnemonic.Tzcnt:
                // A bit just above the operand makes a zero source count the operand's width.
                _il.Emit(OpCodes.Ldloc, _tb);
                if (bits < 64) { LdcU8(1UL << bits); _il.Emit(OpCodes.Or); }
                _il.Emit(OpCodes.Call, MTzcnt);
                break;
            case Mnemonic.Lzcnt:
                _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Call, MLzcnt);
                if (bits < 64) { LdcI4(64 - bits); _il.Emit(OpCodes.Sub); }
                break;
            default:
                _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Call, MPopcnt);
                break;
        }
        _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Stloc, _tr);
        WriteGpr(reg, _tr);
        if (!flags) return;
        if (op == Mnemonic.Popcnt)
        {
            // Every arithmetic flag is written: the pending results no longer matter.
            _pending.Clear();
            _il.Emit(OpCodes.Ldloc, _fl); LdcU8(~X86Vcpu.ArithFlags); _il.Emit(OpCodes.And);
            IsZero(_tb); _il.Emit(OpCodes.Conv_U8); LdcI4(6); _il.Emit(OpCodes.Shl); _il.Emit(OpCodes.Or);
        }
        else
        {
            MaterializeFlags();
            _il.Emit(OpCodes.Ldloc, _fl); LdcU8(~(X86Vcpu.CF | X86Vcpu.ZF)); _il.Emit(OpCodes.And);
            IsZero(_tb); _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Or);
            IsZero(_tr); _il.Emit(OpCodes.Conv_U8); LdcI4(6); _il.Emit(OpCodes.Shl); _il.Emit(OpCodes.Or);
        }
        _il.Emit(OpCodes.Stloc, _fl);
        _flDirty = true;
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

    /// <summary>Unsigned DIV of 32 or 64 bits: RAX = RDX:RAX / divisor, RDX = the remainder, the flags as they were.
    /// A divisor of 0 or a quotient too wide for RAX raises #DE: a register divisor's DIV runs in the interpreter,
    /// a memory divisor's is raised by <see cref="X86Vcpu.JitDivideError"/> so that the divisor is read once.</summary>
    private void EmitDiv(ref DecodedInsn d, int i)
    {
        int size = d.OpSize;
        bool mem = d.I.Op0Kind == OpKind.Memory;
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        int dirtyBefore = _dirty;
        ReadOperand(ref d, 0, size, i); _il.Emit(OpCodes.Stloc, _tb);
        if (mem)
            EmitCold(slow, () =>
            {
                SyncForSlowPath();
                LdCpu(); LdBlock(); LdcI4(i); _il.Emit(OpCodes.Call, MJitDivideError);
                _il.Emit(OpCodes.Br, _f.Abort);
            });
        _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Brfalse, slow);
        if (size == 8)
        {
            // The quotient fits in 64 bits exactly when RDX is below the divisor.
            var wide = _il.DefineLabel();
            var store = _il.DefineLabel();
            _il.Emit(OpCodes.Ldloc, _gpr[2]); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Bge_Un, slow);
            _il.Emit(OpCodes.Ldloc, _gpr[2]); _il.Emit(OpCodes.Brtrue, wide);
            _il.Emit(OpCodes.Ldloc, _gpr[0]); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Div_Un); _il.Emit(OpCodes.Stloc, _ta);
            _il.Emit(OpCodes.Ldloc, _gpr[0]); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Rem_Un); _il.Emit(OpCodes.Stloc, _tr);
            _il.Emit(OpCodes.Br, store);
            _il.MarkLabel(wide);
            _il.Emit(OpCodes.Ldloc, _gpr[0]); _il.Emit(OpCodes.Ldloc, _gpr[2]); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Ldloca, _tr);
            _il.Emit(OpCodes.Call, MDiv128); _il.Emit(OpCodes.Stloc, _ta);
            _il.MarkLabel(store);
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
        if (mem) return;
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

    /// <summary>The 128-bit dividend hi:lo divided by <paramref name="divisor"/>, which is above hi (the quotient fits).</summary>
    private static ulong Div128(ulong lo, ulong hi, ulong divisor, out ulong rem)
    {
        var (q, r) = UInt128.DivRem(((UInt128)hi << 64) | lo, divisor);
        rem = (ulong)r;
        return (ulong)q;
    }
}
