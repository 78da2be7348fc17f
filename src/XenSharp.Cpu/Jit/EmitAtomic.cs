using System.Reflection;
using System.Reflection.Emit;
using Iced.Intel;
using XenSharp.Cpu.Decoding;
using Label = System.Reflection.Emit.Label;

namespace XenSharp.Cpu.Jit;

/// <summary>Inline IL for what Linux's locking and per-CPU code runs most: CMPXCHG, XADD and XCHG of memory (with or
/// without LOCK), BT/BTS/BTR/BTC, PUSHFQ, CLI, CLD/STD, CLAC/STAC, MOV from a segment register, the fences and the
/// prefetches. An atomic operand is
/// changed in place through the interpreter's own interlocked primitives, on the host address of a TLB entry that
/// allows reading and writing; an operand that is misaligned, missed in the TLB or under an alignment check runs the
/// whole instruction in the interpreter.</summary>
internal sealed partial class BlockTranslator
{
    private const BindingFlags Static = BindingFlags.Static | BindingFlags.NonPublic;
    private static readonly MethodInfo MJitCmpxchg = Cpu.GetMethod(nameof(X86Vcpu.JitCmpxchg), Static)!;
    private static readonly MethodInfo MJitXadd = Cpu.GetMethod(nameof(X86Vcpu.JitXadd), Static)!;
    private static readonly MethodInfo MJitXchg = Cpu.GetMethod(nameof(X86Vcpu.JitXchg), Static)!;
    private static readonly MethodInfo MJitBitOp = Cpu.GetMethod(nameof(X86Vcpu.JitBitOp), Static)!;
    private static readonly FieldInfo FCpl = Cpu.GetField(nameof(X86Vcpu.Cpl), Inst)!;
    private static readonly int SelectorOffset = SegSelectorOffset();

    private static unsafe int SegSelectorOffset()
    {
        SegReg s = default;
        return (int)((byte*)&s.Sel - (byte*)&s);
    }

    private static bool IsBitTest(Mnemonic m) => m is Mnemonic.Bt or Mnemonic.Bts or Mnemonic.Btr or Mnemonic.Btc;

    private static bool IsPrefetch(Mnemonic m) =>
        m is Mnemonic.Prefetchnta or Mnemonic.Prefetcht0 or Mnemonic.Prefetcht1 or Mnemonic.Prefetcht2 or Mnemonic.Prefetchw;

    /// <summary>The LOCK-prefixed forms compiled inline: those of memory whose fast path is one interlocked operation.</summary>
    private static bool LockInline(in Instruction i) =>
        i.Mnemonic is Mnemonic.Cmpxchg or Mnemonic.Xadd or Mnemonic.Xchg or Mnemonic.Bts or Mnemonic.Btr or Mnemonic.Btc
        && i.Op0Kind == OpKind.Memory;

    private static Register Accumulator(int size) => size switch
    {
        1 => Register.AL, 2 => Register.AX, 4 => Register.EAX, _ => Register.RAX,
    };

