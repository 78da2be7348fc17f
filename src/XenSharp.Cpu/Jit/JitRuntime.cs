using System.Runtime.CompilerServices;
using XenSharp.Cpu.Decoding;
using XenSharp.Cpu.Jit;

namespace XenSharp.Cpu;

/// <summary>The vCPU side of the block compiler: tier-up from the interpreter and the helpers
/// compiled blocks call on their slow paths.</summary>
internal unsafe partial class X86Vcpu
{
    /// <summary>Compiled blocks one entry from the run loop may run through direct links.</summary>
    private const int MaxHops = 64;

    private int _hops;
    /// <summary>Times the run loop entered compiled code (tests read it: hops and branches between bodies stay out of
    /// the run loop).</summary>
    internal long CompiledRuns;
    /// <summary>The compiled block whose direct exit <see cref="_linkSlot"/> was taken while not
    /// linked yet: the run loop links it to the block it finds next.</summary>
    private DecodedBlock? _linkFrom;
    private int _linkSlot;

    /// <summary>Runs <paramref name="b"/> compiled when it is (or has just become) hot; false when
    /// the interpreter must run it.</summary>
    private bool TryRunCompiled(DecodedBlock b)
    {
        long entry = b.Entry;
        if (entry == 0)
        {
            if (!_engine.Jit.Enabled || b.JitFailed || !b.Valid || b.Hits++ < _engine.Jit.Threshold) return false;
            if (_engine.Jit.Background)
            {
                if (!b.Queued) _engine.Compiler.TryEnqueue(b);
                return false;
            }
            if (!CompileQueue.Compile(b, _engine)) return false;
            entry = b.Entry;
        }
        // Published code has been through the .NET JIT already (CompileQueue), so nothing here can meet IL it
        // rejects: such an exception would surface in whichever linked successor first ran it, after this block
        // and its predecessors had run, and could be pinned on neither.
        _hops = MaxHops;
        CompiledRuns++;
        CompiledMethod.Enter(b, this, entry);
        if (LazyFlags != 0) ApplyLazyFlags();
        if (Stats) S.Chained += MaxHops - _hops;
        return true;
    }

    /// <summary>The last flag result of the compiled block that ran last, not yet applied to RFLAGS's arithmetic
    /// flags: its kind | size &lt;&lt; 8 (0 when none) and its operands and result. A block leaves it so that the
    /// compiled successor that overwrites every arithmetic flag before anything observes them (most do) never
    /// computes it; one that reads them applies it on entry, and so does the run loop when compiled code returns
    /// to it, so that nothing else ever sees it.</summary>
    internal int LazyFlags;
    internal ulong LazyA, LazyB, LazyR;

    internal void ApplyLazyFlags()
    {
        int k = LazyFlags;
        LazyFlags = 0;
        Rflags = FlagMath.Apply(Rflags, k & 0xFF, k >> 8, LazyA, LazyB, LazyR);
    }

    /// <summary>For a compiled block whose first flag user needs only CF of the entry's pending result (INC and DEC
    /// keep it, ADC and SBB read it, and each overwrites the rest): <paramref name="fl"/> with that CF, the pending
    /// result dropped. A loop that compares, then counts down with DEC, pays a compare instead of every flag.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong TakeLazyCarry(ulong fl)
    {
        int k = LazyFlags;
        if (k == 0) return fl;
        LazyFlags = 0;
        return (fl & ~CF) | FlagMath.Carry(k, LazyA, LazyB, LazyR, fl);
    }

    /// <summary>Links the exit the last compiled block left by to <paramref name="next"/>, found
    /// at its target: same mode and CS base, already compiled. In the source's linear page the translation
    /// is the same whenever the source runs; in another page, and for an instruction running into the next
    /// page, the compiled hop checks it each time (<see cref="LinkedPageHolds"/>, <see cref="LinkedTailHolds"/>).</summary>
    private void LinkPending(DecodedBlock next)
    {
        var from = _linkFrom!;
        _linkFrom = null;
        if (next.Entry == 0 || !next.Valid || !from.Valid || next.Bitness != from.Bitness || next.CsBase != from.CsBase) return;
        int slot = _linkSlot;
        if ((uint)slot < (uint)from.LinkCount && from.LinkTargets[slot] == next.Ip && from.LinkAt(slot) != next)
        {
            from.SetLink(slot, next);
            Interlocked.Increment(ref _engine.LinkCount);
        }
    }

