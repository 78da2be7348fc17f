using Iced.Intel;
using XenSharp.Cpu.Jit;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>The block compiler: the same programs run interpreted and compiled (every block
/// compiled before its first run) must end in the same state, faults and self-modifying code
/// included.</summary>
public class JitTests
{
    const ulong Arith = 0x8D5;

    static TestMachine Machine(bool jit) => new(jit: jit ? JitSettings.Eager : JitSettings.Off);

    /// <summary>Runs 64-bit code to HLT both ways; returns both final register sets and retired counts.</summary>
    static (Registers Interp, Registers Jit, ulong InterpRetired, ulong JitRetired) RunBoth64(Action<Assembler> build, Action<TestMachine>? setup = null,
        Action<TestMachine>? afterJit = null)
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, build);
        Registers[] regs = new Registers[2];
        ulong[] retired = new ulong[2];
        for (int k = 0; k < 2; k++)
        {
            using var m = Machine(k == 1);
            m.Enter64(code, fourK: true);
            setup?.Invoke(m);
            m.RunToHlt();
            regs[k] = m.Regs;
            retired[k] = m.Cpu.InstructionsRetired;
            if (k == 1)
            {
                Assert.True(m.Engine.CompiledBlocks > 0);
                Assert.Equal(0, m.Engine.JitFailures);
                afterJit?.Invoke(m);
            }
        }
        return (regs[0], regs[1], retired[0], retired[1]);
    }

    static void AssertSame(Registers a, Registers b)
    {
        Assert.Equal(a.Rax, b.Rax); Assert.Equal(a.Rbx, b.Rbx); Assert.Equal(a.Rcx, b.Rcx); Assert.Equal(a.Rdx, b.Rdx);
        Assert.Equal(a.Rsi, b.Rsi); Assert.Equal(a.Rdi, b.Rdi); Assert.Equal(a.Rsp, b.Rsp); Assert.Equal(a.Rbp, b.Rbp);
        Assert.Equal(a.R8, b.R8); Assert.Equal(a.R9, b.R9); Assert.Equal(a.R10, b.R10); Assert.Equal(a.R11, b.R11);
        Assert.Equal(a.R12, b.R12); Assert.Equal(a.R13, b.R13); Assert.Equal(a.R14, b.R14); Assert.Equal(a.R15, b.R15);
        Assert.Equal(a.Rip, b.Rip);
        Assert.Equal(a.Rflags, b.Rflags);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_hot_loop_compiles_and_ends_exactly_as_interpreted()
    {
        // The benchmark's xorshift loop: a block that branches to itself, 8-bit high register, CMOV.
        var (i, j, ri, rj) = RunBoth64(a =>
        {
            var top = a.CreateLabel();
            a.mov(rax, 0x9E3779B97F4A7C15UL);
            a.mov(r8, 5000);
            a.xor(esi, esi);
            a.xor(edx, edx);
            a.Label(ref top);
            a.mov(rcx, rax);
            a.mov(rdi, rdx);
            a.shl(rcx, 13);
            a.shr(rdi, 5);
            a.xor(rax, rcx);
            a.add(rdx, rdi);
            a.mov(rcx, rax);
            a.shr(rcx, 7);
            a.xor(rcx, rax);
            a.movzx(edi, cx);
            a.mov(rax, rcx);
            a.lea(rdi, __[rdi + rdi * 2]);
            a.shl(rax, 17);
            a.add(rdx, rdi);
            a.xor(rax, rcx);
            a.mov(rdi, rdx);
            a.xor(rdi, rsi);
            a.and(ch, 1);
            a.cmovne(rdx, rdi);
            a.add(rsi, 1);
            a.cmp(r8, rsi);
            a.jne(top);
            a.hlt();
        });
        AssertSame(i, j);
        Assert.Equal(ri, rj);
        Assert.Equal(5000UL, j.Rsi);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Blocks_of_a_branching_loop_link_to_each_other_and_end_as_interpreted()
    {
        // md5's shape: a loop body split into several blocks by a three-way branch.
        long linked = 0;
        var (i, j, ri, rj) = RunBoth64(a =>
        {
            var top = a.CreateLabel(); var low = a.CreateLabel(); var mid = a.CreateLabel(); var join = a.CreateLabel();
            a.mov(eax, 0x67452301);
            a.mov(ebx, 0xEFCDAB89);
            a.xor(ecx, ecx);
            a.Label(ref top);
            a.cmp(rcx, 15);
            a.jbe(low);
            a.cmp(rcx, 31);
            a.jbe(mid);
            a.mov(edx, eax);
            a.not(edx);
            a.xor(edx, ebx);
            a.jmp(join);
            a.Label(ref low);
            a.mov(edx, eax);
            a.and(edx, ebx);
            a.jmp(join);
            a.Label(ref mid);
            a.lea(edx, __[rax + rbx * 2 + 7]);
            a.Label(ref join);
            a.add(eax, edx);
            a.mov(r8d, ecx);
            a.and(r8d, 31);
            a.xchg(ecx, r8d);
            a.rol(eax, cl);
            a.xchg(ecx, r8d);
            a.add(ebx, eax);
            a.add(rcx, 1);
            a.and(rcx, 63);
            a.add(r9, 1);
            a.cmp(r9, 20000);
            a.jne(top);
            a.hlt();
        }, afterJit: m => linked = m.Engine.LinkedExits);
        AssertSame(i, j);
        Assert.Equal(ri, rj);
        Assert.Equal(20000UL, j.R9);
        Assert.True(linked >= 5, $"{linked} exits linked");
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Returns_and_indirect_calls_continue_in_compiled_code_and_end_as_interpreted()
    {
        // A loop calling one function directly and another through a register; the functions return to
        // the loop, the second through a further RET after an indirect JMP.
        var (i, j, ri, rj) = RunBoth64(a =>
        {
            var top = a.CreateLabel(); var f = a.CreateLabel(); var g = a.CreateLabel(); var h = a.CreateLabel();
            a.xor(ebx, ebx);
            a.xor(ecx, ecx);
            a.Label(ref top);
            a.call(f);
            a.lea(rax, __[g]);
            a.call(rax);
            a.add(rcx, 1);
            a.cmp(rcx, 4000);
            a.jne(top);
            a.hlt();
            a.Label(ref f);
            a.add(rbx, rcx);
            a.ret();
            a.Label(ref g);
            a.lea(rdx, __[h]);
            a.imul(rbx, rbx, 3);
            a.jmp(rdx);
            a.Label(ref h);
            a.xor(rbx, rcx);
            a.ret();
        });
        AssertSame(i, j);
        Assert.Equal(ri, rj);
        Assert.Equal(4000UL, j.Rcx);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Calls_and_jumps_through_memory_continue_in_compiled_code_and_end_as_interpreted()
    {
        // A loop calling through a table of function pointers (RIP-relative and based), one callee leaving by
        // a JMP through memory, another with an interpreted instruction (CPUID) ending its block.
        const ulong table = 0x30000;
        var (i, j, ri, rj) = RunBoth64(a =>
        {
            var top = a.CreateLabel(); var f = a.CreateLabel(); var g = a.CreateLabel(); var h = a.CreateLabel();
            var ptrs = a.CreateLabel();
            a.lea(rdi, __[ptrs]);
            a.lea(rax, __[f]); a.mov(__qword_ptr[rdi], rax);
            a.lea(rax, __[g]); a.mov(__qword_ptr[rdi + 8], rax);
            a.lea(rax, __[h]); a.mov(r9, table); a.mov(__qword_ptr[r9], rax);
            a.xor(ebx, ebx);
            a.xor(ecx, ecx);
            a.Label(ref top);
            a.call(__qword_ptr[ptrs]);
            a.call(__qword_ptr[rdi + 8]);
            a.add(rcx, 1);
            a.cmp(rcx, 3000);
            a.jne(top);
            a.hlt();
            a.Label(ref f);
            a.add(rbx, rcx);
            a.ret();
            a.Label(ref g);
            a.imul(rbx, rbx, 3);
            a.jmp(__qword_ptr[r9]);
            a.Label(ref h);
            a.xor(rbx, rcx);
            a.mov(r10, rcx);
            a.push(rcx);
            a.push(rbx);
            a.mov(eax, 0);
            a.cpuid();
            a.pop(rbx);
            a.pop(rcx);
            a.ret();
            a.Label(ref ptrs);
            a.dq(0, 0);
        });
        AssertSame(i, j);
        Assert.Equal(ri, rj);
        Assert.Equal(3000UL, j.Rcx);
        Assert.Equal(2999UL, j.R10);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Blocks_calling_the_interpreter_for_locked_bit_and_string_instructions_still_link_and_end_as_interpreted()
    {
        long linked = 0;
        var (i, j, ri, rj) = RunBoth64(a =>
        {
            var top = a.CreateLabel(); var odd = a.CreateLabel(); var join = a.CreateLabel();
            a.mov(r9, 0x300000);
            a.xor(ecx, ecx);
            a.Label(ref top);
            a.@lock.add(__qword_ptr[r9], rcx);
            a.bts(__qword_ptr[r9 + 8], rcx);
            a.bt(rcx, 0);
            a.jc(odd);
            a.lea(rdi, __[r9 + 64]);
            a.mov(eax, ecx);
            a.mov(r10, rcx);
            a.mov(ecx, 5);
            a.rep.stosb();
            a.mov(rcx, r10);
            a.jmp(join);
            a.Label(ref odd);
            a.mov(rax, rcx);
            a.@lock.xadd(__qword_ptr[r9 + 16], rax);
            a.Label(ref join);
            a.add(rcx, 1);
            a.cmp(rcx, 5000);
            a.jne(top);
            a.mov(rbx, __qword_ptr[r9]);
            a.mov(rdx, __qword_ptr[r9 + 8]);
            a.mov(rsi, __qword_ptr[r9 + 16]);
            a.mov(r8, __qword_ptr[r9 + 64]);
            a.hlt();
        }, afterJit: m => linked = m.Engine.LinkedExits);
        AssertSame(i, j);
        Assert.Equal(ri, rj);
        Assert.Equal(5000UL * 4999 / 2, j.Rbx);
        Assert.True(linked >= 3, $"{linked} exits linked");
    }

    // A loop split over two pages: `top` on one page jumps to the second half on the next page,
    // which branches back; the remapping code lives on a third page.
    const ulong Top = 0x10000, Second = 0x11000, Remapper = 0x14000, OtherSecond = 0x40000;

    static TestMachine TwoPageLoop(bool jit)
    {
        var m = Machine(jit);
        m.Enter64(TestMachine.Assemble(64, Top, a =>
        {
            a.add(rbx, 1);
            a.lea(rsi, __[rsi + rbx * 2]);
            a.jmp(Second);
        }), Top, fourK: true);
        m.Mem.Write(Second, TestMachine.Assemble(64, Second, a =>
        {
            var done = a.CreateLabel();
            a.add(rcx, 1);
            a.cmp(rcx, r8);
            a.je(done);
            a.jmp(Top);
            a.Label(ref done);
            a.hlt();
        }));
        // The same linear page's code on another frame counts in RDX as well.
        m.Mem.Write(OtherSecond, TestMachine.Assemble(64, Second, a =>
        {
            var done = a.CreateLabel();
            a.add(rcx, 1);
            a.add(rdx, 1);
            a.cmp(rcx, r8);
            a.je(done);
            a.jmp(Top);
            a.Label(ref done);
            a.hlt();
        }));
        var r = m.Regs;
        r.R8 = 3000;
        m.Cpu.SetRegisters(r);
        return m;
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Blocks_on_different_pages_link_to_each_other_and_end_as_interpreted()
    {
        var results = new Registers[2];
        for (int k = 0; k < 2; k++)
        {
            using var m = TwoPageLoop(jit: k == 1);
            m.RunToHlt();
            results[k] = m.Regs;
            if (k == 1) Assert.True(m.Engine.LinkedExits >= 2, $"{m.Engine.LinkedExits} exits linked");
        }
        AssertSame(results[0], results[1]);
        Assert.Equal(3000UL, results[1].Rbx);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public void A_linked_successor_on_a_remapped_page_is_not_entered(bool jit, bool reloadCr3)
    {
        using var m = TwoPageLoop(jit);
        m.Mem.Write(Remapper, TestMachine.Assemble(64, Remapper, a =>
        {
            // Point the second page's PTE at the other frame, flush that translation, run the loop again.
            a.mov(rax, OtherSecond | 7);
            a.mov(__qword_ptr[TestMachine.Pt + (Second >> 12) * 8], rax);
            if (reloadCr3)
            {
                a.mov(rax, cr3);
                a.mov(cr3, rax);
            }
            else
                a.invlpg(__[Second]);
            a.xor(ecx, ecx);
            a.jmp(Top);
        }));
        m.RunToHlt();
        Assert.Equal(3000UL, m.Regs.Rcx);
        Assert.Equal(0UL, m.Regs.Rdx);
        m.RunFrom(Remapper);
        Assert.Equal(3000UL, m.Regs.Rcx);
        Assert.Equal(3000UL, m.Regs.Rdx);
        Assert.Equal(6000UL, m.Regs.Rbx);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false)]
    [InlineData(true)]
    public void A_linked_instruction_running_into_a_remapped_page_runs_its_new_bytes(bool jit)
    {
        // ADD RSI, imm32 at the last four bytes of the first page: its immediate's upper three bytes lie in the
        // second page, whose frame the remapper changes (to bytes of zero) between two runs of the loop.
        const ulong straddle = Second - 4;
        using var m = Machine(jit);
        m.Enter64(TestMachine.Assemble(64, Top, a =>
        {
            a.add(rbx, 1);
            a.jmp(straddle);
        }), Top, fourK: true);
        var add = TestMachine.Assemble(64, straddle, a => a.add(rsi, 0x12345678));
        Assert.Equal(7, add.Length);
        m.Mem.Write(straddle, add[..4]);
        byte[] Rest(bool other) => [.. (other ? new byte[3] : add[4..]), .. TestMachine.Assemble(64, Second + 3, a =>
        {
            var done = a.CreateLabel();
            a.add(rcx, 1);
            a.cmp(rcx, r8);
            a.je(done);
            a.jmp(Top);
            a.Label(ref done);
            a.hlt();
        })];
        m.Mem.Write(Second, Rest(false));
        m.Mem.Write(OtherSecond, Rest(true));
        m.Mem.Write(Remapper, TestMachine.Assemble(64, Remapper, a =>
        {
            a.mov(rax, OtherSecond | 7);
            a.mov(__qword_ptr[TestMachine.Pt + (Second >> 12) * 8], rax);
            a.invlpg(__[Second]);
            a.xor(ecx, ecx);
            a.jmp(Top);
        }));
        var r = m.Regs;
        r.R8 = 3000;
        m.Cpu.SetRegisters(r);
        m.RunToHlt();
        Assert.Equal(3000UL * 0x12345678, m.Regs.Rsi);
        m.RunFrom(Remapper);
        Assert.Equal(3000UL * 0x12345678 + 3000UL * 0x78, m.Regs.Rsi);
        Assert.Equal(6000UL, m.Regs.Rbx);
        if (jit) Assert.True(m.Engine.LinkedExits >= 2, $"{m.Engine.LinkedExits} exits linked");
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_linked_successor_rewritten_by_its_predecessor_runs_its_new_code()
    {
        // Each iteration stores a new immediate into the next block's ADD, then branches to it:
        // the link must not outlive the code it leads to.
        Action<Assembler> Build(ulong patchAt) => a =>
        {
            var top = a.CreateLabel(); var next = a.CreateLabel();
            a.xor(esi, esi);
            a.xor(eax, eax);
            a.mov(rdi, patchAt);
            a.Label(ref top);
            a.add(esi, 1);
            a.mov(__dword_ptr[rdi], esi);
            a.cmp(esi, 0);
            a.jne(next);
            a.nop();
            a.Label(ref next);
            a.add(eax, 0x12345678);              // its immediate is what the store rewrites
            a.cmp(esi, 300);
            a.jne(top);
            a.hlt();
        };
        var probe = TestMachine.Assemble(64, TestMachine.CodeAt, Build(0));
        int addEax = Array.IndexOf(probe, (byte)0x05);
        ulong patchAt = TestMachine.CodeAt + (ulong)addEax + 1;
        using var m = Machine(jit: true);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, Build(patchAt)), fourK: true);
        m.RunToHlt();
        Assert.Equal(300UL * 301 / 2, m.Regs.Rax);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Linked_blocks_still_return_to_the_run_loop_when_an_exit_is_requested()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var top = a.CreateLabel(); var other = a.CreateLabel();
            a.Label(ref top);
            a.add(rax, 1);
            a.test(al, 1);
            a.jnz(other);
            a.add(rbx, 1);
            a.jmp(top);
            a.Label(ref other);
            a.add(rcx, 1);
            a.jmp(top);
        });
        using var m = Machine(jit: true);
        m.Enter64(code, fourK: true);
        using var timer = new Timer(_ => m.Cpu.RequestExit(), null, 200, Timeout.Infinite);
        var exit = m.Run();
        Assert.Equal(VcpuExitReason.Preempted, exit.Reason);
        var r = m.Regs;
        Assert.True(r.Rax > 10000);
        // Stopped between blocks: either at the top or after the first block of an iteration.
        Assert.InRange(r.Rax - (r.Rbx + r.Rcx), 0UL, 1UL);
        Assert.True(m.Engine.LinkedExits > 0);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Hot_blocks_compile_in_the_background_and_then_run_compiled()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var top = a.CreateLabel(); var odd = a.CreateLabel(); var next = a.CreateLabel();
            a.xor(eax, eax);
            a.xor(ebx, ebx);
            a.mov(ecx, 20000);
            a.Label(ref top);
            a.test(cl, 1);
            a.jnz(odd);
            a.add(rax, rcx);
            a.jmp(next);
            a.Label(ref odd);
            a.imul(rbx, rcx, 3);
            a.Label(ref next);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        });
        using var interp = Machine(jit: false);
        interp.Enter64(code, fourK: true);
        interp.RunToHlt();

        using var m = new TestMachine(jit: new JitSettings(true, 50, Background: true));
        m.Enter64(code, fourK: true);
        m.RunToHlt();
        // The vCPU never waits for the compiler; the queued blocks are compiled all the same.
        var deadline = DateTime.UtcNow.AddSeconds(30);
        // Hot: the loop's top, its even arm (decoded on through its JMP to the loop's end) and its odd arm.
        while (m.Engine.CompiledBlocks < 3 && DateTime.UtcNow < deadline) Thread.Sleep(10);
        Assert.True(m.Engine.CompiledBlocks >= 3, $"{m.Engine.CompiledBlocks} blocks compiled");
        m.Enter64(code, fourK: true);
        m.RunToHlt();
        // Compiled blocks ran on into each other: through linked exits, or compiled together, through their bodies.
        Assert.True(m.Engine.LinkedExits > 0 || m.Engine.WarmBranches > 0);
        AssertSame(interp.Regs, m.Regs);
        Assert.Equal(0, m.Engine.JitFailures);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Sixteen_bit_operands_and_high_byte_registers()
    {
        var (i, j, _, _) = RunBoth64(a =>
        {
            a.mov(rax, 0x1122334455667788UL);
            a.mov(rbx, 0x99AABBCCDDEEFF00UL);
            a.add(ax, 0x8899);           // 16-bit: carry out of bit 15, upper 48 bits kept
            a.setc(cl);
            a.adc(bx, ax);
            a.mov(dh, ah);
            a.add(dh, 0x90);             // 8-bit high register: carry, overflow
            a.seto(ch);
            a.sub(ah, bl);
            a.sbb(bh, 3);
            a.xchg(al, dh);
            a.movsx(si, al);
            a.movzx(edi, bh);
            a.inc(dx);
            a.neg(bl);
            a.rol(ax, 4);
            a.ror(bh, 3);
            a.sar(dx, 2);
            a.imul(si, dx, 0x123);
            a.pushfq();
            a.pop(r9);
            a.hlt();
        });
        AssertSame(i, j);
        Assert.Equal(0x11223344UL, j.Rax >> 32);     // a 16-bit write keeps bits 63:16
        Assert.Equal(1UL, j.Rcx & 0xFF);             // CF of the 16-bit add
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_page_fault_in_the_middle_of_a_compiled_block_sees_the_right_rip_registers_and_flags()
    {
        using var m = Machine(jit: true);
        ulong handler = 0x12000;
        m.Mem.Write(handler, TestMachine.Assemble(64, handler, a =>
        {
            a.pop(r8);           // error code
            a.pop(r9);           // faulting RIP
            a.pop(r10);          // CS
            a.pop(r10);          // RFLAGS
            a.hlt();
        }));
        m.SetGate64(14, handler);
        ulong faultAt = 0;
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, 0x7FFF_FFFF_FFFF_FFFFUL);
            a.mov(rbx, 1);
            a.add(rax, rbx);                     // OF SF AF PF set, ZF CF clear
            a.mov(rsi, 0x5000);
            a.mov(rdx, __qword_ptr[rsi + 8]);    // page 5 is not present
            a.mov(rdx, 7);
            a.hlt();
        });
        var dec = Decoder.Create(64, new ByteArrayCodeReader(code));
        dec.IP = TestMachine.CodeAt;
        foreach (var ins in dec)
            if (ins.Op1Kind == OpKind.Memory) { faultAt = ins.IP; break; }
        m.Enter64(code, fourK: true);
        m.Mem.W64(TestMachine.Pt + 5 * 8, 0);
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(faultAt, r.R9);
        Assert.Equal(0UL, r.R8);                         // read, supervisor, not present
        Assert.Equal(0x8000_0000_0000_0000UL, r.Rax);
        Assert.Equal(0x5000UL, r.Rsi);
        Assert.Equal(0UL, r.Rdx);
        Assert.Equal(0x800UL | 0x80 | 0x10 | 0x4, r.R10 & Arith);
        Assert.True(m.Engine.CompiledBlocks > 0);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_store_into_the_running_compiled_block_takes_effect_at_the_next_instruction()
    {
        // mov rdi, imm64 is always 10 bytes, so the layout is known before the target address is.
        Action<Assembler> Build(ulong patchAt) => a =>
        {
            a.mov(rdi, patchAt);
            a.mov(__dword_ptr[rdi], 42);
            a.mov(eax, 1);                       // its immediate is what the store rewrites
            a.add(eax, 1);
            a.hlt();
        };
        var probe = TestMachine.Assemble(64, TestMachine.CodeAt, Build(0));
        int movEax = Array.IndexOf(probe, (byte)0xB8, 10 + 6);
        ulong patchAt = TestMachine.CodeAt + (ulong)movEax + 1;
        using var m = Machine(jit: true);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, Build(patchAt)), fourK: true);
        m.RunToHlt();
        Assert.Equal(43UL, m.Regs.Rax);
        Assert.True(m.Engine.CompiledBlocks >= 2);      // the block again after the write dropped it
    }

    /// <summary>Loads and stores of 2, 4 and 8 bytes at each offset that runs from one linear page into the next,
    /// where the next page maps a frame that does not follow the first: compiled code must take every one of them
    /// through the slow path (the first page's host address would reach the wrong frame), and those within one page
    /// through the fast path, as the interpreter does.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Accesses_running_into_the_next_page_reach_that_pages_frame()
    {
        const ulong first = 0x50000, second = 0x51000, secondFrame = 0x58000;
        var (i, j, ri, rj) = RunBoth64(a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, 1);
            a.xor(r12, r12);
            a.mov(rbx, 0x0102030405060708UL);
            a.Label(ref loop);
            a.mov(rsi, second);
            a.sub(rsi, rcx);
            // Loads straddling the boundary by rcx bytes, mixed into r12.
            a.mov(rax, __qword_ptr[rsi]); a.rol(r12, 7); a.xor(r12, rax);
            a.mov(eax, __dword_ptr[rsi]); a.rol(r12, 7); a.xor(r12, rax);
            a.movzx(eax, __word_ptr[rsi]); a.rol(r12, 7); a.xor(r12, rax);
            // A store straddling it, read back from within the second page.
            a.mov(__qword_ptr[rsi], rbx);
            a.mov(rdx, __qword_ptr[second]); a.rol(r12, 7); a.xor(r12, rdx);
            a.add(rbx, rcx);
            a.mov(__dword_ptr[rsi], ebx);
            a.mov(rdx, __qword_ptr[second]); a.rol(r12, 7); a.xor(r12, rdx);
            a.mov(__word_ptr[rsi], bx);
            a.mov(rdx, __qword_ptr[second]); a.rol(r12, 7); a.xor(r12, rdx);
            a.inc(ecx);
            a.cmp(ecx, 8);
            a.jb(loop);
            a.hlt();
        }, setup: m =>
        {
            m.Mem.W64(TestMachine.Pt + (second >> 12) * 8, secondFrame | 7);
            m.Mem.W64(first + 0xFF8, 0x1122334455667788UL);
            for (ulong k = 0; k < 16; k++)
            {
                m.Mem.W64(second + k * 8, 0xDEADBEEFDEADBEEFUL);
                m.Mem.W64(secondFrame + k * 8, 0x99AABBCCDDEEFF00UL + k);
            }
        }, afterJit: m =>
        {
            // The stores reached the frame the second page maps, not the one after the first page's.
            Assert.NotEqual(0x99AABBCCDDEEFF00UL, m.Mem.R64(secondFrame));
            Assert.Equal(0xDEADBEEFDEADBEEFUL, m.Mem.R64(second));
        });
        AssertSame(i, j);
        Assert.Equal(ri, rj);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Memory_stack_and_calls_compile_like_the_interpreter()
    {
        var (i, j, ri, rj) = RunBoth64(a =>
        {
            var fn = a.CreateLabel();
            var loop = a.CreateLabel();
            var done = a.CreateLabel();
            a.mov(rsi, 0x40000);
            a.mov(ecx, 100);
            a.Label(ref loop);
            a.mov(__qword_ptr[rsi + rcx * 8], rcx);
            a.add(__qword_ptr[rsi + rcx * 8], 3);
            a.push(rcx);
            a.call(fn);
            a.pop(rcx);
            a.dec(ecx);
            a.jnz(loop);
            a.jmp(done);
            a.Label(ref fn);
            a.mov(rax, __qword_ptr[rsp + 8]);
            a.imul(rax, rax);
            a.add(r12, rax);
            a.movsxd(r13, __dword_ptr[rsi + 8]);
            a.neg(__dword_ptr[rsi + 16]);
            a.sete(__byte_ptr[rsi + 24]);
            a.ret();
            a.Label(ref done);
            a.mov(rbx, __qword_ptr[rsi + 800]);
            a.hlt();
        });
        AssertSame(i, j);
        Assert.Equal(ri, rj);
        Assert.Equal(103UL, j.Rbx);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Protected_mode_blocks_compile_with_memory_operands_interpreted()
    {
        var code = TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            var loop = a.CreateLabel();
            a.mov(esi, 0x40000);
            a.mov(ecx, 50);
            a.Label(ref loop);
            a.mov(__dword_ptr[esi + ecx * 4], ecx);
            a.add(eax, __dword_ptr[esi + ecx * 4]);
            a.push(eax);
            a.pop(edx);
            a.shl(edx, 1);
            a.dec(ecx);
            a.jnz(loop);
            a.hlt();
        });
        Registers[] regs = new Registers[2];
        for (int k = 0; k < 2; k++)
        {
            using var m = Machine(k == 1);
            m.Enter32(code);
            m.RunToHlt();
            regs[k] = m.Regs;
        }
        AssertSame(regs[0], regs[1]);
        Assert.Equal(1275UL, regs[1].Rax);
    }

    /// <summary>32-bit blocks access memory inline through flat segments and apply any other segment as the
    /// interpreter does: a segment loaded in the middle of a block (a base, a limit) counts from the next
    /// access, and an access past a limit, or one wrapping past 4 GiB in a flat segment, faults with #GP at
    /// the same instruction, registers and stack as interpreted.</summary>
    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false)]
    [InlineData(true)]
    public void Protected_mode_memory_operands_through_flat_and_other_segments_end_as_interpreted(bool wrap)
    {
        const ulong Handler = 0x30000;
        var code = TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            var loop = a.CreateLabel();
            a.mov(esi, 0x40000);
            a.mov(ecx, 300);
            a.mov(ebp, 0x50000);
            // Page 0 in the TLB through flat DS, for the based accesses below to miss it.
            a.mov(__dword_ptr[0x100], 0);
            a.mov(edi, __dword_ptr[0x100]);
            a.Label(ref loop);
            a.mov(__dword_ptr[esi + ecx * 4], ecx);
            a.add(eax, __dword_ptr[esi + ecx * 4]);
            a.movzx(ebx, __byte_ptr[esi + ecx * 4]);
            a.add(edx, ebx);
            a.mov(__dword_ptr[ebp + 8], edx);
            a.sub(edx, __dword_ptr[ebp + 8]);
            a.add(__dword_ptr[ebp + 12], ecx);
            a.dec(ecx);
            a.jnz(loop);
            a.mov(ebx, 0x48);
            a.mov(ds, bx);
            a.mov(__dword_ptr[0x100], 0x12345678);
            a.mov(edi, __dword_ptr[0x100]);
            a.mov(ebp, __dword_ptr.es[0x1100]);
            a.mov(edx, __dword_ptr[ebp + 12 - 0x12345678 + 0x50000]);
            if (wrap)
            {
                a.mov(ebx, 0x10);
                a.mov(ds, bx);
                a.mov(eax, __dword_ptr[0xFFFFFFFE]);
            }
            else
                a.mov(__dword_ptr[0xFFFFE], 1);
            a.hlt();
        });
        Registers[] regs = new Registers[2];
        uint[][] stacks = new uint[2][];
        for (int k = 0; k < 2; k++)
        {
            using var m = Machine(k == 1);
            m.Enter32(code);
            // 0x48: data, base 0x1000, limit 0xFFFFF bytes.
            m.Mem.W64(TestMachine.Gdt + 0x48, 0x004F93001000FFFF);
            m.Mem.W8(Handler, 0xF4);
            m.SetGate32(13, Handler);
            m.RunToHlt();
            regs[k] = m.Regs;
            stacks[k] = [m.Mem.R32(regs[k].Rsp), m.Mem.R32(regs[k].Rsp + 4)];
            Assert.Equal(0x12345678u, m.Mem.R32(0x1100));
        }
        AssertSame(regs[0], regs[1]);
        Assert.Equal(stacks[0], stacks[1]);
        Assert.Equal(Handler + 1, regs[1].Rip);
        Assert.Equal(45150UL, regs[1].Rax & 0xFFFFFFFF);
        Assert.Equal(0x12345678UL, regs[1].Rdi);
        Assert.Equal(0x12345678UL, regs[1].Rbp);
        Assert.Equal(45150UL, regs[1].Rdx);
    }

    static InsnPlan PlanOf(in Instruction i, bool faults) => new()
    {
        Inline = true,
        Faults = faults,
        Reads = faults ? X86Vcpu.ArithFlags : FlagLiveness.IcedReads(i),
        Kills = FlagLiveness.IcedKills(i),
    };

    static ulong[] Liveness(params (Action<Assembler> Build, bool Faults)[] insns)
    {
        var plans = new InsnPlan[insns.Length];
        for (int k = 0; k < insns.Length; k++)
        {
            var bytes = TestMachine.Assemble(64, 0, insns[k].Build);
            var dec = Decoder.Create(64, new ByteArrayCodeReader(bytes));
            dec.Decode(out var ins);
            plans[k] = PlanOf(ins, insns[k].Faults);
        }
        var live = new ulong[insns.Length];
        FlagLiveness.Compute(insns.Length, plans, live);
        return live;
    }

    [Fact]
    public void Flag_liveness_drops_overwritten_results_and_keeps_what_is_read_faults_and_exits()
    {
        // add's flags are overwritten by sub before anything reads them.
        var live = Liveness((a => a.add(rax, rbx), false), (a => a.sub(rcx, rdx), false), (a => a.jz(0x100UL), false));
        Assert.Equal(0UL, live[0]);
        Assert.Equal(X86Vcpu.ArithFlags, live[1]);       // the block's end: everything is live
        // INC keeps CF: add's CF survives to the JC.
        live = Liveness((a => a.add(rax, rbx), false), (a => a.inc(rcx), false), (a => a.jc(0x100UL), false));
        Assert.Equal(X86Vcpu.CF, live[0]);
        // A load that can fault observes every flag.
        live = Liveness((a => a.add(rax, rbx), false), (a => a.mov(rax, __qword_ptr[rbx]), true), (a => a.sub(rcx, rdx), false), (a => a.hlt(), true));
        Assert.Equal(X86Vcpu.ArithFlags, live[0]);
        Assert.Equal(0UL, live[1]);                       // sub overwrites them all after the load
        Assert.Equal(X86Vcpu.ArithFlags, live[2]);        // HLT can exit
        // CMOVNE reads ZF only; the XOR before it is dead in all other flags.
        live = Liveness((a => a.xor(rax, rbx), false), (a => a.cmovne(rcx, rdx), false), (a => a.add(rsi, 1), false), (a => a.ret(), true));
        Assert.Equal(X86Vcpu.ZF, live[0]);
    }
}
