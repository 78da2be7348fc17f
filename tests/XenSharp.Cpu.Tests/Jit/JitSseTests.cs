using Iced.Intel;
using XenSharp.Cpu.Jit;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>SSE moves, logic, compares, unpacks, shifts, PSHUFD, PSHUFB, PMOVMSKB, MOVD/MOVQ and MOVSD/MOVSS compiled inline end
/// exactly as interpreted, without handing the instructions to the interpreter; and what they cannot do inline (a
/// misaligned operand that must be aligned, CR0.TS, an access across a page) still faults or completes as the
/// interpreter does.</summary>
public class JitSseTests
{
    const ulong Data = 0x60000, Out = 0x70000, Handler = 0x12000;

    static readonly ulong[] Pattern =
    [
        0x0011_2233_4455_6677UL, 0x8899_AABB_CCDD_EEFFUL, 0x7F80_0001_FFFE_8000UL, 0x0000_0000_0000_0000UL,
        0x6162_6364_0065_6667UL, 0x4142_4344_4546_4748UL, 0xFFFF_FFFF_0000_0001UL, 0x1234_5678_9ABC_DEF0UL,
    ];

    /// <summary>At Data+0x300 as doubles and at Data+0x380 as floats.</summary>
    static readonly double[] Doubles = [1.5, -2.25, 3.0e10, 0.1, 0.0, 7.0, double.NaN, 1e-310];

    sealed record Outcome(Registers Regs, byte[] Out, ulong Retired, ulong HandedOff, long Compiled, int Vector);

