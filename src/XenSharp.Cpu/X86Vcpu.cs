using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

[InlineArray(16)]
internal struct GprFile { private ulong _e; }

internal struct SegReg
{
    public ulong Base;
    public uint Limit;
    public ushort Sel;
    public ushort Attr;

    public readonly int Dpl => (Attr >> 5) & 3;
    public readonly bool Present => (Attr & 0x80) != 0;
    public readonly bool Long => (Attr & 0x2000) != 0;
    public readonly bool Big => (Attr & 0x4000) != 0;
}

/// <summary>ES, CS, SS, DS, FS, GS (Iced's and the encoding's order), then LDTR and TR.</summary>
[InlineArray(8)]
internal struct SegFile { private SegReg _e; }

internal struct Xmm
{
    public ulong Lo;
    public ulong Hi;
}

[InlineArray(16)]
internal struct XmmFile { private Xmm _e; }

[InlineArray(8)]
internal struct DrFile { private ulong _e; }

/// <summary>What a pending exit leaves for <see cref="IVcpu.CompleteExit"/> and the next Run to finish.</summary>
internal enum PendingCompletion : byte { None, In, Ins, RdMsr, WrMsr, MmioRead, MmioWrite, Repeated }

/// <summary>Thrown (one preallocated instance per vCPU) to abandon the current instruction.</summary>
internal sealed class GuestFault : Exception
{
    public int Vector;
    public uint ErrorCode;
    public bool HasErrorCode;
    public GuestFault() : base("guest fault") { }
}

/// <summary>Thrown (preallocated) to leave Run with the exit already filled in.</summary>
internal sealed class ExitSignal : Exception
{
    public ExitSignal() : base("vcpu exit") { }
}

internal sealed unsafe partial class X86Vcpu : IX86Vcpu, IDisposable
{
    public const int ES = 0, CS = 1, SS = 2, DS = 3, FS = 4, GS = 5, LDTR = 6, TR = 7;
    public const ulong CF = 1, PF = 4, AF = 0x10, ZF = 0x40, SF = 0x80, TF = 0x100, IF = 0x200, DF = 0x400, OF = 0x800;
    public const ulong IOPL = 0x3000, NT = 0x4000, RF = 0x10000, VM = 0x20000, AC = 0x40000, VIF = 0x80000, VIP = 0x100000, ID = 0x200000;
    internal const ulong ArithFlags = CF | PF | AF | ZF | SF | OF;

    private readonly X86Engine _engine;
    private readonly IGuestMemory _mem;
    private readonly BlockCache _blocks;
    private readonly ICpuidPolicy _cpuid;
    private readonly GuestFault _fault = new();
    private readonly ExitSignal _exitSignal = new();

    // Architectural state.
    internal GprFile R;
    internal ulong Rip;
    internal ulong Rflags = 2;
    internal SegFile Seg;
    internal ulong Cr0 = 0x60000010, Cr2, Cr3, Cr4, Cr8;
    internal ulong Efer;
    internal ulong GdtBase, IdtBase;
    internal ushort GdtLimit, IdtLimit = 0x3FF;
    internal DrFile Dr;
    internal ulong Xcr0 = 1;

    // MSRs the engine owns.
    internal ulong Star, Lstar, Cstar, Sfmask, KernelGsBase, TscAux, Pat = 0x0007040600070406UL;
    internal ulong SysenterCs, SysenterEsp, SysenterEip, MiscEnable = 1, ApicBase = 0xFEE00900;
    internal long TscOffset;
    /// <summary>IA32_TSC_ADJUST: what guest writes (to it or to the TSC) have added to the counter.</summary>
    internal long TscAdjust;
    internal ulong MtrrDefType;
    internal readonly ulong[] MtrrFixed = new ulong[11];
    internal readonly ulong[] MtrrVar = new ulong[16];

    // Derived mode, refreshed by UpdateMode().
    internal int Bitness = 16;
    internal int Cpl;
    /// <summary>CR0.AM set at CPL 3: data accesses are alignment-checked when EFLAGS.AC is set.</summary>
    private bool _acUser;
    internal bool LongMode;
    internal bool Protected;

    // Run-loop state.
    private VcpuExit _exit;
    private volatile bool _exitRequested;
    internal bool Halted;
    internal bool Stop;            // end the current block after this instruction
    internal bool Shadow;          // STI / MOV SS interrupt shadow for the next instruction
    private bool _nmiPending, _nmiBlocked;
    private int _injVector = -1;
    private uint? _injError;
    /// <summary>The queued vector is an external interrupt taken back after its delivery met a paged-out page.</summary>
    private bool _injExternal;
    private ulong _retired;
    private long _memGeneration;
    internal ulong CurIp;          // RIP of the instruction being executed (faults restart it)
    /// <summary>Set by <see cref="Init"/>: the vCPU runs nothing until <see cref="StartupIpi"/>.</summary>
    internal bool WaitForSipi;

