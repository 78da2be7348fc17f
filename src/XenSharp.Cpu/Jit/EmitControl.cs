using System.Reflection.Emit;
using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu.Jit;

/// <summary>Branches, calls and returns, the stack (PUSH, POP, LEAVE), CMOVcc and SETcc.</summary>
internal sealed partial class BlockTranslator
{
    private void EmitJcc(ref DecodedInsn d, int i)
    {
        var notTaken = _il.DefineLabel();
        EmitCond(d.I.ConditionCode);
        _il.Emit(OpCodes.Brfalse, notTaken);
        EmitTaken(d.I.NearBranchTarget, i);
        _il.MarkLabel(notTaken);
        EmitExit(d.I.NextIP, i + 1, link: true);
    }

    /// <summary>A direct JMP or CALL the block was decoded through: the block goes on at its target
    /// (BlockFetch follows such branches within the page).</summary>
    private bool Followed(ref DecodedInsn d, int i) => i < _n - 1 && _insns[i + 1].I.IP == d.I.NearBranchTarget;

    /// <summary>True when the JMP ended the block.</summary>
    private bool EmitJmp(ref DecodedInsn d, int i)
    {
        if (d.I.Op0Kind is OpKind.Register or OpKind.Memory)
        {
            // A jump through memory (a switch table, a PLT slot) loads its target like any 8-byte read.
            ReadOperand(ref d, 0, 8, i);
            _il.Emit(OpCodes.Stloc, _ta);
            LdCpu(); _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Stfld, FRip);
            EmitExitDynamic(i + 1);
            return true;
        }
        if (Followed(ref d, i)) return false;
        EmitTaken(d.I.NearBranchTarget, i);
        return true;
    }

    /// <summary>A taken branch to <paramref name="target"/>: back to the top when the block loops
    /// on itself (within a budget, and while nobody asked the vCPU to stop), else an exit.</summary>
    private void EmitTaken(ulong target, int i)
    {
        if (!_selfLoop || target != _b.Ip)
        {
            EmitExit(target, i + 1, link: true);
            return;
        }
        var leave = _il.DefineLabel();
        var stay = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _budget); LdcI4(LoopBudget); _il.Emit(OpCodes.Bge, leave);
        LdCpu(); _il.Emit(OpCodes.Volatile); _il.Emit(OpCodes.Ldfld, FExitRequested); _il.Emit(OpCodes.Brtrue, leave);
        // Another vCPU may have rewritten the code: look the block up again.
        LdBlock(); _il.Emit(OpCodes.Volatile); _il.Emit(OpCodes.Ldfld, FValid); _il.Emit(OpCodes.Brfalse, leave);
        _il.Emit(OpCodes.Br, stay);
        _il.MarkLabel(leave);
        EmitExit(target, i + 1);
        _il.MarkLabel(stay);
        EmitBranchOut(_liveIn, _n, _top, () =>
        {
            _il.Emit(OpCodes.Ldloc, _budget); _il.Emit(OpCodes.Ldc_I4_1); _il.Emit(OpCodes.Add); _il.Emit(OpCodes.Stloc, _budget);
        });
    }

    /// <summary>Pushes the value in _val (size bytes) on the stack.</summary>
    private void EmitPushVal(int size, int i)
    {
        if (!_is64)
        {
            EmitPush32(size, i);
            return;
        }
        _il.Emit(OpCodes.Ldloc, _gpr[4]); LdcU8((ulong)size); _il.Emit(OpCodes.Sub); _il.Emit(OpCodes.Stloc, _lin); _linStack = true;
        EmitStore(size, i);
        SetFull(4, _lin);
    }

    /// <summary>A 32-bit block's push of _val: inline while SS is flat and 32-bit (the new ESP, wrapped at 4 GiB, is
    /// the linear address) and the store hits the TLB within one page; otherwise the interpreter's push, which
    /// applies any other SS (base, limit, expand-down, a 16-bit SP) and leaves ESP alone when it faults.</summary>
    private void EmitPush32(int size, int i)
    {
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _gpr[4]); LdcU8((ulong)size); _il.Emit(OpCodes.Sub); Trunc(4); _il.Emit(OpCodes.Stloc, _lin);
        _linSeg = X86Vcpu.FlatStack;
        _linStack = true;
        EmitTlbProbe(size, TlbWriteTagOffset, slow);
        EmitHostAddress();
        _il.Emit(OpCodes.Ldloc, _val);
        if (size == 4) { _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Stind_I4); }
        else { _il.Emit(OpCodes.Conv_U2); _il.Emit(OpCodes.Stind_I2); }
        _il.Emit(OpCodes.Ldloc, _lin); _il.Emit(OpCodes.Stloc, _gpr[4]);
        _il.MarkLabel(done);
        EmitSlowPath(slow, done,
            () => { LdCpu(); LdBlock(); LdcI4(i); LdcI4(size); _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Call, MJitPush); },
            () => LoadGprFromCpu(4));
        _dirty |= 1 << 4;
    }

    /// <summary>A 32-bit block's pop of <paramref name="size"/> bytes into _val, releasing <paramref name="release"/>
    /// more (RET imm16): inline while SS is flat and 32-bit and the load hits the TLB within one page, else the
    /// interpreter's pop (see <see cref="EmitPush32"/>).</summary>
    private void EmitPop32(int size, int release, int i)
    {
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        _il.Emit(OpCodes.Ldloc, _gpr[4]); Trunc(4); _il.Emit(OpCodes.Stloc, _lin);
        _linSeg = X86Vcpu.FlatStack;
        _linStack = true;
        EmitTlbProbe(size, 0, slow);
        EmitHostAddress();
        if (size == 4) _il.Emit(OpCodes.Ldind_U4); else _il.Emit(OpCodes.Ldind_U2);
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Stloc, _val);
        _il.Emit(OpCodes.Ldloc, _lin); LdcU8((ulong)(size + release)); _il.Emit(OpCodes.Add); Trunc(4); _il.Emit(OpCodes.Stloc, _gpr[4]);
        _il.MarkLabel(done);
        EmitSlowPath(slow, done,
            () => { LdCpu(); LdBlock(); LdcI4(i); LdcI4(size); LdcI4(release); _il.Emit(OpCodes.Call, MJitPop); _il.Emit(OpCodes.Stloc, _val); },
            () => LoadGprFromCpu(4));
        _dirty |= 1 << 4;
    }

    private void EmitPush(ref DecodedInsn d, int i)
    {
        int size = -d.I.StackPointerIncrement;
        // A memory operand is read with the RSP from before the push, as an ordinary load.
        ReadOperand(ref d, 0, size, i);
        _il.Emit(OpCodes.Stloc, _val);
        EmitPushVal(size, i);
        EmitStopCheck(i);
    }

    private void EmitPop(ref DecodedInsn d, int i)
    {
        int size = d.OpSize;
        if (!_is64) EmitPop32(size, 0, i);
        else
        {
            _il.Emit(OpCodes.Ldloc, _gpr[4]); _il.Emit(OpCodes.Stloc, _lin); _linStack = true;
            EmitLoad(size, i);
            _il.Emit(OpCodes.Ldloc, _gpr[4]); LdcU8((ulong)size); _il.Emit(OpCodes.Add); _il.Emit(OpCodes.Stloc, _gpr[4]);
            _dirty |= 1 << 4;
        }
        // After ESP moved: POP ESP loads ESP with the value popped.
        _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Stloc, _ta);
        WriteGpr(d.I.Op0Register, _ta);
    }

    /// <summary>64-bit LEAVE: RSP = RBP, then RBP = the quadword popped there. RSP moves only once the load succeeded,
    /// so a faulting LEAVE leaves both as they were (it is restartable).</summary>
    private void EmitLeave(ref DecodedInsn d, int i)
    {
        _il.Emit(OpCodes.Ldloc, _gpr[5]); _il.Emit(OpCodes.Stloc, _lin); _linStack = true;
        EmitLoad(8, i);
        _il.Emit(OpCodes.Ldloc, _gpr[5]); LdcU8(8); _il.Emit(OpCodes.Add); _il.Emit(OpCodes.Stloc, _gpr[4]);
        _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Stloc, _gpr[5]);
        _dirty |= 1 << 4 | 1 << 5;
    }

    /// <summary>True when the CALL ended the block.</summary>
    private bool EmitCall(ref DecodedInsn d, int i)
    {
        // The target (a register, or memory such as a function pointer in a structure) is read before the
        // push, with the old RSP, and a fault in either leaves RSP as it was.
        bool indirect = d.I.Op0Kind is OpKind.Register or OpKind.Memory;
        int size = _is64 ? 8 : 4;
        if (indirect) { ReadOperand(ref d, 0, size, i); _il.Emit(OpCodes.Stloc, _ta); }
        LdcU8(d.I.NextIP); _il.Emit(OpCodes.Stloc, _val);
        EmitPushVal(size, i);
        if (indirect)
        {
            LdCpu(); _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Stfld, FRip);
            EmitExitDynamic(i + 1);
            return true;
        }
        if (Followed(ref d, i))
        {
            // The push may have written this block's code: then go on at the target, looked up again.
            EmitStopCheck(i);
            return false;
        }
        EmitExit(d.I.NearBranchTarget, i + 1, link: true);
        return true;
    }

    private void EmitRet(ref DecodedInsn d, int i)
    {
        if (!_is64) EmitPop32(4, d.I.OpCount > 0 ? d.I.Immediate16 : 0, i);
        else
        {
            _il.Emit(OpCodes.Ldloc, _gpr[4]); _il.Emit(OpCodes.Stloc, _lin); _linStack = true;
            EmitLoad(8, i);
            _il.Emit(OpCodes.Ldloc, _gpr[4]); LdcU8(8); _il.Emit(OpCodes.Add); _il.Emit(OpCodes.Stloc, _gpr[4]);
            _dirty |= 1 << 4;
        }
        LdCpu(); _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Stfld, FRip);
        EmitExitDynamic(i + 1);
    }

    /// <summary>CMOVcc without a branch, as the guest's compiler meant it: the new value is
    /// old ^ ((source ^ old) &amp; -condition), so that a condition the host cannot predict costs no misprediction
    /// (compiled as a branch, the integer loop's CMOVNE on a pseudo-random bit missed half the time). A 32-bit CMOV
    /// writes its destination, zero-extended, even when the condition is false; the write-back of the old value gives
    /// that.</summary>
    private void EmitCmov(ref DecodedInsn d, int i)
    {
        int size = d.OpSize;
        var reg = d.I.Op0Register;
        // The source is read (and may fault) whatever the condition.
        ReadOperand(ref d, 1, size, i);
        _il.Emit(OpCodes.Stloc, _tb);
        EmitCond(d.I.ConditionCode);
        _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Neg); _il.Emit(OpCodes.Stloc, _tr);
        ReadGpr(reg); _il.Emit(OpCodes.Stloc, _ta);
        _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Xor);
        _il.Emit(OpCodes.Ldloc, _tr); _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Xor); _il.Emit(OpCodes.Stloc, _tb);
        WriteGpr(reg, _tb);
    }

    private void EmitSetcc(ref DecodedInsn d, int i)
    {
        bool mem = d.I.Op0Kind == OpKind.Memory;
        if (mem) EmitLinear(ref d);
        EmitCond(d.I.ConditionCode);
        _il.Emit(OpCodes.Conv_U8);
        if (mem)
        {
            _il.Emit(OpCodes.Stloc, _val);
            EmitStore(1, i);
            EmitStopCheck(i);
        }
        else
        {
            _il.Emit(OpCodes.Stloc, _ta);
            WriteGpr(d.I.Op0Register, _ta);
        }
    }
}
