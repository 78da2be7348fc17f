using System.Runtime.CompilerServices;
using XenSharp.Cpu.Decoding;
using XenSharp.Cpu.Jit;

namespace XenSharp.Cpu;

/// <summary>The vCPU side of the block compiler: tier-up from the interpreter and the helpers
/// compiled blocks call on their slow paths.</summary>
internal unsafe partial class X86Vcpu
{
    /// <summary>Runs <paramref name="b"/> compiled when it is (or has just become) hot; false when
    /// the interpreter must run it.</summary>
    private bool TryRunCompiled(DecodedBlock b)
    {
        var code = b.Compiled;
        if (code == null)
        {
            if (!_engine.Jit.Enabled || b.JitFailed || !b.Valid || b.Hits++ < _engine.Jit.Threshold) return false;
            code = CompileBlock(b);
            if (code == null) return false;
        }
        try
        {
            code(this);
        }
        catch (InvalidProgramException ex)
        {
            // The .NET JIT rejected the IL on its first call, before any of it ran.
            b.Compiled = null;
            b.JitFailed = true;
            Interlocked.Increment(ref _engine.JitFailureCount);
            _engine.LastJitFailure = ex.Message;
            return false;
        }
        return true;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private Action<X86Vcpu>? CompileBlock(DecodedBlock b)
    {
        try
        {
            b.Compiled = BlockTranslator.Compile(b);
            Interlocked.Increment(ref _engine.CompiledCount);
        }
        catch (Exception ex) when (ex is NotSupportedException or InvalidProgramException)
        {
            // The block stays interpreted; the interpreter is the reference anyway.
            b.JitFailed = true;
            Interlocked.Increment(ref _engine.JitFailureCount);
            _engine.LastJitFailure = ex.Message;
        }
        return b.Compiled;
    }

    // ---- slow paths of compiled code (state is written back before each call) ----

    internal ulong JitRead(ulong lin, int size)
    {
        if (_acUser && (Rflags & AC) != 0) CheckAlignment(lin, (uint)size);
        return ReadLin(lin, size);
    }

    /// <summary>Stack-segment accesses (RSP/RBP bases, pushes and pops): a non-canonical address is #SS, not #GP.</summary>
    internal ulong JitReadStack(ulong lin, int size)
    {
        CheckStackCanonical(lin, (uint)size);
        return JitRead(lin, size);
    }

    internal void JitWriteStack(ulong lin, int size, ulong v)
    {
        CheckStackCanonical(lin, (uint)size);
        JitWrite(lin, size, v);
    }

    internal void JitWrite(ulong lin, int size, ulong v)
    {
        if (_acUser && (Rflags & AC) != 0) CheckAlignment(lin, (uint)size);
        WriteLin(lin, size, v);
    }

    /// <summary>One instruction through the interpreter (CurIp and Rip already set).</summary>
    internal void JitExec(ref DecodedInsn d)
    {
        if (d.Form != FastForm.None) ExecFast(ref d); else Execute(ref d);
    }
}
