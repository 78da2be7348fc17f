using System.Reflection;
using System.Reflection.Emit;
using Iced.Intel;
using XenSharp.Cpu.Decoding;
using Label = System.Reflection.Emit.Label;

namespace XenSharp.Cpu.Jit;

/// <summary>
/// Translates one decoded block into a DynamicMethod. The guest GPRs and RFLAGS live in IL locals
/// while the block runs and are written back to the vCPU before every call that can fault, exit
/// or look at them (slow memory paths, the interpreter fallback) and at every exit, so that a
/// fault anywhere in the block sees exactly the interpreter's state. Arithmetic flags are kept
/// as "pending" operands (<see cref="FlagKind"/>) and only computed where something observes them.
/// </summary>
internal sealed partial class BlockTranslator
{
    private const BindingFlags Inst = BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public;
    private static readonly Type Cpu = typeof(X86Vcpu);
    private static readonly FieldInfo FR = Cpu.GetField(nameof(X86Vcpu.R), Inst)!;
    private static readonly FieldInfo FRip = Cpu.GetField(nameof(X86Vcpu.Rip), Inst)!;
    private static readonly FieldInfo FRflags = Cpu.GetField(nameof(X86Vcpu.Rflags), Inst)!;
    private static readonly FieldInfo FStop = Cpu.GetField(nameof(X86Vcpu.Stop), Inst)!;
    private static readonly FieldInfo FAbort = Cpu.GetField(nameof(X86Vcpu.Abort), Inst)!;
    private static readonly FieldInfo FSeg = Cpu.GetField(nameof(X86Vcpu.Seg), Inst)!;
    private static readonly FieldInfo FValid = typeof(DecodedBlock).GetField(nameof(DecodedBlock.Valid))!;
    private static readonly FieldInfo FLinks = typeof(DecodedBlock).GetField(nameof(DecodedBlock.Links))!;
    private static readonly FieldInfo FEntry = typeof(DecodedBlock).GetField(nameof(DecodedBlock.Entry))!;
    private static readonly FieldInfo FLink0 = typeof(DecodedBlock).GetField(nameof(DecodedBlock.Link0))!;
    private static readonly FieldInfo FLink1 = typeof(DecodedBlock).GetField(nameof(DecodedBlock.Link1))!;
    private static readonly FieldInfo FHasTail = typeof(DecodedBlock).GetField(nameof(DecodedBlock.HasTail))!;
    private static readonly MethodInfo MLinkedTailHolds = Cpu.GetMethod(nameof(X86Vcpu.LinkedTailHolds), Inst)!;
    private static readonly MethodInfo MLinkedPageHolds = Cpu.GetMethod(nameof(X86Vcpu.LinkedPageHolds), Inst)!;
    private static readonly FieldInfo FLazyFlags = Cpu.GetField(nameof(X86Vcpu.LazyFlags), Inst)!;
    private static readonly FieldInfo FLazyA = Cpu.GetField(nameof(X86Vcpu.LazyA), Inst)!;
    private static readonly FieldInfo FLazyB = Cpu.GetField(nameof(X86Vcpu.LazyB), Inst)!;
    private static readonly FieldInfo FLazyR = Cpu.GetField(nameof(X86Vcpu.LazyR), Inst)!;
    private static readonly MethodInfo MApplyLazyFlags = Cpu.GetMethod(nameof(X86Vcpu.ApplyLazyFlags), Inst)!;
    private static readonly MethodInfo MTakeLazyCarry = Cpu.GetMethod(nameof(X86Vcpu.TakeLazyCarry), Inst)!;
    private static readonly FieldInfo FHops = Cpu.GetField("_hops", Inst)!;
    private static readonly MethodInfo MJitChain = Cpu.GetMethod(nameof(X86Vcpu.JitChain), Inst)!;
    private static readonly MethodInfo MJitIndirectChain = Cpu.GetMethod(nameof(X86Vcpu.JitIndirectChain), Inst)!;
    private static readonly FieldInfo FParity = Cpu.GetField(nameof(X86Vcpu.s_parity), BindingFlags.Static | BindingFlags.NonPublic | BindingFlags.Public)!;
    private static readonly FieldInfo FTlbCur = Cpu.GetField("_tlbCur", Inst)!;
    private static readonly FieldInfo FAcUser = Cpu.GetField("_acUser", Inst)!;
    private static readonly FieldInfo FRetired = Cpu.GetField("_retired", Inst)!;
    private static readonly FieldInfo FExitRequested = Cpu.GetField("_exitRequested", Inst)!;
    private static readonly MethodInfo MJitRead = Cpu.GetMethod(nameof(X86Vcpu.JitRead), Inst)!;
    private static readonly MethodInfo MJitWrite = Cpu.GetMethod(nameof(X86Vcpu.JitWrite), Inst)!;
    private static readonly MethodInfo MJitReadStack = Cpu.GetMethod(nameof(X86Vcpu.JitReadStack), Inst)!;
    private static readonly MethodInfo MJitWriteStack = Cpu.GetMethod(nameof(X86Vcpu.JitWriteStack), Inst)!;
    private static readonly MethodInfo MJitReadSeg = Cpu.GetMethod(nameof(X86Vcpu.JitReadSeg), Inst)!;
    private static readonly MethodInfo MJitWriteSeg = Cpu.GetMethod(nameof(X86Vcpu.JitWriteSeg), Inst)!;
    private static readonly MethodInfo MJitPush = Cpu.GetMethod(nameof(X86Vcpu.JitPush), Inst)!;
    private static readonly MethodInfo MJitPop = Cpu.GetMethod(nameof(X86Vcpu.JitPop), Inst)!;
    private static readonly MethodInfo MFlatSegments = Cpu.GetMethod(nameof(X86Vcpu.FlatSegments), Inst)!;
    private static readonly MethodInfo MJitExec = Cpu.GetMethod(nameof(X86Vcpu.JitExec), Inst)!;
    private static readonly MethodInfo MApply = typeof(FlagMath).GetMethod(nameof(FlagMath.Apply))!;
    private static readonly MethodInfo MCond = typeof(FlagMath).GetMethod(nameof(FlagMath.Cond))!;

    private static readonly int TlbEntrySize, TlbWriteTagOffset, TlbHostOffset, SegSize;

    static unsafe BlockTranslator()
    {
        TlbEntry e = default;
        TlbEntrySize = sizeof(TlbEntry);
        TlbWriteTagOffset = (int)((byte*)&e.WriteTag - (byte*)&e);
        TlbHostOffset = (int)((byte*)&e.Host - (byte*)&e);
        SegSize = sizeof(SegReg);
        if ((byte*)&e.ReadTag != (byte*)&e) throw new InvalidOperationException("TlbEntry.ReadTag must come first");
    }

    /// <summary>Iterations a block that branches to itself runs before returning to the run loop.</summary>
    private const int LoopBudget = 256;
    private const int MaxPending = 4;

    private readonly DecodedBlock _b;
    private readonly DecodedInsn[] _insns;
    private readonly int _n;
    private readonly ILGenerator _il;
    private readonly MethodFrame _f;
    private readonly DynamicMethod _method;
    private readonly InsnPlan[] _plans;
    private readonly ulong[] _liveAfter;
    private readonly ulong _liveIn;
    /// <summary>Where the flag result a predecessor left pending in the vCPU (<see cref="X86Vcpu.LazyFlags"/>) stops being
    /// carried along (see <see cref="EntryFlagsPlan"/>): the instruction before which it is applied, or the one after which it
    /// is dropped; -1 for neither (the block leaves it pending as it found it).</summary>
    private readonly int _applyAt, _dropAt;
    private readonly bool _selfLoop;
    /// <summary>Nothing in the block can change the mode, CPL, TF, IF or CS, so its direct exits may enter
    /// the next compiled block.</summary>
    private readonly bool _chainable;
    private readonly List<ulong> _linkTargets = new();
    /// <summary>The exits that branch into another body of the method: (link slot, that body), linked to its block when
    /// the method is published (<see cref="CompiledMethod.WarmLinks"/>).</summary>
    private readonly List<(int Slot, int Body)> _warmLinks = new();
    private readonly bool _is64;
    /// <summary>GPRs the inline instructions touch: only these live in locals.</summary>
    private readonly int _used;

