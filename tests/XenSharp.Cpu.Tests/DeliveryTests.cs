using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>Error codes of exceptions raised while another event is being delivered.</summary>
public class DeliveryTests
{
    private const ulong Handler = 0x30000;

    [Fact]
    public void NotPresentGateOfAnExceptionReportsIdtIndexWithExt()
    {
        using var m = new TestMachine();
        m.Mem.Write(Handler, TestMachine.Assemble(32, Handler, a => { a.pop(eax); a.mov(__dword_ptr[0x6000], eax); a.hlt(); }));
        m.SetGate32(11, Handler);
        m.SetGate32(6, Handler);
        m.Mem.W8(TestMachine.Idt + 6 * 8 + 5, 0x0E); // #UD's gate not present
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a => a.ud2()));
        m.RunToHlt();
        Assert.Equal(6u * 8 + 2 + 1, m.Mem.R32(0x6000));
    }

    [Fact]
    public void SoftwareInterruptThroughNotPresentGateHasNoExt()
    {
        using var m = new TestMachine();
        m.Mem.Write(Handler, TestMachine.Assemble(32, Handler, a => { a.pop(eax); a.mov(__dword_ptr[0x6000], eax); a.hlt(); }));
        m.SetGate32(11, Handler);
        m.SetGate32(0x40, Handler);
        m.Mem.W8(TestMachine.Idt + 0x40 * 8 + 5, 0x0E);
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a => a.@int(0x40)));
        m.RunToHlt();
        Assert.Equal(0x40u * 8 + 2, m.Mem.R32(0x6000));
    }

    [Fact]
    public void IstSlotBeyondTheTssLimitRaisesInvalidTss()
    {
        using var m = new TestMachine();
        // #TS handler (IST 0) stores its error code; #UD goes through IST 7, past a TSS limit of 0x57.
        m.Mem.Write(Handler, TestMachine.Assemble(64, Handler, a => { a.pop(rax); a.mov(__qword_ptr[0x6000], rax); a.hlt(); }));
        m.SetGate64(10, Handler);
        m.SetGate64(6, Handler, ist: 7);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => a.ud2()));
        var s = m.SRegs; s.Tr.Limit = 0x57; m.Cpu.SetSpecialRegisters(s);
        m.RunToHlt();
        Assert.Equal(0x40UL | 1, m.Mem.R64(0x6000));
    }
}
