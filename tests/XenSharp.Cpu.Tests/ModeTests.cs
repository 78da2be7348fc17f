using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

public class ModeTests
{
    private static void EnterReal(TestMachine m, ulong at, byte[] code)
    {
        m.Mem.Write(at, code);
        var s = m.SRegs;
        Segment rs(ushort sel, ushort attr) => new() { Selector = sel, Base = (ulong)sel << 4, Limit = 0xFFFF, Attributes = attr };
        s.Cs = rs(0, 0x9B); s.Ds = s.Es = s.Ss = s.Fs = s.Gs = rs(0, 0x93);
        s.Cr0 = 0x10; s.Cr4 = 0; s.Efer = 0;
        s.Idt = new DescriptorTable { Base = 0, Limit = 0x3FF };
        m.Cpu.SetSpecialRegisters(s);
        m.Cpu.SetRegisters(new Registers { Rip = at, Rsp = 0x7000, Rflags = 2 });
    }

    [Fact]
    public void RealModeSoftwareInterruptAndIret()
    {
        using var m = new TestMachine();
        // IVT[0x21] = 0000:0600
        m.Mem.W16(0x21 * 4, 0x600); m.Mem.W16(0x21 * 4 + 2, 0);
        m.Mem.Write(0x600, TestMachine.Assemble(16, 0x600, a => { a.mov(bx, 0x4321); a.iret(); }));
        EnterReal(m, 0x7C00, TestMachine.Assemble(16, 0x7C00, a =>
        {
            a.mov(ax, 0x1234);
            a.@int(0x21);
            a.mov(cx, ax);
            a.mov(dx, 0x0050);
            a.mov(es, dx);                        // ES base 0x500
            a.mov(__word_ptr.es[0x10], 0xBEEF);   // linear 0x510
            a.hlt();
        }));
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(0x4321UL, r.Rbx & 0xFFFF);
        Assert.Equal(0x1234UL, r.Rcx & 0xFFFF);
        Assert.Equal(0xBEEF, m.Mem.R16(0x510));
        Assert.Equal(0x7000UL, r.Rsp);
    }

    [Fact]
    public void StartupIpiRunsRealModeTrampoline()
    {
        using var m = new TestMachine();
        var cpu = (IX86Vcpu)m.Cpu;
        cpu.Init();
        Assert.True(cpu.WaitingForSipi);
        Assert.Equal(VcpuExitReason.Hlt, cpu.Run().Reason);
        m.Mem.Write(0x9000, TestMachine.Assemble(16, 0, a => { a.mov(ax, cs); a.mov(__word_ptr[0x100], ax); a.hlt(); }));
        cpu.StartupIpi(0x09);
        m.RunToHlt();
        Assert.Equal(0x0900, m.Mem.R16(0x100)); // DS is 0 after INIT
    }

