using System.Reflection.Emit;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu.Jit;

/// <summary>Memory operands: the address from the pre-split operand, and loads and stores with
/// an inline soft-TLB hit path that falls back to the interpreter's access helpers.</summary>
internal sealed partial class BlockTranslator
{
    /// <summary>Explicit memory operands are compiled inline in 64-bit blocks with 32/64-bit addressing (no
    /// segment limits there), and in 32- and 16-bit blocks with 32-bit addressing, where the inline path is
    /// taken only while the segment is flat (base 0, limit 4 GiB: the offset is the linear address and no
    /// access within it passes the limit) and the slow path applies the segment as the interpreter does.
    /// Flat 32-bit code (hvmloader, SeaBIOS's 32-bit parts, GRUB) otherwise ran every load and store
    /// through the interpreter.</summary>
    private bool MemOk(ref DecodedInsn d) => d.MemSplit && (_is64 || d.AddrSize == 4);

    /// <summary>The segment of _lin's access (outside 64-bit mode _lin is its offset).</summary>
    private int _linSeg;

    /// <summary>Which of the block's segments are flat now, into _flat: on entry and after each call into
    /// the interpreter (which may load a segment register).</summary>
    private void EmitFlat()
    {
        LdCpu(); LdcI4(_segsInline); _il.Emit(OpCodes.Call, MFlatSegments);
        _il.Emit(OpCodes.Stloc, _flat);
    }

    /// <summary>Pushes the effective address (offset) of the pre-split memory operand.</summary>
    private void EmitEa(ref DecodedInsn d)
    {
        LdcU8(d.MemDisp);
        if (d.MemBase != 0xFF) { _il.Emit(OpCodes.Ldloc, _gpr[d.MemBase]); _il.Emit(OpCodes.Add); }
        if (d.MemIndex != 0xFF)
        {
            _il.Emit(OpCodes.Ldloc, _gpr[d.MemIndex]);
            if (d.MemShift != 0) { LdcI4(d.MemShift); _il.Emit(OpCodes.Shl); }
            _il.Emit(OpCodes.Add);
        }
        if (d.AddrSize != 8) Trunc(4);
    }

    /// <summary>_lin is a stack access: its slow path raises #SS for a non-canonical address.</summary>
    private bool _linStack;

    /// <summary>Linear address of the memory operand into _lin (64-bit mode: only FS and GS have bases); outside
    /// 64-bit mode its offset, which is the linear address while the segment is flat.</summary>
    private void EmitLinear(ref DecodedInsn d)
    {
        _linStack = d.MemStack;
        _linSeg = d.MemSeg;
        EmitEa(ref d);
        if (_is64 && d.MemSeg >= X86Vcpu.FS)
        {
            LdCpu(); _il.Emit(OpCodes.Ldflda, FSeg);
            LdcI4(d.MemSeg * SegSize); _il.Emit(OpCodes.Add);
            _il.Emit(OpCodes.Ldind_I8);
            _il.Emit(OpCodes.Add);
        }
        _il.Emit(OpCodes.Stloc, _lin);
    }