    // Completion of a pending exit.
    private PendingCompletion _pending;
    private ulong _pendingValue;
    private bool _pendingFault;
    private Iced.Intel.Register _pendingReg;
    private int _pendingSize;

    public X86Vcpu(X86Engine engine, int id, ICpuidPolicy cpuid)
    {
        _engine = engine;
        _mem = engine.Memory;
        _blocks = engine.Blocks;
        _cpuid = cpuid;
        Id = id;
        AllocateTlb();
        FlushTlb(true);
        _memGeneration = _mem.Generation;
        InitFpu();
        ResetToRealMode();
    }

    public int Id { get; }
    public IInterruptSource? InterruptSource { get; set; }
    public ulong InstructionsRetired => _retired;
    public bool InterruptWindowOpen => (Rflags & IF) != 0 && !Shadow;

    /// <summary>Architectural reset (INIT) state: real mode at F000:FFF0.</summary>
    public void ResetToRealMode()
    {
        R = default;
        R[2] = 0x600; // EDX = family/model/stepping signature
        Rip = 0xFFF0;
        Rflags = 2;
        for (int i = 0; i < 6; i++) Seg[i] = new SegReg { Base = 0, Limit = 0xFFFF, Sel = 0, Attr = 0x93 };
        Seg[CS] = new SegReg { Base = 0xFFFF0000, Limit = 0xFFFF, Sel = 0xF000, Attr = 0x9B };
        Seg[LDTR] = new SegReg { Limit = 0xFFFF, Attr = 0x82 };
        Seg[TR] = new SegReg { Limit = 0xFFFF, Attr = 0x8B };
        GdtBase = IdtBase = 0; GdtLimit = IdtLimit = 0xFFFF;
        Cr0 = 0x60000010; Cr2 = Cr3 = Cr4 = Cr8 = 0; Efer = 0;
        Xcr0 = 1;
        Halted = false;
        InitFpu();
        UpdateMode();
        FlushTlb(true);
        ResetDebugRegisters();
    }

    public void Init()
    {
        ResetToRealMode();
        WaitForSipi = true;
    }

    public bool WaitingForSipi => WaitForSipi;

    public ulong Tsc => ReadTsc();

    public long TscOffsetValue { get => TscOffset; set => TscOffset = value; }

    public long TscAdjustValue { get => TscAdjust; set => TscAdjust = value; }

    /// <summary>Real-mode state for an AP started by SIPI: CS = vector &lt;&lt; 8, IP = 0.</summary>
    public void StartupIpi(byte vector)
    {
        ResetToRealMode();
        WaitForSipi = false;
        Seg[CS] = new SegReg { Base = (ulong)vector << 12, Limit = 0xFFFF, Sel = (ushort)(vector << 8), Attr = 0x9B };
        Rip = 0;
        UpdateMode();
    }

    internal void UpdateMode()
    {
        Protected = (Cr0 & 1) != 0;
        bool lma = (Efer & 0x400) != 0;
        LongMode = lma;
        if (!Protected) { Bitness = 16; Cpl = 0; }
        else if ((Rflags & VM) != 0) { Bitness = 16; Cpl = 3; }
        else
        {
            if (lma && Seg[CS].Long) Bitness = 64;
            else Bitness = Seg[CS].Big ? 32 : 16;
            // SS.DPL always equals the CPL (and, unlike CS.RPL, is right just after CR0.PE is set).
            Cpl = Seg[SS].Dpl;
        }
        SetTlbContext(Cpl == 3 ? TlbSize : 0);
        _acUser = Cpl == 3 && (Cr0 & 0x40000) != 0;
    }

    internal void SetCpl(int cpl)
    {
        Cpl = cpl;
        SetTlbContext(cpl == 3 ? TlbSize : 0);
        _acUser = cpl == 3 && (Cr0 & 0x40000) != 0;
    }

    public void RequestExit() => _exitRequested = true;

    public void FlushHostTranslations() => FlushTlb(true);
    public void DropWritableTranslations() => FlushWritableTlb();

    public void CompleteExit(ulong value, bool fault = false)
    {
        _pendingValue = value;
        _pendingFault = fault;
        _completed = true;
    }
    private bool _completed;

