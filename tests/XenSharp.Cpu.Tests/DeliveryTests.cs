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

    [Fact]
    public void MisalignedStringElementInRing3RaisesAlignmentCheck()
    {
        using var m = new TestMachine();
        m.Mem.Write(Handler, TestMachine.Assemble(32, Handler, a => { a.pop(eax); a.mov(__dword_ptr[0x6000], eax); a.mov(__dword_ptr[0x6004], edi); a.hlt(); }));
        m.SetGate32(17, Handler);
        m.Mem.W32(TestMachine.Tss + 4, 0x70000);
        m.Mem.W32(TestMachine.Tss + 8, 0x10);
        m.Mem.W32(0x6000, 0xFFFF);
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(edi, 0x5000);
            a.mov(ecx, 2);
            a.rep.stosd();   // aligned: fine
            a.mov(edi, 0x5102);
            a.stosd();       // misaligned
            a.hlt();
        }));
        var s = m.SRegs;
        s.Cr0 |= 0x40000;
        s.Cs = new Segment { Selector = 0x2B, Limit = 0xFFFF_FFFF, Attributes = 0xC0FB };
        s.Ss = s.Ds = s.Es = new Segment { Selector = 0x33, Limit = 0xFFFF_FFFF, Attributes = 0xC0F3 };
        m.Cpu.SetSpecialRegisters(s);
        var r = m.Regs; r.Rflags |= 0x40000; m.Cpu.SetRegisters(r);
        m.RunToHlt();
        Assert.Equal(0u, m.Mem.R32(0x6000));
        Assert.Equal(0x5102u, m.Mem.R32(0x6004));
    }
}
