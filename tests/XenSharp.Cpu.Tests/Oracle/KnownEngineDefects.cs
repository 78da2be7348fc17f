using Iced.Intel;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>
/// Engine defects the oracle has found and that cut across instruction groups, each with the
/// narrowest test that recognises a case failing only because of it. Such cases are reported in
/// the test output but do not fail the run, so the rest of each group stays covered. Remove an
/// entry once the engine is fixed: the cases then count again.
/// </summary>
internal static class KnownEngineDefects
{
    /// <summary>Runs a variant of a case on the host and in the engine.</summary>
    public delegate (OracleResult Host, OracleResult Engine) Rerun(OracleCase variant);

    static readonly (string Why, Func<OracleCase, OracleResult, OracleResult, Rerun, bool> Matches)[] list =
    [
    ];

    /// <summary>Failures that are not differences in behaviour but missing pieces of the engine:
    /// the case could not run at all. The reason names what is missing.</summary>
    static string? Unsupported(OracleCase c, OracleResult e)
    {
        if (e.EngineError is not string err) return null;
        int at = err.IndexOf("unsupported instruction", StringComparison.Ordinal);
        if (at >= 0)
        {
            int open = err.LastIndexOf('('), close = err.LastIndexOf(')');
            return "not implemented: " + (open > at && close > open ? err[(open + 1)..close] : err[at..]);
        }
        return null;
    }

    /// <summary>The memory operand's address from the registers at the fault (unchanged by it).</summary>
    static ulong Address(in Instruction i, OracleResult h)
    {
        static ulong Value(OracleResult h, Register r) => r == Register.None ? 0 : h.Gpr[r.GetFullRegister() - Register.RAX];
        return Value(h, i.MemoryBase) + Value(h, i.MemoryIndex) * (ulong)i.MemoryIndexScale + i.MemoryDisplacement64;
    }

    static bool IsShiftOrRotate(Mnemonic m) => m is Mnemonic.Shl or Mnemonic.Shr or Mnemonic.Sar or Mnemonic.Rol
        or Mnemonic.Ror or Mnemonic.Rcl or Mnemonic.Rcr or Mnemonic.Shld or Mnemonic.Shrd;

    /// <summary>The case with MOV r32,r32 after every 32-bit register shift/rotate, or null when
    /// it has none (or has branches, whose targets would move).</summary>
    static OracleCase? ZeroExtendedVariant(OracleCase c)
    {
        var ins = c.Instructions;
        if (!ins.Any(IsShift32) || ins.Any(i => i.FlowControl != FlowControl.Next)) return null;
        var code = new List<byte>();
        ulong ip = OracleLayout.Code;
        foreach (var i in ins)
        {
            var copy = i;
            if (!CaseGenerator.TryEncode(copy, ip, out var b)) return null;
            code.AddRange(b);
            ip += (ulong)b.Length;
            if (!IsShift32(i)) continue;
            var mov = Instruction.Create(Code.Mov_r32_rm32, i.Op0Register, i.Op0Register);
            if (!CaseGenerator.TryEncode(mov, ip, out b)) return null;
            code.AddRange(b);
            ip += (ulong)b.Length;
        }
        code.Add(0xf4);
        var v = new OracleCase
        {
            Group = c.Group, Index = c.Index, Code = code.ToArray(), Text = "", Steps = [],
            Gpr = c.Gpr, Rflags = c.Rflags, Fx = c.Fx, Data = c.Data, FxMask = c.FxMask, UsesFx = c.UsesFx,
        };
        (v.Steps, v.UndefinedAtEnd) = DirectedCases.FlagSteps(v.Code);
        return v;
    }

    static bool IsShift32(Instruction i) => IsShiftOrRotate(i.Mnemonic) && i.Op0Kind == OpKind.Register && i.Op0Register.IsGPR32();

    /// <summary>A variant's difference may itself be one of the defects that need no rerun.</summary>
    static string? MatchWithoutRerun(OracleCase c, OracleResult host, OracleResult engine) =>
        Match(c, host, engine, _ => (new OracleResult(), new OracleResult { EngineError = "no nested reruns" }));

    public static string? Match(OracleCase c, OracleResult host, OracleResult engine, Rerun rerun)
    {
        // XENSHARP_ORACLE_STRICT=1 reports every difference, known or not (for fixing the engine).
        if (Environment.GetEnvironmentVariable("XENSHARP_ORACLE_STRICT") == "1") return null;
        if (Unsupported(c, engine) is string missing) return missing;
        if (engine.EngineError != null) return null;
        foreach (var (why, matches) in list)
            if (matches(c, host, engine, rerun)) return why;
        return null;
    }
}
