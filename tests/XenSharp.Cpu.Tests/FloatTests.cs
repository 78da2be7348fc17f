using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

public class FloatTests
{
    private static TestMachine Run64(Action<Assembler> build)
    {
        var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { build(a); a.hlt(); }));
        var s = m.SRegs; s.Cr4 |= 0x40000; m.Cpu.SetSpecialRegisters(s); // OSXSAVE
        m.RunToHlt();
        return m;
    }

    [Fact]
    public void StrlenStyleSse2ScanFindsTheTerminator()
    {
        using var m = Run64(a =>
        {
            a.mov(rdi, 0x6000);
            a.pxor(xmm0, xmm0);
            a.movdqu(xmm1, __xmmword_ptr[rdi]);
            a.pcmpeqb(xmm1, xmm0);
            a.pmovmskb(eax, xmm1);
            a.bsf(eax, eax);
        });
        // Can't write memory before Run in this helper; the page is zero, so the first byte matches.
        Assert.Equal(0UL, m.Regs.Rax);
    }

    [Fact]
    public void PackedIntegerOps()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, 0x0807060504030201); m.Mem.W64(0x6008, 0x100F0E0D0C0B0A09);
        m.Mem.W64(0x6010, 0x0101010101010101); m.Mem.W64(0x6018, 0xFFFFFFFFFFFFFFFF);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.movdqa(xmm0, __xmmword_ptr[0x6000]);
            a.movdqa(xmm1, __xmmword_ptr[0x6010]);
            a.paddb(xmm0, xmm1);             // +1 / -1
            a.movdqa(__xmmword_ptr[0x7000], xmm0);
            a.pshufd(xmm2, xmm0, 0x1B);      // reverse dwords
            a.movdqu(__xmmword_ptr[0x7010], xmm2);
            a.movq(rax, xmm0);
            a.psrldq(xmm0, 8);
            a.movq(rbx, xmm0);
            a.punpcklbw(xmm3, xmm3);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(0x0908070605040302UL, m.Mem.R64(0x7000));
        Assert.Equal(0x0F0E0D0C0B0A0908UL, m.Mem.R64(0x7008));
        Assert.Equal(0x0B0A09080F0E0D0CUL, m.Mem.R64(0x7010));
        Assert.Equal(0x0908070605040302UL, m.Regs.Rax);
        Assert.Equal(0x0F0E0D0C0B0A0908UL, m.Regs.Rbx);
    }

    [Fact]
    public void MisalignedMovdqaRaisesGp()
    {
        using var m = new TestMachine();
        ulong h = 0x12000;
        m.Mem.Write(h, TestMachine.Assemble(64, h, a => { a.mov(ebx, 13); a.hlt(); }));
        m.SetGate64(13, h);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { a.movdqa(xmm0, __xmmword_ptr[0x6008]); a.hlt(); }));
        m.RunToHlt();
        Assert.Equal(13UL, m.Regs.Rbx);
    }

    [Fact]
    public void ScalarDoubleArithmeticAndConversions()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, (ulong)BitConverter.DoubleToInt64Bits(2.5));
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.movsd(xmm0, __qword_ptr[0x6000]);
            a.mov(eax, 3);
            a.cvtsi2sd(xmm1, eax);
            a.mulsd(xmm0, xmm1);           // 7.5
            a.cvttsd2si(ebx, xmm0);        // 7
            a.cvtsd2si(ecx, xmm0);         // 8 (round to even)
            a.sqrtsd(xmm2, xmm1);
            a.ucomisd(xmm0, xmm1);          // 7.5 > 3
            a.seta(dl);
            a.cvtsd2ss(xmm3, xmm0);
            a.movd(esi, xmm3);
            a.movsd(__qword_ptr[0x7000], xmm2);
            a.hlt();
        }));
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(7UL, r.Rbx);
        Assert.Equal(8UL, r.Rcx);
        Assert.Equal(1UL, r.Rdx & 0xFF);
        Assert.Equal((ulong)(uint)BitConverter.SingleToInt32Bits(7.5f), r.Rsi);
        Assert.Equal(Math.Sqrt(3), BitConverter.Int64BitsToDouble((long)m.Mem.R64(0x7000)));
    }

    [Fact]
    public void X87ArithmeticAndIntegerStore()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, (ulong)BitConverter.DoubleToInt64Bits(1.5));
        m.Mem.W32(0x6008, 10);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.fninit();
            a.fld(__qword_ptr[0x6000]);
            a.fild(__dword_ptr[0x6008]);
            a.fmulp(st1, st0);              // 15
            a.fld1();
            a.faddp(st1, st0);              // 16
            a.fsqrt();                      // 4
            a.fist(__dword_ptr[0x7000]);
            a.fstp(__qword_ptr[0x7008]);
            a.fnstsw(ax);
            a.fldpi();
            a.fstp(__tword_ptr[0x7010]);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(4u, m.Mem.R32(0x7000));
        Assert.Equal(4.0, BitConverter.Int64BitsToDouble((long)m.Mem.R64(0x7008)));
        Assert.Equal(0UL, (m.Regs.Rax >> 11) & 7); // TOP back to 0
        Assert.Equal(0xC90FDAA22168C235UL, m.Mem.R64(0x7010)); // pi to 64 bits, rounded to nearest
        Assert.Equal(0x4000, m.Mem.R16(0x7018));
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void X87LoadsAndStoresOf80BitValuesKeepEveryBit()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, 0xC000_0000_0000_0123); m.Mem.W16(0x6008, 0x3FFF); // 1.5 plus bits binary64 cannot hold
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.fld(__tword_ptr[0x6000]);
            a.fld(st0);
            a.fst(st2);
            a.fstp(__tword_ptr[0x7000]);
            a.fstp(__tword_ptr[0x7010]);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(0xC000_0000_0000_0123UL, m.Mem.R64(0x7000));
        Assert.Equal(0x3FFF, m.Mem.R16(0x7008));
        Assert.Equal(0xC000_0000_0000_0123UL, m.Mem.R64(0x7010));
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void MmxRegistersAreTheX87MantissasAndEmmsEmptiesTheTags()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, 0x0004_0003_0002_0001); m.Mem.W64(0x6008, 0x7FFF_0010_0020_FFFF);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.fld1();                              // TOP = 7: MMX must reset it to 0
            a.movq(mm0, __qword_ptr[0x6000]);
            a.paddsw(mm0, __qword_ptr[0x6008]);    // 0x7FFF+4 saturates, 0xFFFF+1 wraps to 0
            a.movq(mm1, mm0);
            a.punpckhwd(mm1, mm0);                 // high words of both, interleaved
            a.movq(mm2, __qword_ptr[0x6000]);
            a.packsswb(mm2, mm0);
            a.fxsave(__[0x8000]);
            a.movq(rax, mm1);
            a.movd(ebx, mm2);
            a.emms();
            a.fxsave(__[0x8200]);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(0x7FFF_0013_0022_0000UL, m.Mem.R64(0x8000 + 32));      // R0 = MM0
        Assert.Equal(0xFFFF, m.Mem.R16(0x8000 + 40));                      // exponent all ones
        Assert.Equal(0x7FFF_7FFF_0013_0013UL, m.Regs.Rax);
        Assert.Equal(0x0403_0201UL, m.Regs.Rbx);
        Assert.Equal(0xFF, m.Mem.R8(0x8000 + 4));                          // all tags valid
        Assert.Equal(0, (m.Mem.R16(0x8002) >> 11) & 7);                    // TOP = 0
        Assert.Equal(0, m.Mem.R8(0x8200 + 4));                             // EMMS: all empty
    }

    [Fact]
    public void FxsaveAndXsaveRoundTripXmmAndControlWords()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, 0x1122334455667788); m.Mem.W64(0x6008, 0x99AABBCCDDEEFF00);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.movdqu(xmm5, __xmmword_ptr[0x6000]);
            a.fxsave(__[0x8000]);
            a.pxor(xmm5, xmm5);
            a.fxrstor(__[0x8000]);
            a.movq(rbx, xmm5);
            a.xor(ecx, ecx);
            a.xgetbv();
            a.mov(r8, rax);
            a.mov(eax, 3); a.xor(edx, edx);
            a.xsetbv();
            a.xsave(__[0x9000]);
            a.pxor(xmm5, xmm5);
            a.xrstor(__[0x9000]);
            a.pextrq(r9, xmm5, 1);
            a.hlt();
        }));
        var s = m.SRegs; s.Cr4 |= 0x40000; m.Cpu.SetSpecialRegisters(s);
        m.RunToHlt();
        Assert.Equal(0x1122334455667788UL, m.Regs.Rbx);
        Assert.Equal(0x99AABBCCDDEEFF00UL, m.Regs.R9);
        Assert.Equal(1UL, m.Regs.R8);   // XCR0 = x87 only at reset
        Assert.Equal(0x37F, m.Mem.R16(0x8000));
        Assert.Equal(0x1F80u, m.Mem.R32(0x8018));
        Assert.Equal(3UL, m.Mem.R64(0x9000 + 512)); // XSTATE_BV: x87 and SSE
    }

    [Fact]
    public void Ssse3Sse41ClmulAndAes()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, 0x0706050403020100); m.Mem.W64(0x6008, 0x0F0E0D0C0B0A0908);
        m.Mem.W64(0x6010, 0x8000000000000000); m.Mem.W64(0x6018, 2);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.movdqu(xmm0, __xmmword_ptr[0x6000]);
            a.pxor(xmm1, xmm1);
            a.pshufb(xmm0, xmm1);           // every byte = byte 0 = 0
            a.movq(rax, xmm0);
            a.movdqu(xmm2, __xmmword_ptr[0x6000]);
            a.movdqu(xmm3, __xmmword_ptr[0x6000]);
            a.palignr(xmm2, xmm3, 4);       // bytes 4..19 of (xmm2:xmm3)
            a.movq(rbx, xmm2);
            a.movdqu(xmm4, __xmmword_ptr[0x6010]);
            a.movdqa(xmm5, xmm4);
            a.pclmulqdq(xmm5, xmm4, 0x10);  // (1<<63) clmul 2
            a.pextrq(rcx, xmm5, 1);
            a.movq(rdx, xmm5);
            a.phaddd(xmm3, xmm3);
            a.movd(esi, xmm3);              // 0x03020100 + 0x07060504
            a.pxor(xmm6, xmm6); a.pxor(xmm7, xmm7);
            a.hlt();
        }));
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(0UL, r.Rax);
        Assert.Equal(0x0B0A090807060504UL, r.Rbx);
        Assert.Equal(1UL, r.Rcx);
        Assert.Equal(0UL, r.Rdx);
        Assert.Equal((ulong)(uint)(0x03020100 + 0x07060504), r.Rsi);
    }

    [Fact]
    public void AesRoundOfZeroStateAndKey()
    {
        if (!System.Runtime.Intrinsics.X86.Aes.IsSupported) return; // not advertised on such hosts
        using var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.pxor(xmm0, xmm0); a.pxor(xmm1, xmm1);
            a.aesenc(xmm0, xmm1);
            a.movq(rax, xmm0);
            a.pxor(xmm2, xmm2);
            a.aeskeygenassist(xmm3, xmm2, 0x01);
            a.pextrq(rbx, xmm3, 0);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(0x6363636363636363UL, m.Regs.Rax);
        // SubWord(0) = 0x63636363; RotWord(..) ^ Rcon = 0x63636362 in dword 1.
        Assert.Equal(0x6363636263636363UL, m.Regs.Rbx);
    }

    [Fact]
    public void SaturatingPackAndUnpackLanes()
    {
        using var m = new TestMachine();
        m.Mem.W64(0x6000, 0xFAFAFAFAFAFAFAFA); m.Mem.W64(0x6008, 0x0102030405060708);
        m.Mem.W64(0x6010, 0x0A0A0A0A0A0A0A0A); m.Mem.W64(0x6018, 0x1112131415161718);
        m.Mem.W64(0x6020, 0x7FFF_012C_FF00_0005); m.Mem.W64(0x6028, 0x8000_0000_0001_FFFF); // words: 5, -256, 300, 32767 | -1, 1, 0, -32768
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.movdqu(xmm0, __xmmword_ptr[0x6000]);
            a.movdqu(xmm1, __xmmword_ptr[0x6010]);
            a.paddusb(xmm0, xmm1);              // low qword saturates to FF
            a.movq(rax, xmm0);
            a.movdqu(xmm2, __xmmword_ptr[0x6020]);
            a.movdqa(xmm3, xmm2);
            a.packsswb(xmm3, xmm3);             // 5, -128, 127, 127, -1, 1, 0, -128
            a.movq(rbx, xmm3);
            a.movdqu(xmm4, __xmmword_ptr[0x6000]);
            a.movdqu(xmm5, __xmmword_ptr[0x6010]);
            a.punpckhbw(xmm4, xmm5);
            a.movq(rcx, xmm4);
            a.movdqu(xmm6, __xmmword_ptr[0x6000]);
            a.psadbw(xmm6, xmm1);               // |FA-0A| * 8 = 0x780
            a.movq(rdx, xmm6);
            a.hlt();
        }));
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(0xFFFFFFFFFFFFFFFFUL, r.Rax);
        Assert.Equal(0x8000_01FF_7F7F_8005UL, r.Rbx);
        Assert.Equal(0x1505160617071808UL, r.Rcx);
        Assert.Equal(0x780UL, r.Rdx);
    }
}
