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

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Blocks_of_flat_32_bit_code_run_on_through_direct_jumps_and_calls_in_their_page_and_end_as_interpreted()
    {
        var code = TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            var top = a.CreateLabel(); var fwd = a.CreateLabel(); var back = a.CreateLabel(); var fn = a.CreateLabel();
            var odd = a.CreateLabel(); var done = a.CreateLabel();
            a.xor(eax, eax);
            a.xor(ecx, ecx);
            a.jmp(top);
            a.Label(ref back);
            a.add(ebx, eax);
            a.call(fn);
            a.add(ecx, 1);
            a.cmp(ecx, 5000);
            a.jne(top);
            a.jmp(done);
            a.Label(ref fn);
            a.lea(edx, __[edx + eax * 2 + 1]);
            a.xor(edx, ebx);
            a.push(edx);
            a.pop(esi);
            a.ret();
            a.Label(ref top);
            a.add(eax, 3);
            a.test(cl, 1);
            a.jnz(odd);
            a.jmp(fwd);
            a.Label(ref odd);
            a.sub(edi, ecx);
            a.Label(ref fwd);
            a.add(ebp, eax);
            a.jmp(back);
            a.Label(ref done);
            a.hlt();
        });
        var regs = new Registers[2];
        var retired = new ulong[2];
        for (int k = 0; k < 2; k++)
        {
            using var m = new TestMachine(jit: k == 1 ? JitSettings.Eager : JitSettings.Off);
            m.Enter32(code);
            m.RunToHlt();
            regs[k] = m.Regs;
            retired[k] = m.Cpu.InstructionsRetired;
            Assert.Contains(m.Engine.Blocks.Snapshot(), b => b.Valid && RunsOnThroughABranch(b));
            if (k == 1) Assert.Equal(0, m.Engine.JitFailures);
        }
        var (ri, rj) = (regs[0], regs[1]);
        Assert.Equal(retired[0], retired[1]);
        Assert.Equal(ri.Rax, rj.Rax); Assert.Equal(ri.Rbx, rj.Rbx); Assert.Equal(ri.Rcx, rj.Rcx); Assert.Equal(ri.Rdx, rj.Rdx);
        Assert.Equal(ri.Rsi, rj.Rsi); Assert.Equal(ri.Rdi, rj.Rdi); Assert.Equal(ri.Rbp, rj.Rbp); Assert.Equal(ri.Rsp, rj.Rsp);
        Assert.Equal(ri.Rip, rj.Rip); Assert.Equal(ri.Rflags, rj.Rflags);
        Assert.Equal(5000UL, rj.Rcx);
        Assert.Equal(TestMachine.StackTop, rj.Rsp);
    }

    /// <summary>A 32-bit block decoded on through a JMP to code past the CS limit and back by another JMP ends below
    /// the limit: the run loop, interpreting or compiled, must still stop at the first instruction past the limit,
    /// which raises #GP(0) at its own address (the branch to it completed), as it would where the block had ended at
    /// the branch.</summary>
    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false, 0xFFFF_FFFFu)]
    [InlineData(true, 0xFFFF_FFFFu)]
    [InlineData(false, 0x107FFu)]
    [InlineData(true, 0x107FFu)]
    public void A_32_bit_block_run_on_past_the_CS_limit_faults_where_its_branch_lands(bool jit, uint csLimit)
    {
        const ulong High = TestMachine.CodeAt + 0x800, Low = TestMachine.CodeAt + 0x100, Handler = 0x30000;
        using var m = new TestMachine(jit: jit ? JitSettings.Eager : JitSettings.Off);
        // The loop's top is at CodeAt + 5, after MOV ECX.
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a => { a.mov(ecx, 500); a.add(eax, 1); a.jmp(High); }));
        m.Mem.Write(High, TestMachine.Assemble(32, High, a => { a.add(ebx, 2); a.jmp(Low); }));
        m.Mem.Write(Low, TestMachine.Assemble(32, Low, a => { a.dec(ecx); a.jnz(TestMachine.CodeAt + 5); a.hlt(); }));
        m.Mem.W8(Handler, 0xF4);
        m.SetGate32(13, Handler);
        var s = m.SRegs;
        s.Cs.Limit = csLimit;
        m.Cpu.SetSpecialRegisters(s);
        m.RunToHlt();
        var r = m.Regs;
        Assert.Contains(m.Engine.Blocks.Snapshot(), b => b.Valid && RunsOnThroughABranch(b));
        if (csLimit == 0xFFFF_FFFF)
        {
            Assert.Equal(Low + 8, r.Rip);     // DEC ECX (1 byte), JNZ rel32 (6), HLT
            Assert.Equal(500UL, r.Rax);
            Assert.Equal(1000UL, r.Rbx);
            return;
        }
        // #GP(0) at High, in the first iteration: EAX incremented, EBX not.
        Assert.Equal(Handler + 1, r.Rip);
        Assert.Equal(1UL, r.Rax);
        Assert.Equal(0UL, r.Rbx);
        Assert.Equal(TestMachine.StackTop - 16, r.Rsp);
        Assert.Equal(0u, m.Mem.R32(r.Rsp));
        Assert.Equal((uint)High, m.Mem.R32(r.Rsp + 4));
    }
}
