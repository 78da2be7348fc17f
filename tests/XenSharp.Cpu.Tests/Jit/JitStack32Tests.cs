using Iced.Intel;
using XenSharp.Cpu.Jit;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>32-bit blocks compile PUSH, POP, near CALL and RET inline while SS is flat and 32-bit, and otherwise
/// push and pop as the interpreter does (a base, a limit, expand-down, a 16-bit SP): every program here runs
/// interpreted and compiled (each block compiled before its first run) and must end in the same registers, flags,
/// memory and instruction count, faults included with the same frame.</summary>
public class JitStack32Tests
{
    /// <summary>#SS handler (HLT), entered on the TSS's ring-0 stack from the CPL 3 programs.</summary>
    const ulong SsHandler = 0x30000;
    /// <summary>Any other fault's handler (HLT).</summary>
    const ulong OtherHandler = 0x30010;
    const ulong Ring0Stack = 0x70000;
    const ulong F1 = 0x12000, F2 = 0x12100, F3 = 0x12200, F4 = 0x12300, FnPtr = 0x5000;

    sealed record Run(Registers Regs, byte[] Mem, ulong Retired, VcpuExitReason Exit);

    /// <summary>Runs <paramref name="code"/> at CodeAt in flat 32-bit protected mode (with the helper functions
    /// below in their page) to HLT, interpreted and compiled, after <paramref name="setup"/>; returns both runs with
    /// the bytes of [<paramref name="lo"/>, <paramref name="hi"/>).</summary>
    static Run[] RunBoth(Action<Assembler> build, Action<TestMachine>? setup, ulong lo, ulong hi)
    {
        var code = TestMachine.Assemble(32, TestMachine.CodeAt, build);
        var runs = new Run[2];
        for (int k = 0; k < 2; k++)
        {
            using var m = new TestMachine(jit: k == 1 ? JitSettings.Eager : JitSettings.Off);
            m.Enter32(code);
            WriteFunctions(m);
            m.Mem.W8(SsHandler, 0xF4);
            m.Mem.W8(OtherHandler, 0xF4);
            for (int v = 0; v < 32; v++) m.SetGate32(v, v == 12 ? SsHandler : OtherHandler);
            m.Mem.W32(TestMachine.Tss + 4, (uint)Ring0Stack);
            m.Mem.W32(TestMachine.Tss + 8, 0x10);
            setup?.Invoke(m);
            var exit = m.Run();
            var mem = new byte[hi - lo];
            for (ulong a = lo; a < hi; a++) mem[a - lo] = m.Mem.R8(a);
            runs[k] = new Run(m.Regs, mem, m.Cpu.InstructionsRetired, exit.Reason);
            if (k == 1)
            {
                Assert.True(m.Engine.CompiledBlocks > 0);
                Assert.Equal(0, m.Engine.JitFailures);
            }
        }
        AssertSame(runs[0].Regs, runs[1].Regs);
        Assert.Equal(runs[0].Exit, runs[1].Exit);
        Assert.Equal(runs[0].Mem, runs[1].Mem);
        return runs;
    }

    static void AssertSame(Registers a, Registers b)
    {
        Assert.Equal(a.Rax, b.Rax); Assert.Equal(a.Rbx, b.Rbx); Assert.Equal(a.Rcx, b.Rcx); Assert.Equal(a.Rdx, b.Rdx);
        Assert.Equal(a.Rsi, b.Rsi); Assert.Equal(a.Rdi, b.Rdi); Assert.Equal(a.Rsp, b.Rsp); Assert.Equal(a.Rbp, b.Rbp);
        Assert.Equal(a.Rip, b.Rip);
        Assert.Equal(a.Rflags, b.Rflags);
    }

    /// <summary>Functions in another page than the callers: arguments read through EBP and released by RET imm16,
    /// a plain RET, one that pops its own return address and arguments.</summary>
    static void WriteFunctions(TestMachine m)
    {
        m.Mem.Write(F1, TestMachine.Assemble(32, F1, a =>
        {
            a.push(ebp);
            a.mov(ebp, esp);
            a.mov(eax, __dword_ptr[ebp + 8]);
            a.add(eax, __dword_ptr[ebp + 12]);
            a.add(eax, __dword_ptr[ebp + 16]);
            a.pop(ebp);
            a.ret(12);
        }));
        m.Mem.Write(F2, TestMachine.Assemble(32, F2, a => { a.add(edx, ecx); a.ret(); }));
        m.Mem.Write(F3, TestMachine.Assemble(32, F3, a => { a.lea(edx, __[edx + ecx * 2]); a.ret(); }));
        // Only pushes and pops: right for any SS (an ESP-based operand is not, with a 16-bit SS).
        m.Mem.Write(F4, TestMachine.Assemble(32, F4, a =>
        {
            a.pop(edi);
            a.pop(eax);
            a.pop(edx);
            a.add(eax, edx);
            a.push(edi);
            a.ret();
        }));
    }