    public void RetryExit()
    {
        // Rip is already the instruction's (MmioRead/MmioWrite set it); MMIO results it consumed before are replayed.
        // A repeated exit left after its instruction, which has retired none of its iterations: back to it.
        if (_pending == PendingCompletion.Repeated)
            Rip = _pendingIp;
        _pending = PendingCompletion.None;
        _completed = false;
        _replayIdx = 0;
    }

    public void GetRegisters(out Registers regs)
    {
        regs = new Registers
        {
            Rax = R[0], Rcx = R[1], Rdx = R[2], Rbx = R[3], Rsp = R[4], Rbp = R[5], Rsi = R[6], Rdi = R[7],
            R8 = R[8], R9 = R[9], R10 = R[10], R11 = R[11], R12 = R[12], R13 = R[13], R14 = R[14], R15 = R[15],
            Rip = Rip, Rflags = Rflags,
        };
    }

    public void SetRegisters(in Registers regs)
    {
        R[0] = regs.Rax; R[1] = regs.Rcx; R[2] = regs.Rdx; R[3] = regs.Rbx;
        R[4] = regs.Rsp; R[5] = regs.Rbp; R[6] = regs.Rsi; R[7] = regs.Rdi;
        R[8] = regs.R8; R[9] = regs.R9; R[10] = regs.R10; R[11] = regs.R11;
        R[12] = regs.R12; R[13] = regs.R13; R[14] = regs.R14; R[15] = regs.R15;
        Rip = regs.Rip;
        Rflags = (regs.Rflags & 0x3F7FD7) | 2;
        Halted = false;
        UpdateMode();
    }

    private static Segment ToPublic(in SegReg s) => new() { Base = s.Base, Limit = s.Limit, Selector = s.Sel, Attributes = s.Attr };
    private static SegReg FromPublic(in Segment s) => new() { Base = s.Base, Limit = s.Limit, Sel = s.Selector, Attr = s.Attributes };

    public void GetSpecialRegisters(out SpecialRegisters s)
    {
        s = new SpecialRegisters
        {
            Es = ToPublic(Seg[ES]), Cs = ToPublic(Seg[CS]), Ss = ToPublic(Seg[SS]), Ds = ToPublic(Seg[DS]),
            Fs = ToPublic(Seg[FS]), Gs = ToPublic(Seg[GS]), Ldt = ToPublic(Seg[LDTR]), Tr = ToPublic(Seg[TR]),
            Gdt = new DescriptorTable { Base = GdtBase, Limit = GdtLimit },
            Idt = new DescriptorTable { Base = IdtBase, Limit = IdtLimit },
            Cr0 = Cr0, Cr2 = Cr2, Cr3 = Cr3, Cr4 = Cr4, Cr8 = Cr8, Efer = Efer, ApicBase = ApicBase,
        };
    }

    public void SetSpecialRegisters(in SpecialRegisters s)
    {
        Seg[ES] = FromPublic(s.Es); Seg[CS] = FromPublic(s.Cs); Seg[SS] = FromPublic(s.Ss); Seg[DS] = FromPublic(s.Ds);
        Seg[FS] = FromPublic(s.Fs); Seg[GS] = FromPublic(s.Gs); Seg[LDTR] = FromPublic(s.Ldt); Seg[TR] = FromPublic(s.Tr);
        GdtBase = s.Gdt.Base; GdtLimit = s.Gdt.Limit; IdtBase = s.Idt.Base; IdtLimit = s.Idt.Limit;
        Cr0 = s.Cr0 | 0x10; Cr2 = s.Cr2; Cr3 = s.Cr3; Cr4 = s.Cr4; Cr8 = s.Cr8 & 0xF;
        Efer = s.Efer;
        // LMA follows LME and PG, as on hardware.
        if ((Efer & 0x100) != 0 && (Cr0 & 0x80000000) != 0) Efer |= 0x400; else Efer &= ~0x400UL;
        ApicBase = s.ApicBase == 0 ? ApicBase : s.ApicBase;
        UpdateMode();
        FlushTlb(true);
    }

    public void InjectException(byte vector, uint? errorCode = null)
    {
        _injVector = vector;
        _injError = errorCode;
        _injExternal = false;
    }

    public void InjectNmi() => _nmiPending = true;

    public bool TryTranslateLinear(ulong linear, bool write, out ulong physical)
    {
        // The hypervisor's own accesses: supervisor rights, no SMAP, no A/D updates.
        if (LongMode && !Canonical(linear)) { physical = 0; return false; }
        return TryWalk(linear, write ? Access.Write : Access.Read, false, false, out physical, out _, out _, checkSmap: false);
    }

    public ref readonly VcpuExit Run()
    {
        if (!Stats) return ref RunCore();
        S.RunCalls++;
        ref readonly var exit = ref RunCore();
        StatExit(exit.Reason);
        return ref exit;
    }

