using Iced.Intel;
using XenSharp.Cpu.Decoding;
using XenSharp.Cpu.Jit;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>Blocks decoded on through direct JMPs and CALLs within their page run exactly as the interpreter does,
/// self-modifying code included.</summary>
public class JitFollowTests
{
    static bool RunsOnThroughABranch(DecodedBlock b)
    {
        for (int k = 0; k < b.Count - 1; k++)
            if (b.Insns[k].I.Mnemonic is Mnemonic.Jmp or Mnemonic.Call) return true;
        return false;
    }

    static (Registers Regs, ulong Retired, TestMachine Machine) Run(byte[] code, JitSettings jit)
    {
        var m = new TestMachine(jit: jit);
        m.Enter64(code, fourK: true);
        m.RunToHlt();
        return (m.Regs, m.Cpu.InstructionsRetired, m);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Blocks_run_on_through_direct_jumps_and_calls_in_their_page_and_end_as_interpreted()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var top = a.CreateLabel(); var fwd = a.CreateLabel(); var back = a.CreateLabel(); var fn = a.CreateLabel();
            var odd = a.CreateLabel(); var done = a.CreateLabel();
            a.mov(rsp, 0x80000);
            a.xor(eax, eax);
            a.xor(ecx, ecx);
            a.jmp(top);
            a.Label(ref back);                   // reached only by the jump from fwd, below: a block runs back to here
            a.add(rbx, rax);
            a.call(fn);                          // and on into fn, its return address pushed
            a.add(rcx, 1);
            a.cmp(rcx, 5000);
            a.jne(top);
            a.jmp(done);
            a.Label(ref fn);
            a.lea(rdx, __[rdx + rax * 2 + 1]);
            a.xor(rdx, rbx);
            a.ret();
            a.Label(ref top);
            a.add(eax, 3);
            a.test(cl, 1);
            a.jnz(odd);
            a.jmp(fwd);
            a.Label(ref odd);
            a.sub(r8, rcx);
            a.Label(ref fwd);
            a.add(r9, rax);
            a.jmp(back);
            a.Label(ref done);
            a.hlt();
        });
        var (ri, ni, mi) = Run(code, JitSettings.Off);
        var (rj, nj, mj) = Run(code, JitSettings.Eager);
        using (mi)
        using (mj)
        {
            Assert.Equal(0, mj.Engine.JitFailures);
            Assert.Contains(mj.Engine.Blocks.Snapshot(), b => b.Valid && RunsOnThroughABranch(b));
            Assert.Equal(ni, nj);
            Assert.Equal(ri.Rax, rj.Rax); Assert.Equal(ri.Rbx, rj.Rbx); Assert.Equal(ri.Rcx, rj.Rcx); Assert.Equal(ri.Rdx, rj.Rdx);
            Assert.Equal(ri.Rsp, rj.Rsp); Assert.Equal(ri.R8, rj.R8); Assert.Equal(ri.R9, rj.R9);
            Assert.Equal(ri.Rip, rj.Rip); Assert.Equal(ri.Rflags, rj.Rflags);
            Assert.Equal(5000UL, rj.Rcx);
            Assert.Equal(0x80000UL, rj.Rsp);
        }
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false)]
    [InlineData(true)]
    public void Code_a_block_reached_through_a_backward_jump_runs_its_new_bytes_once_rewritten(bool jit)
    {
        // The loop block is decoded from `top` on through a JMP back to `patched`, which lies in another 64-byte chunk
        // of the page, before the block's start: each iteration's store into its ADD must drop the block.
        Action<Assembler> Build(ulong patchAt) => a =>
        {
            var top = a.CreateLabel(); var patched = a.CreateLabel();
            a.xor(esi, esi);
            a.xor(eax, eax);
            a.mov(rdi, patchAt);
            a.jmp(top);
            for (int k = 0; k < 100; k++) a.int3();
            a.Label(ref patched);
            a.add(eax, 0x12345678);              // its immediate is what the store rewrites
            a.cmp(esi, 300);
            a.jne(top);
            a.hlt();
            for (int k = 0; k < 100; k++) a.int3();
            a.Label(ref top);
            a.add(esi, 1);
            a.mov(__dword_ptr[rdi], esi);
            a.jmp(patched);
        };
        var probe = TestMachine.Assemble(64, TestMachine.CodeAt, Build(0));
        int addEax = Array.IndexOf(probe, (byte)0x05);
        ulong patchAt = TestMachine.CodeAt + (ulong)addEax + 1;
        var (r, _, m) = Run(TestMachine.Assemble(64, TestMachine.CodeAt, Build(patchAt)), jit ? JitSettings.Eager : JitSettings.Off);
        using (m)
        {
            Assert.Equal(300UL * 301 / 2, r.Rax);
            Assert.Contains(m.Engine.Blocks.Snapshot(), b => b.Valid && RunsOnThroughABranch(b));
        }
    }
}