    /// <summary>CPL 3 with SS as given (selector 0x33), so that a fault on the stack is delivered on the ring-0
    /// stack and leaves its frame there.</summary>
    static void User(TestMachine m, ulong ssBase, uint ssLimit, ushort ssAttr, ulong esp)
    {
        var s = m.SRegs;
        s.Cs = new Segment { Selector = 0x2B, Limit = 0xFFFF_FFFF, Attributes = 0xC0FB };
        s.Ds = s.Es = s.Fs = s.Gs = new Segment { Selector = 0x33, Limit = 0xFFFF_FFFF, Attributes = 0xC0F3 };
        s.Ss = new Segment { Selector = 0x33, Base = ssBase, Limit = ssLimit, Attributes = ssAttr };
        m.Cpu.SetSpecialRegisters(s);
        var r = m.Regs; r.Rsp = esp; m.Cpu.SetRegisters(r);
    }

    static void SetSs(TestMachine m, ulong ssBase, uint ssLimit, ushort ssAttr, ulong esp)
    {
        var s = m.SRegs;
        s.Ss = new Segment { Selector = 0x10, Base = ssBase, Limit = ssLimit, Attributes = ssAttr };
        m.Cpu.SetSpecialRegisters(s);
        var r = m.Regs; r.Rsp = esp; m.Cpu.SetRegisters(r);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Flat_stack_pushes_pops_calls_and_returns_end_as_interpreted()
    {
        var runs = RunBoth(a =>
        {
            var top = a.CreateLabel();
            a.mov(__dword_ptr[FnPtr], (uint)F3);
            a.mov(esi, (uint)F2);
            a.mov(ecx, 2000);
            a.xor(eax, eax); a.xor(ebx, ebx); a.xor(edx, edx); a.xor(edi, edi);
            a.Label(ref top);
            a.push(ecx);
            a.push(0x12345678);
            a.push(-5);
            a.call(F1);                       // rel32 into another page; RET 12 releases the arguments
            a.add(ebx, eax);
            a.call(esi);
            a.call(__dword_ptr[FnPtr]);
            a.push(ax);                       // 16-bit pushes and pops with a 32-bit stack pointer
            a.pop(bp);
            a.push(ecx);
            a.pop(edi);
            a.push(esp);                      // the value before the push
            a.pop(ebp);
            a.push(__dword_ptr[FnPtr]);       // memory source: the interpreter's
            a.pop(eax);
            a.dec(ecx);
            a.jnz(top);
            // Pushes and pops across a page boundary, aligned to 2 and not at all.
            a.mov(esp, 0x60002);
            a.push(ecx);
            a.push(0x11223344);
            a.pop(eax);
            a.pop(edi);
            a.mov(esp, 0x60001);
            a.push(0xAABBCCDD);
            a.call(F2);
            a.pop(edx);
            a.push(dx);
            a.mov(esp, 0x61001);
            a.push(si);
            a.pop(ax);
            // POP ESP loads the value popped.
            a.mov(__dword_ptr[0x70000], 0x71000);
            a.mov(esp, 0x70000);
            a.pop(esp);
            a.push(ecx);
            a.hlt();
        }, null, 0x5F000, 0x81000);
        Assert.Equal(runs[0].Retired, runs[1].Retired);
        var r = runs[1].Regs;
        Assert.Equal(0x70FFCUL, r.Rsp);
        Assert.Equal(0x11222100UL, r.Rax);    // 0x11223344 popped, then AX from SI (F2)
        Assert.Equal(0xAABBCCDDUL, r.Rdx);
        Assert.Equal((2000UL * 2001 / 2 + 2000UL * (0x12345678 - 5)) & 0xFFFFFFFF, r.Rbx);
    }

    /// <summary>ESP wraps at 4 GiB: pushes from ESP 4 store at the top of the address space (mapped by a 4 MiB
    /// page) and pops come back through 0, inline through flat SS, ESP's high half staying clear.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Flat_stack_wraps_at_4_GiB_as_interpreted()
    {
        const ulong Pd = 0x20000;
        var runs = RunBoth(a =>
        {
            var top = a.CreateLabel();
            a.mov(ecx, 600);
            a.xor(esi, esi);
            a.Label(ref top);
            a.mov(esp, 4);
            a.push(ecx);
            a.push(0x5555);
            a.push(ecx);
            a.push(ecx);
            a.push(7);
            a.call(F4);                       // ret at 0xFFFFFFF0, its pops wrap ESP through 0
            a.add(esi, eax);
            a.pop(ebx);
            a.pop(edx);
            a.add(esi, edx);                  // ESP wrapped to 0 by the last pop
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }, m =>
        {
            for (ulong k = 0; k < 4; k++) m.Mem.W32(Pd + k * 4, (uint)(k << 22) | 0x87);
            m.Mem.W32(Pd + 1023 * 4, 0x800000 | 0x87);
            var s = m.SRegs;
            s.Cr3 = Pd;
            s.Cr4 |= 0x10;
            s.Cr0 |= 0x80000000;
            m.Cpu.SetSpecialRegisters(s);
        }, 0xBFF000, 0xC00000);
        Assert.Equal(runs[0].Retired, runs[1].Retired);
        Assert.Equal(0UL, runs[1].Regs.Rsp);
        Assert.Equal(0x5555u, BitConverter.ToUInt32(runs[1].Mem, 0xFFC));
        Assert.Equal(7u, BitConverter.ToUInt32(runs[1].Mem, 0xFF0));
    }

    /// <summary>A stack segment the inline path must not use: SS with a base (ESP wrapping through it), and a flat
    /// but 16-bit SS (B clear: SP wraps at 64 KiB and ESP's high half stays). Both run the interpreter's pushes and
    /// pops under compiled code and end as interpreted.</summary>
    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(0x100000UL, 0xC093, 4UL)]
    [InlineData(0UL, 0x8093, 0x50004UL)]
    public void Stacks_with_a_base_or_a_16_bit_pointer_end_as_interpreted(ulong ssBase, int ssAttr, ulong esp)
    {
        var runs = RunBoth(a =>
        {
            var top = a.CreateLabel();
            // The pages ESP's offsets would be taken for as linear addresses are in the TLB: a push or pop that
            // took the inline path here would hit them.
            a.mov(eax, __dword_ptr[0x4FFF0]);
            a.mov(eax, __dword_ptr[0x50000]);
            a.mov(eax, __dword_ptr[0]);
            a.mov(ecx, 500);
            a.xor(esi, esi);
            a.Label(ref top);
            a.push(ecx);
            a.push(7);
            a.call(F4);
            a.add(esi, eax);
            a.push(ecx);
            a.push(0x1234);
            a.pop(ebx);
            a.pop(edx);
            a.push(bx);
            a.pop(dx);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }, m => SetSs(m, ssBase, 0xFFFF_FFFF, (ushort)ssAttr, esp), 0xF000, 0x10_0000);
        Assert.Equal(runs[0].Retired, runs[1].Retired);
        var r = runs[1].Regs;
        Assert.Equal(esp, r.Rsp);
        Assert.Equal((ulong)(500 * 501 / 2 + 500 * 7), r.Rsi);
        // The last push below offset 0 (0x1234) landed at (base + 0xFFFFFFFC) mod 4 GiB, or 0xFFFC for the 16-bit SP.
        ulong slot = ssBase != 0 ? (uint)(ssBase + 0xFFFFFFFCUL) : 0xFFFC;
        Assert.Equal(0x1234u, BitConverter.ToUInt32(runs[1].Mem, (int)(slot - 0xF000)));
    }