    private ref readonly VcpuExit RunCore()
    {
        _exit = default;
        try
        {
            FinishPending();
        }
        catch (GuestFault)
        {
            try
            {
                if (!DeliverFault(_fault.Vector, _fault.HasErrorCode, _fault.ErrorCode)) return ref ShutdownExit();
            }
            catch (ExitSignal)
            {
                return ref _exit; // an intercepted trap
            }
        }
        catch (ExitSignal)
        {
            return ref _exit;
        }
        while (true)
        {
            if (_exitRequested)
            {
                _exitRequested = false;
                _exit.Reason = VcpuExitReason.Preempted;
                return ref _exit;
            }
            long gen = _mem.Generation;
            if (gen != _memGeneration)
            {
                _memGeneration = gen;
                FlushTlb(true);
                // Frames may now be backed by other pages: decoded code may be stale too.
                _engine.OnMemoryGeneration(gen);
            }

            // An instruction waiting for its MMIO results completes before any event is taken.
            if (!Shadow && _replayCount == 0 && EventPending())
            {
                if (Stats) S.Events++;
                try
                {
                    if (!DeliverEvents()) return ref ShutdownExit();
                }
                catch (ExitSignal)
                {
                    return ref _exit;
                }
            }
            if (Halted)
            {
                _exit.Reason = VcpuExitReason.Hlt;
                _exit.InterruptsDisabled = (Rflags & IF) == 0;
                return ref _exit;
            }
            if (WaitForSipi)
            {
                _exit.Reason = VcpuExitReason.Hlt;
                _exit.InterruptsDisabled = false;
                return ref _exit;
            }
            try
            {
                RunBlock();
                if (Abort != 0)
                {
                    // Caught under compiled code (see JitRuntime): the same as the catches below.
                    bool exit = Abort == AbortExit;
                    Abort = 0;
                    if (exit) return ref _exit;
                    if (Stats) S.Faults++;
                    Rip = CurIp;
                    if (!DeliverFault(_fault.Vector, _fault.HasErrorCode, _fault.ErrorCode)) return ref ShutdownExit();
                }
            }
            catch (GuestFault)
            {
                if (Stats) S.Faults++;
                Rip = CurIp;
                try
                {
                    if (!DeliverFault(_fault.Vector, _fault.HasErrorCode, _fault.ErrorCode)) return ref ShutdownExit();
                }
                catch (ExitSignal)
                {
                    return ref _exit; // an intercepted trap
                }
            }
            catch (ExitSignal)
            {
                return ref _exit;
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                // An engine defect must not take the host thread down with it.
                Rip = CurIp;
                _exit = default;
                _exit.Reason = VcpuExitReason.InternalError;
                _exit.Message = $"engine error at RIP 0x{CurIp:X}: {ex.GetType().Name}: {ex.Message}";
                return ref _exit;
            }
        }
    }

    private ref readonly VcpuExit ShutdownExit()
    {
        _exit = default;
        _exit.Reason = VcpuExitReason.Shutdown;
        _exit.Message = "triple fault";
        return ref _exit;
    }

    private static bool Contributory(int v) => v is 0 or 10 or 11 or 12 or 13;

    /// <summary>Delivers an exception through the IDT, escalating to #DF and to a triple fault
    /// (false) as the SDM's double-fault table says.</summary>
    internal bool DeliverFault(int vector, bool hasError, uint error, InterruptKind kind = InterruptKind.Exception)
    {
        if (!_mem.MayBePaged)
            return DeliverFaultCore(vector, hasError, error, kind);
        // Delivery reads the IDT, GDT and TSS and pushes on a stack, any of which may be paged out: then it stops
        // with that page's exit, and the state it had changed is put back for the delivery to start over.
        GetRegisters(out var regs);
        GetSpecialRegisters(out var sregs);
        try
        {
            return DeliverFaultCore(vector, hasError, error, kind);
        }
        catch (ExitSignal) when (PagedExit())
        {
            SetRegisters(regs);
            SetSpecialRegisters(sregs);
            throw;
        }
    }

