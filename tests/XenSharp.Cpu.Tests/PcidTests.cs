using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>Process-context identifiers: CR4.PCIDE, PCIDs in CR3, CR3 bit 63 and INVPCID (SDM 4.10.1, INVPCID).</summary>
public class PcidTests
{
    const ulong Handler = 0x12000;
    const ulong Desc = 0x8000;

    /// <summary>64-bit code with a #GP handler that leaves the error code in RBX, the faulting RIP in RCX and halts.</summary>
    static TestMachine Machine(Action<Assembler> code)
    {
        var m = new TestMachine();
        m.Mem.Write(Handler, TestMachine.Assemble(64, Handler, a => { a.pop(rbx); a.pop(rcx); a.hlt(); }));
        m.SetGate64(13, Handler);
        m.Mem.W64(0x6000, 1); m.Mem.W64(0x7000, 2);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { code(a); a.mov(r14, 0x600d); a.hlt(); }), fourK: true);
        return m;
    }

    static void SetPcide(Assembler a) { a.mov(rax, cr4); a.bts(rax, 17); a.mov(cr4, rax); }

    /// <summary>Points 0x6000 at 0x7000 (value 2), runs INVPCID with the given type and descriptor,
    /// then reads 0x6000 into R10.</summary>
    static void RemapThenInvpcid(Assembler a, int type, int pcid, int address)
    {
        a.mov(__qword_ptr[TestMachine.Pt + 6 * 8], 0x7000 | 7);
        a.mov(__qword_ptr[Desc], pcid);
        a.mov(__qword_ptr[Desc + 8], address);
        a.mov(edx, type);
        a.invpcid(rdx, __[Desc]);
        a.mov(r10, __qword_ptr[0x6000]);
    }

    [Fact, Trait("Feature", "x86 system architecture emulation")]
    public void PcidIsAdvertised()
    {
        new DefaultCpuidPolicy().Cpuid(1, 0, out _, out _, out uint ecx, out _);
        Assert.NotEqual(0u, ecx & (1u << 17));
    }

    [Fact, Trait("Feature", "x86 system architecture emulation")]
    public void PcideCannotBeSetWhileCr3HoldsANonzeroPcid()
    {
        using var m = Machine(a =>
        {
            a.mov(rax, cr3); a.or(rax, 5); a.mov(cr3, rax);
            a.mov(r15, 1);
            SetPcide(a);
        });
        m.RunToHlt();
        Assert.Equal((1UL, 0UL, 0UL), (m.Regs.R15, m.Regs.Rbx, m.Regs.R14));
        Assert.Equal(0UL, m.SRegs.Cr4 & (1UL << 17));
    }

    [Fact, Trait("Feature", "x86 system architecture emulation")]
    public void PcidsInCr3LeaveTheTableAddressAloneAndBit63IsNeverStored()
    {
        using var m = Machine(a =>
        {
            SetPcide(a);
            a.mov(rax, cr3); a.or(rax, 7); a.bts(rax, 63); a.mov(cr3, rax);   // PCID 7, keep its translations
            a.mov(r8, __qword_ptr[0x6000]);
            a.mov(r9, cr3);
            // Remap 0x6000 to 0x7000 and invalidate it for PCID 7 alone (type 0).
            RemapThenInvpcid(a, 0, 7, 0x6000);
        });
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(0x600dUL, r.R14);
        Assert.Equal(1UL, r.R8);
        Assert.Equal(TestMachine.Pml4 | 7, r.R9);
        Assert.Equal(2UL, r.R10);
        Assert.NotEqual(0UL, m.SRegs.Cr4 & (1UL << 17));
    }

    [Theory, Trait("Feature", "x86 system architecture emulation")]
    [InlineData(4, 0UL, 0UL, true)]                       // no such type
    [InlineData(1, 0x1000UL, 0UL, true)]                  // reserved bits above the PCID
    [InlineData(0, 0UL, 0x0000_8000_0000_0000UL, true)]   // type 0 with a non-canonical address
    [InlineData(0, 3UL, 0x6000UL, false)]                 // PCID 3 while CR4.PCIDE is clear
    [InlineData(1, 3UL, 0UL, false)]
    public void InvpcidRefusesWhatTheArchitectureRefuses(int type, ulong pcidWord, ulong address, bool withPcide)
    {
        using var m = Machine(a =>
        {
            if (withPcide) SetPcide(a);
            a.mov(rax, pcidWord); a.mov(__qword_ptr[Desc], rax);
            a.mov(rax, address); a.mov(__qword_ptr[Desc + 8], rax);
            a.mov(edx, type);
            a.mov(r15, 3);
            a.invpcid(rdx, __[Desc]);
        });
        m.RunToHlt();
        Assert.Equal((3UL, 0UL, 0UL), (m.Regs.R15, m.Regs.Rbx, m.Regs.R14));
    }

    [Theory, Trait("Feature", "x86 system architecture emulation")]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void EveryInvpcidTypeDropsAChangedMapping(int type)
    {
        using var m = Machine(a =>
        {
            SetPcide(a);
            a.mov(r8, __qword_ptr[0x6000]);
            RemapThenInvpcid(a, type, 0, 0);
        });
        m.RunToHlt();
        Assert.Equal((0x600dUL, 1UL, 2UL), (m.Regs.R14, m.Regs.R8, m.Regs.R10));
    }
}