    /// <summary>LSS in the middle of a block (run by the interpreter, which opens no interrupt shadow, so the block
    /// goes on) switches between flat SS and one with a base: each push and pop after it uses the SS it loaded.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_stack_segment_loaded_mid_block_applies_to_the_next_push()
    {
        var runs = RunBoth(a =>
        {
            var top = a.CreateLabel();
            a.mov(__dword_ptr[0x100], 0x40000);
            a.mov(__word_ptr[0x104], 0x48);
            a.mov(__dword_ptr[0x108], 0x50000);
            a.mov(__word_ptr[0x10C], 0x10);
            a.mov(ecx, 300);
            a.Label(ref top);
            a.lss(esp, __fword_ptr[0x100]);
            a.push(ecx);
            a.push(0x77);
            a.pop(eax);
            a.lss(esp, __fword_ptr[0x108]);
            a.push(ecx);
            a.push(eax);
            a.pop(edx);
            a.pop(ebx);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }, m => m.Mem.W64(TestMachine.Gdt + 0x48, 0x004F93001000FFFF), 0x3F000, 0x51000);
        Assert.Equal(runs[0].Retired, runs[1].Retired);
        // 0x48's base is 0x1000: ECX's last push landed at 0x1000 + 0x40000 - 4.
        Assert.Equal(1u, BitConverter.ToUInt32(runs[1].Mem, 0x41000 - 4 - 0x3F000));
        Assert.Equal(1u, BitConverter.ToUInt32(runs[1].Mem, 0x50000 - 4 - 0x3F000));
    }

