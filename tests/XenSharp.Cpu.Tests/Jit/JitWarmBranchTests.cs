using Iced.Intel;
using XenSharp.Cpu.Jit;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>Blocks compiled into one method branch straight into each other's bodies, their registers kept in
/// locals: what each body leaves in the locals, the flags it has not computed, the registers only the
/// interpreter touched and code rewritten under them must come out as the interpreter has them.</summary>
public class JitWarmBranchTests
{
    /// <summary>Runs <paramref name="code"/> interpreted, then in a machine that decoded it with a first
    /// interpreted run, compiled all its blocks as one method and ran it again; returns both machines.
    /// <paramref name="setup"/> sets what the runs compared start with; <paramref name="decodeSetup"/>, when given, the
    /// first run's instead.</summary>
    static (TestMachine Interp, TestMachine Jit, ulong Retired) RunBoth(byte[] code, Action<TestMachine>? setup = null, Action<TestMachine>? decodeSetup = null)
    {
        var interp = new TestMachine(jit: JitSettings.Off);
        interp.Enter64(code, fourK: true);
        setup?.Invoke(interp);
        interp.RunToHlt();

        var m = new TestMachine(jit: new JitSettings(true, int.MaxValue, Background: false));
        m.Enter64(code, fourK: true);
        (decodeSetup ?? setup)?.Invoke(m);
        m.RunToHlt();
        var blocks = m.Engine.Blocks.Snapshot().Where(b => b.Valid).ToList();
        CompileQueue.CompileBatch(blocks, m.Engine);
        Assert.Equal(0, m.Engine.JitFailures);
        Assert.True(m.Engine.WarmBranches > 0, "no exit was compiled as a branch into another body");
        ulong before = m.Cpu.InstructionsRetired;
        m.Enter64(code, fourK: true);
        setup?.Invoke(m);
        m.RunToHlt();
        return (interp, m, m.Cpu.InstructionsRetired - before);
    }

    static void AssertSameState(TestMachine interp, TestMachine jit, ulong retired)
    {
        Assert.Equal(interp.Cpu.InstructionsRetired, retired);
        var (x, y) = (interp.Regs, jit.Regs);
        Assert.Equal(x.Rax, y.Rax); Assert.Equal(x.Rbx, y.Rbx); Assert.Equal(x.Rcx, y.Rcx); Assert.Equal(x.Rdx, y.Rdx);
        Assert.Equal(x.Rsi, y.Rsi); Assert.Equal(x.Rdi, y.Rdi); Assert.Equal(x.Rsp, y.Rsp); Assert.Equal(x.Rbp, y.Rbp);
        Assert.Equal(x.R8, y.R8); Assert.Equal(x.R9, y.R9); Assert.Equal(x.R10, y.R10); Assert.Equal(x.R11, y.R11);
        Assert.Equal(x.R12, y.R12); Assert.Equal(x.Rip, y.Rip); Assert.Equal(x.Rflags, y.Rflags);
    }

