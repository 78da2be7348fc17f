using Iced.Intel;
using XenSharp.Cpu.Jit;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>CMPXCHG, XADD and XCHG of memory (with and without LOCK), BT/BTS/BTR/BTC, PUSHFQ, CLI, STI, CLD/STD, CLAC/STAC,
/// MOV from a segment register, the fences and the prefetches compiled inline end exactly as interpreted: every register, RFLAGS, the memory around
/// the operand, RIP and the retired count. On their fast path compiled code hands nothing but the closing HLT to the
/// interpreter; a misaligned or page-crossing atomic operand is the interpreter's.</summary>
public class JitAtomicTests
{
    const ulong Data = 0x70000;
    /// <summary>A quadword running from one 4 KiB page into the next.</summary>
    const ulong Crossing = 0x70FFC;
    const ulong Mem = 0x1111_2222_8000_00F0UL;

    sealed record Run(Registers Regs, ulong Retired, long HandOffs, long Compiled);

    /// <summary>Runs <paramref name="op"/> interpreted and compiled with RAX = <paramref name="raxIn"/>, RDX =
    /// <paramref name="rdxIn"/>, RCX = <paramref name="rcxIn"/>, RSI = <see cref="Data"/> + 8 and RDI =
    /// <see cref="Crossing"/> (each quadword around them holding <see cref="Mem"/> plus its index), after a CMP
    /// that leaves flag pattern <paramref name="preset"/>; then reads back the flags through SETcc and the memory
    /// around RSI and at RDI.</summary>
    static (Run Interp, Run Jit) RunBoth(Action<Assembler> op, ulong raxIn, ulong rdxIn, ulong rcxIn = 0, int preset = 0)
    {
        var (p, q) = preset switch
        {
            0 => (0UL, 1UL),                        // CF SF AF PF
            1 => (0x8000_0000_0000_0000UL, 1UL),    // OF AF PF
            _ => (5UL, 5UL),                        // ZF PF
        };
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rsi, Data + 8);
            for (int k = -1; k <= 2; k++)
            {
                a.mov(rbx, Mem + (ulong)(k + 1));
                a.mov(__qword_ptr[rsi + k * 8], rbx);
            }
            a.mov(rdi, Crossing);
            a.mov(rbx, Mem);
            a.mov(__qword_ptr[rdi], rbx);
            a.mov(r10, p);
            a.mov(r11, q);
            a.cmp(r10, r11);
            op(a);
            a.setb(r12b);
            a.seto(r13b);
            a.sete(r14b);
            a.sets(r15b);
            a.mov(rbx, __qword_ptr[rsi - 8]);
            a.mov(rbp, __qword_ptr[rsi]);
            a.mov(r8, __qword_ptr[rsi + 8]);
            a.mov(r9, __qword_ptr[rdi]);
            a.hlt();
        });
        var runs = new Run[2];
        for (int k = 0; k < 2; k++)
        {
            using var m = new TestMachine(jit: k == 1 ? JitSettings.Eager : JitSettings.Off);
            m.Enter64(code, fourK: true);
            var r = m.Regs;
            r.Rax = raxIn;
            r.Rdx = rdxIn;
            r.Rcx = rcxIn;
            m.Cpu.SetRegisters(r);
            m.RunToHlt();
            var cpu = (X86Vcpu)m.Cpu;
            if (k == 1) Assert.Equal(0, m.Engine.JitFailures);
            runs[k] = new Run(m.Regs, m.Cpu.InstructionsRetired, cpu.JitHandOffs, m.Engine.CompiledBlocks);
        }
        return (runs[0], runs[1]);
    }

    /// <summary>The same state and retired count; <paramref name="handOffs"/> instructions handed to the interpreter
    /// (the HLT, and the instruction itself when its operand is the interpreter's).</summary>
    static void AssertSame(Run i, Run j, int handOffs = 1)
    {
        Assert.True(j.Compiled > 0);
        Assert.Equal(TestMachine.Describe(i.Regs), TestMachine.Describe(j.Regs));
        Assert.Equal(i.Retired, j.Retired);
        Assert.Equal(handOffs, j.HandOffs);
    }

    /// <summary>Forms whose operand the fast path takes.</summary>
    static readonly Dictionary<string, Action<Assembler>> Fast = new()
    {
        ["lock-cmpxchg64"] = a => a.@lock.cmpxchg(__qword_ptr[rsi], rdx),
        ["lock-cmpxchg32"] = a => a.@lock.cmpxchg(__dword_ptr[rsi + 4], edx),
        ["lock-cmpxchg16"] = a => a.@lock.cmpxchg(__word_ptr[rsi + 2], dx),
        ["lock-cmpxchg8"] = a => a.@lock.cmpxchg(__byte_ptr[rsi + 1], dl),
        ["cmpxchg64"] = a => a.cmpxchg(__qword_ptr[rsi], rdx),
        ["cmpxchg32-reg"] = a => a.cmpxchg(ecx, edx),
        ["cmpxchg64-reg-acc"] = a => a.cmpxchg(rax, rdx),
        ["lock-xadd64"] = a => a.@lock.xadd(__qword_ptr[rsi], rdx),
        ["lock-xadd32"] = a => a.@lock.xadd(__dword_ptr[rsi], edx),
        ["lock-xadd8"] = a => a.@lock.xadd(__byte_ptr[rsi + 3], dh),
        ["xadd16-reg"] = a => a.xadd(cx, dx),
        ["xadd64-same"] = a => a.xadd(rdx, rdx),
        ["xchg64-mem"] = a => a.xchg(__qword_ptr[rsi], rdx),
        ["xchg16-mem"] = a => a.xchg(__word_ptr[rsi + 6], dx),
        ["bt64-imm"] = a => a.bt(rdx, 45), ["bts32-reg"] = a => a.bts(edx, ecx), ["btr16-imm"] = a => a.btr(dx, 17),
        ["btc64-reg"] = a => a.btc(rdx, rcx),
        ["bt64-mem-imm"] = a => a.bt(__qword_ptr[rsi], 7), ["bts32-mem-imm"] = a => a.bts(__dword_ptr[rsi], 31),
        ["btr64-mem-imm"] = a => a.btr(__qword_ptr[rsi], 4), ["btc16-mem-imm"] = a => a.btc(__word_ptr[rsi], 20),
        ["lock-bts64-mem-imm"] = a => a.@lock.bts(__qword_ptr[rsi], 63), ["lock-btr64-mem-imm"] = a => a.@lock.btr(__qword_ptr[rsi], 5),
        ["lock-btc32-mem-imm"] = a => a.@lock.btc(__dword_ptr[rsi], 4),
        // A register offset reaches the operands before and after.
        ["bt64-mem-reg"] = a => a.bt(__qword_ptr[rsi], rcx), ["bts64-mem-reg"] = a => a.bts(__qword_ptr[rsi], rcx),
        ["btr32-mem-reg"] = a => a.btr(__dword_ptr[rsi], ecx), ["lock-btc64-mem-reg"] = a => a.@lock.btc(__qword_ptr[rsi], rcx),
        ["lock-bts16-mem-reg"] = a => a.@lock.bts(__word_ptr[rsi], cx),
        ["pushfq"] = a => { a.pushfq(); a.pop(rcx); },
        ["cli"] = a => { a.cli(); a.pushfq(); a.pop(rcx); },
        ["sti"] = a => { a.cli(); a.sti(); a.pushfq(); a.pop(rcx); a.sti(); },
        ["mov-from-segments"] = a => { a.mov(eax, ds); a.mov(cx, ss); a.mov(rdx, cs); },
        ["std-cld"] = a => { a.std(); a.pushfq(); a.pop(rcx); a.cld(); },
        ["stac-clac"] = a => { a.stac(); a.pushfq(); a.pop(rcx); a.mov(rdx, __qword_ptr[rsi + 1]); a.clac(); },
        ["fences"] = a => { a.lfence(); a.sfence(); a.mfence(); a.pause(); a.endbr64(); },
        ["prefetch"] = a => { a.prefetcht0(__byte_ptr[rsi]); a.prefetchnta(__byte_ptr[rax]); a.prefetchw(__byte_ptr[rdx]); },
    };

    public static IEnumerable<object[]> FastCases()
    {
        int n = 0;
        // RAX equal to the operand (CMPXCHG stores), or not; offsets of every sign and reach.
        (ulong Rax, ulong Rdx, ulong Rcx)[] values =
        [
            (Mem + 1, 0xFEDC_BA98_7654_3210UL, 3), (0x80F0, 0x8000_0000_0000_0000UL, 0xFFFF_FFFF_FFFF_FFC1UL),
            (0x8000_00F0, 0x7F, 100), (Mem + 1 & 0xFFFF_FFFF_0000_0000UL | 0x8000_00F0, 0xFF, 0x1F),
            (0xF0, 0x10, 0xFFFF_FFFF_FFFF_FFFFUL),
        ];
        foreach (var form in Fast.Keys)
            foreach (var (rax, rdx, rcx) in values)
                yield return [form, rax, rdx, rcx, n++ % 3];
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [MemberData(nameof(FastCases))]
    public void Inline_forms_are_the_interpreters(string form, ulong rax, ulong rdx, ulong rcx, int preset)
    {
        var (i, j) = RunBoth(Fast[form], rax, rdx, rcx, preset);
        AssertSame(i, j);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData("misaligned")]
    [InlineData("crossing")]
    public void An_atomic_operand_off_the_fast_path_is_the_interpreters(string where)
    {
        Action<Assembler> op = where == "misaligned"
            ? a => a.@lock.cmpxchg(__qword_ptr[rsi + 3], rdx)
            : a => a.@lock.xadd(__qword_ptr[rdi], rdx);
        foreach (ulong rax in new[] { Mem, Mem + 1, 0UL })
        {
            var (i, j) = RunBoth(op, rax, 0x0123_4567_89AB_CDEFUL);
            AssertSame(i, j, handOffs: 2);
        }
    }

    /// <summary>Under SMAP a supervisor access to a user page needs EFLAGS.AC: after an inline STAC, an access that
    /// misses in the TLB is walked by a helper that reads AC from the vCPU, not from the compiled code's flags.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Stac_opens_user_pages_to_the_page_walks_of_compiled_accesses()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, cr4);
            a.bts(rax, 21);     // SMAP: every page of the test machine is a user page
            a.mov(cr4, rax);
            a.mov(rsi, Data);
            a.stac();
            a.mov(rbx, __qword_ptr[rsi]);
            a.mov(__qword_ptr[rsi + 8], rbx);
            a.clac();
            a.hlt();
        });
        foreach (var jit in new[] { JitSettings.Off, JitSettings.Eager })
        {
            using var m = new TestMachine(jit: jit);
            m.Enter64(code, fourK: true);
            m.Mem.W64(Data, Mem);
            m.RunToHlt();
            Assert.Equal(Mem, m.Regs.Rbx);
            Assert.Equal(Mem, m.Mem.R64(Data + 8));
            Assert.Equal(0UL, m.Regs.Rflags & X86Vcpu.AC);
        }
    }

    /// <summary>SWAPGS compiled inline trades GS's base with IA32_KERNEL_GS_BASE as the interpreter does; the WRMSR and
    /// RDMSR around it (and the HLT) are the only instructions handed to the interpreter.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Swapgs_trades_the_gs_bases_inline()
    {
        var (i, j) = RunBoth(a =>
        {
            a.mov(ecx, 0xC0000102); a.mov(eax, 0x89AB_CDEF); a.mov(edx, 0x1234); a.wrmsr();
            a.swapgs();
            a.mov(ecx, 0xC0000101); a.rdmsr(); a.mov(r10, rax); a.mov(r11, rdx);
        }, 0, 0);
        AssertSame(i, j, handOffs: 3);
        Assert.Equal(0x89AB_CDEFUL, j.Regs.R10);
        Assert.Equal(0x1234UL, j.Regs.R11);
    }

    /// <summary>RDTSC and RDTSCP compiled inline: the counter in EDX:EAX (upper halves cleared), IA32_TSC_AUX in ECX,
    /// the counter moving forward, and only the WRMSR of TSC_AUX and the HLT handed to the interpreter.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Rdtsc_and_rdtscp_read_the_counter_inline()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(ecx, 0xC0000103); a.mov(eax, 0x42); a.xor(edx, edx); a.wrmsr();
            a.mov(rax, ~0UL); a.mov(rdx, ~0UL);
            a.rdtsc(); a.mov(r8, rax); a.mov(r9, rdx);
            a.mov(rcx, ~0UL);
            a.rdtscp(); a.mov(r10, rax); a.mov(r11, rdx); a.mov(r12, rcx);
            a.hlt();
        });
        using var m = new TestMachine(jit: JitSettings.Eager);
        m.Enter64(code, fourK: true);
        m.RunToHlt();
        var r = m.Regs;
        Assert.True(r.R8 <= uint.MaxValue && r.R9 <= uint.MaxValue && r.R10 <= uint.MaxValue && r.R11 <= uint.MaxValue);
        Assert.True((r.R11 << 32 | r.R10) > (r.R9 << 32 | r.R8));
        Assert.Equal(0x42UL, r.R12);
        Assert.Equal(2, ((X86Vcpu)m.Cpu).JitHandOffs);
    }

    /// <summary>At CPL 3 RDTSC runs while CR4.TSD is clear and raises #GP at itself while it is set, compiled as
    /// interpreted. The #GP handler records the faulting RIP; user code then reaches a HLT, whose #GP shows where
    /// it got to.</summary>
    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false)]
    [InlineData(true)]
    public void Rdtsc_at_cpl3_faults_only_under_cr4_tsd(bool tsd)
    {
        const ulong handler = 0x12000, user = 0x14000;
        var userCode = TestMachine.Assemble(64, user, a => { a.rdtsc(); a.mov(r8, 1); a.hlt(); });
        foreach (var jit in new[] { JitSettings.Off, JitSettings.Eager })
        {
            using var m = new TestMachine(jit: jit);
            m.Mem.Write(handler, TestMachine.Assemble(64, handler, a => { a.mov(r9, __qword_ptr[rsp + 8]); a.hlt(); }));
            m.SetGate64(13, handler);
            m.Mem.Write(user, userCode);
            m.Mem.W64(TestMachine.Tss + 4, 0x50000);   // RSP0, the handler's stack
            m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
            {
                a.xor(r8, r8);
                if (tsd) { a.mov(rax, cr4); a.or(rax, 4); a.mov(cr4, rax); }
                a.push(0x33); a.push(0x60000); a.push(0x2); a.push(0x3B); a.push((int)user);
                a.iretq();
            }), fourK: true);
            m.RunToHlt();
            Assert.Equal(tsd ? user : user + (ulong)userCode.Length - 1, m.Regs.R9);
            Assert.Equal(tsd ? 0UL : 1UL, m.Regs.R8);
        }
    }

    /// <summary>An interrupt waiting when STI sets IF is taken after the one instruction STI shadows, compiled as
    /// interpreted. The handler records RBX, which the instructions after STI count up.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void An_interrupt_waiting_at_sti_comes_after_the_shadowed_instruction()
    {
        const ulong handler = 0x12000;
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.xor(ebx, ebx);
            a.mov(r8, 99);
            a.cli();
            a.sti();
            a.inc(ebx);
            a.inc(ebx);
            a.cli();
            a.hlt();
        });
        foreach (var jit in new[] { JitSettings.Off, JitSettings.Eager })
        {
            using var m = new TestMachine(jit: jit);
            m.Mem.Write(handler, TestMachine.Assemble(64, handler, a => { a.mov(r8, rbx); a.iretq(); }));
            m.SetGate64(0x30, handler);
            m.Enter64(code, fourK: true);
            var src = new PendingVector();
            m.Cpu.InterruptSource = src;
            m.RunToHlt();
            Assert.Equal(1UL, m.Regs.R8);
            Assert.Equal(2UL, m.Regs.Rbx);
            Assert.Equal(-1, src.Vector);
        }
    }

    private sealed class PendingVector : IInterruptSource
    {
        public int Vector = 0x30;
        public bool HasPendingInterrupt => Vector >= 0;
        public int Acknowledge() { int v = Vector; Vector = -1; return v; }
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Cmpxchg_stores_only_when_the_accumulator_matches()
    {
        var (_, hit) = RunBoth(a => a.@lock.cmpxchg(__qword_ptr[rsi], rdx), Mem + 1, 42);
        Assert.Equal(42UL, hit.Regs.Rbp);
        Assert.Equal(Mem + 1, hit.Regs.Rax);
        Assert.Equal(1UL, hit.Regs.R14 & 0xFF);                  // ZF
        var (_, miss) = RunBoth(a => a.@lock.cmpxchg(__dword_ptr[rsi], edx), 0xFFFF_FFFF_0000_0000UL, 42);
        Assert.Equal(Mem + 1, miss.Regs.Rbp);
        Assert.Equal((Mem + 1) & 0xFFFF_FFFF, miss.Regs.Rax);      // the 32-bit old value, zero-extended
        Assert.Equal(0UL, miss.Regs.R14 & 0xFF);
    }
}