    /// <summary>Branches to <paramref name="slow"/> unless the TLB entry for _lin allows the
    /// access at tag offset <paramref name="tagOffset"/> within one page and no alignment check is armed;
    /// leaves the entry pointer in _entry. The entry is the slot of the access's first byte and its tag is compared
    /// with the page of the last byte, so an access running into the next page misses (that page's number is never
    /// the tag of the first page's slot) and one test covers both.</summary>
    private void EmitTlbProbe(int size, int tagOffset, Label slow)
    {
        if (!_is64)
        {
            _il.Emit(OpCodes.Ldloc, _flat); LdcI4(1 << _linSeg); _il.Emit(OpCodes.And);
            _il.Emit(OpCodes.Brfalse, slow);
        }
        // In native-width arithmetic throughout, so that no sign extension sits between the index and the add.
        _il.Emit(OpCodes.Ldloc, _tlbBase);
        _il.Emit(OpCodes.Ldloc, _lin); LdcI4(12); _il.Emit(OpCodes.Shr_Un);
        LdcU8(X86Vcpu.TlbSize - 1); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Conv_U);
        LdcI4(TlbEntrySize); _il.Emit(OpCodes.Conv_U); _il.Emit(OpCodes.Mul);
        _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Stloc, _entry);
        _il.Emit(OpCodes.Ldloc, _entry);
        if (tagOffset != 0) { LdcI4(tagOffset); _il.Emit(OpCodes.Add); }
        _il.Emit(OpCodes.Ldind_I8);
        _il.Emit(OpCodes.Ldloc, _lin);
        if (size > 1) { LdcU8((ulong)size - 1); _il.Emit(OpCodes.Add); }
        LdcI4(12); _il.Emit(OpCodes.Shr_Un);
        _il.Emit(OpCodes.Bne_Un, slow);
        _il.Emit(OpCodes.Ldloc, _acArmed); _il.Emit(OpCodes.Brtrue, slow);
    }

    /// <summary>Alignment checks are armed by CR0.AM at CPL 3 (Linux always sets AM) and EFLAGS.AC; no
    /// inline instruction changes either, so this is computed once on entry and again after each call
    /// into the interpreter, and every access tests one local. So is the privilege level, which picks the soft
    /// TLB's context: the context's first entry goes into _tlbBase at the same points.</summary>
    private void EmitAccessLocals()
    {
        LdCpu(); _il.Emit(OpCodes.Ldfld, FAcUser);
        _il.Emit(OpCodes.Ldloc, _fl); LdcI4((int)X86Vcpu.AC); _il.Emit(OpCodes.Conv_I8); _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Ldc_I4_0); _il.Emit(OpCodes.Conv_I8); _il.Emit(OpCodes.Cgt_Un);
        _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Stloc, _acArmed);
        LdCpu(); _il.Emit(OpCodes.Ldfld, FTlbCur);
        _il.Emit(OpCodes.Stloc, _tlbBase);
    }

    /// <summary>Pushes the host address for _lin from the probed entry.</summary>
    private void EmitHostAddress()
    {
        _il.Emit(OpCodes.Ldloc, _entry); LdcI4(TlbHostOffset); _il.Emit(OpCodes.Add); _il.Emit(OpCodes.Ldind_I);
        _il.Emit(OpCodes.Ldloc, _lin); LdcU8(0xFFF); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Conv_U);
        _il.Emit(OpCodes.Add);
    }

    /// <summary>Loads <paramref name="size"/> bytes at _lin for instruction i into _val.</summary>
    private void EmitLoad(int size, int i)
    {
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        EmitTlbProbe(size, 0, slow);
        EmitHostAddress();
        switch (size)
        {
            case 1: _il.Emit(OpCodes.Ldind_U1); break;
            case 2: _il.Emit(OpCodes.Ldind_U2); break;
            case 4: _il.Emit(OpCodes.Ldind_U4); break;
            default: _il.Emit(OpCodes.Ldind_I8); break;
        }
        _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Stloc, _val);
        _il.MarkLabel(done);
        bool stack = _linStack;
        int seg = _linSeg;
        EmitAccessSlowPath(slow, done, () =>
        {
            if (_is64) { LdCpu(); LdBlock(); LdcI4(i); _il.Emit(OpCodes.Ldloc, _lin); LdcI4(size); _il.Emit(OpCodes.Call, stack ? MJitReadStack : MJitRead); }
            else { LdCpu(); LdBlock(); LdcI4(i); LdcI4(seg); _il.Emit(OpCodes.Ldloc, _lin); LdcI4(size); _il.Emit(OpCodes.Call, MJitReadSeg); }
            _il.Emit(OpCodes.Stloc, _val);
        });
    }

    /// <summary>Stores the low <paramref name="size"/> bytes of _val at _lin for instruction i. The
    /// caller ends the instruction with <see cref="EmitStopCheck"/> (the slow path may have hit code).</summary>
    private void EmitStore(int size, int i)
    {
        var slow = _il.DefineLabel();
        var done = _il.DefineLabel();
        EmitTlbProbe(size, TlbWriteTagOffset, slow);
        EmitHostAddress();
        _il.Emit(OpCodes.Ldloc, _val);
        switch (size)
        {
            case 1: _il.Emit(OpCodes.Conv_U1); _il.Emit(OpCodes.Stind_I1); break;
            case 2: _il.Emit(OpCodes.Conv_U2); _il.Emit(OpCodes.Stind_I2); break;
            case 4: _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Stind_I4); break;
            default: _il.Emit(OpCodes.Stind_I8); break;
        }
        _il.MarkLabel(done);
        bool stack = _linStack;
        int seg = _linSeg;
        EmitAccessSlowPath(slow, done, () =>
        {
            if (_is64) { LdCpu(); LdBlock(); LdcI4(i); _il.Emit(OpCodes.Ldloc, _lin); LdcI4(size); _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Call, stack ? MJitWriteStack : MJitWrite); }
            else { LdCpu(); LdBlock(); LdcI4(i); LdcI4(seg); _il.Emit(OpCodes.Ldloc, _lin); LdcI4(size); _il.Emit(OpCodes.Ldloc, _val); _il.Emit(OpCodes.Call, MJitWriteSeg); }
        });
    }
}
