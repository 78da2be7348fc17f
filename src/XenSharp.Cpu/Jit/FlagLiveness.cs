using Iced.Intel;

namespace XenSharp.Cpu.Jit;

/// <summary>
/// Backward liveness of the arithmetic flags over one block: which flags each instruction's
/// result may still be observed in. Observers are the instructions that read flags, every point
/// where a fault or exit can stop the block (the flags are architectural state there), and the
/// block's end (everything is live across blocks).
/// </summary>
internal static class FlagLiveness
{
    /// <summary>Fills <paramref name="liveAfter"/>[i] with the flags live after instruction i and
    /// returns the flags live on entry.</summary>
    public static ulong Compute(int count, InsnPlan[] plans, ulong[] liveAfter)
    {
        ulong live = X86Vcpu.ArithFlags;
        for (int i = count - 1; i >= 0; i--)
        {
            liveAfter[i] = live;
            ref InsnPlan p = ref plans[i];
            live = (live & ~p.Kills) | p.Reads;
        }
        return live;
    }

    /// <summary>Flags an instruction reads, as Iced reports them (used for the instructions
    /// compiled inline; the interpreter fallback is treated as reading everything).</summary>
    public static ulong IcedReads(in Instruction i) => ToArith(i.RflagsRead);

    /// <summary>Flags an instruction always overwrites (written, cleared, set or left undefined).</summary>
    public static ulong IcedKills(in Instruction i) => ToArith(i.RflagsModified);

    private static ulong ToArith(RflagsBits b)
    {
        ulong f = 0;
        if ((b & RflagsBits.CF) != 0) f |= X86Vcpu.CF;
        if ((b & RflagsBits.PF) != 0) f |= X86Vcpu.PF;
        if ((b & RflagsBits.AF) != 0) f |= X86Vcpu.AF;
        if ((b & RflagsBits.ZF) != 0) f |= X86Vcpu.ZF;
        if ((b & RflagsBits.SF) != 0) f |= X86Vcpu.SF;
        if ((b & RflagsBits.OF) != 0) f |= X86Vcpu.OF;
        return f;
    }
}

/// <summary>What the translator decided for one instruction before emitting it.</summary>
internal struct InsnPlan
{
    /// <summary>Compiled inline (else a call into the interpreter for this instruction).</summary>
    public bool Inline;
    /// <summary>May fault or exit (memory or stack access, or the interpreter fallback).</summary>
    public bool Faults;
    public ulong Reads;
    public ulong Kills;
    /// <summary>Flags the instruction itself reads (<see cref="Reads"/> adds those a fault would observe).</summary>
    public ulong FlagReads;
    /// <summary>Flags the instruction may write, always or not (a shift by CL writes none when the count is 0).</summary>
    public ulong MayWrite;
}
