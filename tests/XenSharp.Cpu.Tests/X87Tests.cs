using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>x87 behaviour the differential tester does not reach: precision control results
/// checked by value, #MF delivery, FNSAVE's full tag word, BCD. (The oracle compares everything
/// else against the host CPU.)</summary>
public class X87Tests
{
    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(0x007F, 0xAAAAAB0000000000UL, true)]   // 24-bit significand, to nearest: rounds up
    [InlineData(0x027F, 0xAAAAAAAAAAAAA800UL, false)]  // 53-bit, to nearest: rounds down
    [InlineData(0x0B7F, 0xAAAAAAAAAAAAAAABUL, true)]   // 64-bit, toward +inf
    [InlineData(0x0F7F, 0xAAAAAAAAAAAAAAAAUL, false)]  // 64-bit, toward zero
    public void OneThirdHonoursPrecisionAndRoundingControl(ushort fcw, ulong mantissa, bool roundedUp)
    {
        using var m = new TestMachine();
        m.Mem.W16(0x6000, fcw);
        m.Mem.W32(0x6004, 3);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.fninit();
            a.fldcw(__word_ptr[0x6000]);
            a.fld1();
            a.fidiv(__dword_ptr[0x6004]);
            a.fnstsw(ax);
            a.fstp(__tword_ptr[0x7000]);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(mantissa, m.Mem.R64(0x7000));
        Assert.Equal(0x3FFD, m.Mem.R16(0x7008));
        ulong fsw = m.Regs.Rax & 0xFFFF;
        Assert.Equal(0x20UL, fsw & 0x3F);                 // PE only
        Assert.Equal(roundedUp, (fsw & 0x200) != 0);      // C1: rounded up
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void UnmaskedZeroDivideLeavesTheStackAndRaisesMfAtTheNextWaitingInstruction()
    {
        using var m = new TestMachine();
        m.Mem.W16(0x6000, 0x037B); // ZE unmasked
        ulong h = 0x12000;
        m.Mem.Write(h, TestMachine.Assemble(64, h, a => { a.mov(ebx, 16); a.fnstsw(ax); a.hlt(); }));
        m.SetGate64(16, h);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.fninit();
            a.fldcw(__word_ptr[0x6000]);
            a.fld1();
            a.fldz();
            a.fdivp(st1, st0);   // 1 / 0: not performed, no pop
            a.fnstsw(__word_ptr[0x7000]);
            a.wait();           // #MF here
            a.mov(ebx, 1);
            a.hlt();
        }));
        var s = m.SRegs; s.Cr0 |= 0x20; m.Cpu.SetSpecialRegisters(s); // CR0.NE: native x87 error reporting
        m.RunToHlt();
        Assert.Equal(16UL, m.Regs.Rbx);
        // B, TOP = 6, ES, ZE; the registers are untouched.
        Assert.Equal(0xB084, m.Mem.R16(0x7000));
        Assert.Equal(0xB084UL, m.Regs.Rax & 0xFFFF);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void WithoutCr0NeUnmaskedExceptionsDoNotFault()
    {
        using var m = new TestMachine();
        m.Mem.W16(0x6000, 0x037B);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.fninit();
            a.fldcw(__word_ptr[0x6000]);
            a.fld1();
            a.fldz();
            a.fdivp(st1, st0);
            a.wait();
            a.mov(ebx, 1);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(1UL, m.Regs.Rbx);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void FnsaveWritesTheFullTagWordAndFrstorRestoresEveryBit()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, 0x8000_0000_0000_0001); m.Mem.W16(0x6008, 0); // pseudo-denormal
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.fninit();
            a.fld(__tword_ptr[0x6000]);  // R7: special
            a.fldz();                    // R6: zero
            a.fld1();                    // R5: valid
            a.fnsave(__[0x8000]);        // then FNINIT
            a.fnstsw(__word_ptr[0x7100]);
            a.frstor(__[0x8000]);
            a.fstp(__tword_ptr[0x7000]);
            a.fstp(__tword_ptr[0x7010]);
            a.fstp(__tword_ptr[0x7020]);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(0x93FF, m.Mem.R16(0x8008));              // R7 special, R6 zero, R5 valid, others empty
        Assert.Equal(5 << 11, m.Mem.R16(0x8004) & 0x3800);   // TOP
        Assert.Equal(0, m.Mem.R16(0x7100));                  // FNSAVE reinitialised the FPU
        Assert.Equal(0x8000_0000_0000_0000UL, m.Mem.R64(0x7000)); Assert.Equal(0x3FFF, m.Mem.R16(0x7008));
        Assert.Equal(0UL, m.Mem.R64(0x7010)); Assert.Equal(0, m.Mem.R16(0x7018));
        Assert.Equal(0x8000_0000_0000_0001UL, m.Mem.R64(0x7020)); Assert.Equal(0, m.Mem.R16(0x7028));
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void PackedBcdRoundTripsAndOutOfRangeStoresTheIndefinite()
    {
        using var m = new TestMachine();
        byte[] bcd = [0x78, 0x56, 0x34, 0x12, 0x90, 0x78, 0x56, 0x34, 0x12, 0x80]; // -123456789012345678
        m.Mem.Write(0x6000, bcd);
        m.Mem.W64(0x6010, 1_000_000_000_000_000_000UL);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.fninit();
            a.fbld(__tword_ptr[0x6000]);
            a.fld(st0);
            a.fistp(__qword_ptr[0x7020]);
            a.fbstp(__tword_ptr[0x7000]);
            a.fild(__qword_ptr[0x6010]);  // 10^18 has 19 digits
            a.fbstp(__tword_ptr[0x7010]);
            a.fnstsw(ax);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(unchecked((ulong)-123456789012345678L), m.Mem.R64(0x7020));
        Assert.Equal(0x1234567890123456UL << 8 | 0x78, m.Mem.R64(0x7000));
        Assert.Equal(0x8012, m.Mem.R16(0x7008));
        Assert.Equal(0xC000_0000_0000_0000UL, m.Mem.R64(0x7010));
        Assert.Equal(0xFFFF, m.Mem.R16(0x7018));
        Assert.Equal(1UL, m.Regs.Rax & 0x3F); // IE
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void FpremReducesLargeExponentDifferencesInSteps()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, 0xC000_0000_0000_0000); m.Mem.W16(0x6008, 0x3FFF + 200); // 1.5 × 2^200
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.fninit();
            a.fldpi();
            a.fld(__tword_ptr[0x6000]);
            a.xor(ecx, ecx);
            var again = a.CreateLabel();
            a.Label(ref again);
            a.inc(ecx);
            a.fprem();
            a.fnstsw(ax);
            a.test(ax, 0x400);   // C2: incomplete
            a.jnz(again);
            a.fstp(__tword_ptr[0x7000]);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.True(m.Regs.Rcx > 1);
        // The remainder is below π and not negative.
        ushort se = m.Mem.R16(0x7008);
        Assert.Equal(0, se & 0x8000);
        Assert.True((se & 0x7FFF) <= 0x4000);
    }
}