    /// <summary>A carry left pending by one body and read by the next (ADC after a fall-through), a register
    /// only an interpreted MUL changed in one body and read inline by the next, and a body reading registers
    /// its predecessor never loaded.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Flags_and_registers_cross_a_branch_between_bodies_as_interpreted()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var top = a.CreateLabel(); var body = a.CreateLabel(); var upper = a.CreateLabel(); var next = a.CreateLabel();
            var zero = a.CreateLabel();
            a.mov(r8, 5000);
            a.xor(ecx, ecx);
            a.mov(eax, 1);
            a.mov(rbx, 0x9E3779B97F4A7C15);
            a.xor(r11d, r11d);
            a.xor(r12d, r12d);
            a.mov(rsi, 0x1234);
            a.Label(ref top);
            a.add(rax, rbx);                     // CF for the ADC in the next body
            a.jz(zero);
            a.Label(ref body);
            a.adc(rcx, 0);
            a.mul(rbx);                          // interpreted: RDX and RAX change in the vCPU only
            a.cmp(r8, 2500);
            a.ja(upper);
            a.add(r11, rdx);                     // RDX from the MUL
            a.ror(rsi, 7);
            a.dec(r8);
            a.jnz(top);
            a.jmp(next);
            a.Label(ref upper);
            a.xor(r11, rdx);
            a.lea(rsi, __[rsi + rax + 3]);
            a.dec(r8);
            a.jnz(top);
            a.Label(ref next);
            a.hlt();
            a.Label(ref zero);
            a.inc(r12);
            a.jmp(body);
        });
        var (interp, jit, retired) = RunBoth(code);
        using (interp)
        using (jit)
        {
            AssertSameState(interp, jit, retired);
            Assert.Equal(0UL, jit.Regs.R8);
        }
    }

    /// <summary>Each pass stores into the immediate of an instruction in the body it then branches to, in
    /// another 64-byte chunk of the same page: the body must run the new bytes every time.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_body_rewritten_by_its_predecessor_runs_its_new_bytes()
    {
        Action<Assembler> Build(ulong patchAt) => a =>
        {
            var top = a.CreateLabel(); var patched = a.CreateLabel(); var done = a.CreateLabel();
            a.xor(esi, esi);
            a.xor(eax, eax);
            a.mov(rdi, patchAt);
            a.Label(ref top);
            a.add(esi, 1);
            a.mov(__dword_ptr[rdi], esi);
            a.test(esi, 0x40000000);
            a.jz(patched);
            a.hlt();
            for (int k = 0; k < 100; k++) a.int3();
            a.Label(ref patched);
            a.add(eax, 0x12345678);              // its immediate is what the store rewrites
            a.cmp(esi, 300);
            a.jb(top);
            a.Label(ref done);
            a.hlt();
        };
        var probe = TestMachine.Assemble(64, TestMachine.CodeAt, Build(0));
        int addEax = Array.IndexOf(probe, (byte)0x05);
        ulong patchAt = TestMachine.CodeAt + (ulong)addEax + 1;
        var (interp, jit, retired) = RunBoth(TestMachine.Assemble(64, TestMachine.CodeAt, Build(patchAt)));
        using (interp)
        using (jit)
        {
            AssertSameState(interp, jit, retired);
            Assert.Equal(300UL * 301 / 2, jit.Regs.Rax);
        }
    }

    /// <summary>A block that ends by running into the next one (its 64th instruction is a store) stores into that
    /// next block's immediate: the store hits no byte of its own block, so it ends there only because the block it
    /// would branch into was dropped.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_store_ending_a_body_into_the_next_body_stops_the_branch()
    {
        // RDI is set from outside: the decoding run stores elsewhere, so that every block of the loop is still
        // valid when they are compiled together, and the compared runs store into the ADD.
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var top = a.CreateLabel();
            a.xor(esi, esi);
            a.xor(eax, eax);
            a.test(eax, eax);
            a.jz(top);                           // ends the first block (a JMP would be decoded through)
            // The block at top is 67 bytes and 64 instructions; it ends on a 64-byte boundary, so the next
            // block's bytes lie in chunks of their own.
            for (int k = 0; k < 53; k++) a.int3();
            a.Label(ref top);
            a.add(esi, 1);
            for (int k = 0; k < 62; k++) a.nop();
            a.mov(__dword_ptr[rdi], esi);
            a.add(eax, 0x12345678);              // its immediate is what the store rewrites
            a.cmp(esi, 300);
            a.jb(top);
            a.hlt();
        });
        int addEax = Array.IndexOf(code, (byte)0x05);
        Assert.Equal(0, (addEax + (int)TestMachine.CodeAt) % 64);
        ulong patchAt = TestMachine.CodeAt + (ulong)addEax + 1;
        Action<TestMachine> Rdi(ulong v) => m => { var r = m.Regs; r.Rdi = v; m.Cpu.SetRegisters(r); };
        var (interp, jit, retired) = RunBoth(code, Rdi(patchAt), Rdi(0x70000));
        using (interp)
        using (jit)
        {
            AssertSameState(interp, jit, retired);
            Assert.Equal(300UL * 301 / 2, jit.Regs.Rax);
        }
    }

    /// <summary>Two bodies compiled together branch into each other without leaving the method: 20,000 turns of the
    /// loop enter compiled code from the run loop a few times, where hops from body to body would return to it every
    /// <c>MaxHops</c> hops.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Two_bodies_of_a_loop_run_it_without_returning_to_the_run_loop()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            // Two blocks, each ending with a conditional branch: A falls through into B, B branches back to A.
            var a1 = a.CreateLabel(); var done = a.CreateLabel();
            a.xor(eax, eax);
            a.xor(ebx, ebx);
            a.Label(ref a1);
            a.inc(rax);
            a.cmp(rax, 20000);
            a.je(done);
            a.add(rbx, rax);
            a.cmp(rbx, 0);
            a.jne(a1);
            a.jmp(a1);
            a.Label(ref done);
            a.hlt();
        });
        using var interp = TestMachine.RanToHlt(code, JitSettings.Off);

        using var m = TestMachine.RanToHlt(code, TestMachine.DecodeOnly);
        var blocks = m.Engine.Blocks.Snapshot().Where(b => b.Valid && b.Ip != TestMachine.CodeAt).ToList();
        CompileQueue.CompileBatch(blocks, m.Engine);
        Assert.True(m.Engine.WarmBranches > 0);

        long runs = ((X86Vcpu)m.Cpu).CompiledRuns;
        m.Run64ToHlt(code);
        Assert.Equal(interp.Regs.Rbx, m.Regs.Rbx);
        Assert.InRange(((X86Vcpu)m.Cpu).CompiledRuns - runs, 1, 4);
    }

    /// <summary>Two bodies branching to each other for ever still leave the compiled code when asked to.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void An_exit_request_preempts_two_bodies_looping_through_each_other()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var a1 = a.CreateLabel(); var b1 = a.CreateLabel();
            a.xor(eax, eax);
            a.Label(ref a1);
            a.inc(rax);
            a.cmp(rax, 0);
            a.jne(b1);
            a.hlt();
            for (int k = 0; k < 70; k++) a.int3();
            a.Label(ref b1);
            a.add(rbx, rax);
            a.cmp(rbx, 0);
            a.jne(a1);
            a.jmp(a1);
        });
        using var m = new TestMachine(jit: new JitSettings(true, int.MaxValue, Background: false));
        m.Enter64(code, fourK: true);
        // Decode both loop blocks by running a little interpreted, then compile them together.
        var stopper = new Thread(() => { Thread.Sleep(20); m.Cpu.RequestExit(); });
        stopper.Start();
        Assert.Equal(VcpuExitReason.Preempted, m.Cpu.Run().Reason);
        stopper.Join();
        var blocks = m.Engine.Blocks.Snapshot().Where(b => b.Valid).ToList();
        CompileQueue.CompileBatch(blocks, m.Engine);
        Assert.True(m.Engine.WarmBranches > 0);
        ulong before = m.Regs.Rax;
        bool done = false;
        var t = new Thread(() => { while (!Volatile.Read(ref done)) { Thread.Sleep(50); m.Cpu.RequestExit(); } });
        t.Start();
        for (int runs = 0; runs < 100 && m.Regs.Rax == before; runs++)
            Assert.Equal(VcpuExitReason.Preempted, m.Cpu.Run().Reason);
        Volatile.Write(ref done, true);
        t.Join();
        Assert.True(m.Regs.Rax > before);
    }
}
