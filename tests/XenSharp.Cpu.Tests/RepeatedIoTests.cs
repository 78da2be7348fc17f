using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>
/// <see cref="IX86Vcpu.BatchStringIo"/>: a REP string instruction to a device leaves Run as one exit covering the
/// iterations within the buffer's and the MMIO's pages (Xen's rep ioreq, data_is_ptr, df), and the engine retires as
/// many iterations as the hypervisor says were done, with RCX, RSI, RDI and RIP as if they had run one at a time.
/// </summary>
public sealed unsafe class RepeatedIoTests
{
    private static TestMachine Machine(Action<Assembler> code)
    {
        var m = new TestMachine();
        ((IX86Vcpu)m.Cpu).BatchStringIo = true;
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { code(a); a.hlt(); }));
        return m;
    }

    [Fact]
    public void RepInswIsOneExitPerPageAndRetiresWhatTheDeviceDid()
    {
        const ulong buf = 0x50000 - 100;
        using var m = Machine(a => { a.mov(rdi, buf); a.mov(rcx, 256); a.mov(dx, 0x1F0); a.rep.insw(); });

        var e = m.Run();
        Assert.Equal(VcpuExitReason.Io, e.Reason);
        Assert.Equal((0x1F0u, 2, false, 50u, true, false, buf), (e.Port, e.Size, e.IsWrite, e.Count, e.DataIsPointer, e.Backward, e.Data));
        m.Cpu.CompleteExit(50);

        // The rest of the sector is in the next page; the device does only 6 of them this time.
        e = m.Run();
        Assert.Equal((VcpuExitReason.Io, 206u, 0x50000UL), (e.Reason, e.Count, e.Data));
        m.Cpu.CompleteExit(6);

        // The next Run retires those six (RDI 12 bytes on) and asks for the remaining 200.
        e = m.Run();
        Assert.Equal((VcpuExitReason.Io, 200u, 0x5000CUL), (e.Reason, e.Count, e.Data));
        Assert.Equal(200UL, m.Regs.Rcx);
        m.Cpu.CompleteExit(200);
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal((0UL, buf + 512), (r.Rcx, r.Rdi));
    }

    [Fact]
    public void RepInswWithDfSetRunsDownToTheStartOfThePage()
    {
        using var m = Machine(a => { a.std(); a.mov(rdi, 0x50010); a.mov(rcx, 100); a.mov(dx, 0x170); a.rep.insw(); a.cld(); });

        var e = m.Run();
        // 0x50010, 0x5000E, ... 0x50000: nine words in this page.
        Assert.Equal((VcpuExitReason.Io, 9u, true, 0x50010UL), (e.Reason, e.Count, e.Backward, e.Data));
        m.Cpu.CompleteExit(9);
        e = m.Run();
        Assert.Equal((VcpuExitReason.Io, 91u, true, 0x4FFFEUL), (e.Reason, e.Count, e.Backward, e.Data));
        m.Cpu.CompleteExit(91);
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal((0UL, 0x50010UL - 200), (r.Rcx, r.Rdi));
    }

    [Fact]
    public void RepOutsbNamesItsSourceBuffer()
    {
        using var m = Machine(a => { a.mov(rsi, 0x30000); a.mov(rcx, 40); a.mov(dx, 0x3F8); a.rep.outsb(); });
        var e = m.Run();
        Assert.Equal((VcpuExitReason.Io, true, 40u, true, 0x30000UL, 1), (e.Reason, e.IsWrite, e.Count, e.DataIsPointer, e.Data, e.Size));
        m.Cpu.CompleteExit(40);
        m.RunToHlt();
        Assert.Equal((0UL, 0x30000UL + 40), (m.Regs.Rcx, m.Regs.Rsi));
    }

    [Fact]
    public void WithoutBatchingEveryIterationIsAnExit()
    {
        using var m = new TestMachine();
        m.Mem.W8(0x30000, 0x41);
        m.Mem.W8(0x30001, 0x42);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rsi, 0x30000); a.mov(rcx, 2); a.mov(dx, 0x3F8); a.rep.outsb(); a.hlt();
        }));
        var e = m.Run();
        Assert.Equal((VcpuExitReason.Io, 0u, 0x41UL), (e.Reason, e.Count, e.Data));
        e = m.Run();
        Assert.Equal((VcpuExitReason.Io, 0u, 0x42UL), (e.Reason, e.Count, e.Data));
        m.RunToHlt();
    }

    [Fact]
    public void RepMovsdToMmioIsOneWriteExitPerMmioPage()
    {
        using var m = Machine(a => { a.mov(rsi, 0x30000); a.mov(rdi, 0xA0F00); a.mov(rcx, 750); a.rep.movsd(); });
        for (ulong gfn = 0xA0; gfn < 0xC0; gfn++)
            m.Mem.Mmio.Add(gfn);

        var e = m.Run();
        Assert.Equal((VcpuExitReason.Mmio, true, 0xA0F00UL, 64u, true, 0x30000UL, 4),
            (e.Reason, e.IsWrite, e.Address, e.Count, e.DataIsPointer, e.Data, e.Size));
        m.Cpu.CompleteExit(64);
        e = m.Run();
        Assert.Equal((VcpuExitReason.Mmio, 0xA1000UL, 686u, 0x30100UL), (e.Reason, e.Address, e.Count, e.Data));
        m.Cpu.CompleteExit(686);
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal((0UL, 0x30000UL + 3000, 0xA0F00UL + 3000), (r.Rcx, r.Rsi, r.Rdi));
    }

    [Fact]
    public void RepStosdToMmioWritesOneValueCountTimes()
    {
        using var m = Machine(a => { a.mov(rdi, 0xA3000); a.mov(eax, 0xDEADBEEF); a.mov(rcx, 100); a.rep.stosd(); });
        m.Mem.Mmio.Add(0xA3);
        var e = m.Run();
        Assert.Equal((VcpuExitReason.Mmio, true, 0xA3000UL, 100u, false, 0xDEADBEEFUL),
            (e.Reason, e.IsWrite, e.Address, e.Count, e.DataIsPointer, e.Data));
        m.Cpu.CompleteExit(100);
        m.RunToHlt();
        Assert.Equal((0UL, 0xA3000UL + 400), (m.Regs.Rcx, m.Regs.Rdi));
    }

    [Fact]
    public void RamToRamCopiesStayInTheEngine()
    {
        using var m = Machine(a => { a.mov(rsi, 0x30000); a.mov(rdi, 0x40000); a.mov(rcx, 1000); a.rep.movsd(); });
        m.Mem.W32(0x30000 + 4 * 999, 0x12345678);
        m.RunToHlt();
        Assert.Equal(0x12345678u, m.Mem.R32(0x40000 + 4 * 999));
    }

    [Fact]
    public void CodeTheDeviceFillsIsDecodedAfresh()
    {
        const ulong code = 0x40000;
        using var m = new TestMachine();
        ((IX86Vcpu)m.Cpu).BatchStringIo = true;
        m.Mem.Write(code, TestMachine.Assemble(64, code, a => { a.mov(eax, 1); a.hlt(); }));
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rdi, code); a.mov(rcx, 6); a.mov(dx, 0x1F0); a.rep.insb(); a.hlt();
        }));
        m.RunFrom(code);
        Assert.Equal(1UL, m.Regs.Rax);

        var r = m.Regs;
        r.Rip = TestMachine.CodeAt;
        m.Cpu.SetRegisters(r);
        var e = m.Run();
        Assert.Equal((VcpuExitReason.Io, 6u, code), (e.Reason, e.Count, e.Data));
        // The device model writes the new code into guest memory itself, as QEMU does through its mapping.
        m.Mem.Write(code, TestMachine.Assemble(64, code, a => { a.mov(eax, 2); a.hlt(); }));
        m.Cpu.CompleteExit(6);
        m.RunToHlt();

        m.RunFrom(code);
        Assert.Equal(2UL, m.Regs.Rax);
    }
}
