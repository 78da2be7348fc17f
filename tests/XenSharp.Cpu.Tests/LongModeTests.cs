using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

public class LongModeTests
{
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void ThirtyTwoBitShiftByZeroStillZeroesTheUpperHalf()
    {
        using var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, 0x1122334455667788UL);
            a.mov(rbx, rax);
            a.mov(rdx, rax);
            a.xor(ecx, ecx);
            a.shl(eax, cl);          // count 0: flags kept, bits 63:32 cleared
            a.mov(cl, 32);
            a.ror(ebx, cl);          // masked count 0
            a.mov(rcx, 0);
            a.shld(edx, ebx, cl);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(0x55667788UL, m.Regs.Rax);
        Assert.Equal(0x55667788UL, m.Regs.Rbx);
        Assert.Equal(0x55667788UL, m.Regs.Rdx);
    }

    [Fact]
    public void SixtyFourBitArithmeticAndStack()
    {
        using var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, 0x1122334455667788UL);
            a.push(rax);
            a.pop(rbx);
            a.mov(r9, -1L);
            a.add(r9, 2);        // CF=1, result 1
            a.setc(cl);
            a.mov(r10d, -1);     // zero-extends
            a.shl(rax, 8);
            a.hlt();
        }));
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(0x1122334455667788UL, r.Rbx);
        Assert.Equal(1UL, r.R9);
        Assert.Equal(1UL, r.Rcx & 0xFF);
        Assert.Equal(0xFFFF_FFFFUL, r.R10);
        Assert.Equal(0x2233445566778800UL, r.Rax);
    }

    [Fact]
    public void PageFaultReportsErrorCodeAndCr2()
    {
        using var m = new TestMachine();
        ulong handler = 0x12000;
        m.Mem.Write(handler, TestMachine.Assemble(64, handler, a =>
        {
            a.pop(rbx);          // error code
            a.mov(rcx, cr2);
            a.pop(rdx);          // faulting RIP
            a.hlt();
        }));
        m.SetGate64(14, handler);
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, 0x5000);
            a.mov(__qword_ptr[rax + 0x10], rax);
            a.hlt();
        });
        m.Enter64(code, fourK: true);
        // Page 0x5000 not present.
        m.Mem.W64(TestMachine.Pt + 5 * 8, 0);
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(2UL, r.Rbx);            // write, supervisor, not present
        Assert.Equal(0x5010UL, r.Rcx);
        Assert.Equal(TestMachine.CodeAt + 10, r.Rdx); // after the 10-byte MOV RAX, imm64
    }

    [Fact]
    public void WriteToReadOnlyPageWithWpFaultsWithProtectionBit()
    {
        using var m = new TestMachine();
        ulong handler = 0x12000;
        m.Mem.Write(handler, TestMachine.Assemble(64, handler, a => { a.pop(rbx); a.mov(rcx, cr2); a.hlt(); }));
        m.SetGate64(14, handler);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(eax, __dword_ptr[0x6000]);   // read ok
            a.mov(__dword_ptr[0x6004], eax);   // write faults
            a.hlt();
        }), fourK: true);
        m.Mem.W64(TestMachine.Pt + 6 * 8, 0x6000 | 5); // present, user, read-only
        m.RunToHlt();
        Assert.Equal(3UL, m.Regs.Rbx);
        Assert.Equal(0x6004UL, m.Regs.Rcx);
    }

    [Fact]
    public void AccessedAndDirtyBitsAreSet()
    {
        using var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(eax, __dword_ptr[0x7000]);
            a.mov(__dword_ptr[0x8000], eax);
            a.hlt();
        }), fourK: true);
        m.RunToHlt();
        Assert.Equal(0x20UL, m.Mem.R64(TestMachine.Pt + 7 * 8) & 0x60);
        Assert.Equal(0x60UL, m.Mem.R64(TestMachine.Pt + 8 * 8) & 0x60);
    }

    [Fact]
    public void NoExecutePageFaultsOnFetch()
    {
        using var m = new TestMachine();
        ulong handler = 0x12000;
        m.Mem.Write(handler, TestMachine.Assemble(64, handler, a => { a.pop(rbx); a.mov(rcx, cr2); a.hlt(); }));
        m.SetGate64(14, handler);
        m.Mem.Write(0x9000, new byte[] { 0x90, 0xC3 });
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(eax, 0x9000);
            a.call(rax);
            a.hlt();
        }), fourK: true);
        m.Mem.W64(TestMachine.Pt + 9 * 8, 0x9000 | 7 | (1UL << 63));
        m.RunToHlt();
        Assert.Equal(0x11UL, m.Regs.Rbx);
        Assert.Equal(0x9000UL, m.Regs.Rcx);
    }

    [Fact]
    public void MmioReadAndWriteExitAndComplete()
    {
        using var m = new TestMachine();
        m.Mem.Mmio.Add(0xFEE00);
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rsi, 0xFEE00000UL);
            a.mov(__dword_ptr[rsi + 0xB0], 0);      // EOI write
            a.mov(eax, __dword_ptr[rsi + 0x20]);    // ID read
            a.add(eax, 1);
            a.hlt();
        });
        m.Enter64(code);
        // Map the first 4 GiB so 0xFEE00000 is reachable.
        m.Mem.W64(TestMachine.Pdpt + 3 * 8, (TestMachine.Pd + 0x1000) | 7);
        for (ulong i = 0; i < 512; i++) m.Mem.W64(TestMachine.Pd + 0x1000 + i * 8, ((3UL << 30) + (i << 21)) | 0x87);

        var e = m.Run();
        Assert.Equal(VcpuExitReason.Mmio, e.Reason);
        Assert.True(e.IsWrite);
        Assert.Equal(0xFEE000B0UL, e.Address);
        Assert.Equal(4, e.Size);
        Assert.Equal(0UL, e.Data);
        e = m.Run();
        Assert.Equal(VcpuExitReason.Mmio, e.Reason);
        Assert.False(e.IsWrite);
        Assert.Equal(0xFEE00020UL, e.Address);
        m.Cpu.CompleteExit(0x05000000);
        m.RunToHlt();
        Assert.Equal(0x05000001UL, m.Regs.Rax);
    }

    [Fact]
    public void MmioReadCompletesBeforeAPendingInterrupt()
    {
        using var m = new TestMachine();
        m.Mem.Mmio.Add(0x100);
        ulong handler = 0x12000;
        m.Mem.Write(handler, TestMachine.Assemble(64, handler, a => { a.mov(r8, rax); a.iretq(); }));
        m.SetGate64(0x30, handler);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.sti();
            a.nop();
            a.mov(eax, __dword_ptr[0x100000]);
            a.cli();
            a.hlt();
        }));
        var src = new QueueSource();
        m.Cpu.InterruptSource = src;
        var e = m.Run();
        Assert.Equal(VcpuExitReason.Mmio, e.Reason);
        src.Pending.Enqueue(0x30);
        m.Cpu.CompleteExit(0xABCD);
        m.RunToHlt();
        Assert.Equal(0xABCDUL, m.Regs.Rax);
        Assert.Equal(0xABCDUL, m.Regs.R8); // the handler ran after the load completed
    }

    [Fact]
    public void SelfModifyingCodeIsSeen()
    {
        using var m = new TestMachine();
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var target = a.CreateLabel();
            var again = a.CreateLabel();
            a.xor(ebx, ebx);
            a.Label(ref again);
            a.call(target);
            a.add(ebx, eax);
            // Patch the immediate of "mov eax, imm32" below to 5 and run it again.
            a.lea(rdi, __[target]);
            a.mov(__dword_ptr[rdi + 1], 5);
            a.cmp(ebx, 1);
            a.je(again);
            a.hlt();
            a.Label(ref target);
            a.mov(eax, 1);
            a.ret();
        });
        m.Enter64(code);
        m.RunToHlt();
        Assert.Equal(6UL, m.Regs.Rbx);
    }

    [Fact]
    public void LockXaddFromTwoThreadsLosesNoIncrements()
    {
        using var m = new TestMachine();
        var engine = m.Engine;
        var cpu2 = engine.CreateVcpu(1, new DefaultCpuidPolicy(1));
        const int N = 20000;
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, N);
            a.mov(edx, 1);
            a.Label(ref loop);
            a.mov(eax, edx);
            a.@lock.xadd(__dword_ptr[0x7000], eax);
            a.@lock.inc(__dword_ptr[0x7004]);
            a.dec(ecx);
            a.jnz(loop);
            a.hlt();
        });
        m.Enter64(code);
        m.Cpu.GetRegisters(out var r);
        m.Cpu.GetSpecialRegisters(out var s);
        cpu2.SetSpecialRegisters(s);
        r.Rsp = 0x70000;
        cpu2.SetRegisters(r);
        var t = new Thread(() => cpu2.Run());
        t.Start();
        var e = m.Cpu.Run();
        t.Join();
        Assert.Equal(VcpuExitReason.Hlt, e.Reason);
        Assert.Equal((uint)(2 * N), m.Mem.R32(0x7000));
        Assert.Equal((uint)(2 * N), m.Mem.R32(0x7004));
    }

    /// <summary>Runs <paramref name="first"/> on vCPU 0 and <paramref name="second"/> on a second vCPU of the same
    /// engine at once, each until its HLT.</summary>
    private static void RunOnTwoVcpus(TestMachine m, byte[] first, ulong secondAt, byte[] second)
    {
        var cpu2 = m.Engine.CreateVcpu(1, new DefaultCpuidPolicy(1));
        m.Mem.Write(secondAt, second);
        m.Enter64(first);
        m.Cpu.GetRegisters(out var r);
        m.Cpu.GetSpecialRegisters(out var s);
        cpu2.SetSpecialRegisters(s);
        r.Rsp = 0x70000;
        r.Rip = secondAt;
        cpu2.SetRegisters(r);
        var other = VcpuExitReason.InternalError;
        var t = new Thread(() => other = cpu2.Run().Reason);
        t.Start();
        var e = m.Cpu.Run();
        t.Join();
        Assert.Equal(VcpuExitReason.Hlt, e.Reason);
        Assert.Equal(VcpuExitReason.Hlt, other);
    }

    /// <summary>A 128-bit counter that two vCPUs each raise 20,000 times with LOCK CMPXCHG16B retry loops: a
    /// compare that fails writes the destination back with its own value in the same locked operation, so it can
    /// never undo the other vCPU's increment that landed after it read.</summary>
    [Fact]
    public void LockCmpxchg16bFromTwoVcpusLosesNoIncrements()
    {
        using var m = new TestMachine();
        const int N = 20000;
        byte[] Loop(ulong at) => TestMachine.Assemble(64, at, a =>
        {
            var outer = a.CreateLabel();
            var retry = a.CreateLabel();
            a.mov(r8d, N);
            a.Label(ref outer);
            a.mov(rax, __qword_ptr[0x7000]);
            a.mov(rdx, __qword_ptr[0x7008]);
            a.Label(ref retry);
            a.lea(rbx, __qword_ptr[rax + 1]);
            a.mov(rcx, rdx);
            a.@lock.cmpxchg16b(__xmmword_ptr[0x7000]);
            a.jnz(retry);
            a.dec(r8d);
            a.jnz(outer);
            a.hlt();
        });
        RunOnTwoVcpus(m, Loop(TestMachine.CodeAt), 0x14000, Loop(0x14000));
        Assert.Equal((ulong)(2 * N), m.Mem.R64(0x7000));
        Assert.Equal(0UL, m.Mem.R64(0x7008));
    }

    /// <summary>One vCPU keeps failing LOCK CMPXCHG16B on a pair while the other raises its low quadword 20,000
    /// times with LOCK INC: the failed compares change nothing, so every increment stays.</summary>
    [Fact]
    public void FailingCmpxchg16bLeavesAnotherVcpusLockedIncrements()
    {
        using var m = new TestMachine();
        const int N = 20000;
        var failing = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var loop = a.CreateLabel();
            a.mov(r8d, 4 * N);
            a.Label(ref loop);
            a.mov(rax, -1L);   // the low quadword never gets there
            a.xor(edx, edx);
            a.xor(ebx, ebx);
            a.xor(ecx, ecx);
            a.@lock.cmpxchg16b(__xmmword_ptr[0x7000]);
            a.dec(r8d);
            a.jnz(loop);
            a.hlt();
        });
        var counting = TestMachine.Assemble(64, 0x14000, a =>
        {
            var loop = a.CreateLabel();
            a.mov(r8d, N);
            a.Label(ref loop);
            a.@lock.inc(__qword_ptr[0x7000]);
            a.dec(r8d);
            a.jnz(loop);
            a.hlt();
        });
        RunOnTwoVcpus(m, failing, 0x14000, counting);
        Assert.Equal((ulong)N, m.Mem.R64(0x7000));
    }

    [Fact]
    public void ExternalInterruptWakesHltAndIretReturns()
    {
        using var m = new TestMachine();
        ulong handler = 0x12000;
        m.Mem.Write(handler, TestMachine.Assemble(64, handler, a =>
        {
            a.inc(ebx);
            a.iretq();
        }));
        m.SetGate64(0x40, handler);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.xor(ebx, ebx);
            a.sti();
            a.hlt();
            a.mov(ecx, 7);
            a.cli();
            a.hlt();
        }));
        var src = new QueueSource();
        m.Cpu.InterruptSource = src;
        m.RunToHlt();
        Assert.Equal(0UL, m.Regs.Rbx);
        Assert.True(m.Cpu.InterruptWindowOpen);
        src.Pending.Enqueue(0x40);
        m.RunToHlt();
        Assert.Equal(1UL, m.Regs.Rbx);
        Assert.Equal(7UL, m.Regs.Rcx);
        Assert.False(m.Cpu.InterruptWindowOpen);
        Assert.Equal(TestMachine.StackTop, m.Regs.Rsp);
    }

    [Fact]
    public void TripleFaultShutsDown()
    {
        using var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, 0);
            a.mov(__qword_ptr[rax], rax); // page 0 present, so use an empty IDT instead
            a.ud2();
        }));
        var s = m.SRegs;
        s.Idt.Limit = 0;
        m.Cpu.SetSpecialRegisters(s);
        Assert.Equal(VcpuExitReason.Shutdown, m.Cpu.Run().Reason);
    }

    [Fact]
    public void UserModeSyscallRoundTrip()
    {
        using var m = new TestMachine();
        ulong kernel = 0x12000, user = 0x14000;
        m.Mem.Write(kernel, TestMachine.Assemble(64, kernel, a =>
        {
            a.mov(ebx, 0x99);
            a.sysretq();
        }));
        m.Mem.Write(user, TestMachine.Assemble(64, user, a =>
        {
            a.mov(eax, 60);
            a.syscall();
            a.mov(edx, 0x77);
            a.@out(0x80, al);
        }));
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            // STAR: kernel CS 0x18 (SS 0x20); user base 0x28 -> 64-bit CS 0x3B, SS 0x33.
            a.mov(ecx, 0xC0000081);
            a.xor(eax, eax);
            a.mov(edx, (0x28 << 16) | 0x18);
            a.wrmsr();
            a.mov(ecx, 0xC0000082);
            a.mov(eax, (uint)kernel);
            a.xor(edx, edx);
            a.wrmsr();
            // iretq to user mode
            a.push(0x33);
            a.push(0x60000);
            a.push(0x2);
            a.push(0x3B);
            a.push((int)user);
            a.iretq();
        }));
        // The zeroed TSS's I/O map base (0) puts a permissive bitmap inside the TSS, so the
        // CPL-3 OUT is allowed and exits.
        var e = m.Run();
        var r = m.Regs;
        Assert.Equal(0x99UL, r.Rbx);
        Assert.Equal(0x77UL, r.Rdx);
        Assert.Equal(3, m.SRegs.Cs.Selector & 3);
        Assert.Equal(VcpuExitReason.Io, e.Reason);
        Assert.Equal(0x80u, e.Port);
    }

    [Fact]
    public void UserModeOutWithIoBitmapDeniedRaisesGp()
    {
        using var m = new TestMachine();
        ulong user = 0x14000, gp = 0x12000;
        m.Mem.Write(gp, TestMachine.Assemble(64, gp, a => { a.pop(rbx); a.hlt(); }));
        m.SetGate64(13, gp);
        m.Mem.Write(user, TestMachine.Assemble(64, user, a => { a.@out(0x80, al); }));
        m.Mem.W16(TestMachine.Tss + 0x66, 0x68);
        m.Mem.W8(TestMachine.Tss + 0x68 + 0x10, 0x01); // port 0x80 denied
        // RSP0 for the privilege change.
        m.Mem.W64(TestMachine.Tss + 4, 0x7F000);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.push(0x33); a.push(0x60000); a.push(0x2); a.push(0x3B); a.push((int)user);
            a.iretq();
        }));
        var s = m.SRegs; s.Tr.Limit = 0x68 + 0x20; m.Cpu.SetSpecialRegisters(s);
        m.RunToHlt();
        Assert.Equal(0UL, m.Regs.Rbx);
        Assert.Equal(0, m.SRegs.Cs.Selector & 3);
        Assert.Equal(0x7F000UL - 6 * 8 + 8, m.Regs.Rsp); // SS, RSP, RFLAGS, CS, RIP, error code; error popped
        Assert.Equal(0x14000UL, m.Mem.R64(0x7F000 - 40));
    }

    [Theory, Trait("Feature", "x86 system architecture emulation")]
    [InlineData(false, true)]
    [InlineData(true, true)]
    [InlineData(false, false)]
    [InlineData(true, false)]
    public void MisalignedUserAccessWithAlignmentCheckingRaisesAc(bool compiled, bool acSet)
    {
        using var m = new TestMachine(jit: compiled ? XenSharp.Cpu.JitSettings.Eager : XenSharp.Cpu.JitSettings.Off);
        ulong user = 0x14000, handler = 0x12000;
        m.Mem.Write(handler, TestMachine.Assemble(64, handler, a => { a.pop(rbx); a.pop(rcx); a.hlt(); }));
        m.SetGate64(17, handler);
        m.SetGate64(13, handler);
        m.Mem.Write(user, TestMachine.Assemble(64, user, a =>
        {
            a.mov(eax, __dword_ptr[0x6004]);   // aligned: fine
            a.mov(edx, 1);
            a.mov(eax, __dword_ptr[0x6005]);   // misaligned: #AC(0) when EFLAGS.AC is set
            a.mov(edx, 2);
            a.hlt();                           // #GP(0) at CPL 3
        }));
        m.Mem.W64(TestMachine.Tss + 4, 0x7F000);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, cr0); a.or(eax, 0x40000); a.mov(cr0, rax);        // CR0.AM
            a.push(0x33); a.push(0x60000); a.push(acSet ? 0x40002 : 0x2); a.push(0x3B); a.push((int)user);
            a.iretq();
        }));
        m.RunToHlt();
        Assert.Equal(0UL, m.Regs.Rbx);      // error code
        if (acSet)
        {
            Assert.Equal(1UL, m.Regs.Rdx);
            Assert.Equal(0x14000UL + 9 + 5, m.Regs.Rcx); // RIP of the faulting MOV (MOV EAX,moffs64 is 9 bytes)
        }
        else
        {
            Assert.Equal(2UL, m.Regs.Rdx);
            Assert.Equal(0x14000UL + 9 + 5 + 9 + 5, m.Regs.Rcx); // the HLT
        }
    }

    /// <summary>CR0.CD (bit 30) may be set alone, as Linux does around its MTRR setup; NW (bit 29) needs CD.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void CacheDisableAloneIsAValidCr0()
    {
        using var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, cr0); a.bts(eax, 30); a.mov(cr0, rax);
            a.mov(rbx, cr0);
            a.btr(eax, 30); a.mov(cr0, rax);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(1UL << 30, m.Regs.Rbx & (3UL << 29));
        Assert.Equal(0UL, m.SRegs.Cr0 & (3UL << 29));
    }

    [Fact]
    public void RealModeToLongModeTransition()
    {
        using var m = new TestMachine();
        m.WriteGdt(true);
        m.BuildIdentityPageTables(false);
        ulong at = 0x8000;
        // Real mode start at 0000:8000: enable PAE, load CR3, EFER.LME, CR0.PE|PG, far jump to 64-bit.
        var real = TestMachine.Assemble(16, at, a =>
        {
            a.cli();
            a.lgdt(__[0x8F00]);
            a.mov(eax, 0x20);
            a.mov(cr4, eax);
            a.mov(eax, (uint)TestMachine.Pml4);
            a.mov(cr3, eax);
            a.mov(ecx, 0xC0000080);
            a.rdmsr();
            a.or(eax, 0x100);
            a.wrmsr();
            a.mov(eax, cr0);
            a.or(eax, 0x80000001);
            a.mov(cr0, eax);
            a.jmp(0x18, 0x9000);
        });
        m.Mem.Write(at, real);
        m.Mem.W16(0x8F00, 0x4F);
        m.Mem.W32(0x8F02, (uint)TestMachine.Gdt);
        m.Mem.Write(0x9000, TestMachine.Assemble(64, 0x9000, a =>
        {
            a.mov(ax, 0x20);
            a.mov(ds, ax);
            a.mov(ss, ax);
            a.mov(rax, 0x123456789ABCDEFUL);
            a.mov(__qword_ptr[0x5000], rax);
            a.hlt();
        }));
        var s = m.SRegs;
        s.Cs = new Segment { Selector = 0, Base = 0, Limit = 0xFFFF, Attributes = 0x9B };
        m.Cpu.SetSpecialRegisters(s);
        m.Cpu.SetRegisters(new Registers { Rip = at, Rsp = 0x7000, Rflags = 2 });
        m.RunToHlt();
        Assert.Equal(0x123456789ABCDEFUL, m.Mem.R64(0x5000));
        var sr = m.SRegs;
        Assert.Equal(0x500UL, sr.Efer & 0x500);
        Assert.Equal(0x18, sr.Cs.Selector);
    }

    [Fact]
    public void CodeWrittenByAnotherVcpuIsSeen()
    {
        using var m = new TestMachine();
        var b = m.Engine.CreateVcpu(1, new DefaultCpuidPolicy(1));
        const ulong f = 0x30000, flag = 0x7000, bCode = 0x32000;
        // f: mov eax, 1; ret   (on its own page, executed only by vCPU 1)
        m.Mem.Write(f, TestMachine.Assemble(64, f, a => { a.mov(eax, 1); a.ret(); }));
        m.Mem.Write(bCode, TestMachine.Assemble(64, bCode, a =>
        {
            var loop = a.CreateLabel();
            var ready = a.CreateLabel();
            a.Label(ref ready);
            a.pause();
            a.cmp(__dword_ptr[flag + 4], 1);   // wait until vCPU 0 holds a writable TLB entry
            a.jne(ready);
            a.call(f);
            a.mov(__dword_ptr[flag], 1);
            a.Label(ref loop);
            a.call(f);
            a.cmp(eax, 2);
            a.jne(loop);
            a.hlt();
        }));
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var wait = a.CreateLabel();
            a.mov(__dword_ptr[f + 0x100], 0);     // a writable TLB entry for f's page, before it is code
            a.mov(__dword_ptr[flag + 4], 1);
            a.Label(ref wait);
            a.pause();
            a.cmp(__dword_ptr[flag], 1);
            a.jne(wait);
            a.mov(__dword_ptr[f + 1], 2);         // patch the immediate
            a.hlt();
        }));
        m.Cpu.GetSpecialRegisters(out var s);
        b.SetSpecialRegisters(s);
        b.SetRegisters(new Registers { Rip = bCode, Rsp = 0x70000, Rflags = 2 });
        VcpuExitReason bExit = VcpuExitReason.InternalError;
        var t = new Thread(() => bExit = b.Run().Reason);
        var watchdog = new Timer(_ => { b.RequestExit(); m.Cpu.RequestExit(); }, null, 20000, Timeout.Infinite);
        t.Start();
        var aExit = m.Cpu.Run().Reason;
        t.Join();
        watchdog.Dispose();
        Assert.Equal(VcpuExitReason.Hlt, aExit);
        Assert.Equal(VcpuExitReason.Hlt, bExit);
    }

    [Fact]
    public void IstGateSwitchesToTheIstStack()
    {
        using var m = new TestMachine();
        ulong h = 0x12000;
        m.Mem.Write(h, TestMachine.Assemble(64, h, a => { a.mov(rbx, rsp); a.hlt(); }));
        m.SetGate64(3, h, ist: 1, dpl: 0);
        m.Mem.W64(TestMachine.Tss + 0x24, 0x7E008);   // IST1, aligned down to 16 by delivery
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { a.int3(); a.hlt(); }));
        m.RunToHlt();
        Assert.Equal(0x7E000UL - 40, m.Regs.Rbx);
        Assert.Equal(TestMachine.CodeAt + 1, m.Mem.R64(0x7E000 - 40)); // INT3 pushes the next RIP
    }

    [Fact]
    public void Cmpxchg16bSwapsWhenEqual()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, 1); m.Mem.W64(0x6008, 2);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(eax, 1); a.mov(edx, 2); a.mov(ebx, 3); a.mov(ecx, 4);
            a.@lock.cmpxchg16b(__xmmword_ptr[0x6000]); a.setz(r8b);
            a.mov(eax, 9); a.mov(edx, 9);
            a.@lock.cmpxchg16b(__xmmword_ptr[0x6000]); a.setz(r9b);
            a.hlt();
        }));
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(1UL, r.R8 & 0xFF);
        Assert.Equal(0UL, r.R9 & 0xFF);
        Assert.Equal(3UL, r.Rax); Assert.Equal(4UL, r.Rdx);
        Assert.Equal(3UL, m.Mem.R64(0x6000)); Assert.Equal(4UL, m.Mem.R64(0x6008));
    }

    [Fact]
    public void NonCanonicalAccessRaisesGp()
    {
        using var m = new TestMachine();
        ulong h = 0x12000;
        m.Mem.Write(h, TestMachine.Assemble(64, h, a => { a.pop(rbx); a.mov(ecx, 13); a.hlt(); }));
        m.SetGate64(13, h);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, 0x0000800000000000UL);
            a.mov(rdx, __qword_ptr[rax]);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(13UL, m.Regs.Rcx);
        Assert.Equal(0UL, m.Regs.Rbx);
    }

    private sealed class QueueSource : IInterruptSource
    {
        public readonly Queue<int> Pending = new();
        public bool HasPendingInterrupt => Pending.Count > 0;
        public int Acknowledge() => Pending.Count > 0 ? Pending.Dequeue() : -1;
    }
}