    private readonly LocalBuilder[] _gpr;
    private readonly LocalBuilder _fl, _lin, _tlbBase, _entry, _val, _ta, _tb, _tr, _budget, _acArmed, _flat, _next, _self;
    /// <summary>The block has inline memory accesses (which test <see cref="_acArmed"/>).</summary>
    private readonly bool _accesses;
    /// <summary>32- and 16-bit blocks: the segments (1 &lt;&lt; ES..GS) of the inline accesses, whose flatness
    /// <see cref="_flat"/> holds.</summary>
    private readonly int _segsInline;
    private readonly LocalBuilder[] _pa, _pb, _pr;
    private Label _top;
    /// <summary>The method's other bodies and this one's index among them: a direct exit to a block compiled
    /// into the same method branches into that body (<see cref="TryEmitWarmBranch"/>).</summary>
    private BlockTranslator[] _batch = [];
    private int _index;
    /// <summary>Some body of the method branches here with its registers still in the locals: the body's
    /// second entry, past the loads of its prologue.</summary>
    private bool _warmTarget;
    private Label _warm;
    private int _warmBranches;

    // Compile-time state along the (straight-line) block.
    private int _dirty;             // GPR locals newer than R[]
    private bool _flDirty;          // _fl newer than Rflags
    private readonly List<Pending> _pending = new();
    private int _flushed;           // instructions already added to the retired count
    private bool _open;             // the entry's pending flag result may still be in the vCPU (_fl lacks it)

    private struct Pending
    {
        public FlagKind Kind;
        public int Size;
        public int Slot;
        /// <summary>A shift by CL: the count may be 0 (then no flag changes), so never fused.</summary>
        public bool MaybeNone;
    }

    /// <summary>The DynamicMethod one or more blocks are emitted into, and the IL locals their bodies share
    /// (each body is entered from the method's start and leaves by returning, so no value crosses bodies).</summary>
    private sealed class MethodFrame
    {
        public readonly DynamicMethod Method;
        public readonly ILGenerator Il;
        public readonly LocalBuilder[] Gpr = new LocalBuilder[16];
        public readonly LocalBuilder Fl, Lin, TlbBase, Entry, Val, Ta, Tb, Tr, Budget, HopsLeft, AcArmed, Flat, EntryWord, Next, Self;
        public readonly LocalBuilder[] Pa = new LocalBuilder[MaxPending], Pb = new LocalBuilder[MaxPending], Pr = new LocalBuilder[MaxPending];
        /// <summary>Code that rarely runs (slow paths of memory accesses, leaving after a store into code), emitted
        /// after every body so that the code that runs stays contiguous: the .NET JIT lays blocks out in IL order.</summary>
        public readonly List<Action> Cold = [];
        /// <summary>Where a fault or exit a slow path caught leaves the method (a plain return).</summary>
        public readonly Label Abort;
        /// <summary>The hops every body's exits share (<see cref="EmitHopTails"/>): each exit writes its state back and
        /// names its link slot in <see cref="Slot"/>, and one copy of the checks and the call serves them all.</summary>
        public readonly Label SamePageHop, FarPageHop, ChainHop, IndirectHop;
        public bool SamePageHopUsed, FarPageHopUsed, ChainHopUsed, IndirectHopUsed;
        public readonly LocalBuilder Slot;
        /// <summary>The RIP a linked exit leaves for, set before it branches to its block's write-back (<see cref="EmitExit"/>).</summary>
        public readonly LocalBuilder ExitRip;

        public MethodFrame(ulong ip, int insns)
        {
            Method = new DynamicMethod($"block_{ip:X}", typeof(void), CompiledMethod.Parameters, typeof(X86Vcpu).Module, skipVisibility: true);
            Il = Method.GetILGenerator(256 + 64 * insns);
            for (int g = 0; g < 16; g++) Gpr[g] = Il.DeclareLocal(typeof(ulong));
            Fl = Il.DeclareLocal(typeof(ulong));
            Lin = Il.DeclareLocal(typeof(ulong));
            TlbBase = Il.DeclareLocal(typeof(nint));
            Entry = Il.DeclareLocal(typeof(nint));
            Val = Il.DeclareLocal(typeof(ulong));
            Ta = Il.DeclareLocal(typeof(ulong));
            Tb = Il.DeclareLocal(typeof(ulong));
            Tr = Il.DeclareLocal(typeof(ulong));
            Budget = Il.DeclareLocal(typeof(int));
            HopsLeft = Il.DeclareLocal(typeof(int));
            AcArmed = Il.DeclareLocal(typeof(int));
            Flat = Il.DeclareLocal(typeof(int));
            EntryWord = Il.DeclareLocal(typeof(long));
            Next = Il.DeclareLocal(typeof(DecodedBlock));
            Self = Il.DeclareLocal(typeof(DecodedBlock));
            Abort = Il.DefineLabel();
            SamePageHop = Il.DefineLabel();
            FarPageHop = Il.DefineLabel();
            ChainHop = Il.DefineLabel();
            IndirectHop = Il.DefineLabel();
            Slot = Il.DeclareLocal(typeof(int));
            ExitRip = Il.DeclareLocal(typeof(ulong));
            for (int k = 0; k < MaxPending; k++)
            {
                Pa[k] = Il.DeclareLocal(typeof(ulong));
                Pb[k] = Il.DeclareLocal(typeof(ulong));
                Pr[k] = Il.DeclareLocal(typeof(ulong));
            }
        }
    }

    private BlockTranslator(DecodedBlock b, MethodFrame f)
    {
        _b = b;
        _insns = b.Insns;
        _n = b.Count;
        _is64 = b.Bitness == 64;
        _method = f.Method;
        _f = f;
        _il = f.Il;
        _plans = new InsnPlan[_n];
        _liveAfter = new ulong[_n];
        for (int i = 0; i < _n; i++) _plans[i] = Plan(ref _insns[i]);
        _liveIn = FlagLiveness.Compute(_n, _plans, _liveAfter);
        (_applyAt, _dropAt) = EntryFlagsPlan();
        _used = UsedGprs();
        ref DecodedInsn last = ref _insns[_n - 1];
        // Only blocks compiled entirely inline loop on themselves: nothing in them can change
        // TF, IF, the interrupt shadow or the mode, which the run loop checks between blocks.
        bool allInline = Array.TrueForAll(_plans, p => p.Inline);
        _selfLoop = (last.I.IsJccShortOrNear || last.I.IsJmpShortOrNear) && last.I.NearBranchTarget == b.Ip && allInline;
        // Leaving by links and indirect hops needs the same of every instruction the interpreter runs here.
        // 32- and 16-bit blocks too when CS's base is page-aligned, so that an IP's page is its linear page, which
        // the same-page links rely on; the CS limit is checked by the hops (see JitChain).
        _chainable = (_is64 || (b.CsBase & 0xFFF) == 0) && Enumerable.Range(0, _n).All(k => _plans[k].Inline || ChainSafe(_insns[k].I));
        _accesses = Array.Exists(_plans, p => p.Inline && p.Faults);
        // Outside 64-bit mode, the segments whose flatness the inline accesses test.
        if (!_is64)
            for (int k = 0; k < _n; k++)
            {
                if (_plans[k].Inline && _plans[k].Faults && _insns[k].MemSplit)
                    _segsInline |= 1 << _insns[k].MemSeg;
                if (_plans[k].Inline && _insns[k].Op is Mnemonic.Push or Mnemonic.Pop or Mnemonic.Call or Mnemonic.Ret)
                    _segsInline |= 1 << X86Vcpu.FlatStack;
            }

        _gpr = f.Gpr; _fl = f.Fl; _lin = f.Lin; _tlbBase = f.TlbBase; _entry = f.Entry; _val = f.Val;
        _ta = f.Ta; _tb = f.Tb; _tr = f.Tr; _budget = f.Budget; _acArmed = f.AcArmed; _flat = f.Flat; _next = f.Next; _self = f.Self;
        _pa = f.Pa; _pb = f.Pb; _pr = f.Pr;
    }

