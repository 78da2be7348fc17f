using Iced.Intel;
using XenSharp.Cpu.Jit;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>A compiled block leaves its last flag result pending in the vCPU at an exit (<c>X86Vcpu.LazyFlags</c>):
/// the compiled successor applies it when it reads the flags and drops it when it overwrites them all first, and the
/// run loop applies it when compiled code returns to it. Each block here is compiled into a method of its own, so every
/// exit between them is a hop, not a branch between bodies of one method.</summary>
public class JitLazyFlagsTests
{
    static (TestMachine Interp, TestMachine Jit) RunBoth(byte[] code, Action<TestMachine>? setup = null)
    {
        var interp = new TestMachine(jit: JitSettings.Off);
        interp.Enter64(code, fourK: true);
        setup?.Invoke(interp);
        interp.RunToHlt();

        var m = new TestMachine(jit: new JitSettings(true, int.MaxValue, Background: false));
        m.Enter64(code, fourK: true);
        setup?.Invoke(m);
        m.RunToHlt();
        // The block that reads the flags with PUSHF stays interpreted: the flags the last compiled block left
        // pending reach it only through the run loop.
        foreach (var b in m.Engine.Blocks.Snapshot().Where(b => b.Valid))
            if (!b.Insns.Take(b.Count).Any(d => d.I.Mnemonic == Mnemonic.Pushfq))
                CompileQueue.CompileBatch([b], m.Engine);
        Assert.Equal(0, m.Engine.JitFailures);
        Assert.Equal(0, m.Engine.WarmBranches);
        m.Enter64(code, fourK: true);
        setup?.Invoke(m);
        m.RunToHlt();
        Assert.True(m.Engine.LinkedExits > 0, "no exit was linked to a compiled successor");
        return (interp, m);
    }

    static void AssertSameState(TestMachine interp, TestMachine jit)
    {
        var (x, y) = (interp.Regs, jit.Regs);
        Assert.Equal(x.Rax, y.Rax); Assert.Equal(x.Rbx, y.Rbx); Assert.Equal(x.Rcx, y.Rcx); Assert.Equal(x.Rdx, y.Rdx);
        Assert.Equal(x.Rsi, y.Rsi); Assert.Equal(x.Rdi, y.Rdi); Assert.Equal(x.R8, y.R8); Assert.Equal(x.R9, y.R9);
        Assert.Equal(x.R10, y.R10); Assert.Equal(x.R11, y.R11); Assert.Equal(x.R12, y.R12); Assert.Equal(x.Rip, y.Rip); Assert.Equal(x.Rflags, y.Rflags);
    }

