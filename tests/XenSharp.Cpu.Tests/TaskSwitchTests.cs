using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>Faults found while loading the new task's state are raised in the new task.</summary>
public class TaskSwitchTests
{
    private const ulong TssA = 0x4000, Handler = 0x30000, StackA = 0x60000;

    private static void SetupTask(TestMachine m, ushort cs, ushort ss, ushort ldt = 0)
    {
        // 32-bit TSS at 0x4000 (selector 0x50): EIP 0x20000, ESP 0x60000, the given CS/SS/LDT.
        m.Mem.W32(TssA + 0x20, 0x20000);
        m.Mem.W32(TssA + 0x24, 2);
        m.Mem.W32(TssA + 0x38, (uint)StackA);
        m.Mem.W32(TssA + 0x4C, cs);
        m.Mem.W32(TssA + 0x50, ss);
        m.Mem.W32(TssA + 0x48, 0x10); m.Mem.W32(TssA + 0x54, 0x10);
        m.Mem.W32(TssA + 0x60, ldt);
        m.Mem.W64(TestMachine.Gdt + 0x50, 0x0000_8900_0000_0067UL | ((TssA & 0xFFFFFF) << 16));
        // #TS handler: error code to 0x6000, TR to 0x6004, halt.
        m.Mem.Write(Handler, TestMachine.Assemble(32, Handler, a =>
        {
            a.pop(eax);
            a.mov(__dword_ptr[0x6000], eax);
            a.str(ax);
            a.mov(__word_ptr[0x6004], ax);
            a.hlt();
        }));
        m.SetGate32(10, Handler);
    }

    private static void Run(TestMachine m)
    {
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a => { a.jmp(0x50, 0); a.hlt(); }));
        var s = m.SRegs; s.Gdt.Limit = 0x57; m.Cpu.SetSpecialRegisters(s);
        m.Mem.W64(TestMachine.Gdt + 0x40, 0x0000_8B00_0000_0067UL | ((TestMachine.Tss & 0xFFFFFF) << 16)); // current TSS busy
        m.RunToHlt();
    }

    [Fact]
    public void DataSegmentAsNewCsRaisesInvalidTssInTheNewTask()
    {
        using var m = new TestMachine();
        SetupTask(m, cs: 0x10, ss: 0x10);
        Run(m);
        Assert.Equal(0x10u, m.Mem.R32(0x6000));
        Assert.Equal(0x50, m.Mem.R16(0x6004));
        // The old task's state was saved: EIP after the JMP.
        Assert.Equal((uint)TestMachine.CodeAt + 7, m.Mem.R32(TestMachine.Tss + 0x20));
    }

    [Fact]
    public void StackSelectorWithWrongRplRaisesInvalidTss()
    {
        using var m = new TestMachine();
        SetupTask(m, cs: 0x08, ss: 0x13);
        Run(m);
        Assert.Equal(0x10u, m.Mem.R32(0x6000));
        Assert.Equal(0x50, m.Mem.R16(0x6004));
    }

    [Fact]
    public void LdtSelectorNamingACodeSegmentRaisesInvalidTss()
    {
        using var m = new TestMachine();
        SetupTask(m, cs: 0x08, ss: 0x10, ldt: 0x08);
        Run(m);
        Assert.Equal(0x08u, m.Mem.R32(0x6000));
    }

    [Fact]
    public void TaskWithVmSetRunsInVirtual8086Mode()
    {
        using var m = new TestMachine();
        SetupTask(m, cs: 0x0700, ss: 0x0700);
        m.Mem.W32(TssA + 0x24, 0x20002);          // EFLAGS: VM
        m.Mem.W32(TssA + 0x38, 0x0F00);
        m.Mem.W32(TssA + 0x20, 0);
        m.Mem.W32(TssA + 0x54, 0x0800);           // DS
        m.Mem.W32(TssA + 4, 0x70000);             // ESP0 / SS0 for the #GP out of VM86
        m.Mem.W32(TssA + 8, 0x10);
        m.Mem.Write(0x7000, [0xA1, 0x00, 0x00, 0xF4]); // mov ax, [0]; hlt
        m.Mem.W16(0x8000, 0xBEEF);
        m.Mem.Write(Handler, TestMachine.Assemble(32, Handler, a =>
        {
            a.pop(ebx);
            a.mov(__dword_ptr[0x6000], ebx);
            a.mov(__dword_ptr[0x6008], eax);
            a.mov(ebx, __dword_ptr[esp + 8]);
            a.mov(__dword_ptr[0x600C], ebx);      // saved EFLAGS
            a.hlt();
        }));
        m.SetGate32(13, Handler);
        Run(m);
        Assert.Equal(0u, m.Mem.R32(0x6000));
        Assert.Equal(0xBEEFu, m.Mem.R32(0x6008) & 0xFFFF);
        Assert.NotEqual(0u, m.Mem.R32(0x600C) & 0x20000);
    }
}