    /// <summary>Translates <paramref name="blocks"/> into one DynamicMethod with a body per block, block k's
    /// body k (<see cref="CompiledMethod"/>). The .NET JIT has a large fixed cost per method, so compiling several
    /// blocks at once costs much less per block than compiling them one by one. Nothing is published here.</summary>
    public static CompiledMethod CompileBatch(IReadOnlyList<DecodedBlock> blocks, out int ilBytes, out int warmBranches, Predicate<DecodedBlock>? rejectForTests = null)
    {
        int insns = 0;
        foreach (var b in blocks) insns += b.Count;
        var f = new MethodFrame(blocks[0].Ip, insns);
        var il = f.Il;
        // Called with no vCPU by the compiler thread, only to have .NET compile it.
        var body = il.DefineLabel();
        il.Emit(OpCodes.Ldarg_1); il.Emit(OpCodes.Brtrue, body);
        il.Emit(OpCodes.Ret);
        il.MarkLabel(body);
        // Every body reaches its block through this local.
        il.Emit(OpCodes.Ldarg_0); il.Emit(OpCodes.Stloc, f.Self);
        var entries = new Label[blocks.Count];
        for (int k = 0; k < entries.Length; k++) entries[k] = il.DefineLabel();
        if (blocks.Count > 1)
        {
            il.Emit(OpCodes.Ldarg_2);
            il.Emit(OpCodes.Switch, entries);
            il.Emit(OpCodes.Ret);
        }
        var targets = new ulong[blocks.Count][];
        var translators = new BlockTranslator[blocks.Count];
        for (int k = 0; k < blocks.Count; k++) translators[k] = new BlockTranslator(blocks[k], f);
        PlanWarmBranches(translators);
        for (int k = 0; k < blocks.Count; k++)
        {
            il.MarkLabel(entries[k]);
            var t = translators[k];
            // An unbalanced stack, which .NET refuses to compile.
            if (rejectForTests?.Invoke(blocks[k]) == true) il.Emit(OpCodes.Pop);
            t.Emit();
        }
        // Link targets are taken once all of the code, cold code included, is emitted.
        for (int c = 0; c < f.Cold.Count; c++) f.Cold[c]();
        EmitHopTails(f);
        il.MarkLabel(f.Abort);
        il.Emit(OpCodes.Ret);
        for (int k = 0; k < blocks.Count; k++) targets[k] = translators[k]._linkTargets.ToArray();
        ilBytes = il.ILOffset;
        warmBranches = translators.Sum(t => t._warmBranches);
        for (int k = 0; k < blocks.Count; k++)
        {
            var b = blocks[k];
            // Published before the code that indexes them.
            b.LinkTargets = targets[k];
            b.ResetLinks(targets[k].Length);
        }
        var warm = new List<CompiledMethod.WarmLink>();
        for (int k = 0; k < blocks.Count; k++)
            foreach (var (slot, target) in translators[k]._warmLinks) warm.Add(new(k, slot, target));
        return new CompiledMethod(f.Method, blocks.Count, warm.ToArray());
    }

    private void Emit()
    {
        // Prologue: guest state into locals. The block before may have left its last flag result pending in the
        // vCPU (see StoreFlagsAtExit): dropped here when this block overwrites every flag before anything could
        // observe them, applied here when its first instruction needs it, else carried until EntryFlagsPlan's point.
        LoadUsedGprs();
        bool carryAtEntry = _liveIn != 0 && _applyAt == 0 && CarryOnlyAt(0);
        if (_liveIn == 0)
        {
            // Dropped here, out of any loop back to the top.
            LdCpu(); _il.Emit(OpCodes.Ldc_I4_0); _il.Emit(OpCodes.Stfld, FLazyFlags);
        }
        else if (_applyAt == 0 && !carryAtEntry)
        {
            var none = _il.DefineLabel();
            LdCpu(); _il.Emit(OpCodes.Ldfld, FLazyFlags); _il.Emit(OpCodes.Brfalse, none);
            LdCpu(); _il.Emit(OpCodes.Call, MApplyLazyFlags);
            _il.MarkLabel(none);
        }
        LdCpu(); _il.Emit(OpCodes.Ldfld, FRflags); _il.Emit(OpCodes.Stloc, _fl);
        if (carryAtEntry) TakeEntryCarry();
        // A body entered from another body of the method finds the pending result applied (EmitBranchOut), so the
        // code of an open region serves both entries.
        _open = _liveIn != 0 && _applyAt != 0;
        if (_warmTarget)
        {
            // Entered from the prologue or from another body with the registers this one uses current in
            // the locals, some of them newer than the vCPU's: treat them all as newer.
            _il.MarkLabel(_warm);
            _dirty = _used;
            _flDirty = true;
        }
        if (_accesses) EmitAccessLocals();
        if (_segsInline != 0) EmitFlat();
        if (_selfLoop)
        {
            _il.Emit(OpCodes.Ldc_I4_0); _il.Emit(OpCodes.Stloc, _budget);
            // Around the back edge the locals are not written back: treat them all as newer.
            _dirty = _used;
            _flDirty = true;
        }
        _top = _il.DefineLabel();
        _il.MarkLabel(_top);

        for (int i = 0; i < _n; i++)
        {
            ref DecodedInsn d = ref _insns[i];
            bool last = i == _n - 1;
            if (i == _applyAt && _open) CloseEntryFlags();
            if (!_plans[i].Inline)
            {
                EmitFallback(ref d, i, last);
                continue;
            }
            bool ended = EmitInline(ref d, i);
            if (i == _dropAt && _open)
            {
                // Every arithmetic flag is this instruction's now; a fault in it found the entry's result still pending.
                LdCpu(); _il.Emit(OpCodes.Ldc_I4_0); _il.Emit(OpCodes.Stfld, FLazyFlags);
                _open = false;
            }
            if (last && !ended) EmitExit(d.I.NextIP, i + 1, link: true);
        }
    }

    /// <summary>After a slow-path call (evaluation stack empty): a fault or exit it caught leaves the
    /// block with the state the call was made in, as the exception did.</summary>
    private void EmitAbortCheck()
    {
        LdCpu(); _il.Emit(OpCodes.Ldfld, FAbort); _il.Emit(OpCodes.Brtrue, _f.Abort);
    }

    /// <summary>The slow path of an inline access, entered at <paramref name="slow"/> among the cold code: the state
    /// written back, <paramref name="call"/> (the helper, leaving nothing on the stack), then back to
    /// <paramref name="done"/> unless the helper caught a fault or exit; <paramref name="after"/> reloads what the
    /// helper changed.</summary>
    private void EmitSlowPath(Label slow, Label done, Action call, Action? after = null) => EmitCold(slow, () =>
    {
        SyncForSlowPath();
        call();
        EmitAbortCheck();
        after?.Invoke();
        _il.Emit(OpCodes.Br, done);
    });

    /// <summary>The slow path of an inline load or store, whose helper reads no general register and no arithmetic flag
    /// (only the address, the segments and RFLAGS.AC, which no inline instruction changes): the state is written back
    /// only when the helper caught a fault or exit, by a stub that the block's slow paths made in the same
    /// compile-time state share. A TLB miss that succeeds then costs no stores, and each slow path carries no copy of
    /// the write-back.</summary>
    private void EmitAccessSlowPath(Label slow, Label done, Action call) => EmitCold(slow, () =>
    {
        call();
        if (_dirty == 0 && !_flDirty && _pending.Count == 0) EmitAbortCheck();
        else
        {
            var stub = SharedCold(StateKey("a"), () =>
            {
                SyncForSlowPath();
                _il.Emit(OpCodes.Br, _f.Abort);
            });
            LdCpu(); _il.Emit(OpCodes.Ldfld, FAbort); _il.Emit(OpCodes.Brtrue, stub);
        }
        _il.Emit(OpCodes.Br, done);
    });

    /// <summary>The compile-time state a write-back depends on (the registers and RFLAGS newer than the vCPU's, the
    /// pending flag results and their slots), after <paramref name="prefix"/>: code emitted for equal keys is the same.</summary>
    private string StateKey(string prefix)
    {
        var key = new System.Text.StringBuilder(prefix).Append(_dirty).Append(_flDirty ? '+' : '-').Append(_open ? 'o' : 'c');
        foreach (var p in _pending) key.Append(':').Append((int)p.Kind).Append(',').Append(p.Size).Append(',').Append(p.Slot).Append(p.MaybeNone ? '?' : '.');
        return key.ToString();
    }

    /// <summary>The entry of cold code that <paramref name="emit"/> makes for <paramref name="key"/>, emitted once per
    /// block however many places branch to it (<see cref="StateKey"/> says when their code would be the same).</summary>
    private Label SharedCold(string key, Action emit)
    {
        if (!_sharedCold.TryGetValue(key, out var entry))
        {
            entry = _il.DefineLabel();
            _sharedCold.Add(key, entry);
            EmitCold(entry, emit);
        }
        return entry;
    }

    /// <summary>The block's shared cold code (<see cref="SharedCold"/>): slow paths' write-backs, linked exits.</summary>
    private readonly Dictionary<string, Label> _sharedCold = new();

    /// <summary>Emits <paramref name="emit"/> at <paramref name="entry"/> among the method's cold code (see
    /// <see cref="MethodFrame.Cold"/>), with the compile-time state as it is here: the registers newer than the
    /// vCPU's and the pending flag results. It ends by branching back to hot code itself, or by leaving.</summary>
    private void EmitCold(Label entry, Action emit)
    {
        int dirty = _dirty;
        bool flDirty = _flDirty, open = _open;
        int flushed = _flushed;
        var pending = _pending.ToArray();
        _f.Cold.Add(() =>
        {
            _dirty = dirty; _flDirty = flDirty; _flushed = flushed; _open = open;
            _pending.Clear(); _pending.AddRange(pending);
            _il.MarkLabel(entry);
            emit();
        });
    }

    // ---------------------------------------------------------------- planning