    /// <summary>Carries and borrows left pending at a direct exit, at a CALL and at a RET, each into another page so that
    /// every one is a hop, read by the successor's ADC, SETB and SBB; and a SUB left pending at an exit into a block that
    /// overwrites every flag (XOR, then INC, which leaves two results and so computes them) and hops on into an ADC:
    /// the dropped SUB must not come back there. The last compiled block leaves a CMP pending for the run loop, which
    /// applies it before the interpreter's PUSHF.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Flags_pending_across_hops_are_applied_or_dropped_as_the_successor_needs()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var top = a.CreateLabel(); var reader = a.CreateLabel(); var fn = a.CreateLabel(); var overwriter = a.CreateLabel();
            var tail = a.CreateLabel(); var after = a.CreateLabel();
            void NextPage() { for (int k = 0; k < 4096; k++) a.int3(); }
            a.mov(r8, 3000);
            a.mov(rax, 0x9E3779B97F4A7C15);
            a.xor(ecx, ecx);
            a.xor(esi, esi);
            a.xor(r9d, r9d);
            a.xor(r10d, r10d);
            a.xor(r11d, r11d);
            a.Label(ref top);
            a.add(rbx, rax);                     // CF pending at the exit into the next page
            a.jmp(reader);
            a.Label(ref tail);
            a.adc(r11, 0);                       // CF as the XOR and the INC left it, not the SUB's
            a.dec(r8);
            a.jnz(top);
            a.cmp(rcx, rsi);                     // pending when the last block returns to the run loop
            a.jmp(after);
            NextPage();
            a.Label(ref reader);
            a.adc(rcx, 0);                       // applies the pending ADD
            a.sub(rdx, rbx);                     // CF pending at the CALL
            a.call(fn);
            a.sbb(rsi, 0);                       // the CMP's borrow, pending at the RET
            a.sub(rdi, rax);                     // pending at the exit into a block that overwrites every flag
            a.jmp(overwriter);
            a.Label(ref after);
            a.pushfq();                          // interpreted: the CMP's flags as the run loop applied them
            a.pop(r12);
            a.hlt();
            NextPage();
            a.Label(ref fn);
            a.setb(r10b);                        // reads the SUB's CF left pending by the CALL
            a.add(r9, r10);
            a.cmp(r9, rdx);                      // pending at the RET
            a.ret();
            a.Label(ref overwriter);
            a.xor(r10d, r10d);                   // every arithmetic flag defined: the SUB's result is dead
            a.inc(r10);
            a.jmp(tail);
            NextPage();
        });
        var (interp, jit) = RunBoth(code);
        using (interp)
        using (jit)
        {
            AssertSameState(interp, jit);
            Assert.Equal(0UL, jit.Regs.R8);
            Assert.NotEqual(0UL, jit.Regs.Rcx);
            Assert.NotEqual(0UL, jit.Regs.Rsi);
        }
    }

    /// <summary>A block that only loads, stores and moves neither applies nor drops the flag result its predecessor left
    /// pending: it leaves it pending at its own exit, so a block two hops on still reads the ADD's carry. A block whose
    /// load comes before its SUB carries the ADD's result until the SUB has run; when that load faults (the last
    /// round), the #PF frame's RFLAGS hold the ADD's flags, as the run loop applies them before delivering the fault.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_predecessors_flags_stay_pending_through_loads_and_stores_until_a_block_overwrites_or_reads_them()
    {
        const ulong Unmapped = 0x100000;
        var a = new Assembler(64);
        var top = a.CreateLabel(); var loaderA = a.CreateLabel(); var tailA = a.CreateLabel();
        var loaderB = a.CreateLabel(); var tailB = a.CreateLabel(); var handler = a.CreateLabel();
        void NextPage() { for (int k = 0; k < 4096; k++) a.int3(); }
        a.mov(r8, 3000);
        a.mov(rax, 0x9E3779B97F4A7C15);
        a.xor(ecx, ecx);
        a.xor(r10d, r10d);
        a.xor(r11d, r11d);
        a.xor(r15d, r15d);
        a.Label(ref top);
        // rdx: the slot loader A writes, or on the last round an unmapped page (these flags are overwritten below).
        a.cmp(r8, 1);
        a.sete(dl);
        a.movzx(edx, dl);
        a.imul(rdx, rdx, (int)(Unmapped - (TestMachine.StackTop - 8)));
        a.add(rdx, (int)(TestMachine.StackTop - 8));
        a.add(rbx, rax);                     // pending at the hop into loader A
        a.jmp(loaderA);
        a.Label(ref tailA);
        a.adc(rcx, 0);                       // the ADD's carry, carried through loader A
        a.xor(r9d, r9d);
        a.setz(r9b);                         // RFLAGS in the vCPU now has ZF set ...
        a.add(rbx, rax);                     // ... and this result, pending at the hop into loader B, clears it
        a.jmp(loaderB);
        a.Label(ref tailB);
        a.adc(r10, 0);                       // the SUB's borrow, not the ADD's carry
        a.dec(r8);
        a.jnz(top);
        a.hlt();
        NextPage();
        a.Label(ref loaderA);
        a.mov(__qword_ptr[rsp - 8], rbx);
        a.mov(r13, __qword_ptr[rsp - 8]);
        a.lea(r14, __qword_ptr[r13 + 1]);
        a.jmp(tailA);
        NextPage();
        a.Label(ref loaderB);
        a.mov(r13, __qword_ptr[rdx]);        // faults on the last round, the ADD's result still pending
        a.sub(r11, r13);
        a.jmp(tailB);
        NextPage();
        a.Label(ref handler);
        a.mov(r15, __qword_ptr[rsp + 24]);   // RFLAGS in the #PF frame (error code, RIP, CS, RFLAGS)
        a.hlt();
        using var ms = new MemoryStream();
        var assembled = a.Assemble(new StreamCodeWriter(ms), TestMachine.CodeAt, BlockEncoderOptions.ReturnNewInstructionOffsets);
        ulong handlerAt = assembled.GetLabelRIP(handler);
        void Setup(TestMachine m)
        {
            m.SetGate64(14, handlerAt);
            m.Mem.W64(TestMachine.Pt + (Unmapped >> 12) * 8, 0);
        }

        var (interp, jit) = RunBoth(ms.ToArray(), Setup);
        using (interp)
        using (jit)
        {
            AssertSameState(interp, jit);
            Assert.Equal(interp.Regs.R15, jit.Regs.R15);
            Assert.Equal(interp.Regs.R13, jit.Regs.R13);
            Assert.Equal(1UL, jit.Regs.R8);
            Assert.Equal(0UL, jit.Regs.R15 & 0x40); // the ADD's ZF, not the SETZ's
            Assert.NotEqual(0UL, jit.Regs.Rcx);
            Assert.NotEqual(0UL, jit.Regs.R10);
        }
    }

    /// <summary>A DEC that starts its block takes only the carry of the CMP its predecessor left pending, and leaves its
    /// own result pending at its exit with that carry in RFLAGS: the next block's SETC and SETS apply it and its ADC adds
    /// the CMP's carry. An INC whose flags a SETC and a SETO read in its own block computes them inline, with the carry of
    /// the ADD before it and the overflow of the step past the sign bit.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Inc_and_dec_keep_the_pending_carry_across_hops_and_inside_a_block()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var top = a.CreateLabel(); var counter = a.CreateLabel(); var reader = a.CreateLabel();
            void NextPage() { for (int k = 0; k < 4096; k++) a.int3(); }
            a.mov(r8, 3000);
            a.mov(rax, 0x9E3779B97F4A7C15);
            a.mov(r14, 0x7FFFFFFFFFFFFF00);      // the INC passes the sign bit on the 256th round
            foreach (var r in new[] { ecx, edx, esi, edi, r9d, r10d, r11d, r12d, r13d, r15d }) a.xor(r, r);
            a.Label(ref top);
            a.add(rbx, rax);
            a.cmp(rbx, rax);                     // CF pending at the exit
            a.jmp(counter);
            NextPage();
            a.Label(ref counter);
            a.mov(r9, rbx);
            a.dec(r9);                           // needs only the CMP's CF
            a.jmp(reader);                       // the DEC left pending
            NextPage();
            a.Label(ref reader);
            a.setc(r10b);                        // the CMP's carry, through the DEC
            a.sets(dl);                          // the DEC's sign
            a.adc(r11, 0);
            a.add(r13, r10);
            a.add(r13, rdx);
            a.inc(r14);
            a.setc(dil);                         // the ADD's carry, through the INC
            a.seto(sil);                         // the INC's overflow
            a.add(r12, rdi);
            a.imul(rsi, r8);                     // which round overflowed
            a.add(r12, rsi);
            a.add(r15, r14);
            a.dec(r8);
            a.jnz(top);
            a.hlt();
            NextPage();
        });
        var (interp, jit) = RunBoth(code);
        using (interp)
        using (jit)
        {
            AssertSameState(interp, jit);
            Assert.Equal(interp.Regs.R13, jit.Regs.R13);
            Assert.Equal(interp.Regs.R14, jit.Regs.R14);
            Assert.Equal(interp.Regs.R15, jit.Regs.R15);
            Assert.Equal(0UL, jit.Regs.R8);
            Assert.NotEqual(0UL, jit.Regs.R11);
            Assert.NotEqual(0UL, jit.Regs.R12);
        }
    }
}
