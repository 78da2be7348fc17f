using XenSharp.Cpu.Decoding;
using XenSharp.Cpu.Jit;

namespace XenSharp.Cpu;

/// <summary>The vCPU side of the block compiler: tier-up from the interpreter and the helpers
/// compiled blocks call on their slow paths.</summary>
internal unsafe partial class X86Vcpu
{
    /// <summary>Compiled blocks one entry from the run loop may run through direct links.</summary>
    private const int MaxHops = 64;

    // Compiled code reads and writes these three through IL.
#pragma warning disable CS0414, CS0649
    private int _hops;
    /// <summary>The compiled block whose direct exit <see cref="_linkSlot"/> was taken while not
    /// linked yet: the run loop links it to the block it finds next.</summary>
    private DecodedBlock? _linkFrom;
    private int _linkSlot;
#pragma warning restore CS0414, CS0649

    /// <summary>Runs <paramref name="b"/> compiled when it is (or has just become) hot; false when
    /// the interpreter must run it.</summary>
    private bool TryRunCompiled(DecodedBlock b)
    {
        var code = b.Compiled;
        if (code == null)
        {
            if (!_engine.Jit.Enabled || b.JitFailed || !b.Valid || b.Hits++ < _engine.Jit.Threshold) return false;
            if (_engine.Jit.Background)
            {
                if (!b.Queued) b.Queued = _engine.Compiler.TryEnqueue(b);
                return false;
            }
            code = CompileQueue.Compile(b, _engine, run: false);
            if (code == null) return false;
        }
        _hops = MaxHops;
        try
        {
            code(this);
            if (Stats) S.Chained += MaxHops - _hops;
        }
        catch (InvalidProgramException ex)
        {
            // The .NET JIT rejected the IL on its first call, before any of it ran.
            b.Compiled = null;
            CompileQueue.Failed(b, _engine, ex);
            return false;
        }
        return true;
    }

    /// <summary>Links the exit the last compiled block left by to <paramref name="next"/>, found
    /// at its target: same mode and CS base, already compiled, and not an instruction running into
    /// the next page. In the source's linear page the translation is the same whenever the source
    /// runs; in another page the compiled hop checks it each time (<see cref="LinkedPageHolds"/>).</summary>
    private void LinkPending(DecodedBlock next)
    {
        var from = _linkFrom!;
        _linkFrom = null;
        if (next.Compiled == null || !next.Valid || !from.Valid || next.HasTail || next.Bitness != from.Bitness || next.CsBase != from.CsBase) return;
        int slot = _linkSlot;
        if ((uint)slot < (uint)from.Links.Length && from.LinkTargets[slot] == next.Ip && from.Links[slot] != next)
        {
            from.Links[slot] = next;
            Interlocked.Increment(ref _engine.LinkCount);
        }
    }

    // ---- slow paths of compiled code (state is written back before each call) ----
    // A fault or exit raised under them is caught right here and reported through Abort, which the
    // compiled code tests after each call and leaves by a plain return: the throw then unwinds only
    // the interpreter frames beneath, not the compiled blocks (and their direct links) above.

    /// <summary>Set when a slow path of compiled code caught a guest fault (<see cref="AbortFault"/>,
    /// the fault in _fault) or an exit (<see cref="AbortExit"/>, the exit in _exit); compiled code
    /// returns at once and the run loop delivers it as it would the exception.</summary>
    internal byte Abort;
    internal const byte AbortFault = 1, AbortExit = 2;

    internal ulong JitRead(ulong lin, int size)
    {
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
    internal ulong JitReadStack(ulong lin, int size)
    {
        try
        {
            CheckStackCanonical(lin, (uint)size);
            return JitReadCore(lin, size);
        }
        catch (GuestFault) { Abort = AbortFault; return 0; }
        catch (ExitSignal) { Abort = AbortExit; return 0; }
    }

    internal void JitWriteStack(ulong lin, int size, ulong v)
    {
        try
        {
            CheckStackCanonical(lin, (uint)size);
            JitWriteCore(lin, size, v);
        }
        catch (GuestFault) { Abort = AbortFault; }
        catch (ExitSignal) { Abort = AbortExit; }
    }

    internal void JitWrite(ulong lin, int size, ulong v)
    {
        try { JitWriteCore(lin, size, v); }
        catch (GuestFault) { Abort = AbortFault; }
        catch (ExitSignal) { Abort = AbortExit; }
    }

    private void JitWriteCore(ulong lin, int size, ulong v)
    {
        if (_acUser && (Rflags & AC) != 0) CheckAlignment(lin, (uint)size);
        WriteLinSoft(lin, size, v);
    }

    /// <summary>One instruction through the interpreter (CurIp and Rip already set).</summary>
    internal void JitExec(ref DecodedInsn d)
    {
        try
        {
            if (d.Form != FastForm.None) ExecFast(ref d); else Execute(ref d);
        }
        catch (GuestFault) { Abort = AbortFault; }
        catch (ExitSignal) { Abort = AbortExit; }
    }
}
