using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>SSE floating point under MXCSR (rounding, DAZ, FTZ, flags, #XM) and SSE4.2 strings.</summary>
public class SseTests
{
    const ulong In = 0x6000, Out = 0x7000, Handler = 0x12000;

    /// <summary>Loads MXCSR from In, XMM0/XMM1 from In+16/In+32, runs the body, then stores XMM0 to Out and MXCSR to Out+16.
    /// Vectors 6, 13 and 19 land in a handler that stores MXCSR and XMM0 the same way and leaves the vector in RBX.</summary>
    static TestMachine Run(uint mxcsr, ulong x0, ulong x1, Action<Assembler> body, bool osxmmexcpt = true)
    {
        var m = new TestMachine();
        m.Mem.W32(In, mxcsr);
        m.Mem.W64(In + 16, x0);
        m.Mem.W64(In + 32, x1);
        foreach (int v in new[] { 6, 13, 19 })
        {
            ulong h = Handler + (ulong)v * 0x100;
            m.Mem.Write(h, TestMachine.Assemble(64, h, a =>
            {
                a.mov(ebx, v);
                a.movdqu(__xmmword_ptr[Out], xmm0);
                a.stmxcsr(__dword_ptr[Out + 16]);
                a.hlt();
            }));
            m.SetGate64(v, h);
        }
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.ldmxcsr(__dword_ptr[In]);
            a.movq(xmm0, __qword_ptr[In + 16]);
            a.movq(xmm1, __qword_ptr[In + 32]);
            a.mov(ebx, 0);
            body(a);
            a.movdqu(__xmmword_ptr[Out], xmm0);
            a.stmxcsr(__dword_ptr[Out + 16]);
            a.hlt();
        }));
        if (!osxmmexcpt)
        {
            var s = m.SRegs; s.Cr4 &= ~0x400UL; m.Cpu.SetSpecialRegisters(s);
        }
        m.RunToHlt();
        return m;
    }

    static ulong F(float f) => BitConverter.SingleToUInt32Bits(f);

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(0x1F80u, 0x3EAAAAABu)] // nearest
    [InlineData(0x3F80u, 0x3EAAAAAAu)] // down
    [InlineData(0x5F80u, 0x3EAAAAABu)] // up
    [InlineData(0x7F80u, 0x3EAAAAAAu)] // toward zero
    public void DivssRoundsAsMxcsrSaysAndSetsPrecision(uint mxcsr, uint third)
    {
        using var m = Run(mxcsr, F(1f), F(3f), a => a.divss(xmm0, xmm1));
        Assert.Equal(third, m.Mem.R32(Out));
        Assert.Equal(mxcsr | 0x20, m.Mem.R32(Out + 16)); // PE
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(0x1F80u, 0xC000000000000000UL)] // -2.5 to nearest even: -2
    [InlineData(0x3F80u, 0xC008000000000000UL)] // down: -3
    [InlineData(0x5F80u, 0xC000000000000000UL)] // up: -2
    public void RoundsdWithMxcsrControl(uint mxcsr, ulong expected)
    {
        using var m = Run(mxcsr, 0, 0xC004000000000000UL, a => a.roundsd(xmm0, xmm1, 4));
        Assert.Equal(expected, m.Mem.R64(Out));
        Assert.Equal(mxcsr | 0x20, m.Mem.R32(Out + 16));
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void FlushToZeroAndDenormalsAreZero()
    {
        // 2^-100 * 2^-40 is tiny: FTZ gives +0 with UE and PE.
        using (var m = Run(0x9F80, F(MathF.Pow(2, -100)), F(MathF.Pow(2, -40)), a => a.mulss(xmm0, xmm1)))
        {
            Assert.Equal(0u, m.Mem.R32(Out));
            Assert.Equal(0x9F80u | 0x30, m.Mem.R32(Out + 16));
        }
        // Without FTZ the (exact) denormal result is delivered; a masked underflow that is exact raises nothing.
        using (var m = Run(0x1F80, F(MathF.Pow(2, -100)), F(MathF.Pow(2, -40)), a => a.mulss(xmm0, xmm1)))
        {
            Assert.Equal(F(MathF.Pow(2, -140)), m.Mem.R32(Out));
            Assert.Equal(0x1F80u, m.Mem.R32(Out + 16));
        }
        // DAZ: a denormal operand is zero, and DE is not raised.
        using (var m = Run(0x1FC0, 1, F(1f), a => a.mulss(xmm0, xmm1)))
        {
            Assert.Equal(0u, m.Mem.R32(Out));
            Assert.Equal(0x1FC0u, m.Mem.R32(Out + 16));
        }
        using (var m = Run(0x1F80, 1, F(1f), a => a.mulss(xmm0, xmm1)))
        {
            Assert.Equal(1u, m.Mem.R32(Out));
            Assert.Equal(0x1F80u | 0x02, m.Mem.R32(Out + 16)); // DE
        }
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void OverflowAndInvalidFlagsAndDefaultResults()
    {
        using (var m = Run(0x7F80, F(float.MaxValue), F(2f), a => a.mulss(xmm0, xmm1)))
        {
            Assert.Equal(F(float.MaxValue), m.Mem.R32(Out)); // toward zero: the largest finite
            Assert.Equal(0x7F80u | 0x28, m.Mem.R32(Out + 16)); // OE PE
        }
        using (var m = Run(0x1F80, F(float.PositiveInfinity), F(float.PositiveInfinity), a => a.subss(xmm0, xmm1)))
        {
            Assert.Equal(0xFFC00000u, m.Mem.R32(Out)); // the default QNaN
            Assert.Equal(0x1F81u, m.Mem.R32(Out + 16)); // IE
        }
        using (var m = Run(0x1F80, 0, F(float.NaN), a => a.cvtss2si(eax, xmm1)))
            Assert.Equal(0x1F81u, m.Mem.R32(Out + 16));
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void UnmaskedExceptionRaisesXmWithTheDestinationUntouched()
    {
        // Divide by zero with ZM clear: #XM, ZE set, XMM0 still 1.0.
        using var m = Run(0x1D80, F(1f), F(0f), a => a.divss(xmm0, xmm1));
        Assert.Equal(19UL, m.Regs.Rbx);
        Assert.Equal(F(1f), m.Mem.R32(Out));
        Assert.Equal(0x1D84u, m.Mem.R32(Out + 16));
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void UnmaskedPrecisionFaultsEvenWhenPeIsAlreadySet()
    {
        using var m = Run(0x0FA0, F(1f), F(3f), a => a.divps(xmm0, xmm1));
        Assert.Equal(19UL, m.Regs.Rbx);
        Assert.Equal(F(1f), m.Mem.R32(Out));
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void UnmaskedExceptionWithoutOsxmmexcptRaisesUd()
    {
        using var m = Run(0x1D80, F(1f), F(0f), a => a.divss(xmm0, xmm1), osxmmexcpt: false);
        Assert.Equal(6UL, m.Regs.Rbx);
        Assert.Equal(F(1f), m.Mem.R32(Out));
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void MisalignedPackedArithmeticRaisesGpButMovupsDoesNot()
    {
        using (var m = Run(0x1F80, 0, 0, a => a.addps(xmm0, __xmmword_ptr[In + 8])))
            Assert.Equal(13UL, m.Regs.Rbx);
        using (var m = Run(0x1F80, 0, 0, a => a.movshdup(xmm0, __xmmword_ptr[In + 8])))
            Assert.Equal(13UL, m.Regs.Rbx);
        using (var m = Run(0x1F80, 0, 0, a => { a.movups(xmm0, __xmmword_ptr[In + 8]); a.addss(xmm0, __dword_ptr[In + 4]); }))
            Assert.Equal(0UL, m.Regs.Rbx);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void PcmpistriFindsASubstringAndPcmpistrmMasksMatches()
    {
        using var m = new TestMachine();
        m.Mem.Write(0x6000, "lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0"u8);
        m.Mem.Write(0x6010, "hello, world\0\0\0\0"u8);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.movdqu(xmm1, __xmmword_ptr[0x6000]);
            a.pcmpistri(xmm1, __xmmword_ptr[0x6010], 0x0C); // unsigned bytes, equal ordered, least significant index
            a.pushfq();
            a.pop(rdx);
            a.movdqu(xmm2, __xmmword_ptr[0x6010]);
            a.pcmpistrm(xmm1, xmm2, 0x40); // equal any, byte mask
            a.movdqu(__xmmword_ptr[0x7000], xmm0);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(3UL, m.Regs.Rcx);
        Assert.Equal(0x1UL, m.Regs.Rdx & 0x1);   // CF: a match
        Assert.Equal(0x40UL, m.Regs.Rdx & 0x40); // ZF: the haystack ends inside the vector
        Assert.Equal(0x80UL, m.Regs.Rdx & 0x80); // SF: so does the needle
        // 'l' and 'o' in "hello, world": positions 2, 3, 4, 8, 10.
        Assert.Equal(0x0000_00FF_FFFF_0000UL, m.Mem.R64(0x7000));
        Assert.Equal(0x0000_0000_00FF_00FFUL, m.Mem.R64(0x7008));
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void CpuidAdvertisesSse42()
    {
        new DefaultCpuidPolicy(apicId: 0).Cpuid(1, 0, out _, out _, out uint ecx, out _);
        Assert.NotEqual(0u, ecx & (1u << 20));
    }
}
