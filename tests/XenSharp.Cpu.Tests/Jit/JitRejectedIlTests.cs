using Iced.Intel;
using XenSharp.Cpu.Jit;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>A block whose IL the .NET JIT rejects (as a translator defect would make it) costs only itself.</summary>
public class JitRejectedIlTests
{
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_block_whose_IL_is_rejected_is_never_published_and_stays_interpreted_beside_its_compiled_neighbours()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var top = a.CreateLabel(); var second = a.CreateLabel();
            a.xor(eax, eax);
            a.xor(ecx, ecx);
            a.Label(ref top);
            a.add(eax, 7);
            a.cmp(eax, 1 << 30);
            a.jae(second);
            a.Label(ref second);                 // its own block: the JAE above ends the first
            a.lea(rbx, __[rbx + rax + 1]);
            a.add(ecx, 1);
            a.cmp(ecx, 3000);
            a.jne(top);
            a.hlt();
        });
        Registers ri;
        ulong ni;
        using (var interp = new TestMachine(jit: JitSettings.Off))
        {
            interp.Enter64(code, fourK: true);
            interp.RunToHlt();
            ri = interp.Regs;
            ni = interp.Cpu.InstructionsRetired;
        }
        using var m = new TestMachine(jit: JitSettings.Eager);
        ulong rejected = 0;
        m.Engine.RejectIlForTests = b => b.Insns[0].I.Mnemonic == Mnemonic.Lea && (rejected = b.Ip) != 0;
        m.Enter64(code, fourK: true);
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(ni, m.Cpu.InstructionsRetired);
        Assert.Equal(ri.Rax, r.Rax); Assert.Equal(ri.Rbx, r.Rbx); Assert.Equal(ri.Rcx, r.Rcx);
        Assert.Equal(ri.Rip, r.Rip); Assert.Equal(ri.Rflags, r.Rflags);
        Assert.NotEqual(0UL, rejected);
        var blocks = m.Engine.Blocks.Snapshot();
        var bad = Assert.Single(blocks, b => b.Ip == rejected);
        Assert.True(bad.JitFailed);
        Assert.Null(bad.Compiled);
        Assert.All(blocks.Where(b => b.Ip != rejected && b.Valid), b => Assert.NotNull(b.Compiled));
        Assert.Equal(1, m.Engine.JitFailures);

        // Compiling it again on a vCPU's behalf publishes nothing either.
        bad.JitFailed = false;
        Assert.False(CompileQueue.Compile(bad, m.Engine));
        Assert.Null(bad.Compiled);
        Assert.True(bad.JitFailed);
    }
}