    /// <summary>Pushes, pops, calls and returns that leave the stack segment fault with #SS(0) at the same
    /// instruction, ESP untouched, as interpreted: an expand-down SS reaching its limit, an expand-up SS with a
    /// base popped past its limit, flat SS pushed below 0 (the access would wrap past 4 GiB), a RET and a CALL.
    /// Run at CPL 3 so that the fault is delivered on the ring-0 stack, where its frame is compared.</summary>
    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData("expand-down push", 0UL, 0x5FFFFu, 0x40F7, 0x60000UL + 8 * 350, 0x60000UL)]
    [InlineData("expand-up pop", 0x1000UL, 0x7FFFFu, 0x40F3, 0x80000UL - 4 * 700 - 2, 0x7FFFEUL)]
    [InlineData("flat push", 0UL, 0xFFFFFFFFu, 0xC0F3, 0x2UL, 0x2UL)]
    [InlineData("expand-down call", 0UL, 0x5FFFFu, 0x40F7, 0x60000UL + 4 * 700, 0x60000UL)]
    [InlineData("expand-up ret", 0x1000UL, 0x7FFFFu, 0x40F3, 0x80000UL - 8 * 300, 0x80000UL)]
    public void Stack_accesses_past_the_limit_raise_ss_as_interpreted(string kind, ulong ssBase, uint ssLimit, int ssAttr, ulong esp, ulong espAtFault)
    {
        const ulong Back = 0x12400;
        var runs = RunBoth(a =>
        {
            var top = a.CreateLabel();
            a.mov(ecx, 100000);
            a.Label(ref top);
            switch (kind)
            {
                case "expand-down push":
                case "flat push":
                    a.push(ecx);
                    a.push(ecx);
                    a.pop(eax);
                    a.push(7);
                    break;
                case "expand-up pop":
                    a.pop(eax);
                    a.add(ebx, eax);
                    break;
                case "expand-down call":
                    a.call(F2);
                    a.push(ecx);
                    break;
                case "expand-up ret":
                    // Returns to Back (every stack slot holds it), which loops back here: ESP climbs by 8 a time.
                    a.ret(4);
                    break;
            }
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }, m =>
        {
            User(m, ssBase, ssLimit, (ushort)ssAttr, esp);
            // MOV ECX is 5 bytes: the loop starts at CodeAt + 5.
            m.Mem.Write(Back, TestMachine.Assemble(32, Back, a => { a.dec(ecx); a.jnz(TestMachine.CodeAt + 5); a.hlt(); }));
            for (ulong o = 0x7E000; o < 0x80000; o += 4) m.Mem.W32(ssBase + o, (uint)Back);
        }, Ring0Stack - 0x100, Ring0Stack);
        var r = runs[1].Regs;
        Assert.Equal(SsHandler + 1, r.Rip);
        Assert.Equal(Ring0Stack - 24, r.Rsp);
        byte[] frame = runs[1].Mem;
        uint F(int k) => BitConverter.ToUInt32(frame, 0x100 - 24 + 4 * k);
        Assert.Equal(0u, F(0));                           // error code
        Assert.Equal(0x2Bu, F(2));                        // user CS
        Assert.Equal(espAtFault, (ulong)F(4));            // ESP as before the faulting instruction
        Assert.Equal(0x33u, F(5));
        Assert.InRange((ulong)F(1), TestMachine.CodeAt, TestMachine.CodeAt + 0x40);
    }

    /// <summary>With alignment checks armed (CR0.AM, EFLAGS.AC, CPL 3) pushes and pops take the interpreter's path:
    /// aligned ones run on, and a push to a misaligned ESP raises #AC(0) at that push, ESP untouched, as interpreted.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_misaligned_push_with_alignment_checks_armed_raises_ac_as_interpreted()
    {
        const ulong AcHandler = 0x30020;
        var runs = RunBoth(a =>
        {
            var top = a.CreateLabel();
            a.mov(ecx, 300);
            a.Label(ref top);
            a.push(ecx);
            a.call(F2);
            a.pop(ebx);
            a.dec(ecx);
            a.jnz(top);
            a.sub(esp, 2);
            a.push(ecx);
            a.hlt();
        }, m =>
        {
            User(m, 0, 0xFFFF_FFFF, 0xC0F3, 0x60000);
            m.Mem.W8(AcHandler, 0xF4);
            m.SetGate32(17, AcHandler);
            var s = m.SRegs;
            s.Cr0 |= 0x40000;
            m.Cpu.SetSpecialRegisters(s);
            var r = m.Regs; r.Rflags |= 0x40000; m.Cpu.SetRegisters(r);
        }, Ring0Stack - 0x100, Ring0Stack);
        var regs = runs[1].Regs;
        Assert.Equal(AcHandler + 1, regs.Rip);
        Assert.Equal(300UL * 301 / 2, regs.Rdx);
        uint F(int k) => BitConverter.ToUInt32(runs[1].Mem, 0x100 - 24 + 4 * k);
        Assert.Equal(0u, F(0));
        Assert.Equal(0x60000u - 2, F(4));
    }
}