    private InsnPlan Plan(ref DecodedInsn d)
    {
        var p = new InsnPlan();
        if (!Supported(ref d, out bool touchesMemory, out ulong kills))
        {
            p.Inline = false;
            p.Faults = true;
            p.Reads = p.FlagReads = p.MayWrite = X86Vcpu.ArithFlags;
            return p;
        }
        p.Inline = true;
        p.Faults = touchesMemory;
        p.FlagReads = FlagLiveness.IcedReads(d.I);
        p.Reads = touchesMemory ? X86Vcpu.ArithFlags : p.FlagReads;
        p.Kills = kills;
        p.MayWrite = FlagLiveness.IcedKills(d.I) | kills;
        return p;
    }

    // ---------------------------------------------------------------- IL primitives

    private void LdCpu() => _il.Emit(OpCodes.Ldarg_1);

    /// <summary>Pushes the block being translated (the one the running delegate was made for).</summary>
    private void LdBlock() => _il.Emit(OpCodes.Ldloc, _self);

    private void LdcU8(ulong v) => _il.Emit(OpCodes.Ldc_I8, (long)v);

    private void LdcI4(int v) => _il.Emit(OpCodes.Ldc_I4, v);

    /// <summary>Pushes the address of R[g].</summary>
    private void GprAddress(int g)
    {
        LdCpu();
        _il.Emit(OpCodes.Ldflda, FR);
        if (g != 0) { LdcI4(g * 8); _il.Emit(OpCodes.Add); }
    }

    private void LoadUsedGprs()
    {
        for (int g = 0; g < 16; g++)
            if ((_used & (1 << g)) != 0) LoadGprFromCpu(g);
    }

    private int UsedGprs()
    {
        var factory = new InstructionInfoFactory();
        int mask = 0;
        for (int i = 0; i < _n; i++)
        {
            if (!_plans[i].Inline) continue;
            ref Instruction ins = ref _insns[i].I;
            foreach (var u in factory.GetInfo(ins).GetUsedRegisters())
                if (u.Register.IsGPR()) mask |= 1 << GprNum(u.Register);
            // Implicit operands the translator itself touches.
            switch (_insns[i].Op)
            {
                case Mnemonic.Push: case Mnemonic.Pop: case Mnemonic.Call: case Mnemonic.Ret: case Mnemonic.Pushfq: mask |= 1 << 4; break;
                case Mnemonic.Leave: mask |= 1 << 4 | 1 << 5; break;
                case Mnemonic.Cdq: case Mnemonic.Cdqe: case Mnemonic.Cqo: case Mnemonic.Mul: case Mnemonic.Div: mask |= 1 | 4; break;
                case Mnemonic.Imul when _insns[i].I.OpCount == 1: mask |= 1 | 4; break;
            }
            if (IsShift(_insns[i].Op)) mask |= 2;
        }
        return mask;
    }

    private void LoadGprFromCpu(int g)
    {
        GprAddress(g);
        _il.Emit(OpCodes.Ldind_I8);
        _il.Emit(OpCodes.Stloc, _gpr[g]);
    }

    /// <summary>Zero-extends the ulong on the stack from <paramref name="size"/> bytes.</summary>
    private void Trunc(int size)
    {
        switch (size)
        {
            case 1: _il.Emit(OpCodes.Conv_U1); _il.Emit(OpCodes.Conv_U8); break;
            case 2: _il.Emit(OpCodes.Conv_U2); _il.Emit(OpCodes.Conv_U8); break;
            case 4: _il.Emit(OpCodes.Conv_U4); _il.Emit(OpCodes.Conv_U8); break;
        }
    }

    /// <summary>Sign-extends the ulong on the stack from <paramref name="size"/> bytes.</summary>
    private void SignExt(int size)
    {
        switch (size)
        {
            case 1: _il.Emit(OpCodes.Conv_I1); _il.Emit(OpCodes.Conv_I8); break;
            case 2: _il.Emit(OpCodes.Conv_I2); _il.Emit(OpCodes.Conv_I8); break;
            case 4: _il.Emit(OpCodes.Conv_I4); _il.Emit(OpCodes.Conv_I8); break;
        }
    }

    private static bool IsHigh8(Register r) => r is Register.AH or Register.CH or Register.DH or Register.BH;

    private static int GprNum(Register r) => r.GetFullRegister().GetNumber();

    /// <summary>Pushes a GPR operand's value, zero-extended.</summary>
    private void ReadGpr(Register r)
    {
        int g = GprNum(r);
        _il.Emit(OpCodes.Ldloc, _gpr[g]);
        int size = r.GetSize();
        if (size == 1 && IsHigh8(r)) { _il.Emit(OpCodes.Ldc_I4_8); _il.Emit(OpCodes.Shr_Un); }
        Trunc(size);
    }

    /// <summary>Writes the value in local <paramref name="src"/> to a GPR operand with the x86
    /// rules: 32-bit writes zero bits 63:32, 8/16-bit writes keep the rest.</summary>
    private void WriteGpr(Register r, LocalBuilder src)
    {
        int g = GprNum(r);
        var loc = _gpr[g];
        switch (r.GetSize())
        {
            case 8:
                _il.Emit(OpCodes.Ldloc, src);
                break;
            case 4:
                _il.Emit(OpCodes.Ldloc, src); Trunc(4);
                break;
            case 2:
                _il.Emit(OpCodes.Ldloc, loc); LdcU8(~0xFFFFUL); _il.Emit(OpCodes.And);
                _il.Emit(OpCodes.Ldloc, src); Trunc(2); _il.Emit(OpCodes.Or);
                break;
            default:
                if (IsHigh8(r))
                {
                    _il.Emit(OpCodes.Ldloc, loc); LdcU8(~0xFF00UL); _il.Emit(OpCodes.And);
                    _il.Emit(OpCodes.Ldloc, src); Trunc(1); _il.Emit(OpCodes.Ldc_I4_8); _il.Emit(OpCodes.Shl); _il.Emit(OpCodes.Or);
                }
                else
                {
                    _il.Emit(OpCodes.Ldloc, loc); LdcU8(~0xFFUL); _il.Emit(OpCodes.And);
                    _il.Emit(OpCodes.Ldloc, src); Trunc(1); _il.Emit(OpCodes.Or);
                }
                break;
        }
        _il.Emit(OpCodes.Stloc, loc);
        _dirty |= 1 << g;
    }

    private void SetFull(int g, LocalBuilder src)
    {
        _il.Emit(OpCodes.Ldloc, src);
        _il.Emit(OpCodes.Stloc, _gpr[g]);
        _dirty |= 1 << g;
    }

    // ---------------------------------------------------------------- state write-back

    private void SpillGprs()
    {
        for (int g = 0; g < 16; g++)
        {
            if ((_dirty & (1 << g)) == 0) continue;
            GprAddress(g);
            _il.Emit(OpCodes.Ldloc, _gpr[g]);
            _il.Emit(OpCodes.Stind_I8);
        }
    }

    /// <summary>Pushes RFLAGS with every pending result applied (no state change). On hot paths
    /// the commonest kinds are computed inline; the rest (and cold paths) call <see cref="FlagMath.Apply"/>.</summary>
    private void PushFlags(bool hot)
    {
        _il.Emit(OpCodes.Ldloc, _fl);
        foreach (var p in _pending)
        {
            if (hot && p.Kind is FlagKind.Logic or FlagKind.Add or FlagKind.Sub or FlagKind.Inc or FlagKind.Dec)
            {
                EmitInlineFlags(p);
                continue;
            }
            LdcI4((int)p.Kind); LdcI4(p.Size);
            _il.Emit(OpCodes.Ldloc, _pa[p.Slot]); _il.Emit(OpCodes.Ldloc, _pb[p.Slot]); _il.Emit(OpCodes.Ldloc, _pr[p.Slot]);
            _il.Emit(OpCodes.Call, MApply);
        }
    }

