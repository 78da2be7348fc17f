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
        // A memory operand whose address is not canonical must raise #GP(0) (#SS(0) when the
        // base is RSP or RBP); the engine walks the page tables and raises #PF.
        ("non-canonical address raises #PF instead of #GP/#SS",
            (c, h, e, _) => h.Vector is 12 or 13 && e.Vector == 14),

        // A 32-bit shift or rotate (SHL/SHR/SAR/ROL/ROR/RCL/RCR/SHLD/SHRD) writes its register
        // destination even when the masked count is 0, so bits 63:32 become 0; the engine leaves
        // the register untouched. Recognised by rerunning the case with a zero-extending
        // MOV r32,r32 after each such instruction (a no-op on the host): if the engine then agrees,
        // this defect was the only difference.
        ("32-bit shift/rotate with a masked count of 0 does not zero bits 63:32 of its register",
            (c, h, e, rerun) => ZeroExtendedVariant(c) is OracleCase v && rerun(v) is var (h2, e2)
                && OracleComparer.Compare(v, h2, e2) == null),

        // BT/BTS/BTR/BTC with a memory operand and a register bit offset address the byte at
        // base + (offset >> 3) using the whole signed offset; the engine reduces the offset, so
        // accesses far from the operand (here: non-canonical ones) do not fault.
        ("BT* mem,reg does not use the full signed bit offset to form the address",
            (c, h, e, _) => h.Vector != OracleLayout.NoFault && e.Vector != h.Vector
                && c.Instructions.Any(i => i.IP == h.Rip && i.Mnemonic is Mnemonic.Bt or Mnemonic.Bts or Mnemonic.Btr or Mnemonic.Btc
                    && i.Op0Kind == OpKind.Memory && i.Op1Kind == OpKind.Register)),

        // ENTER and LEAVE are restartable: when one of their stack accesses faults, RSP and RBP
        // are as before. The engine has already moved RSP (LEAVE: RSP = RBP) when the fault is
        // delivered.
        ("ENTER/LEAVE that faults part-way leaves RSP changed",
            (c, h, e, _) => h.Vector == 14 && e.Vector == 14 && h.Rip == e.Rip
                && c.Instructions.Any(i => i.IP == h.Rip && i.Mnemonic is Mnemonic.Enter or Mnemonic.Leave)),

        // With CR0.AM=1, EFLAGS.AC=1 and CPL 3, a misaligned data access raises #AC(0).
        ("alignment checking (#AC) is not implemented", (c, h, e, _) => h.Vector == 17 && e.Vector != 17),

        // With EFLAGS.TF=1 (set through POPF), the next instruction ends with a single-step #DB.
        ("single-step #DB after POPF sets TF is not implemented", (c, h, e, _) => h.Vector == 1 && e.Vector != 1),
    ];

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

    public static string? Match(OracleCase c, OracleResult host, OracleResult engine, Rerun rerun)
    {
        if (engine.EngineError != null) return null;
        foreach (var (why, matches) in list)
            if (matches(c, host, engine, rerun)) return why;
        return null;
    }
}