    /// <summary>A direct exit of a chainable compiled block (its registers and RIP already written back, RIP at
    /// the exit's target): the successor linked to exit <paramref name="slot"/> for the compiled code to
    /// enter, while the hop budget lasts and nothing asks the run loop to look (an exit request, a write
    /// to cached code, an invalidated successor); null to return to the run loop. An exit not linked yet
    /// tells the run loop to link it. A successor in another linear page is entered only while the
    /// vCPU's code-fetch translation of that page, made in the jump cache's current epoch, still leads
    /// to the successor's bytes. One call here in place of the checks inline keeps every exit's IL
    /// small, which is most of what the .NET JIT spends; the caller invokes the successor's code itself so
    /// a hop costs one frame, not two, and writes RFLAGS back as the successor needs it.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    internal DecodedBlock? JitChain(DecodedBlock from, int slot)
    {
        if (Stats) { var r = JitChainCore(from, slot); S.ChainCalls++; if (r == null) S.ChainNull++; return r; }
        return JitChainCore(from, slot);
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private DecodedBlock? JitChainCore(DecodedBlock from, int slot)
    {
        var next = from.LinkAt(slot);
        if (next == null)
        {
            _linkFrom = from;
            _linkSlot = slot;
            return null;
        }
        if (--_hops <= 0 || _exitRequested || Stop || !next.Valid) return null;
        ulong rip = from.LinkTargets[slot];
        if (((rip ^ from.Ip) >> 12) != 0 && !LinkedPageHolds(rip, next)) return null;
        if (Bitness != 64 && !WithinCsLimit(next)) return null;
        if (next.HasTail && !LinkedTailHolds(next)) return null;
        return next;
    }

    /// <summary>The hop of <see cref="JitChain"/> for a target known only at run time (a RET, an indirect
    /// JMP or CALL; RIP already stored): the compiled block the jump cache holds for RIP is what the run
    /// loop would enter next (<see cref="IndirectSuccessor"/>), within the same budget and checks.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    internal DecodedBlock? JitIndirectChain()
    {
        if (Stats) S.IndirectCalls++;
        if (--_hops <= 0 || _exitRequested || Stop) { if (Stats) S.IndirectNull++; return null; }
        var next = IndirectSuccessor();
        if (Stats && next == null) S.IndirectNull++;
        return next;
    }

    /// <summary>All of <paramref name="next"/> lies within the CS limit, as the run loop checks before it runs a
    /// 32- or 16-bit block compiled (a link made under one CS stays when a CS of the same base and mode but a
    /// lower limit is loaded).</summary>
    internal bool WithinCsLimit(DecodedBlock next) => next.LastByte <= Seg[CS].Limit;

    // ---- slow paths of compiled code (state is written back before each call) ----
    // A fault or exit raised under them is caught right here and reported through Abort, which the
    // compiled code tests after each call and leaves by a plain return: the throw then unwinds only
    // the interpreter frames beneath, not the compiled blocks (and their direct links) above.

    /// <summary>Set when a slow path of compiled code caught a guest fault (<see cref="AbortFault"/>,
    /// the fault in _fault) or an exit (<see cref="AbortExit"/>, the exit in _exit); compiled code
    /// returns at once and the run loop delivers it as it would the exception.</summary>
    internal byte Abort;
    internal const byte AbortFault = 1, AbortExit = 2;

    /// <summary>CurIp and Rip as the interpreter has them while executing instruction <paramref name="i"/>
    /// of <paramref name="b"/>: set here by the slow paths rather than by IL at every access.</summary>
    private void JitAt(DecodedBlock b, int i)
    {
        ref Iced.Intel.Instruction ins = ref b.Insns[i].I;
        CurIp = ins.IP;
        Rip = ins.NextIP;
    }

    internal ulong JitRead(DecodedBlock b, int i, ulong lin, int size)
    {
        JitAt(b, i);
        try { return JitReadCore(lin, size); }
        catch (GuestFault) { Abort = AbortFault; return 0; }
        catch (ExitSignal) { Abort = AbortExit; return 0; }
    }

    private ulong JitReadCore(ulong lin, int size)
    {
        if (_acUser && (Rflags & AC) != 0) CheckAlignment(lin, (uint)size);
        return ReadLinSoft(lin, size);
    }

    /// <summary>Stack-segment accesses (RSP/RBP bases, pushes and pops): a non-canonical address is #SS, not #GP.</summary>
    internal ulong JitReadStack(DecodedBlock b, int i, ulong lin, int size)
    {
        JitAt(b, i);
        try
        {
            CheckStackCanonical(lin, (uint)size);
            return JitReadCore(lin, size);
        }
        catch (GuestFault) { Abort = AbortFault; return 0; }
        catch (ExitSignal) { Abort = AbortExit; return 0; }
    }

    internal void JitWriteStack(DecodedBlock b, int i, ulong lin, int size, ulong v)
    {
        JitAt(b, i);
        try
        {
            CheckStackCanonical(lin, (uint)size);
            JitWriteCore(lin, size, v);
        }
        catch (GuestFault) { Abort = AbortFault; }
        catch (ExitSignal) { Abort = AbortExit; }
    }

    internal void JitWrite(DecodedBlock b, int i, ulong lin, int size, ulong v)
    {
        JitAt(b, i);
        try { JitWriteCore(lin, size, v); }
        catch (GuestFault) { Abort = AbortFault; }
        catch (ExitSignal) { Abort = AbortExit; }
    }

    private void JitWriteCore(ulong lin, int size, ulong v)
    {
        if (_acUser && (Rflags & AC) != 0) CheckAlignment(lin, (uint)size);
        WriteLinSoft(lin, size, v);
    }

    /// <summary>A 32- or 16-bit block's access at <paramref name="off"/> in segment <paramref name="seg"/> that its inline
    /// path did not take (the segment is not flat, the TLB misses, the access crosses a page): limit-checked and
    /// based as the interpreter does it.</summary>
    internal ulong JitReadSeg(DecodedBlock b, int i, int seg, ulong off, int size)
    {
        JitAt(b, i);
        try { return JitReadCore(Linear(seg, off, (uint)size), size); }
        catch (GuestFault) { Abort = AbortFault; return 0; }
        catch (ExitSignal) { Abort = AbortExit; return 0; }
    }

    internal void JitWriteSeg(DecodedBlock b, int i, int seg, ulong off, int size, ulong v)
    {
        JitAt(b, i);
        try { JitWriteCore(Linear(seg, off, (uint)size), size, v); }
        catch (GuestFault) { Abort = AbortFault; }
        catch (ExitSignal) { Abort = AbortExit; }
    }

    /// <summary>#DE at instruction <paramref name="i"/>, a DIV whose divisor compiled code read from memory: raised here
    /// rather than by running the DIV again in the interpreter, which would read the divisor a second time.</summary>
    internal void JitDivideError(DecodedBlock b, int i)
    {
        JitAt(b, i);
        Fault(0);
        Abort = AbortFault;
    }

    // Atomic read-modify-writes of compiled code on a host address the soft TLB gave for reading and writing, naturally
    // aligned: the interpreter's own primitives, so that compiled and interpreted vCPUs interlock with each other.

    /// <summary>CMPXCHG: stores <paramref name="value"/> if the operand equals <paramref name="expected"/>; the operand's
    /// value before (equal to <paramref name="expected"/> exactly when the store happened).</summary>
    internal static ulong JitCmpxchg(byte* p, int size, ulong expected, ulong value)
    {
        while (true)
        {
            ulong cur = AtomicLoad(p, size);
            if (cur != expected || Cas(p, size, expected, value)) return cur;
        }
    }

    /// <summary>XADD: adds <paramref name="addend"/>; the operand's value before.</summary>
    internal static ulong JitXadd(byte* p, int size, ulong addend)
    {
        ulong old;
        do old = AtomicLoad(p, size);
        while (!Cas(p, size, old, old + addend));
        return old;
    }

    /// <summary>XCHG with memory: the operand's value before.</summary>
    internal static ulong JitXchg(byte* p, int size, ulong value) => AtomicSwap(p, size, value);

    /// <summary>LOCK BTS (1), BTR (2) or BTC (3) of the bits in <paramref name="mask"/>: the operand's value before.</summary>
    internal static ulong JitBitOp(byte* p, int size, int kind, ulong mask)
    {
        ulong old;
        do old = AtomicLoad(p, size);
        while (!Cas(p, size, old, kind == 1 ? old | mask : kind == 2 ? old & ~mask : old ^ mask));
        return old;
    }

    /// <summary>The pseudo-segment (a bit of <see cref="FlatSegments"/>) of a 32-bit block's inline pushes and pops:
    /// SS flat and with its B bit set, so that ESP is the stack pointer and the linear address of the stack top.</summary>
    internal const int FlatStack = 6;

    /// <summary>Of the segments in <paramref name="mask"/> (1 &lt;&lt; ES..GS), those that are flat now: a present
    /// expand-up data segment with base 0 and a 4 GiB limit, in which an offset is its linear address and no
    /// 32-bit offset's access but one wrapping past 4 GiB (which the inline path never takes: it does not fit its
    /// page) passes the limit. Bit <see cref="FlatStack"/>: SS is flat and 32-bit (a 16-bit SS wraps SP at 64 KiB
    /// and keeps ESP's high half).</summary>
    internal int FlatSegments(int mask)
    {
        int flat = 0;
        for (int s = 0; s < 6; s++)
        {
            if ((mask & (1 << s)) == 0) continue;
            ref SegReg g = ref Seg[s];
            if (g.Base == 0 && g.Limit == 0xFFFF_FFFF && (g.Attr & 0x9C) == 0x90) flat |= 1 << s;
        }
        if ((mask & (1 << FlatStack)) != 0)
        {
            ref SegReg g = ref Seg[SS];
            if (g.Base == 0 && g.Limit == 0xFFFF_FFFF && (g.Attr & 0x9C) == 0x90 && g.Big) flat |= 1 << FlatStack;
        }
        return flat;
    }

    /// <summary>A 32-bit block's push that its inline path did not take (SS not flat or not 32-bit, a TLB miss, a
    /// page-crossing or alignment-checked access): the interpreter's push, which applies the stack-address size,
    /// base, limit and expand-down (#SS) and moves ESP only when the store succeeded.</summary>
    internal void JitPush(DecodedBlock b, int i, int size, ulong v)
    {
        JitAt(b, i);
        try { Push(v, size); }
        catch (GuestFault) { Abort = AbortFault; }
        catch (ExitSignal) { Abort = AbortExit; }
    }

    /// <summary>The slow path of a 32-bit block's pop or RET: the interpreter's pop, then RET imm16's release of
    /// <paramref name="release"/> more bytes.</summary>
    internal ulong JitPop(DecodedBlock b, int i, int size, int release)
    {
        JitAt(b, i);
        try
        {
            ulong v = Pop(size);
            if (release != 0) AddSp(release);
            return v;
        }
        catch (GuestFault) { Abort = AbortFault; return 0; }
        catch (ExitSignal) { Abort = AbortExit; return 0; }
    }

    // ---- scalar SSE arithmetic for compiled code: the interpreter's host fast path, taken only when no flag but a
    // masked PE can arise; false (or -1) changes nothing, and the instruction runs in the interpreter, exactly. ----

    /// <summary>ADDSD/SUBSD/MULSD/DIVSD (<paramref name="dbl"/>) or the SS forms: XMM<paramref name="dst"/>'s low element
    /// op= <paramref name="b"/>.</summary>
    internal bool JitScalarArith(int op, int dst, ulong b, bool dbl)
    {
        if (!SoftFloat.FastOk(Mxcsr)) return false;
        ref Xmm x = ref X[dst];
        uint fl = 0;
        if (!SoftFloat.TryHost((SoftFloat.Op)op, dbl ? x.Lo : (uint)x.Lo, dbl ? b : (uint)b, dbl, ref fl, out ulong r)) return false;
        if (!SimdFlagsMasked(fl)) return false;
        Mxcsr |= fl;
        x.Lo = dbl ? r : (x.Lo & 0xFFFF_FFFF_0000_0000UL) | (uint)r;
        return true;
    }

    /// <summary>COMISD/UCOMISD (<paramref name="dbl"/>) or COMISS/UCOMISS: ZF, PF and CF as the compare sets them (the other
    /// arithmetic flags clear), or -1 when it would raise IE or DE.</summary>
    internal long JitComi(int dst, ulong b, bool dbl, bool signalling)
    {
        ulong a = X[dst].Lo;
        if (!dbl) { a = (uint)a; b = (uint)b; }
        uint fl = 0;
        ulong f = SoftFloat.ComiFlags(a, b, dbl, signalling, Mxcsr, ref fl);
        return fl != 0 ? -1 : (long)f;
    }

    /// <summary>CVTSI2SD (<paramref name="dbl"/>) or CVTSI2SS of <paramref name="v"/> into XMM<paramref name="dst"/>'s low element.</summary>
    internal bool JitCvtsi2(int dst, long v, bool dbl)
    {
        uint fl = 0;
        ulong r = SoftFloat.FromInt(v, dbl, Mxcsr, ref fl);
        if (!SimdFlagsMasked(fl)) return false;
        Mxcsr |= fl;
        ref Xmm x = ref X[dst];
        x.Lo = dbl ? r : (x.Lo & 0xFFFF_FFFF_0000_0000UL) | (uint)r;
        return true;
    }

    /// <summary>Whether MXCSR masks every exception in <paramref name="flags"/>.</summary>
    private bool SimdFlagsMasked(uint flags) => (flags & ~(Mxcsr >> 7) & 0x3F) == 0;

    /// <summary>Instructions compiled code has handed to the interpreter (<see cref="JitExec"/>), stats or not.</summary>
    internal long JitHandOffs;

    /// <summary>Instruction <paramref name="i"/> of <paramref name="b"/> through the interpreter.</summary>
    internal void JitExec(DecodedBlock b, int i)
    {
        JitHandOffs++;
        JitAt(b, i);
        ref DecodedInsn d = ref b.Insns[i];
        if (Stats) StatJitExec(ref d);
        try
        {
            if (d.Form != FastForm.None) ExecFast(ref d); else Execute(ref d);
        }
        catch (GuestFault) { Abort = AbortFault; }
        catch (ExitSignal) { Abort = AbortExit; }
    }
}