    private static void Setup32Paging(TestMachine m, bool pae)
    {
        ulong dir = 0x40000;
        if (!pae)
        {
            // 2-level: PDE 0 -> page table mapping the first 4 MiB by 4 KiB pages; PDE 1 = 4 MiB page at 4 MiB (PSE).
            m.Mem.W32(dir, 0x41000 | 7);
            for (uint i = 0; i < 1024; i++) m.Mem.W32(0x41000 + i * 4, (i << 12) | 7);
            m.Mem.W32(dir + 4, 0x400000 | 0x87);
            // Linear 0x80000000 -> physical 0x6000 via a second table.
            m.Mem.W32(dir + 0x200 * 4, 0x42000 | 7);
            m.Mem.W32(0x42000, 0x6000 | 7);
        }
        else
        {
            // PAE: PDPT at dir; PD0 maps 0-2 MiB by 4 KiB pages and 2-4 MiB by a 2 MiB page; PD2 maps 0x80000000.
            m.Mem.W64(dir, 0x41000 | 1);
            m.Mem.W64(dir + 16, 0x43000 | 1);
            m.Mem.W64(0x41000, 0x42000 | 7);
            for (ulong i = 0; i < 512; i++) m.Mem.W64(0x42000 + i * 8, (i << 12) | 7);
            m.Mem.W64(0x41008, 0x200000 | 0x87);
            m.Mem.W64(0x43000, 0x44000 | 7);
            m.Mem.W64(0x44000, 0x6000 | 7);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ThirtyTwoBitPagingTwoLevelAndPae(bool pae)
    {
        using var m = new TestMachine();
        Setup32Paging(m, pae);
        m.Mem.W32(0x6000, 0xA5A5A5A5);
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(eax, pae ? 0x30u : 0x10u);  // PSE (+PAE)
            a.mov(cr4, eax);
            a.mov(eax, 0x40000);
            a.mov(cr3, eax);
            a.mov(eax, cr0);
            a.or(eax, 0x80000000);
            a.mov(cr0, eax);
            a.mov(ebx, __dword_ptr[0x80000000]);
            a.mov(__dword_ptr[pae ? 0x200010u : 0x400010u], 7u);   // large page
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(0xA5A5A5A5UL, m.Regs.Rbx);
        Assert.Equal(7u, m.Mem.R32(pae ? 0x200010UL : 0x400010UL));
    }

    [Fact]
    public void InvlpgMakesAChangedMappingVisible()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, 1); m.Mem.W64(0x7000, 2);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, __qword_ptr[0x6000]);
            a.mov(r8, rax);
            a.mov(__qword_ptr[TestMachine.Pt + 6 * 8], 0x7000 | 7);   // remap 0x6000 -> 0x7000
            a.invlpg(__[0x6000]);
            a.mov(rax, __qword_ptr[0x6000]);
            a.mov(r9, rax);
            a.hlt();
        }), fourK: true);
        m.RunToHlt();
        Assert.Equal(1UL, m.Regs.R8);
        Assert.Equal(2UL, m.Regs.R9);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void InvlpgMakesRemappedCodeRunInFourKAndLargePages(bool jit)
    {
        using var m = new TestMachine(jit: jit ? XenSharp.Cpu.JitSettings.Eager : XenSharp.Cpu.JitSettings.Off);
        const ulong small = 0x30000, smallAlt = 0x31000;             // 4 KiB page
        const ulong large = 0x401000, largeAlt = 0x601000;           // inside the 2 MiB page at 4 MiB
        m.Mem.Write(small, TestMachine.Assemble(64, small, a => { a.mov(eax, 1); a.ret(); }));
        m.Mem.Write(smallAlt, TestMachine.Assemble(64, small, a => { a.mov(eax, 2); a.ret(); }));
        m.Mem.Write(large, TestMachine.Assemble(64, large, a => { a.mov(ebx, 10); a.ret(); }));
        m.Mem.Write(largeAlt, TestMachine.Assemble(64, large, a => { a.mov(ebx, 20); a.ret(); }));
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, 50);
            a.Label(ref loop);
            a.mov(rdx, small); a.call(rdx);
            a.mov(rdx, large); a.call(rdx);
            a.invlpg(__[0x5000]);                                   // a data page: the code stays cached
            a.dec(ecx);
            a.jnz(loop);
            a.mov(r8, rax); a.mov(r9, rbx);
            a.mov(__qword_ptr[TestMachine.Pt + (small >> 12) * 8], (int)(smallAlt | 7));
            a.invlpg(__[small]);
            a.mov(__qword_ptr[TestMachine.Pd + 2 * 8], 0x600000 | 0x87);
            a.invlpg(__[0x405000]);                                 // another 4 KiB of the same large page
            a.mov(rdx, small); a.call(rdx);
            a.mov(rdx, large); a.call(rdx);
            a.mov(r10, rax); a.mov(r11, rbx);
            a.hlt();
        }), fourK: true);
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal((1UL, 10UL), (r.R8, r.R9));
        Assert.Equal((2UL, 20UL), (r.R10, r.R11));
    }

    [Fact]
    public void MemoryGenerationChangeDropsCachedTranslations()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, 1);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, __qword_ptr[0x6000]);
            a.@out(0x80, al);
            a.mov(rbx, __qword_ptr[0x6000]);
            a.hlt();
        }));
        Assert.Equal(VcpuExitReason.Io, m.Run().Reason);
        // The frame stops being RAM: the next access must become an MMIO exit.
        m.Mem.Mmio.Add(6);
        m.Mem.BumpGeneration();
        var e = m.Run();
        Assert.Equal(VcpuExitReason.Mmio, e.Reason);
        Assert.Equal(0x6000UL, e.Address);
        m.Cpu.CompleteExit(42);
        m.RunToHlt();
        Assert.Equal(42UL, m.Regs.Rbx);
    }

    [Fact]
    public void ProtectedModeInterruptFromRing3SwitchesToTheTssStack()
    {
        using var m = new TestMachine();
        ulong handler = 0x12000, user = 0x14000;
        m.Mem.Write(handler, TestMachine.Assemble(32, handler, a =>
        {
            a.mov(ebx, __dword_ptr[esp + 12]);   // user ESP
            a.mov(ecx, esp);
            a.iretd();
        }));
        m.Mem.Write(user, TestMachine.Assemble(32, user, a =>
        {
            a.@int(0x80);
            a.mov(edx, 0x55);
            a.mov(eax, __dword_ptr[0x5000]);     // then a fault to stop: page-less? use a ring-0-only instruction
            a.hlt();                              // #GP at CPL 3 -> vector 13
        }));
        m.SetGate32(0x80, handler, dpl: 3);
        ulong gp = 0x13000;
        m.Mem.Write(gp, TestMachine.Assemble(32, gp, a => { a.mov(esi, 0xD); a.hlt(); }));
        m.SetGate32(13, gp);
        m.Mem.W32(TestMachine.Tss + 4, 0x7F000);  // ESP0
        m.Mem.W32(TestMachine.Tss + 8, 0x10);     // SS0
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.push(0x33); a.push(0x60000); a.push(0x2); a.push(0x2B); a.push((int)user);
            a.iretd();
        }));
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(0x60000UL, r.Rbx);
        Assert.Equal(0x7F000UL - 20, r.Rcx);
        Assert.Equal(0x55UL, r.Rdx);
        Assert.Equal(0xDUL, r.Rsi);
    }

    [Fact]
    public void RepMovsIntoMmioExitsPerElementAndCompletes()
    {
        using var m = new TestMachine();
        m.Mem.Mmio.Add(0x100);
        m.Mem.W32(0x6000, 0x11111111); m.Mem.W32(0x6004, 0x22222222); m.Mem.W32(0x6008, 0x33333333);
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(esi, 0x6000); a.mov(edi, 0x100000); a.mov(ecx, 3);
            a.rep.movsd();
            a.hlt();
        }));
        var got = new List<(ulong, ulong)>();
        while (true)
        {
            var e = m.Run();
            if (e.Reason == VcpuExitReason.Hlt) break;
            Assert.Equal(VcpuExitReason.Mmio, e.Reason);
            Assert.True(e.IsWrite);
            got.Add((e.Address, e.Data));
        }
        Assert.Equal(new[] { (0x100000UL, 0x11111111UL), (0x100004UL, 0x22222222UL), (0x100008UL, 0x33333333UL) }, got.ToArray());
        Assert.Equal(0UL, m.Regs.Rcx);
    }

    [Fact]
    public void NmiIsDeliveredThroughVector2()
    {
        using var m = new TestMachine();
        ulong h = 0x12000;
        m.Mem.Write(h, TestMachine.Assemble(64, h, a => { a.mov(ebx, 2); a.iretq(); }));
        m.SetGate64(2, h);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { a.cli(); a.hlt(); a.mov(ecx, 1); a.hlt(); }));
        m.RunToHlt();
        m.Cpu.InjectNmi();
        m.RunToHlt();
        Assert.Equal(2UL, m.Regs.Rbx);
        Assert.Equal(1UL, m.Regs.Rcx);
    }

    [Fact]
    public void InjectedExceptionWithErrorCode()
    {
        using var m = new TestMachine();
        ulong h = 0x12000;
        m.Mem.Write(h, TestMachine.Assemble(64, h, a => { a.pop(rbx); a.hlt(); }));
        m.SetGate64(17, h);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { a.nop(); a.hlt(); }));
        m.Cpu.InjectException(17, 0);
        m.RunToHlt();
        Assert.Equal(0UL, m.Regs.Rbx);
        Assert.Equal(h + 2, m.Regs.Rip);
    }

    [Fact]
    public void TrapFlagSingleStepsWithDebugExceptions()
    {
        using var m = new TestMachine();
        ulong h = 0x12000;
        m.Mem.Write(h, TestMachine.Assemble(64, h, a => { a.inc(r15); a.iretq(); }));
        m.SetGate64(1, h);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.pushfq();
            a.or(__qword_ptr[rsp], 0x100);
            a.popfq();       // TF takes effect after the next instruction
            a.nop();
            a.nop();
            a.pushfq();
            a.and(__qword_ptr[rsp], ~0x100);
            a.popfq();
            a.nop();
            a.hlt();
        }));
        m.RunToHlt();
        // Traps after: nop, nop, pushfq, and, popfq (which clears TF) = 5.
        Assert.Equal(5UL, m.Regs.R15);
    }

    [Fact]
    public void RequestExitPreemptsAnEndlessLoop()
    {
        using var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { var l = a.CreateLabel(); a.Label(ref l); a.inc(rax); a.jmp(l); }));
        // On a loaded host the request can come before the loop has run once: it preempts that run at its start, and
        // the next request comes while the loop runs.
        bool done = false;
        var t = new Thread(() => { while (!Volatile.Read(ref done)) { Thread.Sleep(50); m.Cpu.RequestExit(); } });
        t.Start();
        for (int runs = 0; runs < 100 && m.Regs.Rax == 0; runs++)
            Assert.Equal(VcpuExitReason.Preempted, m.Cpu.Run().Reason);
        Volatile.Write(ref done, true);
        t.Join();
        Assert.True(m.Regs.Rax > 0);
    }
}
