namespace XenSharp.Cpu.Tests.Oracle;

/// <summary>The comparison itself, on made-up results: what it must report and what it may not.</summary>
public class OracleComparerTests
{
    const string Rewrites = "store rewrites the next instruction";

    static OracleResult Result(OracleCase c, ulong rflags)
    {
        var r = new OracleResult { Vector = OracleLayout.NoFault, Rip = OracleLayout.Code + (ulong)c.Code.Length - 1, Rflags = rflags };
        c.Gpr.CopyTo(r.Gpr, 0);
        c.Data.CopyTo(r.Data, 0);
        c.Fx.CopyTo(r.Fx, 0);
        r.Code.AsSpan().Fill(0xcc);
        c.Code.CopyTo(r.Code, 0);
        return r;
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Defined_flags_of_the_generated_code_are_compared()
    {
        // The case ends with SUB and SETZ as generated: AF is defined and must agree.
        var c = DirectedCases.Build(Rewrites, OracleSettings.Seed);
        var diff = OracleComparer.Compare(c, Result(c, 0x56), Result(c, 0x46));
        Assert.NotNull(diff);
        Assert.Contains("rflags", diff);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Status_flags_are_not_compared_once_the_code_rewrote_itself()
    {
        // The store made the SUB a SHR, whose AF the SDM leaves undefined; the generated code cannot say so.
        var c = DirectedCases.Build(Rewrites, OracleSettings.Seed);
        int sub = Array.IndexOf(c.Code, (byte)0x80);
        var host = Result(c, 0x56);
        var engine = Result(c, 0x46);
        host.Code[sub] = engine.Code[sub] = 0xc0;
        Assert.Null(OracleComparer.Compare(c, host, engine));

        // DF is never undefined: it is still compared.
        engine.Rflags |= 0x400;
        Assert.Contains("rflags", OracleComparer.Compare(c, host, engine));
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void The_code_page_is_compared()
    {
        var c = DirectedCases.Build(Rewrites, OracleSettings.Seed);
        var host = Result(c, 0x46);
        var engine = Result(c, 0x46);
        host.Code[0x100] = 0x90;
        Assert.Contains($"code[{OracleLayout.Code + 0x100:x}]: host 90, engine cc", OracleComparer.Compare(c, host, engine));
    }
}