    /// <summary>Replaces the arithmetic flags of the RFLAGS value on the stack with those of a
    /// pending logic, ADD, SUB, INC or DEC result (the same definitions as <see cref="FlagMath.Apply"/>).</summary>
    private void EmitInlineFlags(Pending p)
    {
        var a = _pa[p.Slot]; var b = _pb[p.Slot]; var r = _pr[p.Slot];
        int top = p.Size * 8 - 1;
        bool incDec = p.Kind is FlagKind.Inc or FlagKind.Dec;
        // INC and DEC keep the CF of the value below.
        LdcU8(incDec ? ~(X86Vcpu.ArithFlags & ~X86Vcpu.CF) : ~X86Vcpu.ArithFlags); _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Ldsfld, FParity); _il.Emit(OpCodes.Ldloc, r); _il.Emit(OpCodes.Conv_U1); _il.Emit(OpCodes.Ldelem_U1); _il.Emit(OpCodes.Conv_U8);
        _il.Emit(OpCodes.Or);
        IsZero(r); _il.Emit(OpCodes.Conv_U8); LdcI4(6); _il.Emit(OpCodes.Shl); _il.Emit(OpCodes.Or);
        _il.Emit(OpCodes.Ldloc, r); LdcI4(top); _il.Emit(OpCodes.Shr_Un); LdcU8(1); _il.Emit(OpCodes.And); LdcI4(7); _il.Emit(OpCodes.Shl); _il.Emit(OpCodes.Or);
        if (p.Kind == FlagKind.Logic) return;
        if (incDec)
        {
            // AF from the operand and the result (the other operand is 1); OF when the result (INC) or the
            // operand (DEC) is the sign bit alone.
            _il.Emit(OpCodes.Ldloc, a); _il.Emit(OpCodes.Ldloc, r); _il.Emit(OpCodes.Xor);
            LdcU8(X86Vcpu.AF); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Or);
            _il.Emit(OpCodes.Ldloc, p.Kind == FlagKind.Inc ? r : a); LdcU8(1UL << top); _il.Emit(OpCodes.Ceq); _il.Emit(OpCodes.Conv_U8);
            LdcI4(11); _il.Emit(OpCodes.Shl); _il.Emit(OpCodes.Or);
            return;
        }
        _il.Emit(OpCodes.Ldloc, a); _il.Emit(OpCodes.Ldloc, b); _il.Emit(OpCodes.Xor); _il.Emit(OpCodes.Ldloc, r); _il.Emit(OpCodes.Xor);
        LdcU8(X86Vcpu.AF); _il.Emit(OpCodes.And); _il.Emit(OpCodes.Or);
        if (p.Kind == FlagKind.Sub)
        {
            _il.Emit(OpCodes.Ldloc, a); _il.Emit(OpCodes.Ldloc, b); _il.Emit(OpCodes.Clt_Un); _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Or);
            _il.Emit(OpCodes.Ldloc, a); _il.Emit(OpCodes.Ldloc, b); _il.Emit(OpCodes.Xor);
            _il.Emit(OpCodes.Ldloc, a); _il.Emit(OpCodes.Ldloc, r); _il.Emit(OpCodes.Xor);
        }
        else
        {
            _il.Emit(OpCodes.Ldloc, r); _il.Emit(OpCodes.Ldloc, a); _il.Emit(OpCodes.Clt_Un); _il.Emit(OpCodes.Conv_U8); _il.Emit(OpCodes.Or);
            _il.Emit(OpCodes.Ldloc, a); _il.Emit(OpCodes.Ldloc, r); _il.Emit(OpCodes.Xor);
            _il.Emit(OpCodes.Ldloc, b); _il.Emit(OpCodes.Ldloc, r); _il.Emit(OpCodes.Xor);
        }
        _il.Emit(OpCodes.And); LdcI4(top); _il.Emit(OpCodes.Shr_Un); LdcU8(1); _il.Emit(OpCodes.And); LdcI4(11); _il.Emit(OpCodes.Shl);
        _il.Emit(OpCodes.Or);
    }

    private void StoreFlagsToCpu()
    {
        if (!_flDirty && _pending.Count == 0) return;
        LdCpu();
        PushFlags(hot: false);
        _il.Emit(OpCodes.Stfld, FRflags);
    }

    /// <summary>RFLAGS at an exit: a single pending result that defines every arithmetic flag, or all but the CF it keeps, is left in the vCPU
    /// as its operands (<see cref="X86Vcpu.LazyFlags"/>), for the next compiled block to apply only if it reads
    /// the flags, and for the run loop to apply when compiled code returns to it; anything else is computed.</summary>
    private void StoreFlagsAtExit()
    {
        var last = _pending.Count == 1 ? _pending[0] : default;
        // An INC or DEC ran after the entry's result was applied, so the flags local holds the CF it keeps, which
        // RFLAGS gets below for Apply to keep.
        bool keepsCarry = (last.Kind is FlagKind.Inc or FlagKind.Dec) && !_open;
        if (_pending.Count != 1 || last.MaybeNone || (FlagMath.Defines(last.Kind) != X86Vcpu.ArithFlags && !keepsCarry))
        {
            StoreFlagsToCpu();
            return;
        }
        if (_flDirty) { LdCpu(); _il.Emit(OpCodes.Ldloc, _fl); _il.Emit(OpCodes.Stfld, FRflags); }
        LdCpu(); _il.Emit(OpCodes.Ldloc, _pa[last.Slot]); _il.Emit(OpCodes.Stfld, FLazyA);
        LdCpu(); _il.Emit(OpCodes.Ldloc, _pb[last.Slot]); _il.Emit(OpCodes.Stfld, FLazyB);
        LdCpu(); _il.Emit(OpCodes.Ldloc, _pr[last.Slot]); _il.Emit(OpCodes.Stfld, FLazyR);
        LdCpu(); LdcI4((int)last.Kind | last.Size << 8); _il.Emit(OpCodes.Stfld, FLazyFlags);
    }

    /// <summary>Computes every pending flag result into the flags local.</summary>
    private void MaterializeFlags()
    {
        if (_pending.Count == 0) return;
        PushFlags(hot: true);
        _il.Emit(OpCodes.Stloc, _fl);
        _pending.Clear();
        _flDirty = true;
    }

    /// <summary>Before a slow-path call that can fault or exit: registers and flags as the interpreter
    /// has them (the helper itself sets CurIp and Rip from the instruction's index).</summary>
    private void SyncForSlowPath()
    {
        SpillGprs();
        StoreFlagsToCpu();
    }

    private void AddRetired(int count)
    {
        if (count <= 0) return;
        LdCpu();
        LdCpu(); _il.Emit(OpCodes.Ldfld, FRetired);
        LdcU8((ulong)count); _il.Emit(OpCodes.Add);
        _il.Emit(OpCodes.Stfld, FRetired);
    }

    /// <summary>Leaves the block at a known RIP after <paramref name="executed"/> instructions;
    /// a <paramref name="link"/> exit of a chainable block continues in the linked successor.</summary>
    private void EmitExit(ulong rip, int executed, bool link = false)
    {
        if (link && _chainable)
        {
            TryEmitWarmBranch(rip, executed);
            EmitLinkedExit(rip, executed);
            return;
        }
        SpillGprs();
        LdCpu(); LdcU8(rip); _il.Emit(OpCodes.Stfld, FRip);
        AddRetired(executed - _flushed);
        StoreFlagsAtExit();
        _il.Emit(OpCodes.Ret);
    }

    /// <summary>A linked exit: its link slot and RIP into locals, then the write-back and hop that the block's linked
    /// exits made in the same compile-time state share (the two exits of a conditional branch always do), so that the
    /// block carries one copy of it rather than one per exit.</summary>
    private void EmitLinkedExit(ulong rip, int executed)
    {
        int slot = _linkTargets.Count;
        _linkTargets.Add(rip);
        LdcI4(slot); _il.Emit(OpCodes.Stloc, _f.Slot);
        EmitLoadLink(slot);
        LdcU8(rip); _il.Emit(OpCodes.Stloc, _f.ExitRip);
        int retire = executed - _flushed;
        char hop = !_is64 ? 'c' : (rip >> 12) == (_b.Ip >> 12) ? 'p' : 'f';
        var stub = SharedCold(StateKey($"{hop}{retire}/"), () =>
        {
            SpillGprs();
            LdCpu(); _il.Emit(OpCodes.Ldloc, _f.ExitRip); _il.Emit(OpCodes.Stfld, FRip);
            AddRetired(retire);
            StoreFlagsAtExit();
            switch (hop)
            {
                case 'p': _f.SamePageHopUsed = true; _il.Emit(OpCodes.Br, _f.SamePageHop); break;
                case 'f': _f.FarPageHopUsed = true; _il.Emit(OpCodes.Br, _f.FarPageHop); break;
                default: _f.ChainHopUsed = true; _il.Emit(OpCodes.Br, _f.ChainHop); break;
            }
        });
        _il.Emit(OpCodes.Br, stub);
    }

    /// <summary>Leaves the block with RIP already stored in the vCPU (a RET, an indirect JMP or CALL); a
    /// chainable block continues in the compiled block the vCPU's jump cache holds for that RIP.</summary>
    private void EmitExitDynamic(int executed)
    {
        SpillGprs();
        AddRetired(executed - _flushed);
        StoreFlagsAtExit();
        if (!_chainable)
        {
            _il.Emit(OpCodes.Ret);
            return;
        }
        _f.IndirectHopUsed = true;
        _il.Emit(OpCodes.Br, _f.IndirectHop);
    }

    /// <summary>The hops of the method's exits, each emitted once after every body (the state is written back and
    /// RIP stored; _self is the block left, <see cref="MethodFrame.Slot"/> its exit's link slot):
    /// <list type="bullet">
    /// <item>a direct exit of a 64-bit block (the run loop's straight-line code, md5's rounds, calls from one kernel
    /// function into another): the linked successor with <see cref="X86Vcpu.JitChain"/>'s checks inline, the code-fetch
    /// translation checked (<see cref="X86Vcpu.LinkedPageHolds"/>) when the successor is in another page; an exit not
    /// linked yet goes through the helper, which notes it for the run loop to link;</item>
    /// <item>any other direct exit (32- and 16-bit code): <see cref="X86Vcpu.JitChain"/>;</item>
    /// <item>a RET, an indirect JMP or CALL: the compiled block the jump cache holds for RIP
    /// (<see cref="X86Vcpu.JitIndirectChain"/>).</item>
    /// </list>
    /// The successor is then called, so a hop costs one frame; its prologue applies the flag result this block
    /// left pending only if it reads the flags.</summary>
    private static void EmitHopTails(MethodFrame f)
    {
        if (!f.SamePageHopUsed && !f.FarPageHopUsed && !f.ChainHopUsed && !f.IndirectHopUsed) return;
        var il = f.Il;
        var leave = il.DefineLabel();
        var enter = il.DefineLabel();
        var unlinked = il.DefineLabel();
        var checks = il.DefineLabel();
        if (f.FarPageHopUsed)
        {
            // The successor lies in another linear page: the vCPU's code-fetch translation of that page must still
            // lead to its bytes, then the same checks as in the block's own page.
            il.MarkLabel(f.FarPageHop);
            EmitLinkedSuccessor(f, unlinked);
            il.Emit(OpCodes.Ldarg_1); il.Emit(OpCodes.Ldloc, f.ExitRip); il.Emit(OpCodes.Ldloc, f.Next); il.Emit(OpCodes.Call, MLinkedPageHolds);
            il.Emit(OpCodes.Brfalse, leave);
            il.Emit(OpCodes.Br, checks);
        }
        if (f.SamePageHopUsed)
        {
            il.MarkLabel(f.SamePageHop);
            EmitLinkedSuccessor(f, unlinked);
        }
        if (f.SamePageHopUsed || f.FarPageHopUsed)
        {
            il.MarkLabel(checks);
            EmitHopChecks(f, leave);
            il.Emit(OpCodes.Ldloc, f.Next); il.Emit(OpCodes.Volatile); il.Emit(OpCodes.Ldfld, FValid); il.Emit(OpCodes.Brfalse, leave);
            // An instruction running into the next page: that page's translation is checked each time.
            il.Emit(OpCodes.Ldloc, f.Next); il.Emit(OpCodes.Ldfld, FHasTail); il.Emit(OpCodes.Brfalse, enter);
            il.Emit(OpCodes.Ldarg_1); il.Emit(OpCodes.Ldloc, f.Next); il.Emit(OpCodes.Call, MLinkedTailHolds); il.Emit(OpCodes.Brfalse, leave);
            il.Emit(OpCodes.Br, enter);
        }
        if (f.SamePageHopUsed || f.FarPageHopUsed || f.ChainHopUsed)
        {
            // An exit not linked yet goes through the helper, which notes it for the run loop to link.
            il.MarkLabel(unlinked);
            il.MarkLabel(f.ChainHop);
            il.Emit(OpCodes.Ldarg_1); il.Emit(OpCodes.Ldloc, f.Self); il.Emit(OpCodes.Ldloc, f.Slot); il.Emit(OpCodes.Call, MJitChain);
            il.Emit(OpCodes.Stloc, f.Next);
            il.Emit(OpCodes.Ldloc, f.Next); il.Emit(OpCodes.Brfalse, leave);
            il.Emit(OpCodes.Br, enter);
        }
        if (f.IndirectHopUsed)
        {
            il.MarkLabel(f.IndirectHop);
            il.Emit(OpCodes.Ldarg_1); il.Emit(OpCodes.Call, MJitIndirectChain);
            il.Emit(OpCodes.Stloc, f.Next);
            il.Emit(OpCodes.Ldloc, f.Next); il.Emit(OpCodes.Brfalse, leave);
        }
        il.MarkLabel(enter);
        il.Emit(OpCodes.Ldloc, f.Next); il.Emit(OpCodes.Ldfld, FEntry); il.Emit(OpCodes.Stloc, f.EntryWord);
        il.Emit(OpCodes.Ldloc, f.EntryWord); il.Emit(OpCodes.Brfalse, leave);
        il.Emit(OpCodes.Ldloc, f.Next); il.Emit(OpCodes.Ldarg_1);
        il.Emit(OpCodes.Ldloc, f.EntryWord); il.Emit(OpCodes.Ldc_I4, DecodedBlock.EntryBodyShift); il.Emit(OpCodes.Shr_Un); il.Emit(OpCodes.Conv_I4);
        il.Emit(OpCodes.Ldloc, f.EntryWord); il.Emit(OpCodes.Ldc_I8, DecodedBlock.EntryCodeMask); il.Emit(OpCodes.And); il.Emit(OpCodes.Conv_I);
        il.EmitCalli(OpCodes.Calli, CallingConventions.Standard, typeof(void), CompiledMethod.Parameters, null);
        il.MarkLabel(leave);
        il.Emit(OpCodes.Ret);
    }

    /// <summary>Branches to <paramref name="unlinked"/> when the exit's slot, which the exit loaded into
    /// <see cref="MethodFrame.Next"/> (<see cref="EmitLoadLink"/>), is linked to nothing yet.</summary>
    private static void EmitLinkedSuccessor(MethodFrame f, Label unlinked)
    {
        var il = f.Il;
        il.Emit(OpCodes.Ldloc, f.Next); il.Emit(OpCodes.Brfalse, unlinked);
    }

    /// <summary>The block linked to <paramref name="slot"/> of the block running now, into _next: slots 0 and 1 from
    /// the block's own fields, the rest from its array.</summary>
    private void EmitLoadLink(int slot)
    {
        _il.Emit(OpCodes.Ldloc, _self);
        if (slot == 0) _il.Emit(OpCodes.Ldfld, FLink0);
        else if (slot == 1) _il.Emit(OpCodes.Ldfld, FLink1);
        else { _il.Emit(OpCodes.Ldfld, FLinks); LdcI4(slot - 2); _il.Emit(OpCodes.Ldelem_Ref); }
        _il.Emit(OpCodes.Stloc, _next);
    }

    /// <summary>Finds which bodies of the method other bodies may branch into (<see cref="TryEmitWarmBranch"/>):
    /// the targets of the direct exits, which all come from a block's last instruction.</summary>
    private static void PlanWarmBranches(BlockTranslator[] ts)
    {
        for (int k = 0; k < ts.Length; k++) { ts[k]._batch = ts; ts[k]._index = k; }
        foreach (var t in ts)
        {
            ref DecodedInsn last = ref t._insns[t._n - 1];
            t.MarkWarm(last.I.NextIP);
            if (last.I.IsJccShortOrNear || last.I.IsJmpShortOrNear || last.I.IsCallNear) t.MarkWarm(last.I.NearBranchTarget);
        }
    }

    private void MarkWarm(ulong rip)
    {
        if (WarmTargetOf(rip) is { _warmTarget: false } t)
        {
            t._warmTarget = true;
            t._warm = t._il.DefineLabel();
        }
    }

    /// <summary>The body of this method a direct exit to <paramref name="rip"/> may branch into: a 64-bit block at
    /// that RIP in this block's linear page and frame. Having entered this block proves that page's translation, so
    /// that block's bytes are what the vCPU would fetch there, as for a same-page link.</summary>
    private BlockTranslator? WarmTargetOf(ulong rip)
    {
        if (!_is64 || !_chainable || ((rip ^ _b.Ip) >> 12) != 0) return null;
        foreach (var t in _batch)
        {
            var b = t._b;
            if (b.Ip == rip && b.Bitness == 64 && !b.HasTail && b.Phys - _b.Phys == rip - _b.Ip) return t;
        }
        return null;
    }

    /// <summary>A direct exit to a block compiled into this same method goes straight into that block's body,
    /// its registers staying in the locals: no write-back, no call, no reload, so a loop of several blocks runs as
    /// one loop of machine code. It makes the checks of a hop (<see cref="X86Vcpu.JitChain"/>) but for the budget, and
    /// falls through to the ordinary exit when they refuse.</summary>
    private void TryEmitWarmBranch(ulong rip, int executed)
    {
        var t = WarmTargetOf(rip);
        if (t is not { _warmTarget: true }) return;
        var cold = _il.DefineLabel();
        EmitHopChecks(_f, cold, call: false);
        // The exit's link slot, which publishing links to the target's block (the exit taken next, if this branch
        // is not, uses the same slot). That block must still hold this method's body: its entry word is this
        // method's code with the target's body index.
        int slot = _linkTargets.Count;
        _warmLinks.Add((slot, t._index));
        EmitLoadLink(slot);
        _il.Emit(OpCodes.Ldloc, _next); _il.Emit(OpCodes.Brfalse, cold);
        _il.Emit(OpCodes.Ldloc, _next); _il.Emit(OpCodes.Ldfld, FEntry);
        _il.Emit(OpCodes.Ldloc, _self); _il.Emit(OpCodes.Ldfld, FEntry); _il.Emit(OpCodes.Ldc_I8, DecodedBlock.EntryCodeMask); _il.Emit(OpCodes.And);
        _il.Emit(OpCodes.Ldc_I8, (long)t._index << DecodedBlock.EntryBodyShift); _il.Emit(OpCodes.Or);
        _il.Emit(OpCodes.Bne_Un, cold);
        _il.Emit(OpCodes.Ldloc, _next); _il.Emit(OpCodes.Volatile); _il.Emit(OpCodes.Ldfld, FValid); _il.Emit(OpCodes.Brfalse, cold);

        EmitBranchOut(t._liveIn, executed, t._warm, () =>
        {
            // The target keeps its own registers in the locals and finds the rest in the vCPU.
            for (int g = 0; g < 16; g++)
            {
                int bit = 1 << g;
                if ((_dirty & ~t._used & bit) != 0) { GprAddress(g); _il.Emit(OpCodes.Ldloc, _gpr[g]); _il.Emit(OpCodes.Stind_I8); }
                if ((t._used & ~_used & ~_dirty & bit) != 0) LoadGprFromCpu(g);
            }
            _il.Emit(OpCodes.Ldloc, _next); _il.Emit(OpCodes.Stloc, _self);
        });
        _warmBranches++;
        _il.MarkLabel(cold);
    }

    /// <summary>The checks every hop out of a block makes, branching to <paramref name="refuse"/> when one fails: the
    /// hop budget (counted down) when the hop calls the successor, an exit request and a store into decoded code. The
    /// budget bounds the frames a chain of calls stacks up; a branch into another body of the same method stacks
    /// none, and what the run loop must see between blocks (timers, events, a reschedule) comes as an exit request,
    /// so such a branch does not count against it: a loop of several blocks goes back to the run loop only when
    /// something asks for it, not every 64 branches.</summary>
    private static void EmitHopChecks(MethodFrame f, Label refuse, bool call = true)
    {
        var il = f.Il;
        if (call)
        {
            il.Emit(OpCodes.Ldarg_1); il.Emit(OpCodes.Ldarg_1); il.Emit(OpCodes.Ldfld, FHops); il.Emit(OpCodes.Ldc_I4_1); il.Emit(OpCodes.Sub);
            il.Emit(OpCodes.Dup); il.Emit(OpCodes.Stloc, f.HopsLeft); il.Emit(OpCodes.Stfld, FHops);
            il.Emit(OpCodes.Ldloc, f.HopsLeft); il.Emit(OpCodes.Ldc_I4_0); il.Emit(OpCodes.Ble, refuse);
        }
        il.Emit(OpCodes.Ldarg_1); il.Emit(OpCodes.Volatile); il.Emit(OpCodes.Ldfld, FExitRequested); il.Emit(OpCodes.Brtrue, refuse);
        il.Emit(OpCodes.Ldarg_1); il.Emit(OpCodes.Ldfld, FStop); il.Emit(OpCodes.Brtrue, refuse);
    }

    /// <summary>Branches to <paramref name="to"/>, compiled code that starts with no pending flag results and all its
    /// registers in the locals (this block's top, another body's second entry), after <paramref name="executed"/>
    /// instructions: the pending results are computed only if that code can observe them (<paramref name="liveIn"/>),
    /// then <paramref name="before"/> runs. The compile-time state stays that of the code after the branch.</summary>
    private void EmitBranchOut(ulong liveIn, int executed, Label to, Action before)
    {
        var savedPending = _pending.ToArray();
        bool savedFlDirty = _flDirty, savedOpen = _open;
        int savedFlushed = _flushed;
        // The code at the target serves the prologue's entry too, which starts with no pending result of its own:
        // an entry's result still in the vCPU is applied first.
        if (_open) CloseEntryFlags();
        ulong pendingDefs = 0;
        foreach (var p in _pending) pendingDefs |= FlagMath.Defines(p.Kind);
        if ((pendingDefs & liveIn) != 0) MaterializeFlags();
        AddRetired(executed - _flushed);
        before();
        _il.Emit(OpCodes.Br, to);
        _pending.Clear();
        _pending.AddRange(savedPending);
        _flDirty = savedFlDirty;
        _open = savedOpen;
        _flushed = savedFlushed;
    }

    /// <summary>Where the entry's pending flag result (the predecessor's, <see cref="X86Vcpu.LazyFlags"/>) stops being
    /// carried: (i, -1) when instruction i is the first to read a flag, to write only some or maybe none of them, or to
    /// run in the interpreter, so the result is applied before it; (-1, i) when instruction i is the first to write
    /// every arithmetic flag, so the result is dropped after it; (-1, -1) when the block does neither and leaves it
    /// pending. Until then the block neither computes nor drops it: a fault on the way finds it pending, and the run
    /// loop applies it before anything sees RFLAGS. Most blocks start with loads and stores and then overwrite the
    /// flags, so most hops never compute the predecessor's flags.</summary>
    private (int ApplyAt, int DropAt) EntryFlagsPlan()
    {
        for (int i = 0; i < _n; i++)
        {
            ref InsnPlan p = ref _plans[i];
            if (!p.Inline || p.FlagReads != 0) return (i, -1);
            if (p.MayWrite == 0) continue;
            ref Instruction ins = ref _insns[i].I;
            // A branch ends the block's straight line: nothing after it to drop the result at.
            if (p.Kills == X86Vcpu.ArithFlags && ins.FlowControl == Iced.Intel.FlowControl.Next) return (-1, i);
            return (i, -1);
        }
        return (-1, -1);
    }

    /// <summary>Applies the entry's pending flag result (if any) to RFLAGS and reloads the flags local: from here the
    /// block's flags are all in <see cref="_fl"/> and its own pending results.</summary>
    private void CloseEntryFlags()
    {
        if (CarryOnlyAt(_applyAt))
        {
            TakeEntryCarry();
            _open = false;
            return;
        }
        if (_flDirty) { LdCpu(); _il.Emit(OpCodes.Ldloc, _fl); _il.Emit(OpCodes.Stfld, FRflags); }
        var none = _il.DefineLabel();
        LdCpu(); _il.Emit(OpCodes.Ldfld, FLazyFlags); _il.Emit(OpCodes.Brfalse, none);
        LdCpu(); _il.Emit(OpCodes.Call, MApplyLazyFlags);
        LdCpu(); _il.Emit(OpCodes.Ldfld, FRflags); _il.Emit(OpCodes.Stloc, _fl);
        _il.MarkLabel(none);
        _flDirty = false;
        _open = false;
    }

    /// <summary>Instruction <paramref name="i"/> needs no flag of the entry's pending result but CF and, compiled inline and
    /// unable to fault, overwrites every other one before anything could observe them: INC, DEC, ADC, SBB on registers.</summary>
    private bool CarryOnlyAt(int i)
    {
        if (i < 0 || i >= _n) return false;
        ref InsnPlan p = ref _plans[i];
        return p.Inline && !p.Faults && (p.FlagReads & ~X86Vcpu.CF) == 0 && (p.Kills | X86Vcpu.CF) == X86Vcpu.ArithFlags;
    }

    /// <summary>Puts CF of the entry's pending result (if any) into the flags local and drops the result
    /// (<see cref="X86Vcpu.TakeLazyCarry"/>); the instruction that follows defines the other flags.</summary>
    private void TakeEntryCarry()
    {
        LdCpu(); _il.Emit(OpCodes.Ldloc, _fl); _il.Emit(OpCodes.Call, MTakeLazyCarry); _il.Emit(OpCodes.Stloc, _fl);
        _flDirty = true;
    }

    /// <summary>After a store: a write to this block's code (Stop) ends the block after the instruction.</summary>
    private void EmitStopCheck(int i)
    {
        if (i == _n - 1) return;
        var stop = _il.DefineLabel();
        LdCpu(); _il.Emit(OpCodes.Ldfld, FStop); _il.Emit(OpCodes.Brtrue, stop);
        ulong resume = ResumeIp(i);
        EmitCold(stop, () => EmitExit(resume, i + 1));
    }

    /// <summary>Where the block goes on after instruction <paramref name="i"/> (not its last): the next
    /// instruction's IP, which after a direct JMP or CALL the block was decoded through is that branch's target.</summary>
    private ulong ResumeIp(int i) => _insns[i + 1].I.IP;

    // ---------------------------------------------------------------- interpreter fallback

    /// <summary>Runs instruction <paramref name="i"/> in the interpreter (the state already written back) and leaves the
    /// block if it faulted or exited.</summary>
    private void EmitInterpret(ref DecodedInsn d, int i)
    {
        LdCpu(); LdBlock(); LdcI4(i);
        _il.Emit(OpCodes.Call, MJitExec);
        EmitAbortCheck();
    }

    private void EmitFallback(ref DecodedInsn d, int i, bool last)
    {
        SpillGprs();
        // Through FlagMath.Apply rather than inline: beside a call into the interpreter the call costs little,
        // and the inline computation is most of a fallback's code.
        StoreFlagsToCpu();
        _pending.Clear();
        AddRetired(i - _flushed);
        _flushed = i;
        EmitInterpret(ref d, i);
        if (last)
        {
            AddRetired(1);
            _flushed = i + 1;
            // The interpreter left every register, RFLAGS and RIP in the vCPU.
            _dirty = 0;
            _flDirty = false;
            if (_chainable)
            {
                // RIP is wherever the instruction went (a CALL or JMP through memory, a REP string instruction
                // paused at itself, or the next instruction): continue there as after an indirect branch.
                _f.IndirectHopUsed = true;
                _il.Emit(OpCodes.Br, _f.IndirectHop);
                return;
            }
            _il.Emit(OpCodes.Ret);
            return;
        }
        LoadUsedGprs();
        LdCpu(); _il.Emit(OpCodes.Ldfld, FRflags); _il.Emit(OpCodes.Stloc, _fl);
        if (_accesses) EmitAccessLocals();
        if (_segsInline != 0) EmitFlat();
        _dirty = 0;
        _flDirty = false;
        var leave = _il.DefineLabel();
        var go = _il.DefineLabel();
        LdCpu(); _il.Emit(OpCodes.Ldfld, FStop); _il.Emit(OpCodes.Brtrue, leave);
        LdCpu(); _il.Emit(OpCodes.Ldfld, FRip); LdcU8(ResumeIp(i)); _il.Emit(OpCodes.Beq, go);
        _il.MarkLabel(leave);
        AddRetired(1);
        _il.Emit(OpCodes.Ret);
        _il.MarkLabel(go);
    }

    // ---------------------------------------------------------------- flags

    /// <summary>Records the flag result of the instruction just emitted (operands in _ta, _tb,
    /// result in _tr) when anything can still observe it.</summary>
    /// <returns>The pending result's slot, or -1 when no flag it defines is live.</returns>
    private int SetFlags(int i, FlagKind kind, int size, bool maybeNone = false)
    {
        ulong defines = FlagMath.Defines(kind);
        if ((_liveAfter[i] & defines) == 0) return -1;
        bool partial = maybeNone || defines != X86Vcpu.ArithFlags;
        if (!partial) _pending.Clear();
        else if (_pending.Count == MaxPending) MaterializeFlags();
        int slot = _pending.Count;
        _il.Emit(OpCodes.Ldloc, _ta); _il.Emit(OpCodes.Stloc, _pa[slot]);
        _il.Emit(OpCodes.Ldloc, _tb); _il.Emit(OpCodes.Stloc, _pb[slot]);
        _il.Emit(OpCodes.Ldloc, _tr); _il.Emit(OpCodes.Stloc, _pr[slot]);
        _pending.Add(new Pending { Kind = kind, Size = size, Slot = slot, MaybeNone = maybeNone });
        _flDirty = true;
        return slot;
    }

    /// <summary>Pushes condition <paramref name="cc"/> (0 or 1), from the last pending result's
    /// operands when it defines every flag the condition reads.</summary>
    private void EmitCond(ConditionCode cc)
    {
        if (_pending.Count > 0)
        {
            var p = _pending[^1];
            if (!p.MaybeNone && (FlagMath.Reads(cc) & ~FlagMath.Defines(p.Kind)) == 0 && TryFusedCond(p, cc)) return;
        }
        MaterializeFlags();
        _il.Emit(OpCodes.Ldloc, _fl);
        LdcI4((int)cc);
        _il.Emit(OpCodes.Call, MCond);
    }

    private void Not()
    {
        _il.Emit(OpCodes.Ldc_I4_0);
        _il.Emit(OpCodes.Ceq);
    }

    private void SignBit(LocalBuilder v, int size)
    {
        _il.Emit(OpCodes.Ldloc, v);
        LdcI4(size * 8 - 1);
        _il.Emit(OpCodes.Shr_Un);
        _il.Emit(OpCodes.Conv_I4);
        _il.Emit(OpCodes.Ldc_I4_1);
        _il.Emit(OpCodes.And);
    }

    private void IsZero(LocalBuilder v)
    {
        _il.Emit(OpCodes.Ldloc, v);
        _il.Emit(OpCodes.Ldc_I4_0); _il.Emit(OpCodes.Conv_I8);
        _il.Emit(OpCodes.Ceq);
    }

    private bool TryFusedCond(Pending p, ConditionCode cc)
    {
        var a = _pa[p.Slot]; var b = _pb[p.Slot]; var r = _pr[p.Slot];
        int size = p.Size;
        // ZF and SF come from the result for every kind.
        switch (cc)
        {
            case ConditionCode.e: IsZero(r); return true;
            case ConditionCode.ne: IsZero(r); Not(); return true;
            case ConditionCode.s: SignBit(r, size); return true;
            case ConditionCode.ns: SignBit(r, size); Not(); return true;
        }
        switch (p.Kind)
        {
            case FlagKind.Sub:
                _il.Emit(OpCodes.Ldloc, a);
                if (cc is ConditionCode.l or ConditionCode.ge or ConditionCode.le or ConditionCode.g) SignExt(size);
                _il.Emit(OpCodes.Ldloc, b);
                if (cc is ConditionCode.l or ConditionCode.ge or ConditionCode.le or ConditionCode.g) SignExt(size);
                switch (cc)
                {
                    case ConditionCode.b: _il.Emit(OpCodes.Clt_Un); return true;
                    case ConditionCode.ae: _il.Emit(OpCodes.Clt_Un); Not(); return true;
                    case ConditionCode.be: _il.Emit(OpCodes.Cgt_Un); Not(); return true;
                    case ConditionCode.a: _il.Emit(OpCodes.Cgt_Un); return true;
                    case ConditionCode.l: _il.Emit(OpCodes.Clt); return true;
                    case ConditionCode.ge: _il.Emit(OpCodes.Clt); Not(); return true;
                    case ConditionCode.le: _il.Emit(OpCodes.Cgt); Not(); return true;
                    case ConditionCode.g: _il.Emit(OpCodes.Cgt); return true;
                }
                _il.Emit(OpCodes.Pop); _il.Emit(OpCodes.Pop);
                return false;
            case FlagKind.Logic:
                switch (cc)
                {
                    case ConditionCode.o: case ConditionCode.b: _il.Emit(OpCodes.Ldc_I4_0); return true;
                    case ConditionCode.no: case ConditionCode.ae: _il.Emit(OpCodes.Ldc_I4_1); return true;
                    case ConditionCode.be: IsZero(r); return true;
                    case ConditionCode.a: IsZero(r); Not(); return true;
                    case ConditionCode.l: SignBit(r, size); return true;
                    case ConditionCode.ge: SignBit(r, size); Not(); return true;
                    case ConditionCode.le:
                        _il.Emit(OpCodes.Ldloc, r); SignExt(size); _il.Emit(OpCodes.Ldc_I4_0); _il.Emit(OpCodes.Conv_I8); _il.Emit(OpCodes.Cgt); Not();
                        return true;
                    case ConditionCode.g:
                        _il.Emit(OpCodes.Ldloc, r); SignExt(size); _il.Emit(OpCodes.Ldc_I4_0); _il.Emit(OpCodes.Conv_I8); _il.Emit(OpCodes.Cgt);
                        return true;
                }
                return false;
            case FlagKind.Add:
                switch (cc)
                {
                    case ConditionCode.b: _il.Emit(OpCodes.Ldloc, r); _il.Emit(OpCodes.Ldloc, a); _il.Emit(OpCodes.Clt_Un); return true;
                    case ConditionCode.ae: _il.Emit(OpCodes.Ldloc, r); _il.Emit(OpCodes.Ldloc, a); _il.Emit(OpCodes.Clt_Un); Not(); return true;
                }
                return false;
        }
        return false;
    }
}