    /// <summary>Branches to <paramref name="slow"/> unless _lin is naturally aligned and its page is in the TLB for both
    /// reading and writing (what the interpreter's atomic path asks) and no alignment check is armed.</summary>
    private void EmitRmwProbe(int size, Label slow)
    {
        if (size > 1)
        {
            _il.Emit(OpCodes.Ldloc, _lin); LdcU8((ulong)size - 1); _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Brtrue, slow);
        }
        EmitTlbProbe(size, TlbWriteTagOffset, slow);
        _il.Emit(OpCodes.Ldloc, _entry); _il.Emit(OpCodes.Ldind_I8);
        _il.Emit(OpCodes.Ldloc, _lin); LdcI4(12); _il.Emit(OpCodes.Shr_Un);
        _il.Emit(OpCodes.Bne_Un, slow);
    }

    /// <summary>The cold path of an inline instruction that only the interpreter can finish: the state written back,
    /// <paramref name="before"/>, the instruction interpreted, RFLAGS and the general registers in
    /// <paramref name="gprsOut"/> read back, then <paramref name="after"/> (which rebuilds a pending flag result).</summary>
    private void EmitInterpretedPath(Label slow, Label done, int at, int[] gprsOut, Action? before = null, Action? after = null) =>
        EmitCold(slow, () =>
        {
            SyncForSlowPath();
            before?.Invoke();
            EmitInterpret(ref _insns[at], at);
            foreach (int g in gprsOut) LoadGprFromCpu(g);
            LdCpu(); _il.Emit(OpCodes.Ldfld, FRflags); _il.Emit(OpCodes.Stloc, _fl);
            after?.Invoke();
            _il.Emit(OpCodes.Br, done);
        });

    /// <summary>Sets the pending result in <paramref name="slot"/> (when there is one) to operands _ta and the value
    /// <paramref name="b"/> pushes, and their sum or difference: the interpreter's flags, recomputed.</summary>
    private void RebuildPending(int slot, int size, bool sub, Action b)
    {
        if (slot < 0) return;
        _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Stloc, _pa[slot]);
        b(); _il.Emit(OpCodes.Stloc, _pb[slot]);
        _il.Emit(OpCodes.Ldloc, _pa[slot]); _il.Emit(OpCodes.Ldloc, _pb[slot]);
        _il.Emit(sub ? OpCodes.Sub : OpCodes.Add); Trunc(size);
        _il.Emit(OpCodes.Stloc, _pr[slot]);
    }

    private void EmitCmpxchg(ref DecodedInsn d, int i)
    {
        int size = d.OpSize;
        var acc = Accumulator(size);
        var src = d.I.Op1Register;
        if (d.I.Op0Kind == OpKind.Register)
        {
            var dst = d.I.Op0Register;
            ReadGpr(acc); _il.Emit(OpCodes.Stloc, _ta);
            ReadGpr(dst); _il.Emit(OpCodes.Stloc, _tb);
            ReadGpr(src); _il.Emit(OpCodes.Stloc, _val);
            var differ = _il.DefineLabel();
            var end = _il.DefineLabel();
            _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Bne_Un, differ);
            WriteGpr(dst, _val);
            _il.Emit(OpCodes.Br, end);
            _il.MarkLabel(differ);
            WriteGpr(acc, _tb);
            _il.MarkLabel(end);
        }
        else
        {
            var slow = _il.DefineLabel();
            var done = _il.DefineLabel();
            int slot = -1;
            // The accumulator after is the operand's old value whether or not it was stored.
            EmitInterpretedPath(slow, done, i, [0],
                before: () => { ReadGpr(acc); _il.Emit(OpCodes.Stloc, _ta); },
                after: () => RebuildPending(slot, size, sub: true, () => ReadGpr(acc)));
            EmitLinear(ref d);
            EmitRmwProbe(size, slow);
            ReadGpr(acc); _il.Emit(OpCodes.Stloc, _ta);
            EmitHostAddress(); LdcI4(size); _il.Emit(OpCodes.Ldloc, _ta); ReadGpr(src);
            _il.Emit(OpCodes.Call, MJitCmpxchg);
            _il.Emit(OpCodes.Stloc, _tb);
            var same = _il.DefineLabel();
            _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Beq, same);
            WriteGpr(acc, _tb);
            _il.MarkLabel(same);
            SubResult(size);
            slot = SetFlags(i, FlagKind.Sub, size);
            _il.MarkLabel(done);
            EmitStopCheck(i);
            return;
        }
        SubResult(size);
        SetFlags(i, FlagKind.Sub, size);
    }

    /// <summary>_tr = _ta - _tb in <paramref name="size"/> bytes.</summary>
    private void SubResult(int size)
    {
        _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Sub); Trunc(size);
        _il.Emit(OpCodes.Stloc, _tr);
    }

    private void EmitXadd(ref DecodedInsn d, int i)
    {
        int size = d.OpSize;
        var src = d.I.Op1Register;
        if (d.I.Op0Kind == OpKind.Register)
        {
            var dst = d.I.Op0Register;
            ReadGpr(dst); _il.Emit(OpCodes.Stloc, _ta);
            ReadGpr(src); _il.Emit(OpCodes.Stloc, _tb);
            AddResult(size);
            WriteGpr(src, _ta);
            WriteGpr(dst, _tr);
            SetFlags(i, FlagKind.Add, size);
            return;
        }
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        int slot = -1;
        // The source register after holds the operand's old value: the flags are those of old + source before.
        EmitInterpretedPath(slow, done, i, [GprNum(src)],
            before: () => { ReadGpr(src); _il.Emit(OpCodes.Stloc, _tb); },
            after: () =>
            {
                if (slot < 0) return;
                ReadGpr(src); _il.Emit(OpCodes.Stloc, _ta);
                RebuildPending(slot, size, sub: false, () => _il.Emit(OpCodes.Ldloc, _tb));
            });
        EmitLinear(ref d);
        EmitRmwProbe(size, slow);
        ReadGpr(src); _il.Emit(OpCodes.Stloc, _tb);
        EmitHostAddress(); LdcI4(size); _il.Emit(OpCodes.Ldloc, _tb);
        _il.Emit(OpCodes.Call, MJitXadd);
        _il.Emit(OpCodes.Stloc, _ta);
        AddResult(size);
        WriteGpr(src, _ta);
        slot = SetFlags(i, FlagKind.Add, size);
        _il.MarkLabel(done);
        EmitStopCheck(i);
    }

    /// <summary>_tr = _ta + _tb in <paramref name="size"/> bytes.</summary>
    private void AddResult(int size)
    {
        _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Add); Trunc(size);
        _il.Emit(OpCodes.Stloc, _tr);
    }

    /// <summary>XCHG of a register with memory, in either operand order: always atomic, as on hardware.</summary>
    private void EmitXchgMemory(ref DecodedInsn d, int i)
    {
        int size = d.OpSize;
        var reg = d.I.Op0Kind == OpKind.Register ? d.I.Op0Register : d.I.Op1Register;
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        EmitInterpretedPath(slow, done, i, [GprNum(reg)]);
        EmitLinear(ref d);
        EmitRmwProbe(size, slow);
        EmitHostAddress(); LdcI4(size); ReadGpr(reg);
        _il.Emit(OpCodes.Call, MJitXchg);
        _il.Emit(OpCodes.Stloc, _ta);
        WriteGpr(reg, _ta);
        _il.MarkLabel(done);
        EmitStopCheck(i);
    }

    /// <summary>BT, BTS, BTR and BTC: CF is the selected bit before; no other flag changes. A register bit offset into
    /// memory selects a bit of the bit string around the operand (the form compiled only with 64-bit addresses).</summary>
    private void EmitBitTest(ref DecodedInsn d, int i)
    {
        int size = d.OpSize, bits = size * 8;
        int kind = d.Op switch { Mnemonic.Bts => 1, Mnemonic.Btr => 2, Mnemonic.Btc => 3, _ => 0 };
        bool cfLive = (_liveAfter[i] & X86Vcpu.CF) != 0;
        if (cfLive) MaterializeFlags();
        bool immediate = d.I.Op1Kind != OpKind.Register;
        // The mask of the bit into _tb; a register offset, sign-extended, into _tr for the memory form's address.
        if (immediate) LdcU8(1UL << (int)(d.I.GetImmediate(1) & (ulong)(bits - 1)));
        else
        {
            ReadGpr(d.I.Op1Register);
            if (d.I.Op0Kind == OpKind.Memory) { SignExt(size); _il.Emit(OpCodes.Dup); _il.Emit(OpCodes.Stloc, _tr); }
            LdcU8((ulong)bits - 1); _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Stloc, _val);
            LdcU8(1); _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Shl);
        }
        _il.Emit(OpCodes.Stloc, _tb);
        Label? done = null;
        if (d.I.Op0Kind == OpKind.Register)
        {
            ReadGpr(d.I.Op0Register); _il.Emit(OpCodes.Stloc, _ta);
            if (kind != 0)
            {
                BitResult(kind);
                WriteGpr(d.I.Op0Register, _tr);
            }
        }
        else
        {
            bool atomic = kind != 0 && d.I.HasLockPrefix;
            var slow = _il.DefineLabel();
            if (atomic)
            {
                done = _il.DefineLabel();
                EmitInterpretedPath(slow, done.Value, i, []);
            }
            EmitLinear(ref d);
            if (!immediate)
            {
                // The operand holding the bit: the offset's whole operands, arithmetically, from the address.
                _il.Emit(OpCodes.Ldloc, _lin);
                _il.Emit(OpCodes.Ldloc, _tr); LdcI4(3); _il.Emit(OpCodes.Shr);
                LdcU8(~(ulong)(size - 1)); _il.Emit(OpCodes.And);
                _il.Emit(OpCodes.Add); _il.Emit(OpCodes.Stloc, _lin);
            }
            if (atomic)
            {
                EmitRmwProbe(size, slow);
                EmitHostAddress(); LdcI4(size); LdcI4(kind); _il.Emit(OpCodes.Ldloc, _tb);
                _il.Emit(OpCodes.Call, MJitBitOp);
                _il.Emit(OpCodes.Stloc, _ta);
            }
            else
            {
                EmitLoad(size, i);
                _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Stloc, _ta);
                if (kind != 0)
                {
                    BitResult(kind);
                    _il.Emit(OpCodes.Ldloc, _tr); _il.Emit(OpCodes.Stloc, _val);
                    EmitStore(size, i);
                }
            }
        }
        if (cfLive)
        {
            _il.Emit(OpCodes.Ldloc, _fl); LdcU8(~X86Vcpu.CF); _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Ldc_I4_0); _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Cgt_Un); _il.Emit(OpCodes.Conv_U8);
            _il.Emit(OpCodes.Or); _il.Emit(OpCodes.Stloc, _fl);
            _flDirty = true;
        }
        if (done is { } l) _il.MarkLabel(l);
        if (kind != 0 && d.I.Op0Kind == OpKind.Memory) EmitStopCheck(i);
    }

    /// <summary>_tr = _ta with the bits of _tb set (1), cleared (2) or flipped (3).</summary>
    private void BitResult(int kind)
    {
        _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Ldloc, _tb);
        if (kind == 2) { _il.Emit(OpCodes.Not); _il.Emit(OpCodes.And); }
        else _il.Emit(kind == 1 ? OpCodes.Or : OpCodes.Xor);
        _il.Emit(OpCodes.Stloc, _tr);
    }

    /// <summary>PUSHFQ: RFLAGS with RF and VM clear (VM is never set in 64-bit mode).</summary>
    private void EmitPushf(int i)
    {
        PushFlags(hot: true);
        LdcU8(~(X86Vcpu.RF | X86Vcpu.VM)); _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Stloc, _val);
        EmitPushVal(8, i);
        EmitStopCheck(i);
    }

    /// <summary>CLI at CPL 0, which is always within IOPL; at any other privilege level the interpreter decides
    /// between clearing IF, clearing VIF and #GP.</summary>
    private void EmitCli(int i) => EmitAtCpl0(i, _ => EmitFlagBit(X86Vcpu.IF, set: false));

    /// <summary>Emits <paramref name="inline"/> for an instruction compiled only at CPL 0: at any other privilege level,
    /// and wherever <paramref name="inline"/> branches to the label it is given, the interpreter runs it.</summary>
    private void EmitAtCpl0(int i, Action<Label> inline)
    {
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        EmitInterpretedPath(slow, done, i, []);
        LdCpu(); _il.Emit(OpCodes.Ldfld, FCpl); _il.Emit(OpCodes.Brtrue, slow);
        inline(slow);
        _il.MarkLabel(done);
    }

    private static readonly MethodInfo MEventWaitsForIf = Cpu.GetMethod(nameof(X86Vcpu.EventWaitsForIf), Inst)!;

    /// <summary>STI at CPL 0 with no event waiting to be taken: IF is set and the block runs on, where the interpreter
    /// would stop it for the run loop to look for events. An event already waiting goes the interpreter's way (the
    /// shadow of the next instruction, then the block stops and the run loop delivers it), as does STI at any other
    /// privilege level (IOPL, VIF or #GP). One that arrives later raises the vCPU's exit request, which every hop and
    /// branch between bodies checks, and is taken at that boundary as if it had arrived there.</summary>
    private void EmitSti(int i)
    {
        EmitAtCpl0(i, slow =>
        {
            LdCpu(); _il.Emit(OpCodes.Call, MEventWaitsForIf); _il.Emit(OpCodes.Brtrue, slow);
            EmitFlagBit(X86Vcpu.IF, set: true);
        });
        // The interpreter's STI stops the block: leave at the next instruction for the run loop.
        EmitStopCheck(i);
    }

    private static readonly FieldInfo FKernelGsBase = Cpu.GetField(nameof(X86Vcpu.KernelGsBase), Inst)!;
    private static readonly FieldInfo FTscAux = Cpu.GetField(nameof(X86Vcpu.TscAux), Inst)!;
    private static readonly MethodInfo MReadTsc = Cpu.GetMethod(nameof(X86Vcpu.ReadTsc), Inst)!;

    /// <summary>SWAPGS at CPL 0 (64-bit code only): GS's base and IA32_KERNEL_GS_BASE trade places. Compiled accesses
    /// read GS's base from the vCPU each time, so nothing cached needs refreshing. At CPL 3 the interpreter raises #GP.</summary>
    private void EmitSwapgs(int i) => EmitAtCpl0(i, _ =>
    {
        LdCpu(); _il.Emit(OpCodes.Ldflda, FSeg); LdcI4(X86Vcpu.GS * SegSize); _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Dup); _il.Emit(OpCodes.Ldind_I8); _il.Emit(OpCodes.Stloc, _ta);
        LdCpu(); _il.Emit(OpCodes.Ldfld, FKernelGsBase); _il.Emit(OpCodes.Stind_I8);
        LdCpu(); _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Stfld, FKernelGsBase);
    });

    /// <summary>RDTSC and RDTSCP: the guest's TSC into EDX:EAX (and IA32_TSC_AUX into ECX), unless CR4.TSD
    /// reserves them to CPL 0 and the block runs above it, where the interpreter raises #GP.</summary>
    private void EmitRdtsc(ref DecodedInsn d, int i)
    {
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        int[] outs = d.Op == Mnemonic.Rdtscp ? [0, 1, 2] : [0, 2];
        EmitInterpretedPath(slow, done, i, outs);
        var allowed = _il.DefineLabel();
        LdCpu(); _il.Emit(OpCodes.Ldfld, FCpl); _il.Emit(OpCodes.Brfalse, allowed);
        LdCpu(); _il.Emit(OpCodes.Ldfld, FCr4); LdcU8(4); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Brtrue, slow);
        _il.MarkLabel(allowed);
        LdCpu(); _il.Emit(OpCodes.Call, MReadTsc); _il.Emit(OpCodes.Stloc, _tb);
        _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Stloc, _ta);
        WriteGpr(Register.RAX, _ta);
        _il.Emit(OpCodes.Ldloc, _tb); LdcI4(32); _il.Emit(OpCodes.Shr_Un); _il.Emit(OpCodes.Stloc, _ta);
        WriteGpr(Register.RDX, _ta);
        if (d.Op == Mnemonic.Rdtscp)
        {
            LdCpu(); _il.Emit(OpCodes.Ldfld, FTscAux); _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Stloc, _ta);
            WriteGpr(Register.RCX, _ta);
        }
        _il.MarkLabel(done);
    }

    private static readonly MethodInfo MMemoryBarrier = typeof(Interlocked).GetMethod(nameof(Interlocked.MemoryBarrier))!;

    /// <summary>Sets or clears a flag outside the arithmetic ones (DF, IF, AC).</summary>
    private void EmitFlagBit(ulong flag, bool set)
    {
        _il.Emit(OpCodes.Ldloc, _fl); LdcU8(set ? flag : ~flag); _il.Emit(set ? OpCodes.Or : OpCodes.And);
        _il.Emit(OpCodes.Stloc, _fl);
        _flDirty = true;
    }

    /// <summary>STAC or CLAC at CPL 0 (elsewhere #UD, from the interpreter); AC arms the alignment check of the inline
    /// accesses that follow. AC also goes to the vCPU's RFLAGS at once: the access helpers' page walks read it there
    /// for SMAP (a supervisor access to a user page is allowed only while it is set).</summary>
    private void EmitSmapAc(bool set, int i)
    {
        EmitAtCpl0(i, _ =>
        {
            EmitFlagBit(X86Vcpu.AC, set);
            LdCpu();
            LdCpu(); _il.Emit(OpCodes.Ldfld, FRflags); LdcU8(set ? X86Vcpu.AC : ~X86Vcpu.AC); _il.Emit(set ? OpCodes.Or : OpCodes.And);
            _il.Emit(OpCodes.Stfld, FRflags);
        });
        if (_accesses) EmitAccessLocals();
    }

    /// <summary>MOV of a segment register's selector into a general register (zero-extended; a 16-bit one keeps the rest).</summary>
    private void EmitMovFromSegment(ref DecodedInsn d)
    {
        int seg = d.I.Op1Register - Register.ES;
        LdCpu(); _il.Emit(OpCodes.Ldflda, FSeg);
        LdcI4(seg * SegSize + SelectorOffset); _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Ldind_U2); _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Stloc, _ta);
        WriteGpr(d.I.Op0Register, _ta);
    }
}
