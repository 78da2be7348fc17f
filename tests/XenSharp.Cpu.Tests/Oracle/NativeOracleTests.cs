using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>Checks the native half of the differential tester against facts about the host CPU,
/// so that a broken helper cannot make the engine comparison pass vacuously.</summary>
public class NativeOracleTests
{
    static OracleCase Case(Action<Assembler> body, Action<OracleCase>? setup = null)
    {
        var a = new Assembler(64);
        body(a);
        a.hlt();
        var w = new MemoryCodeWriter();
        a.Assemble(w, OracleLayout.Code);
        var c = new OracleCase { Group = "directed", Index = 0, Code = w.ToArray(), Text = "", Steps = [] };
        c.Gpr[Gpr.Rsp] = OracleLayout.Data + 0xc00;
        c.Gpr[Gpr.R15] = OracleLayout.Data + 0x800;
        c.Rflags = 2;
        c.Fx[0] = 0x7f; c.Fx[1] = 0x03;
        BitConverter.GetBytes(0x1f80u).CopyTo(c.Fx, 24);
        setup?.Invoke(c);
        return c;
    }

    sealed class MemoryCodeWriter : CodeWriter
    {
        readonly List<byte> bytes = new();
        public override void WriteByte(byte value) => bytes.Add(value);
        public byte[] ToArray() => bytes.ToArray();
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Host_runs_sequences_and_reports_registers_flags_memory_and_faults()
    {
        var cases = new[]
        {
            Case(a => { a.mov(rax, 5); a.add(rax, rbx); }, c => c.Gpr[Gpr.Rbx] = 7),
            Case(a => { a.xor(edx, edx); a.div(rcx); }, c => { c.Gpr[Gpr.Rax] = 10; c.Gpr[Gpr.Rcx] = 0; }),
            Case(a => a.ud2()),
            Case(a => { a.push(rax); a.sub(rax, rax); }, c => c.Gpr[Gpr.Rax] = 0x1122334455667788),
            Case(a => a.mov(rax, __qword_ptr[rbx])),
            Case(a => a.nop(), c => c.Rflags = 0x8d7),
            Case(a => { var l = a.CreateLabel(); a.Label(ref l); a.jmp(l); }),
            Case(a => a.addps(xmm1, xmm2), c => { BitConverter.GetBytes(1.5f).CopyTo(c.Fx, 160 + 16); BitConverter.GetBytes(2.25f).CopyTo(c.Fx, 160 + 32); }),
        };
        var r = NativeOracle.Run(cases);

        Assert.Equal(OracleLayout.NoFault, r[0].Vector);
        Assert.Equal(12UL, r[0].Gpr[Gpr.Rax]);
        Assert.Equal(OracleLayout.Code + (ulong)cases[0].Code.Length - 1, r[0].Rip);
        Assert.Equal(0UL, r[0].Rflags & 0x8d5 & ~0x4UL); // 12: no carry, not zero, positive, even parity → PF set
        Assert.Equal(4UL, r[0].Rflags & 0x4);

        Assert.Equal(0u, r[1].Vector); // #DE
        Assert.Equal(OracleLayout.Code + 2, r[1].Rip);

        Assert.Equal(6u, r[2].Vector); // #UD
        Assert.Equal(OracleLayout.Code, r[2].Rip);

        Assert.Equal(OracleLayout.NoFault, r[3].Vector);
        Assert.Equal(0x1122334455667788UL, BitConverter.ToUInt64(r[3].Data, 0xbf8));
        Assert.Equal(OracleLayout.Data + 0xbf8, r[3].Gpr[Gpr.Rsp]);
        Assert.Equal(0x44UL, r[3].Rflags & 0x44); // ZF, PF after sub

        Assert.Equal(14u, r[4].Vector); // #PF on address 0

        Assert.Equal(0x8d7UL, r[5].Rflags & 0x8d7); // initial flags reach the code unchanged

        Assert.Equal(OracleLayout.Timeout, r[6].Vector); // an endless loop is cut off, and the helper goes on

        Assert.Equal(3.75f, BitConverter.ToSingle(r[7].Fx, 160 + 16));
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Directed_cases_run_natively_with_the_expected_outcome()
    {
        var names = DirectedCases.Names.ToArray();
        var r = NativeOracle.Run(names.Select(n => DirectedCases.Build(n, OracleSettings.Seed)).ToArray());
        var byName = names.Zip(r).ToDictionary(x => x.First, x => x.Second);
        var wrong = new List<string>();
        foreach (var (name, res) in byName)
        {
            uint expected = name.Contains("(#DE)") ? 0u : name.Contains("(#GP)") ? 13u : name.Contains("(#XM)") ? 19u
                : name.Contains("(#SS)") ? 12u : name.Contains("(#UD)") ? 6u
                : name.Contains("(#PF") ? 14u : OracleLayout.NoFault;
            if (expected != res.Vector) wrong.Add($"{name}: host stopped with {OracleComparer.VectorName(res.Vector)}");
        }
        Assert.True(wrong.Count == 0, string.Join("\n", wrong));
        Assert.Equal(64UL, byName["popcnt all ones"].Gpr[Gpr.Rax]);
        Assert.Equal(0x0807060504030201UL, byName["bswap 32 and 64"].Gpr[Gpr.Rcx]);
        Assert.Equal(0x1234UL, byName["bsf zero source keeps destination"].Gpr[Gpr.Rax]);
        // The rewritten SHR CL,0DBh ran (CL = 0, ZF = 1), and the code page comes back as the store left it.
        var rewritten = byName["store rewrites the next instruction"];
        var original = DirectedCases.Build("store rewrites the next instruction", OracleSettings.Seed);
        Assert.Equal(0UL, rewritten.Gpr[Gpr.Rcx] & 0xff);
        Assert.Equal(1UL, rewritten.Gpr[Gpr.Rbx] & 0xff);
        Assert.True(OracleComparer.CodeRewritten(original, rewritten));
        Assert.Equal(0xc0, rewritten.Code[original.Code.AsSpan().IndexOf((byte)0x80)]);
        Assert.Equal(0xcc, rewritten.Code[original.Code.Length]);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Every_group_generates_reproducible_cases_the_host_runs_to_completion()
    {
        int seed = OracleSettings.Seed;
        foreach (var g in InstructionGroups.All)
        {
            Assert.True(g.Codes.Length > 0, $"group {g.Name} has no instruction forms");
            if (!OracleSettings.HostSupports(g)) continue;
            var cases = Enumerable.Range(0, 40).Select(i => CaseGenerator.Generate(g, seed, i)).ToArray();
            Assert.Equal(cases[7].Code, CaseGenerator.Generate(g, seed, 7).Code);
            var r = NativeOracle.Run(cases);
            for (int i = 0; i < cases.Length; i++)
                Assert.True(r[i].Vector != OracleLayout.Timeout, $"group {g.Name} case {i} timed out natively:\n{cases[i].Text}");
            // Most cases must run to the end: a group that always faults tests nothing.
            Assert.True(r.Count(x => x.Vector == OracleLayout.NoFault) >= cases.Length / 4,
                $"group {g.Name}: only {r.Count(x => x.Vector == OracleLayout.NoFault)} of {cases.Length} cases ran to the end; "
                + $"case 0 stopped with {OracleComparer.VectorName(r[0].Vector)} at {r[0].Rip:x}:\n{cases[0].Text}");
        }
    }
}
