using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>Debug registers, single-step and the Debug exit in flat 32-bit protected mode.</summary>
public class DebugTests
{
    private const ulong Handler = 0x30000;
    private const ulong Data = 0x5000;

    /// <summary>#DB handler: saves the frame's EIP and DR6 at 0x6000/0x6004, bumps a counter at
    /// 0x6008, sets RF in the frame and returns.</summary>
    private static void InstallDbHandler(TestMachine m)
    {
        m.Mem.Write(Handler, TestMachine.Assemble(32, Handler, a =>
        {
            a.push(eax);
            a.mov(eax, __dword_ptr[esp + 4]);
            a.mov(__dword_ptr[0x6000], eax);
            a.mov(eax, dr6);
            a.mov(__dword_ptr[0x6004], eax);
            a.inc(__dword_ptr[0x6008]);
            a.or(__dword_ptr[esp + 12], 0x10000);
            a.pop(eax);
            a.iretd();
        }));
        m.SetGate32(1, Handler);
    }

    [Fact]
    public void InstructionBreakpointFaultsOnceAndRfStepsOverIt()
    {
        using var m = new TestMachine();
        InstallDbHandler(m);
        var target = TestMachine.CodeAt + 0x100;
        m.Mem.Write(target, TestMachine.Assemble(32, target, a => { a.mov(ebx, 7); a.hlt(); }));
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(eax, (uint)target);
            a.mov(dr0, eax);
            a.mov(eax, 0x1); // L0, execute, length 1
            a.mov(dr7, eax);
            a.jmp(target);
        }));
        m.RunToHlt();
        Assert.Equal(7UL, m.Regs.Rbx);
        Assert.Equal(1u, m.Mem.R32(0x6008));
        Assert.Equal((uint)target, m.Mem.R32(0x6000));
        Assert.Equal(1u, m.Mem.R32(0x6004) & 0xF);
    }

    [Fact]
    public void DataWriteBreakpointTrapsAfterTheWrite()
    {
        using var m = new TestMachine();
        InstallDbHandler(m);
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            var after = a.CreateLabel();
            a.mov(eax, (uint)Data + 4);
            a.mov(dr1, eax);
            a.mov(eax, 0x00D0_0004); // L1, write, 4 bytes
            a.mov(dr7, eax);
            a.mov(ecx, __dword_ptr[Data + 4]);     // a read does not match a write breakpoint
            a.mov(__dword_ptr[Data + 6], 0x1234);  // overlaps the watched dword
            a.Label(ref after);
            a.nop();
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(1u, m.Mem.R32(0x6008));
        Assert.Equal(2u, m.Mem.R32(0x6004) & 0xF);
        Assert.Equal(0x1234u, m.Mem.R32(Data + 6));
        // The trap reports the instruction after the write.
        var nop = TestMachine.CodeAt + (ulong)TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(eax, (uint)Data + 4); a.mov(dr1, eax); a.mov(eax, 0x00D0_0004); a.mov(dr7, eax);
            a.mov(ecx, __dword_ptr[Data + 4]); a.mov(__dword_ptr[Data + 6], 0x1234);
        }).Length;
        Assert.Equal((uint)nop, m.Mem.R32(0x6000));
    }

    [Fact]
    public void GeneralDetectFaultsOnMovDrAndClearsGd()
    {
        using var m = new TestMachine();
        InstallDbHandler(m);
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(eax, 0x2000);
            a.mov(dr7, eax);
            a.mov(ebx, dr0);
            a.mov(ecx, dr7);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(1u, m.Mem.R32(0x6008));
        Assert.Equal(0x2000u, m.Mem.R32(0x6004) & 0x2000);
        Assert.Equal(0UL, m.Regs.Rcx & 0x2000);
    }

    [Fact]
    public void InterceptedBreakpointsLeaveRunWithDebugExit()
    {
        using var m = new TestMachine();
        var cpu = (IX86Vcpu)m.Cpu;
        cpu.InterceptDebug = true;
        var bp = TestMachine.CodeAt + 0x40;
        m.Mem.Write(bp, TestMachine.Assemble(32, bp, a => { a.mov(edx, 9); a.hlt(); }));
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.int3();
            a.mov(eax, (uint)bp);
            a.mov(dr0, eax);
            a.mov(eax, 0x2);
            a.mov(dr7, eax);
            a.jmp(bp);
        }));
        var e = m.Run();
        Assert.Equal(VcpuExitReason.Debug, e.Reason);
        Assert.Equal(3u, e.Port);
        Assert.Equal(TestMachine.CodeAt + 1, e.Address);
        e = m.Run();
        Assert.Equal(VcpuExitReason.Debug, e.Reason);
        Assert.Equal(1u, e.Port);
        Assert.Equal(1UL, e.Data);
        Assert.Equal(bp, m.Regs.Rip);
        // Resume over the breakpoint with RF.
        var r = m.Regs; r.Rflags |= 0x10000; m.Cpu.SetRegisters(r);
        m.RunToHlt();
        Assert.Equal(9UL, m.Regs.Rdx);
    }

    [Fact]
    public void MonitorTrapLeavesRunAfterEachInstructionUnseenByTheGuest()
    {
        using var m = new TestMachine();
        var cpu = (IX86Vcpu)m.Cpu;
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(eax, 1);   // 5 bytes
            a.add(eax, 2);   // 5 bytes (ADD EAX, imm32)
            a.pushfd();
            a.pop(ebx);
            a.hlt();
        }));
        cpu.MonitorTrap = true;
        var e = m.Run();
        Assert.Equal(VcpuExitReason.MonitorTrap, e.Reason);
        Assert.Equal(TestMachine.CodeAt + 5, e.Address);
        Assert.Equal(1UL, m.Regs.Rax);
        e = m.Run();
        Assert.Equal(VcpuExitReason.MonitorTrap, e.Reason);
        Assert.Equal(TestMachine.CodeAt + 10, e.Address);
        Assert.Equal(e.Address, m.Regs.Rip);
        Assert.Equal(3UL, m.Regs.Rax);
        cpu.MonitorTrap = false;
        m.RunToHlt();
        // The guest's flags never showed a trap flag, and no #DB reached it.
        Assert.Equal(0UL, m.Regs.Rbx & 0x100);
    }

    [Fact]
    public void PopPastAStackSegmentLimitRaisesStackFault()
    {
        using var m = new TestMachine();
        m.Mem.Write(Handler, TestMachine.Assemble(32, Handler, a =>
        {
            a.pop(eax); // error code
            a.mov(__dword_ptr[0x6010], eax);
            a.mov(eax, __dword_ptr[esp]);
            a.mov(__dword_ptr[0x6014], eax);
            a.hlt();
        }));
        m.SetGate32(12, Handler);
        m.Mem.W32(0x6010, 0xFFFF);
        byte[] prefix = TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(ax, 0x50);
            a.mov(ss, ax); // expand-up data, base 0, limit 0xFFF
            a.mov(esp, 0xFFC);
            a.pop(eax);    // 0xFFC..0xFFF: fine
            a.mov(esp, 0xFFE);
        });
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(ax, 0x50);
            a.mov(ss, ax);
            a.mov(esp, 0xFFC);
            a.pop(eax);
            a.mov(esp, 0xFFE);
            a.pop(eax);    // 0xFFE..0x1001 crosses the limit
            a.hlt();
        }));
        m.Mem.W64(TestMachine.Gdt + 0x50, 0x0040_9300_0000_0FFFUL);
        var s = m.SRegs; s.Gdt.Limit = 0x57; m.Cpu.SetSpecialRegisters(s);
        m.RunToHlt();
        Assert.Equal(0u, m.Mem.R32(0x6010));
        Assert.Equal(TestMachine.CodeAt + (ulong)prefix.Length, m.Mem.R32(0x6014));
    }

    [Fact]
    public void InstructionBreakpointComesBeforeTheCsLimitFault()
    {
        using var m = new TestMachine();
        InstallDbHandler(m);
        const ulong gpHandler = 0x31000;
        m.Mem.Write(gpHandler, TestMachine.Assemble(32, gpHandler, a => { a.pop(eax); a.mov(__dword_ptr[0x6010], 0x13); a.hlt(); }));
        m.SetGate32(13, gpHandler);
        var target = TestMachine.CodeAt + 0x100;
        m.Mem.Write(target, TestMachine.Assemble(32, target, a => { a.mov(ebx, 7); a.hlt(); }));
        // Code segment 0x50: base 0, limit ends inside the 5-byte MOV at the target.
        ulong limit = target + 1;
        m.Mem.W64(TestMachine.Gdt + 0x50, 0x0040_9B00_0000_0000UL | (limit & 0xFFFF) | (((limit >> 16) & 0xF) << 48));
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(eax, (uint)target);
            a.mov(dr0, eax);
            a.mov(eax, 0x1);
            a.mov(dr7, eax);
            a.jmp(0x50, (uint)target);
        }));
        var s = m.SRegs; s.Gdt.Limit = 0x57; m.Cpu.SetSpecialRegisters(s);
        m.RunToHlt();
        Assert.Equal(1u, m.Mem.R32(0x6008));
        Assert.Equal((uint)target, m.Mem.R32(0x6000));
        Assert.Equal(0x13u, m.Mem.R32(0x6010));
        Assert.Equal(0UL, m.Regs.Rbx);
    }
}