    /// <summary>Runs <paramref name="body"/> with XMM0-XMM7 loaded from the data page, then stores XMM0-XMM7 at Out.
    /// Vectors 6, 7 and 13 land in a handler that records the vector in R15 and stops.</summary>
    static Outcome Run(Action<Assembler> body, bool eager, Action<TestMachine>? setup = null)
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rsi, Data);
            // Each page read and written once by plain moves first, so that the soft TLB holds them all: the first
            // access to a page misses it, and an SSE access that misses runs in the interpreter.
            foreach (ulong page in new[] { Data, Data + 0x1000, Data + 0x2000, Out })
            {
                a.mov(rax, page); a.mov(rbx, __qword_ptr[rax]); a.mov(__qword_ptr[rax], rbx);
            }
            for (int r = 0; r < 8; r++) a.movdqu(Xmm(r), __xmmword_ptr[rsi + r * 16]);
            a.mov(rdi, Out);
            a.xor(r15d, r15d);
            body(a);
            for (int r = 0; r < 8; r++) a.movdqu(__xmmword_ptr[rdi + r * 16], Xmm(r));
            a.stmxcsr(__dword_ptr[rdi + 0x80]);
            a.hlt();
        });
        using var m = new TestMachine(jit: eager ? JitSettings.Eager : JitSettings.Off);
        for (int k = 0; k < Pattern.Length; k++) m.Mem.W64(Data + (ulong)k * 8, Pattern[k]);
        for (ulong k = 0; k < 64; k++) m.Mem.W64(Data + 0x100 + k * 8, Pattern[k % 8] ^ (k * 0x0101_0101_0101_0101UL));
        for (int k = 0; k < Doubles.Length; k++) m.Mem.W64(Data + 0x300 + (ulong)k * 8, BitConverter.DoubleToUInt64Bits(Doubles[k]));
        for (int k = 0; k < Doubles.Length; k++) m.Mem.W32(Data + 0x380 + (ulong)k * 4, BitConverter.SingleToUInt32Bits((float)Doubles[k]));
        foreach (int v in new[] { 6, 7, 13, 19 })
        {
            ulong h = Handler + (ulong)v * 0x100;
            m.Mem.Write(h, TestMachine.Assemble(64, h, a => { a.mov(r15d, v); a.hlt(); }));
            m.SetGate64(v, h);
        }
        m.Enter64(code, fourK: true);
        setup?.Invoke(m);
        m.RunToHlt();
        Assert.True(m.Engine.JitFailures == 0, m.Engine.LastJitFailure);
        var cpu = (X86Vcpu)m.Cpu;
        var outBytes = new byte[0x1000];
        for (int k = 0; k < outBytes.Length; k++) outBytes[k] = m.Mem.R8(Out + (ulong)k);
        return new Outcome(m.Regs, outBytes, m.Cpu.InstructionsRetired, (ulong)cpu.JitHandOffs, m.Engine.CompiledBlocks, (int)m.Regs.R15);
    }

    static AssemblerRegisterXMM Xmm(int r) => r switch
    {
        0 => xmm0, 1 => xmm1, 2 => xmm2, 3 => xmm3, 4 => xmm4, 5 => xmm5, 6 => xmm6, _ => xmm7,
    };

    /// <summary>Both ways; the retired counts are compared when no fault ends the run (a fault's frame is what
    /// matters there).</summary>
    static (Outcome Interp, Outcome Jit) Both(Action<Assembler> body, Action<TestMachine>? setup = null)
    {
        var i = Run(body, eager: false, setup);
        var j = Run(body, eager: true, setup);
        Assert.Equal(0, i.Compiled);
        Assert.True(j.Compiled > 0);
        Assert.Equal(i.Out, j.Out);
        Assert.Equal(i.Regs, j.Regs);
        Assert.Equal(i.Vector, j.Vector);
        if (i.Vector == 0) Assert.Equal(i.Retired, j.Retired);
        return (i, j);
    }

    public static TheoryData<string> Forms() => new(s_forms.Keys);

    static readonly Dictionary<string, Action<Assembler>> s_forms = new()
    {
        ["moves"] = a =>
        {
            a.movdqa(xmm0, xmm5); a.movaps(xmm1, __xmmword_ptr[rsi + 0x100]); a.movapd(xmm2, __xmmword_ptr[rsi + 0x110]);
            a.movups(xmm3, __xmmword_ptr[rsi + 0x103]); a.movupd(xmm4, __xmmword_ptr[rsi + 0x10F]); a.movdqu(xmm6, __xmmword_ptr[rsi + 0x121]);
            a.movdqa(__xmmword_ptr[rsi + 0x180], xmm6); a.movups(__xmmword_ptr[rsi + 0x1A5], xmm1); a.movdqu(xmm7, __xmmword_ptr[rsi + 0x180]);
        },
        ["logic"] = a =>
        {
            a.pxor(xmm0, xmm1); a.por(xmm2, __xmmword_ptr[rsi + 0x120]); a.pand(xmm3, xmm0); a.pandn(xmm4, __xmmword_ptr[rsi + 0x130]);
            a.xorps(xmm5, xmm5); a.orps(xmm6, xmm2); a.andpd(xmm7, xmm3); a.andnps(xmm1, xmm4); a.xorpd(xmm2, __xmmword_ptr[rsi + 0x140]);
        },
        ["compares and arithmetic"] = a =>
        {
            a.pcmpeqb(xmm0, xmm3); a.pcmpeqw(xmm1, __xmmword_ptr[rsi + 0x100]); a.pcmpeqd(xmm2, xmm6); a.pcmpgtb(xmm4, xmm5);
            a.pcmpgtw(xmm5, xmm1); a.pcmpgtd(xmm6, __xmmword_ptr[rsi + 0x110]); a.paddb(xmm7, xmm0); a.paddw(xmm3, xmm7);
            a.paddd(xmm0, xmm1); a.paddq(xmm1, __xmmword_ptr[rsi + 0x150]); a.psubb(xmm2, xmm5); a.psubw(xmm3, xmm2);
            a.psubd(xmm4, xmm6); a.psubq(xmm5, xmm0); a.pminub(xmm6, xmm7); a.pmaxub(xmm7, __xmmword_ptr[rsi + 0x160]);
        },
        ["unpacks and shuffles"] = a =>
        {
            a.punpcklbw(xmm0, xmm1); a.punpcklwd(xmm1, xmm2); a.punpckldq(xmm2, __xmmword_ptr[rsi + 0x100]); a.punpcklqdq(xmm3, xmm4);
            a.punpckhbw(xmm4, xmm5); a.punpckhwd(xmm5, xmm6); a.punpckhdq(xmm6, xmm7); a.punpckhqdq(xmm7, __xmmword_ptr[rsi + 0x110]);
            a.pshufd(xmm0, xmm7, 0x1B); a.pshufd(xmm1, __xmmword_ptr[rsi + 0x120], 0); a.pshufd(xmm2, xmm2, 0xE4);
        },
        ["shifts by an immediate"] = a =>
        {
            // Each shift by each count, of a different pattern each time, stored at Out+0x100 on.
            int k = 0;
            foreach (var shift in s_shiftsByImmediate)
                foreach (byte n in ShiftCounts)
                {
                    a.movdqu(xmm0, __xmmword_ptr[rsi + 0x100 + k % 32 * 16]);
                    shift(a, n);
                    a.movdqu(__xmmword_ptr[rdi + 0x100 + k * 16], xmm0);
                    k++;
                }
            // On other registers too.
            a.psrad(xmm1, 3); a.pslldq(xmm2, 9); a.psrlq(xmm3, 40); a.psllw(xmm7, 17);
        },
        ["shifts by a register"] = a =>
        {
            // The count is the low quadword of an aligned m128 or of XMM1; the high quadword is noise.
            int k = 0;
            foreach (var shift in s_shiftsByRegister)
                foreach (ulong n in RegisterCounts)
                {
                    a.mov(rax, n); a.mov(__qword_ptr[rsi + 0x400], rax);
                    a.mov(rax, 0x0102_0304_0506_0708UL * (ulong)(k + 1)); a.mov(__qword_ptr[rsi + 0x408], rax);
                    a.movdqu(xmm0, __xmmword_ptr[rsi + 0x100 + k % 32 * 16]);
                    if (k % 2 == 0) a.AddInstruction(Instruction.Create(shift, Register.XMM0, new MemoryOperand(Register.RSI, 0x400)));
                    else { a.movdqa(xmm1, __xmmword_ptr[rsi + 0x400]); a.AddInstruction(Instruction.Create(shift, Register.XMM0, Register.XMM1)); }
                    a.movdqu(__xmmword_ptr[rdi + 0x100 + k * 16], xmm0);
                    k++;
                }
        },
        ["pshufb"] = a =>
        {
            // Selectors with the top bit set, with bits 4-6 set and clear, from registers and aligned memory.
            a.movdqu(xmm4, __xmmword_ptr[rsi + 0x140]); a.movdqu(xmm5, __xmmword_ptr[rsi + 0x1B0]);
            a.movdqa(xmm6, xmm0);
            a.pshufb(xmm0, xmm1); a.pshufb(xmm2, __xmmword_ptr[rsi + 0x100]); a.pshufb(xmm3, xmm6);
            a.pshufb(xmm4, __xmmword_ptr[rsi + 0x130]); a.pshufb(xmm5, xmm5); a.pshufb(xmm6, xmm4);
            a.pshufb(xmm7, xmm2);
        },
        ["scalar moves"] = a =>
        {
            a.mov(rax, 0xDEAD_BEEF_CAFE_F00DUL);
            a.movd(xmm0, eax); a.movq(xmm1, rax); a.movd(xmm2, __dword_ptr[rsi + 0x105]); a.movq(xmm3, __qword_ptr[rsi + 0x10B]);
            a.movd(ecx, xmm4); a.movq(rdx, xmm5); a.movd(__dword_ptr[rsi + 0x1C1], xmm6); a.movq(__qword_ptr[rsi + 0x1C9], xmm7);
            a.movq(xmm4, xmm6); a.movq(xmm5, __qword_ptr[rsi + 0x1C9]);
            a.movsd(xmm6, xmm1); a.movss(xmm7, xmm2); a.movsd(xmm0, __qword_ptr[rsi + 0x140]); a.movss(xmm1, __dword_ptr[rsi + 0x147]);
            a.movsd(__qword_ptr[rsi + 0x1E0], xmm3); a.movss(__dword_ptr[rsi + 0x1EB], xmm4);
            a.movdqu(xmm2, __xmmword_ptr[rsi + 0x1C0]); a.movdqu(xmm3, __xmmword_ptr[rsi + 0x1E0]);
        },
        ["scalar float"] = a =>
        {
            a.movsd(xmm0, __qword_ptr[rsi + 0x300]); a.movsd(xmm1, __qword_ptr[rsi + 0x308]); a.movsd(xmm2, __qword_ptr[rsi + 0x318]);
            a.addsd(xmm0, xmm1); a.mulsd(xmm0, __qword_ptr[rsi + 0x310]); a.subsd(xmm1, xmm2); a.divsd(xmm2, __qword_ptr[rsi + 0x328]);
            a.movss(xmm3, __dword_ptr[rsi + 0x380]); a.movss(xmm4, __dword_ptr[rsi + 0x38C]);
            a.addss(xmm3, xmm4); a.mulss(xmm3, __dword_ptr[rsi + 0x384]); a.subss(xmm4, xmm3); a.divss(xmm4, __dword_ptr[rsi + 0x394]);
            a.mov(rax, -123456789012345L); a.cvtsi2sd(xmm5, rax); a.cvtsi2sd(xmm6, eax); a.cvtsi2ss(xmm7, __dword_ptr[rsi + 0x100]);
            a.mov(rax, (1L << 60) + 1); a.cvtsi2sd(xmm6, rax);
            a.comisd(xmm0, xmm1); a.setb(bl); a.sete(cl); a.setp(dl);
            a.ucomisd(xmm1, __qword_ptr[rsi + 0x308]); a.setb(r8b); a.sete(r9b); a.setp(r10b);
            a.comiss(xmm3, xmm4); a.seta(r11b);
            a.ucomisd(xmm0, __qword_ptr[rsi + 0x330]); a.setp(r12b);     // a quiet NaN: unordered, no exception
        },
        ["strlen"] = a =>
        {
            // glibc's SSE2 strlen: the first 16-byte chunk with a zero byte, and the index of that byte.
            var loop = a.CreateLabel();
            var found = a.CreateLabel();
            a.lea(r8, __[rsi + 0x20]);
            a.pxor(xmm0, xmm0);
            a.Label(ref loop);
            a.movdqu(xmm1, __xmmword_ptr[r8]);
            a.pcmpeqb(xmm1, xmm0);
            a.pmovmskb(eax, xmm1);
            a.add(r8, 16);
            a.test(eax, eax);
            a.jz(loop);
            a.Label(ref found);
            a.pmovmskb(rbx, xmm1);
            a.mov(rcx, r8);
        },
    };

    /// <summary>Counts 0, within the lanes, each lane width less one, each width, past each, and 255.</summary>
    static readonly byte[] ShiftCounts = [0, 1, 5, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 128, 255];

    /// <summary>The shifts by an immediate, each of XMM0.</summary>
    static readonly Action<Assembler, byte>[] s_shiftsByImmediate =
    [
        (a, n) => a.psllw(xmm0, n), (a, n) => a.pslld(xmm0, n), (a, n) => a.psllq(xmm0, n),
        (a, n) => a.psrlw(xmm0, n), (a, n) => a.psrld(xmm0, n), (a, n) => a.psrlq(xmm0, n),
        (a, n) => a.psraw(xmm0, n), (a, n) => a.psrad(xmm0, n),
        (a, n) => a.pslldq(xmm0, n), (a, n) => a.psrldq(xmm0, n),
    ];

    static readonly ulong[] RegisterCounts =
        [0, 1, 15, 16, 31, 32, 63, 64, 65, 255, 256, 0x1_0000_0001, 0x8000_0000_0000_0000, ulong.MaxValue];

    /// <summary>The shifts by the count in XMM1 or an m128.</summary>
    static readonly Code[] s_shiftsByRegister =
    [
        Code.Psllw_xmm_xmmm128, Code.Pslld_xmm_xmmm128, Code.Psllq_xmm_xmmm128, Code.Psrlw_xmm_xmmm128,
        Code.Psrld_xmm_xmmm128, Code.Psrlq_xmm_xmmm128, Code.Psraw_xmm_xmmm128, Code.Psrad_xmm_xmmm128,
    ];

    [Theory, MemberData(nameof(Forms)), Trait("Feature", "x86 instruction emulation")]
    public void Compiled_inline_as_interpreted(string form)
    {
        var (_, jit) = Both(s_forms[form]);
        Assert.Equal(0, jit.Vector);
        // The loads of the XMM registers and the final stores included: only the STMXCSR and the HLT went to the
        // interpreter.
        Assert.Equal(2UL, jit.HandedOff);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_misaligned_operand_that_must_be_aligned_raises_GP_as_interpreted()
    {
        var (interp, jit) = Both(a => { a.pxor(xmm1, xmm1); a.movdqa(xmm0, __xmmword_ptr[rsi + 0x108]); a.por(xmm1, xmm0); });
        Assert.Equal(13, interp.Vector);
        Assert.Equal(13, jit.Vector);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_lane_operation_on_misaligned_memory_raises_GP_and_an_unaligned_move_does_not()
    {
        var (_, jit) = Both(a => { a.movups(xmm0, __xmmword_ptr[rsi + 0x101]); a.paddb(xmm0, __xmmword_ptr[rsi + 0x101]); });
        Assert.Equal(13, jit.Vector);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void PSHUFB_of_misaligned_memory_raises_GP_as_interpreted()
    {
        var (interp, jit) = Both(a => { a.pshufb(xmm1, xmm0); a.pshufb(xmm0, __xmmword_ptr[rsi + 0x104]); a.por(xmm1, xmm0); });
        Assert.Equal(13, interp.Vector);
        Assert.Equal(13, jit.Vector);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void A_shift_by_a_misaligned_m128_count_raises_GP_as_interpreted()
    {
        var (interp, jit) = Both(a => { a.psrld(xmm1, __xmmword_ptr[rsi + 0x100]); a.pslld(xmm0, __xmmword_ptr[rsi + 0x108]); });
        Assert.Equal(13, interp.Vector);
        Assert.Equal(13, jit.Vector);
    }

    /// <summary>What the scalar float forms leave to the interpreter: a zero divisor (ZE), a denormal (DE), a quiet NaN
    /// to COMISD (IE), a rounding mode other than nearest, and an unmasked precision exception (#XM).</summary>
    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData("divide by zero", 0)]
    [InlineData("denormal", 0)]
    [InlineData("comisd NaN", 0)]
    [InlineData("round down", 0)]
    [InlineData("unmasked precision", 19)]
    public void Scalar_float_exceptions_and_modes_are_the_interpreters(string what, int vector)
    {
        var (_, jit) = Both(a =>
        {
            a.movsd(xmm0, __qword_ptr[rsi + 0x300]);
            switch (what)
            {
                case "divide by zero": a.divsd(xmm0, __qword_ptr[rsi + 0x320]); break;
                case "denormal": a.addsd(xmm0, __qword_ptr[rsi + 0x338]); a.ucomisd(xmm0, __qword_ptr[rsi + 0x338]); break;
                case "comisd NaN": a.comisd(xmm0, __qword_ptr[rsi + 0x330]); a.setp(bl); break;
                case "round down":
                    a.mov(__dword_ptr[rsi + 0x3F0], 0x3F80); a.ldmxcsr(__dword_ptr[rsi + 0x3F0]);
                    a.divsd(xmm0, __qword_ptr[rsi + 0x318]); a.mov(rax, (1L << 60) + 1); a.cvtsi2sd(xmm1, rax);
                    break;
                case "unmasked precision":
                    a.mov(__dword_ptr[rsi + 0x3F0], 0x0F80); a.ldmxcsr(__dword_ptr[rsi + 0x3F0]);
                    a.mulsd(xmm0, __qword_ptr[rsi + 0x318]);
                    break;
            }
        });
        Assert.Equal(vector, jit.Vector);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void CR0_TS_raises_NM_at_the_first_SSE_instruction()
    {
        var (_, jit) = Both(a =>
        {
            a.mov(rax, cr0); a.or(rax, 8); a.mov(cr0, rax);
            a.mov(rax, 1); a.pxor(xmm0, xmm1); a.mov(rax, 2);
        });
        Assert.Equal(7, jit.Vector);
        Assert.Equal(1UL, jit.Regs.Rax);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Accesses_across_a_page_complete_through_the_interpreter()
    {
        var (_, jit) = Both(a =>
        {
            a.movdqu(xmm0, __xmmword_ptr[rsi + 0xFF8]);
            a.movdqu(__xmmword_ptr[rsi + 0xFFC], xmm1);
            a.movq(__qword_ptr[rsi + 0x1FFC], xmm2);
            a.movdqu(xmm3, __xmmword_ptr[rsi + 0xFF8]);
            a.movq(xmm4, __qword_ptr[rsi + 0x1FFC]);
        });
        Assert.Equal(0, jit.Vector);
        Assert.True(jit.HandedOff > 0);
    }
}
