using System.Text;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>
/// The SIMD floating-point instructions over every pair of edge operands (zeros, denormals, the
/// smallest and largest normals, infinities, quiet and signalling NaNs, values one ulp from 1),
/// each pair under an MXCSR drawn from rounding modes, DAZ, FTZ and unmasked exceptions; and the
/// SSE4.2 string instructions over every imm8 mode with short strings from a small alphabet.
/// Both run natively and in the engine and must agree, as in <see cref="EngineOracleTests"/>.
/// </summary>
public class SimdEdgeOracleTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static readonly uint[] Singles = [0, 0x80000000, 1, 0x80000001, 0x007fffff, 0x00800000, 0x80800000, 0x3f800000, 0xbf800000,
        0x7f7fffff, 0xff7fffff, 0x7f800000, 0xff800000, 0x7fc00001, 0xffa00002, 0x3f800001, 0x40490fdb, 0x00400000, 0x0ff00000,
        0x70000000, 0x1a000000, 0x4f000000, 0xcf000001];
    static readonly ulong[] Doubles = [0, 0x8000000000000000, 1, 0x8000000000000001, 0x000fffffffffffff, 0x0010000000000000,
        0x3ff0000000000000, 0xbff0000000000000, 0x7fefffffffffffff, 0x7ff0000000000000, 0xfff0000000000000, 0x7ff8000000000001,
        0xfff4000000000002, 0x3ff0000000000001, 0x0008000000000000, 0x6000000000000000, 0x2000000000000000, 0x41e0000000000000,
        0xc3e0000000000001];
    // Default; DAZ; FTZ and round down; round up; DAZ, FTZ and toward zero; PE set; OE/UE/PE unmasked; ZE unmasked; all unmasked.
    static readonly uint[] Controls = [0x1f80, 0x1fc0, 0xbf80, 0x5f80, 0xffc0, 0x1fa0, 0x0380, 0x1d80, 0x0000];

    static readonly (string Name, string Group, bool Double, Action<Assembler> Body)[] ops =
    [
        ("addps", "sse", false, a => a.addps(xmm0, xmm1)), ("subss", "sse", false, a => a.subss(xmm0, xmm1)),
        ("mulps", "sse", false, a => a.mulps(xmm0, xmm1)), ("divps", "sse", false, a => a.divps(xmm0, xmm1)),
        ("sqrtps", "sse", false, a => a.sqrtps(xmm0, xmm1)), ("minps", "sse", false, a => a.minps(xmm0, xmm1)),
        ("maxss", "sse", false, a => a.maxss(xmm0, xmm1)), ("cmpps lt", "sse", false, a => a.cmpps(xmm0, xmm1, 1)),
        ("cmpps neq", "sse", false, a => a.cmpps(xmm0, xmm1, 4)), ("comiss", "sse", false, a => a.comiss(xmm0, xmm1)),
        ("ucomiss", "sse", false, a => a.ucomiss(xmm0, xmm1)), ("cvtss2si", "sse", false, a => a.cvtss2si(rax, xmm1)),
        ("cvttss2si", "sse", false, a => a.cvttss2si(eax, xmm1)), ("cvtsi2ss", "sse", false, a => { a.movq(rax, xmm1); a.cvtsi2ss(xmm0, rax); }),
        ("cvtps2pi", "sse", false, a => a.cvtps2pi(mm0, xmm1)),
        ("cvtpi2ps", "sse", false, a => { a.movdq2q(mm1, xmm1); a.cvtpi2ps(xmm0, mm1); }),
        ("cvtps2pd", "sse2", false, a => a.cvtps2pd(xmm0, xmm1)), ("cvtps2dq", "sse2", false, a => a.cvtps2dq(xmm0, xmm1)),
        ("cvttps2dq", "sse2", false, a => a.cvttps2dq(xmm0, xmm1)), ("cvtdq2ps", "sse2", false, a => a.cvtdq2ps(xmm0, xmm1)),
        ("cvtss2sd", "sse2", false, a => a.cvtss2sd(xmm0, xmm1)),
        ("haddps", "sse3", false, a => a.haddps(xmm0, xmm1)), ("addsubps", "sse3", false, a => a.addsubps(xmm0, xmm1)),
        ("roundps mxcsr", "sse4.1", false, a => a.roundps(xmm0, xmm1, 0x04)), ("roundss down", "sse4.1", false, a => a.roundss(xmm0, xmm1, 0x09)),
        ("dpps", "sse4.1", false, a => a.dpps(xmm0, xmm1, 0xf3)), ("dpps partial", "sse4.1", false, a => a.dpps(xmm0, xmm1, 0x5a)),
        ("addpd", "sse2", true, a => a.addpd(xmm0, xmm1)), ("subsd", "sse2", true, a => a.subsd(xmm0, xmm1)),
        ("mulpd", "sse2", true, a => a.mulpd(xmm0, xmm1)), ("divsd", "sse2", true, a => a.divsd(xmm0, xmm1)),
        ("sqrtpd", "sse2", true, a => a.sqrtpd(xmm0, xmm1)), ("maxpd", "sse2", true, a => a.maxpd(xmm0, xmm1)),
        ("cmpsd le", "sse2", true, a => a.cmpsd(xmm0, xmm1, 2)), ("comisd", "sse2", true, a => a.comisd(xmm0, xmm1)),
        ("cvtsd2si", "sse2", true, a => a.cvtsd2si(rax, xmm1)), ("cvttsd2si", "sse2", true, a => a.cvttsd2si(eax, xmm1)),
        ("cvtsd2ss", "sse2", true, a => a.cvtsd2ss(xmm0, xmm1)), ("cvtpd2ps", "sse2", true, a => a.cvtpd2ps(xmm0, xmm1)),
        ("cvtpd2dq", "sse2", true, a => a.cvtpd2dq(xmm0, xmm1)), ("cvttpd2pi", "sse2", true, a => a.cvttpd2pi(mm0, xmm1)),
        ("cvtsi2sd", "sse2", true, a => { a.movq(rax, xmm1); a.cvtsi2sd(xmm0, rax); }),
        ("hsubpd", "sse3", true, a => a.hsubpd(xmm0, xmm1)), ("addsubpd", "sse3", true, a => a.addsubpd(xmm0, xmm1)),
        ("roundpd up", "sse4.1", true, a => a.roundpd(xmm0, xmm1, 0x02)), ("dppd", "sse4.1", true, a => a.dppd(xmm0, xmm1, 0x31)),
    ];

    public static TheoryData<string> Operations()
    {
        var d = new TheoryData<string>();
        foreach (var op in ops)
            if (OracleSettings.HostSupports(InstructionGroups.All.Single(g => g.Name == op.Group))) d.Add(op.Name);
        return d;
    }

    [Theory, MemberData(nameof(Operations)), Trait("Feature", "x86 instruction emulation")]
    public void Engine_agrees_with_host_on_edge_operands(string name)
    {
        var (_, _, dbl, body) = ops.Single(o => o.Name == name);
        var code = Assemble(body);
        var r = new Random(CaseGenerator.CaseSeed(OracleSettings.Seed, "edge " + name, 0));
        int n = dbl ? Doubles.Length : Singles.Length;
        var cases = new List<OracleCase>();
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                var c = NewCase(code, $"  {name} [{i},{j}]\n", Controls[r.Next(Controls.Length)]);
                // Operand pair (i, j) in element 0; the other elements get other pairs so packed forms mix edge cases.
                for (int k = 0; k < (dbl ? 2 : 4); k++)
                {
                    int x = k == 0 ? i : r.Next(n), y = k == 0 ? j : r.Next(n);
                    if (dbl)
                    {
                        BitConverter.GetBytes(Doubles[x]).CopyTo(c.Fx, 160 + 8 * k);
                        BitConverter.GetBytes(Doubles[y]).CopyTo(c.Fx, 176 + 8 * k);
                    }
                    else
                    {
                        BitConverter.GetBytes(Singles[x]).CopyTo(c.Fx, 160 + 4 * k);
                        BitConverter.GetBytes(Singles[y]).CopyTo(c.Fx, 176 + 4 * k);
                    }
                }
                cases.Add(c);
            }
        Compare(name, cases);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Engine_agrees_with_host_on_string_compares_in_every_mode()
    {
        if (!OracleSettings.HostSupports(InstructionGroups.All.Single(g => g.Name == "sse4.2"))) return;
        var r = new Random(CaseGenerator.CaseSeed(OracleSettings.Seed, "pcmpxstrx", 0));
        long[] lengths = [0, 1, 3, 7, 8, 9, 15, 16, 17, -1, -5, -16, -17, int.MinValue, long.MinValue, 0x1_0000_0003];
        byte[] alphabet = [0, 1, 2, 0x7f, 0x80, 0xff, 0x41, 0x42];
        var cases = new List<OracleCase>();
        for (int imm = 0; imm < 128; imm++)
            for (int form = 0; form < 6; form++)
            {
                byte i8 = (byte)imm;
                var code = Assemble(a =>
                {
                    switch (form)
                    {
                        case 0: a.pcmpestri(xmm1, xmm2, i8); break;
                        case 1: a.pcmpestrm(xmm1, xmm2, i8); break;
                        case 2: a.pcmpistri(xmm1, xmm2, i8); break;
                        case 3: a.pcmpistrm(xmm1, __xmmword_ptr[r15 + 3], i8); break;
                        case 4: a.pcmpestri64(xmm1, xmm2, i8); break;
                        default: a.pcmpestrm64(xmm1, __xmmword_ptr[r15 + 5], i8); break;
                    }
                    a.pushfq();
                    a.pop(rbx);
                });
                for (int t = 0; t < 2; t++)
                {
                    var c = NewCase(code, $"  imm8 {imm:x2}, form {form}\n", 0x1f80);
                    c.Gpr[Gpr.Rax] = (ulong)lengths[r.Next(lengths.Length)];
                    c.Gpr[Gpr.Rdx] = (ulong)lengths[r.Next(lengths.Length)];
                    // Mostly a three-letter alphabet (nulls and repeats are common), needles copied into haystacks.
                    for (int k = 0; k < 48; k++) c.Fx[160 + k] = alphabet[r.Next(r.Next(2) == 0 ? 3 : alphabet.Length)];
                    for (int k = 0; k < c.Data.Length; k++) c.Data[k] = alphabet[r.Next(alphabet.Length)];
                    if (r.Next(2) == 0) Array.Copy(c.Fx, 176, c.Fx, 192 + r.Next(8), 4);
                    cases.Add(c);
                }
            }
        Compare("pcmpxstrx", cases);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Engine_agrees_with_host_on_masked_stores()
    {
        // MASKMOVDQU/MASKMOVQ store through RDI (EDI with 0x67), which the generator keeps away from the data page.
        var r = new Random(CaseGenerator.CaseSeed(OracleSettings.Seed, "maskmov", 0));
        var cases = new List<OracleCase>();
        for (int t = 0; t < 200; t++)
        {
            var code = Assemble(a =>
            {
                switch (t % 4)
                {
                    case 0: a.maskmovdqu(xmm1, xmm2); break;
                    case 1: a.maskmovq(mm1, mm2); break;
                    case 2: a.db(0x67); a.maskmovdqu(xmm3, xmm4); break;
                    default: a.db(0x2e); a.maskmovdqu(xmm1, xmm2); break;
                }
            });
            var c = NewCase(code, "", 0x1f80);
            // Near the end of the data page now and then, so that the store crosses into the unmapped page.
            c.Gpr[Gpr.Rdi] = OracleLayout.Data + (ulong)(r.Next(4) == 0 ? r.Next(0xff0, 0x1000) : r.Next(0, 0xff0))
                + (r.Next(8) == 0 ? 0x1_0000_0000UL : 0);
            r.NextBytes(c.Fx.AsSpan(32, 128 + 256));
            r.NextBytes(c.Data);
            cases.Add(c);
        }
        Compare("maskmov", cases);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Engine_agrees_with_host_on_misaligned_operands_with_alignment_checking()
    {
        // With EFLAGS.AC at CPL 3: #GP for the 16-byte operands that must be aligned, #AC for the others.
        var forms = new Action<Assembler>[]
        {
            a => a.movups(xmm0, __xmmword_ptr[r15 + 1]), a => a.movaps(xmm0, __xmmword_ptr[r15 + 1]),
            a => a.movdqu(__xmmword_ptr[r15 + 2], xmm0), a => a.movntdq(__xmmword_ptr[r15 + 8], xmm0),
            a => a.addps(xmm0, __xmmword_ptr[r15 + 4]), a => a.addss(xmm0, __dword_ptr[r15 + 1]),
            a => a.movsd(xmm0, __qword_ptr[r15 + 4]), a => a.movhps(xmm0, __qword_ptr[r15 + 4]),
            a => a.pcmpistri(xmm0, __xmmword_ptr[r15 + 4], 0), a => a.lddqu(xmm0, __xmmword_ptr[r15 + 8]),
            a => a.paddq(mm0, __qword_ptr[r15 + 4]), a => a.movd(xmm0, __dword_ptr[r15 + 2]),
            a => a.ldmxcsr(__dword_ptr[r15 + 2]), a => a.pmovzxbw(xmm0, __qword_ptr[r15 + 4]),
            a => a.insertps(xmm0, __dword_ptr[r15 + 1], 0), a => a.psrad(xmm0, __xmmword_ptr[r15 + 8]),
            a => { a.lea(rdi, __[r15 + 3]); a.maskmovdqu(xmm0, xmm1); }, a => { a.lea(rdi, __[r15 + 4]); a.maskmovq(mm0, mm1); },
        };
        var cases = new List<OracleCase>();
        foreach (var body in forms)
        {
            var code = Assemble(a =>
            {
                a.pushfq();
                a.or(__qword_ptr[rsp], 0x40000);
                a.popfq();
                body(a);
            });
            var c = NewCase(code, "", 0x1f80);
            for (int i = 0; i < 32; i++) c.Fx[160 + i] = 0x80;
            cases.Add(c);
        }
        Compare("alignment", cases);
    }

    static byte[] Assemble(Action<Assembler> body)
    {
        var a = new Assembler(64);
        body(a);
        a.hlt();
        var w = new ListCodeWriter();
        a.Assemble(w, OracleLayout.Code);
        return w.Bytes.ToArray();
    }

    static OracleCase NewCase(byte[] code, string text, uint mxcsr)
    {
        var c = new OracleCase { Group = "edge", Index = 0, Code = code, Text = text + CaseGenerator.Disassemble(code), Steps = [], UsesFx = true };
        c.Gpr[Gpr.Rsp] = OracleLayout.Data + 0xc00;
        c.Gpr[Gpr.R15] = OracleLayout.Data + 0x800;
        c.Rflags = 2;
        BitConverter.GetBytes((ushort)0x037f).CopyTo(c.Fx, 0);
        BitConverter.GetBytes(mxcsr).CopyTo(c.Fx, 24);
        BitConverter.GetBytes(0xffffu).CopyTo(c.Fx, 28);
        (c.Steps, c.UndefinedAtEnd) = DirectedCases.FlagSteps(code);
        return c;
    }

    void Compare(string name, List<OracleCase> cases)
    {
        for (int i = 0; i < cases.Count; i++) cases[i].Index = i;
        var host = NativeOracle.Run(cases);
        using var machine = new GuestMachine();
        var sb = new StringBuilder();
        int failures = 0;
        for (int i = 0; i < cases.Count; i++)
        {
            var engine = machine.Run(cases[i], EngineOracleTests.CreateEngine);
            if (OracleComparer.Compare(cases[i], host[i], engine) is not string diff) continue;
            if (++failures <= 4)
                sb.Append($"case {i} (initial MXCSR {BitConverter.ToUInt32(cases[i].Fx, 24):x4}, xmm0 {Hex(cases[i].Fx, 160)}, "
                    + $"xmm1 {Hex(cases[i].Fx, 176)}, host stopped with {OracleComparer.VectorName(host[i].Vector)}):\n{cases[i].Text}{diff}\n");
        }
        output.WriteLine($"{name}: {cases.Count - failures} of {cases.Count} cases agree");
        Assert.True(failures == 0, $"{failures} of {cases.Count} {name} cases differ:\n{sb}");
    }

    static string Hex(byte[] b, int at) => Convert.ToHexString(b, at, 16);

    sealed class ListCodeWriter : CodeWriter
    {
        public readonly List<byte> Bytes = [];
        public override void WriteByte(byte value) => Bytes.Add(value);
    }
}