    private bool DeliverFaultCore(int vector, bool hasError, uint error, InterruptKind kind)
    {
        int first = -1;
        while (true)
        {
            if (first >= 0)
            {
                if (first == 8) return false;
                bool df = (Contributory(first) && Contributory(vector)) || (first == 14 && (Contributory(vector) || vector == 14));
                if (df) { vector = 8; hasError = true; error = 0; kind = InterruptKind.Exception; }
            }
            try
            {
                RaiseInterrupt(vector, hasError, error, kind);
                return true;
            }
            catch (GuestFault)
            {
                first = vector;
                vector = _fault.Vector; hasError = _fault.HasErrorCode; error = _fault.ErrorCode;
                // Raised while delivering another event: selector error codes carry EXT.
                if (hasError && vector is 10 or 11 or 12 or 13 && kind is not (InterruptKind.Software or InterruptKind.SoftwareException)) error |= 1;
                kind = InterruptKind.Exception;
            }
        }
    }

    /// <summary>An event the run loop would deliver at the next instruction boundary the shadow and MMIO replay allow.</summary>
    private bool EventPending()
        => _injVector >= 0 || (_nmiPending && !_nmiBlocked) || ((Rflags & IF) != 0 && InterruptSource is { HasPendingInterrupt: true });

    /// <summary>Whether an event would be pending with IF set: what compiled STI asks before it sets IF without
    /// stopping (<see cref="Jit.BlockTranslator"/>).</summary>
    internal bool EventWaitsForIf()
        => _injVector >= 0 || (_nmiPending && !_nmiBlocked) || InterruptSource is { HasPendingInterrupt: true };

    /// <summary>Delivers the first pending event. A delivery that meets a paged-out page (its stack, IDT, GDT or TSS)
    /// leaves with that page's exit, the vCPU's state as it was before (<see cref="DeliverFault"/>) and the event
    /// pending again, so that it is delivered once the page is back.</summary>
    private bool DeliverEvents()
    {
        if (_injVector >= 0)
        {
            int v = _injVector; uint? e = _injError; bool external = _injExternal;
            _injVector = -1; _injExternal = false;
            Halted = false;
            try
            {
                return DeliverFault(v, e.HasValue, e ?? 0, external ? InterruptKind.External : InterruptKind.Exception);
            }
            catch (ExitSignal) when (PagedExit())
            {
                _injVector = v; _injError = e; _injExternal = external;
                throw;
            }
        }
        if (_nmiPending && !_nmiBlocked)
        {
            _nmiPending = false;
            Halted = false;
            _nmiBlocked = true;
            try
            {
                return DeliverFault(2, false, 0, InterruptKind.External);
            }
            catch (ExitSignal) when (PagedExit())
            {
                _nmiPending = true; _nmiBlocked = false;
                throw;
            }
        }
        if ((Rflags & IF) != 0 && InterruptSource is { } src && src.HasPendingInterrupt)
        {
            int v = src.Acknowledge();
            if (v < 0) return true;
            Halted = false;
            try
            {
                return DeliverFault(v, false, 0, InterruptKind.External);
            }
            catch (ExitSignal) when (PagedExit())
            {
                // Acknowledged already: it waits as an injected external interrupt.
                _injVector = v; _injError = null; _injExternal = true;
                throw;
            }
        }
        return true;
    }

    /// <summary>The exit being taken is an access to a page the memory has paged out (asked only once an exit is
    /// under way, and only where paging can happen at all).</summary>
    private bool PagedExit() =>
        _mem.MayBePaged && _exit.Reason is VcpuExitReason.Mmio or VcpuExitReason.FetchDenied && _mem.IsPaged(_exit.Address >> 12);

    public void Dispose()
    {
        if (_tlb != null) FreeTlb();
    }

    // ---- fault helpers (throw sites kept out of the hot paths) ----

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal GuestFault Fault(int vector)
    {
        _fault.Vector = vector; _fault.HasErrorCode = false; _fault.ErrorCode = 0;
        return _fault;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal GuestFault Fault(int vector, uint error)
    {
        _fault.Vector = vector; _fault.HasErrorCode = true; _fault.ErrorCode = error;
        return _fault;
    }

    internal GuestFault GP(uint err = 0) => Fault(13, err);
    internal GuestFault UD() => Fault(6);

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal ExitSignal Exit(VcpuExitReason reason, string? message = null)
    {
        _exit.Reason = reason;
        _exit.Message = message;
        return _exitSignal;
    }

    /// <summary>Leaves Run with this exit once the current instruction handler returns (it must return at
    /// once): every caller of the interpreter checks <see cref="Abort"/>, so I/O ports, hypercalls and MSR
    /// exits cost no .NET exception.</summary>
    internal void ExitAfterInstruction(VcpuExitReason reason)
    {
        Exit(reason);
        Abort = AbortExit;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    internal ExitSignal Unsupported(in Iced.Intel.Instruction i)
        => Exit(VcpuExitReason.InternalError, $"unsupported instruction at {Seg[CS].Sel:X4}:{i.IP:X}: {i} ({i.Code})");
}
