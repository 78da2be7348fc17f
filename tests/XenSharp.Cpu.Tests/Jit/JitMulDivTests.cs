using Iced.Intel;
using XenSharp.Cpu.Jit;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>One-operand MUL and IMUL and unsigned DIV compiled inline end exactly as interpreted: RAX, RDX and the
/// flags (kept by DIV), the divisions the compiled code hands to the interpreter (a high half to divide, a zero
/// divisor and a quotient too wide, which raise #DE at the DIV).</summary>
public class JitMulDivTests
{
    const ulong Handler = 0x12000;

    static (Registers Interp, Registers Jit, ulong InterpRetired, ulong JitRetired, long Compiled) RunBoth(string op, ulong raxIn, ulong rdxIn, ulong src)
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, raxIn);
            a.mov(rdx, rdxIn);
            a.mov(rbx, src);
            a.mov(rsi, 0x70000UL);
            a.mov(__qword_ptr[rsi], rbx);
            a.cmp(rax, rdx);                     // flags a DIV must keep
            switch (op)
            {
                case "mul": a.mul(rbx); break;
                case "imul": a.imul(rbx); break;
                case "mul-mem": a.mul(__qword_ptr[rsi]); break;
                case "mul32": a.mul(ebx); break;
                case "imul32": a.imul(ebx); break;
                case "div": a.div(rbx); break;
                case "div32": a.div(ebx); break;
            }
            a.mov(rcx, rax);
            a.hlt();
        });
        var handler = TestMachine.Assemble(64, Handler, a => { a.pop(r8); a.hlt(); });
        var regs = new Registers[2];
        var retired = new ulong[2];
        long compiled = 0;
        for (int k = 0; k < 2; k++)
        {
            using var m = new TestMachine(jit: k == 1 ? JitSettings.Eager : JitSettings.Off);
            m.Mem.Write(Handler, handler);
            m.SetGate64(0, Handler);
            m.Enter64(code, fourK: true);
            m.RunToHlt();
            regs[k] = m.Regs;
            retired[k] = m.Cpu.InstructionsRetired;
            if (k == 1)
            {
                Assert.Equal(0, m.Engine.JitFailures);
                compiled = m.Engine.CompiledBlocks;
            }
        }
        return (regs[0], regs[1], retired[0], retired[1], compiled);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData("mul", 0xFFFF_FFFF_FFFF_FFFFUL, 0UL, 2UL)]
    [InlineData("mul", 3UL, 0x55UL, 5UL)]
    [InlineData("mul", 0UL, 0UL, 0UL)]
    [InlineData("mul", 0x8000_0000_0000_0000UL, 0UL, 2UL)]
    [InlineData("mul-mem", 0x1234_5678_9ABC_DEF0UL, 0UL, 0x0FED_CBA9_8765_4321UL)]
    [InlineData("imul", 0xFFFF_FFFF_FFFF_FFFFUL, 0UL, 0xFFFF_FFFF_FFFF_FFFFUL)]
    [InlineData("imul", 0x4000_0000_0000_0000UL, 0UL, 4UL)]
    [InlineData("imul", 0xFFFF_FFFF_FFFF_FFFBUL, 0UL, 3UL)]
    [InlineData("mul32", 0xDEAD_BEEF_FFFF_FFFFUL, 0x1111_2222_3333_4444UL, 0xFFFF_FFFFUL)]
    [InlineData("mul32", 0xDEAD_0000_0000_0007UL, 0UL, 0xAAAA_0000_0000_0009UL)]
    [InlineData("imul32", 0x8000_0000UL, 0UL, 2UL)]
    [InlineData("imul32", 0xFFFF_FFFDUL, 0UL, 7UL)]
    [InlineData("div", 100UL, 0UL, 7UL)]
    [InlineData("div", 0xFFFF_FFFF_FFFF_FFFFUL, 0UL, 0xFFFF_FFFF_FFFF_FFFFUL)]
    [InlineData("div", 123UL, 5UL, 1UL << 40)]                   // a 128-bit dividend: the interpreter divides
    [InlineData("div32", 0xDEAD_0000_0000_0064UL, 0xBEEF_0000_0000_0000UL, 7UL)]
    [InlineData("div32", 5UL, 3UL, 10UL)]
    public void Results_and_flags_are_the_interpreters(string op, ulong raxIn, ulong rdxIn, ulong src)
    {
        var (i, j, ir, jr, compiled) = RunBoth(op, raxIn, rdxIn, src);
        Assert.True(compiled > 0);
        Assert.Equal(i.Rax, j.Rax); Assert.Equal(i.Rdx, j.Rdx); Assert.Equal(i.Rcx, j.Rcx);
        Assert.Equal(i.Rip, j.Rip); Assert.Equal(i.Rflags, j.Rflags);
        Assert.Equal(ir, jr);
        Assert.Equal(0UL, j.R8);                                  // no #DE
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData("div", 100UL, 0UL, 0UL)]
    [InlineData("div", 0UL, 7UL, 7UL)]                            // quotient 2^64
    [InlineData("div32", 100UL, 0UL, 0UL)]
    [InlineData("div32", 0UL, 1UL, 1UL)]                          // quotient 2^32
    public void A_division_that_cannot_be_done_raises_divide_error_at_the_div(string op, ulong raxIn, ulong rdxIn, ulong src)
    {
        var (i, j, _, _, _) = RunBoth(op, raxIn, rdxIn, src);
        Assert.NotEqual(0UL, j.R8);
        Assert.Equal(i.R8, j.R8);                                 // the #DE frame's RIP: the DIV itself
        Assert.Equal(i.Rax, j.Rax); Assert.Equal(i.Rdx, j.Rdx); Assert.Equal(i.Rbx, j.Rbx);
        Assert.Equal(i.Rflags, j.Rflags);
    }
}
