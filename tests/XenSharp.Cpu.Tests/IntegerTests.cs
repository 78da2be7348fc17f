using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

public class IntegerTests
{
    private const ulong CF = 1, PF = 4, AF = 0x10, ZF = 0x40, SF = 0x80, OF = 0x800;

    internal static Registers Exec(int bitness, Action<Assembler> build, Action<TestMachine>? setup = null)
    {
        using var m = new TestMachine();
        setup?.Invoke(m);
        var code = TestMachine.Assemble(bitness, TestMachine.CodeAt, a => { build(a); a.hlt(); });
        if (bitness == 64) m.Enter64(code); else m.Enter32(code);
        m.RunToHlt();
        return m.Regs;
    }

    [Theory]
    [InlineData(0x7FFFFFFFu, 1u, 0x80000000u, OF | SF | AF | PF)]
    [InlineData(0xFFFFFFFFu, 1u, 0u, CF | ZF | AF | PF)]
    [InlineData(1u, 2u, 3u, PF)]
    public void Add32Flags(uint a, uint b, uint result, ulong flags)
    {
        var r = Exec(32, x => { x.mov(eax, a); x.mov(ebx, b); x.add(eax, ebx); x.pushfd(); x.pop(ecx); });
        Assert.Equal(result, (uint)r.Rax);
        Assert.Equal(flags, r.Rcx & (CF | PF | AF | ZF | SF | OF));
    }

    [Fact]
    public void SubSbbAdcChain()
    {
        var r = Exec(64, x =>
        {
            x.mov(rax, 0); x.mov(rdx, 1);
            x.sub(rax, 1);      // borrow
            x.sbb(rdx, 0);      // 1 - 0 - 1 = 0
            x.stc();
            x.mov(rbx, 5);
            x.adc(rbx, 5);      // 11
        });
        Assert.Equal(ulong.MaxValue, r.Rax);
        Assert.Equal(0UL, r.Rdx);
        Assert.Equal(11UL, r.Rbx);
    }

    [Fact]
    public void MulDivAndDivideOverflowFaults()
    {
        var r = Exec(64, x =>
        {
            x.mov(rax, 0xFFFFFFFFFFFFFFFFUL);
            x.mov(rcx, 2);
            x.mul(rcx);          // rdx:rax = 1:FFFF...FE
            x.mov(r8, rdx);
            x.mov(r9, rax);
            x.mov(rax, 100); x.xor(edx, edx); x.mov(rcx, 7);
            x.div(rcx);          // 14 r 2
            x.mov(r10, rax); x.mov(r11, rdx);
            x.mov(rax, -100L); x.cqo(); x.idiv(rcx); // -14 r -2
            x.mov(r12, rax); x.mov(r13, rdx);
            x.mov(eax, -3); x.mov(ecx, 5); x.imul(eax, ecx); x.mov(r14d, eax);
            x.imul(r15, rcx, 3);
        });
        Assert.Equal(1UL, r.R8);
        Assert.Equal(0xFFFFFFFFFFFFFFFEUL, r.R9);
        Assert.Equal(14UL, r.R10); Assert.Equal(2UL, r.R11);
        Assert.Equal(unchecked((ulong)-14L), r.R12); Assert.Equal(unchecked((ulong)-2L), r.R13);
        Assert.Equal(unchecked((ulong)(uint)-15), r.R14);
        Assert.Equal(15UL, r.R15);
    }

    [Fact]
    public void ShiftsAndRotates()
    {
        var r = Exec(64, x =>
        {
            x.mov(eax, 0x80000001); x.shl(eax, 1); x.pushfq(); x.pop(r8);        // CF=1, OF=1 (msb 0 ^ cf 1)
            x.mov(ebx, 0x80000000); x.sar(ebx, 4);                                // 0xF8000000
            x.mov(ecx, 0x12345678); x.rol(ecx, 8);                                // 0x34567812
            x.mov(edx, 1); x.stc(); x.rcr(edx, 1); x.pushfq(); x.pop(r9);         // 0x80000000, CF=1
            x.mov(esi, 0x0000FFFF); x.mov(edi, 0xABCD0000); x.shld(esi, edi, 16); // 0xFFFFABCD
            x.mov(r10, 0x0F); x.mov(r11, -1L); x.shrd(r10, r11, 4);               // 0xF000000000000000
        });
        Assert.Equal(2UL, (uint)r.Rax);
        Assert.Equal(CF | OF, r.R8 & (CF | OF));
        Assert.Equal(0xF8000000UL, r.Rbx);
        Assert.Equal(0x34567812UL, r.Rcx);
        Assert.Equal(0x80000000UL, r.Rdx);
        Assert.Equal(CF, r.R9 & CF);
        Assert.Equal(0xFFFFABCDUL, r.Rsi);
        Assert.Equal(0xF000000000000000UL, r.R10);
    }

    [Fact]
    public void BitScanAndCounts()
    {
        var r = Exec(64, x =>
        {
            x.mov(rax, 0x0000100000000000UL);
            x.bsf(rbx, rax); x.bsr(rcx, rax);
            x.popcnt(rdx, rax);
            x.xor(esi, esi); x.tzcnt(rdi, rsi); x.lzcnt(r8, rax);
            x.mov(r9, 0x10); x.bts(r9, 0); x.btr(r9, 4); x.setc(r10b);
        });
        Assert.Equal(44UL, r.Rbx); Assert.Equal(44UL, r.Rcx); Assert.Equal(1UL, r.Rdx);
        Assert.Equal(64UL, r.Rdi); Assert.Equal(19UL, r.R8);
        Assert.Equal(1UL, r.R9); Assert.Equal(1UL, r.R10 & 0xFF);
    }

    [Fact]
    public void RepMovsStosAndScas()
    {
        var r = Exec(64, x =>
        {
            x.cld();
            x.mov(rdi, 0x6000); x.mov(al, 0x5A); x.mov(rcx, 100); x.rep.stosb();
            x.mov(rsi, 0x6000); x.mov(rdi, 0x8000); x.mov(rcx, 25); x.rep.movsd();
            x.mov(rdi, 0x8000); x.mov(al, 0); x.mov(rcx, 200); x.repne.scasb();
            x.mov(rbx, rcx);
        });
        Assert.Equal(200UL - 101, r.Rbx);
        Assert.Equal(0x8000UL + 101, r.Rdi);
    }

    /// <summary>REP MOVS of every element size in both directions, across pages and overlapping: a move where the
    /// copy runs away from its destination, and where element after element reads what it just wrote, the pattern
    /// that gives (not a memmove).</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    [InlineData(8)]
    public void RepMovsEveryWidthBothWaysOverlapping(int es)
    {
        const ulong A = 0x100000, B = 0x200000, C = 0x300000, D = 0x400000;
        const int Bytes = 0x2400;
        int n = Bytes / es;
        using var m = new TestMachine();
        for (int i = 0; i < Bytes + 0x200; i++)
        {
            m.Mem.W8(A + (ulong)i, (byte)(i * 7 + 3));
            m.Mem.W8(D + (ulong)i, (byte)(i * 7 + 3));
        }
        ulong first = 0x1122334455667788UL & (ulong.MaxValue >> (64 - 8 * es));
        void Movs(Assembler x)
        {
            switch (es)
            {
                case 1: x.rep.movsb(); break;
                case 2: x.rep.movsw(); break;
                case 4: x.rep.movsd(); break;
                default: x.rep.movsq(); break;
            }
        }
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, x =>
        {
            // Backward into a destination above the source (a move): the top element first.
            x.std(); x.mov(rsi, A + Bytes - (ulong)es); x.mov(rdi, A + 0x130 + Bytes - (ulong)es); x.mov(rcx, (ulong)n); Movs(x);
            x.mov(r8, rsi); x.mov(r9, rdi); x.mov(r10, rcx);
            // Forward into a destination one element above the source: the first element repeated.
            x.cld(); x.mov(rsi, B + 0x7F0); x.mov(rdi, B + 0x7F0 + (ulong)es); x.mov(rcx, (ulong)n); Movs(x);
            // Backward into a destination one element below: the top element repeated downwards.
            x.std(); x.mov(rsi, C + 0xF00 + (ulong)Bytes); x.mov(rdi, C + 0xF00 + (ulong)Bytes - (ulong)es); x.mov(rcx, (ulong)n); Movs(x);
            // Forward into a destination below the source (a move), from an odd offset.
            x.cld(); x.mov(rsi, D + 0x101); x.mov(rdi, D + 0x3); x.mov(rcx, (ulong)n); Movs(x);
            x.hlt();
        });
        for (int k = 0; k < es; k++)
        {
            m.Mem.W8(B + 0x7F0 + (ulong)k, (byte)(first >> (8 * k)));
            m.Mem.W8(C + 0xF00 + (ulong)Bytes + (ulong)k, (byte)(first >> (8 * k)));
        }
        m.Enter64(code);
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(A - (ulong)es, r.R8);
        Assert.Equal(A + 0x130 - (ulong)es, r.R9);
        Assert.Equal(0UL, r.R10);
        for (int i = 0; i < Bytes; i++)
            Assert.Equal((byte)(i * 7 + 3), m.Mem.R8(A + 0x130 + (ulong)i));
        for (int e = 0; e <= n; e++)
            for (int k = 0; k < es; k++)
            {
                Assert.Equal((byte)(first >> (8 * k)), m.Mem.R8(B + 0x7F0 + (ulong)(e * es + k)));
                Assert.Equal((byte)(first >> (8 * k)), m.Mem.R8(C + 0xF00 + (ulong)Bytes - (ulong)(e * es) + (ulong)k));
            }
        for (int i = 0; i < Bytes; i++)
            Assert.Equal((byte)((0x101 + i) * 7 + 3), m.Mem.R8(D + 0x3 + (ulong)i));
        Assert.Equal(D + 0x101 + Bytes, r.Rsi);
        Assert.Equal(D + 0x3 + Bytes, r.Rdi);
    }

    [Fact]
    public void CmpxchgAndXchg()
    {
        var r = Exec(64, x =>
        {
            x.mov(__qword_ptr[0x6000], 5);
            x.mov(eax, 5); x.mov(ecx, 9);
            x.@lock.cmpxchg(__qword_ptr[0x6000], rcx); x.setz(r8b);
            x.mov(eax, 5);
            x.@lock.cmpxchg(__qword_ptr[0x6000], rcx); x.setz(r9b); x.mov(r10, rax);
            x.mov(edx, 1); x.xchg(__qword_ptr[0x6000], rdx); x.mov(r13, rdx);
            x.mov(eax, 0); x.mov(edx, 0); x.mov(ebx, 0x11); x.mov(ecx, 0x22);
            x.cmpxchg8b(__qword_ptr[0x6008]); x.setz(r11b);
            x.mov(r12, __qword_ptr[0x6008]);
        });
        Assert.Equal(1UL, r.R8 & 0xFF); Assert.Equal(0UL, r.R9 & 0xFF); Assert.Equal(9UL, r.R10);
        Assert.Equal(9UL, r.R13);
        Assert.Equal(1UL, r.R11 & 0xFF); Assert.Equal(0x0000002200000011UL, r.R12);
    }

    [Fact]
    public void BcdAdjust()
    {
        var r = Exec(32, x =>
        {
            x.mov(al, 0x19); x.add(al, 0x28); x.daa(); x.movzx(ebx, al);    // 0x47
            x.mov(al, 0x47); x.sub(al, 0x28); x.das(); x.movzx(ecx, al);    // 0x19
            x.mov(ax, 0x0015); x.aam(10); x.movzx(edx, ax);                    // 0x0105
        });
        Assert.Equal(0x47UL, r.Rbx); Assert.Equal(0x19UL, r.Rcx); Assert.Equal(0x0201UL, r.Rdx);
    }

    [Fact]
    public void CmovSetccEnterLeaveBswap()
    {
        var r = Exec(64, x =>
        {
            x.mov(eax, 1); x.mov(ebx, 2); x.cmp(eax, ebx); x.cmovl(eax, ebx); x.setg(cl);
            x.mov(rdx, 0x0102030405060708UL); x.bswap(rdx);
            x.mov(rbp, 0x77); x.enter(16, 0); x.mov(rsi, rsp); x.leave(); x.mov(rdi, rbp);
            x.mov(r15d, 0x11); x.xor(r8d, r8d); x.crc32(r8d, r15b);
            x.mov(r9, 0b1011_0000); x.blsr(r10, r9); x.andn(r11, r9, rdx);
        });
        Assert.Equal(2UL, r.Rax); Assert.Equal(0UL, r.Rcx & 0xFF);
        Assert.Equal(0x0807060504030201UL, r.Rdx);
        Assert.Equal(TestMachine.StackTop - 8 - 16, r.Rsi);
        Assert.Equal(0x77UL, r.Rdi);
        Assert.Equal(0b1010_0000UL, r.R10);
        Assert.Equal(0x0807060504030201UL & ~0b1011_0000UL, r.R11);
        // CRC-32C of the byte 0x11 from 0.
        uint c = 0x11;
        for (int i = 0; i < 8; i++) c = (c & 1) != 0 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        Assert.Equal((ulong)c, r.R8);
    }

    [Fact]
    public void CpuidDescribesTheEngine()
    {
        var r = Exec(64, x => { x.xor(eax, eax); x.cpuid(); x.mov(r8d, ebx); x.mov(eax, 0x80000001); x.cpuid(); x.mov(r9d, edx); });
        Assert.Equal(0x756E6547UL, r.R8); // "Genu"
        Assert.NotEqual(0UL, r.R9 & (1UL << 29)); // LM
    }

    [Fact]
    public void ArchCapabilitiesAreAdvertisedAndReadOnly()
    {
        var r = Exec(64, x =>
        {
            x.mov(eax, 7); x.xor(ecx, ecx); x.cpuid(); x.mov(r8d, edx);
            x.mov(ecx, 0x10A); x.rdmsr(); x.mov(r9d, eax); x.mov(r10d, edx);
        });
        Assert.NotEqual(0UL, r.R8 & (1UL << 29));   // CPUID.7.EDX: ARCH_CAPABILITIES
        Assert.Equal(1UL, r.R9 & 1);                 // RDCL_NO
        Assert.NotEqual(0UL, r.R9 & (1UL << 5));     // MDS_NO
        Assert.NotEqual(0UL, r.R10 & (1UL << 30));   // ITS_NO (bit 62)

        // Writing it raises #GP(0) in the engine, with no exit to the hypervisor.
        using var m = new TestMachine();
        ulong h = 0x12000;
        m.Mem.Write(h, TestMachine.Assemble(64, h, a => { a.pop(rbx); a.pop(rcx); a.hlt(); }));
        m.SetGate64(13, h);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { a.mov(ecx, 0x10A); a.xor(eax, eax); a.xor(edx, edx); a.wrmsr(); a.hlt(); }));
        m.RunToHlt();
        Assert.Equal(0UL, m.Regs.Rbx);
        Assert.Equal(TestMachine.CodeAt + 9, m.Regs.Rcx); // RIP of the WRMSR
    }

    [Fact]
    public void RdtscAdvancesAndRdmsrOfUnknownMsrExits()
    {
        using var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.rdtsc(); a.shl(rdx, 32); a.or(rax, rdx); a.mov(r8, rax);
            a.mov(ecx, 0x8B); a.rdmsr();
            a.mov(r9d, eax);
            a.mov(ecx, 0x4B564D00); a.wrmsr();
            a.rdtsc(); a.shl(rdx, 32); a.or(rax, rdx); a.mov(r10, rax);
            a.hlt();
        }));
        var e = m.Run();
        Assert.Equal(VcpuExitReason.RdMsr, e.Reason);
        Assert.Equal(0x8Bu, e.Port);
        m.Cpu.CompleteExit(0x1234);
        e = m.Run();
        Assert.Equal(VcpuExitReason.WrMsr, e.Reason);
        Assert.Equal(0x4B564D00u, e.Port);
        m.Cpu.CompleteExit(0);
        m.RunToHlt();
        Assert.Equal(0x1234UL, m.Regs.R9);
        Assert.True(m.Regs.R10 > m.Regs.R8);
    }

    [Fact]
    public void TscAdjustIsAdvertisedAndMovesWithTheCounter()
    {
        // CPUID.7.EBX[1]; a write of IA32_TSC_ADJUST moves the TSC by the change, and a write of the TSC moves
        // IA32_TSC_ADJUST by as much as it moved the counter (the TSC runs at 2 GHz, so the reads around each write
        // differ by far less than the 2^40 moved).
        using var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(eax, 7); a.xor(ecx, ecx); a.cpuid(); a.mov(r8d, ebx);
            a.mov(ecx, 0x3B); a.rdmsr(); a.shl(rdx, 32); a.or(rax, rdx); a.mov(r9, rax);
            a.rdtsc(); a.shl(rdx, 32); a.or(rax, rdx); a.mov(r10, rax);
            a.mov(ecx, 0x3B); a.xor(eax, eax); a.mov(edx, 0x100); a.wrmsr();
            a.rdtsc(); a.shl(rdx, 32); a.or(rax, rdx); a.mov(r11, rax);
            a.mov(ecx, 0x10); a.xor(eax, eax); a.xor(edx, edx); a.wrmsr();
            a.mov(ecx, 0x3B); a.rdmsr(); a.shl(rdx, 32); a.or(rax, rdx); a.mov(r12, rax);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.NotEqual(0UL, m.Regs.R8 & (1UL << 1));
        Assert.Equal(0UL, m.Regs.R9);
        ulong moved = m.Regs.R11 - m.Regs.R10;
        Assert.InRange(moved, 1UL << 40, (1UL << 40) + (1UL << 36));
        // Setting the TSC to 0 took it back by its value then, a little past the last read: adjust = 2^40 - that value.
        Assert.InRange((1UL << 40) - m.Regs.R11 - m.Regs.R12, 0UL, 1UL << 36);
        Assert.True(m.Cpu.TryGetMsr(0x3B, out ulong adjust));
        Assert.Equal(m.Regs.R12, adjust);
    }

    [Fact]
    public void WrmsrOfUnknownMsrCanBeRefusedWithGp()
    {
        using var m = new TestMachine();
        ulong h = 0x12000;
        m.Mem.Write(h, TestMachine.Assemble(64, h, a => { a.pop(rbx); a.pop(rcx); a.hlt(); }));
        m.SetGate64(13, h);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { a.mov(ecx, 0x123); a.wrmsr(); a.hlt(); }));
        Assert.Equal(VcpuExitReason.WrMsr, m.Run().Reason);
        m.Cpu.CompleteExit(0, fault: true);
        m.RunToHlt();
        Assert.Equal(0UL, m.Regs.Rbx);
        Assert.Equal(TestMachine.CodeAt + 5, m.Regs.Rcx); // RIP of the WRMSR
    }

    [Fact]
    public void OwnedMsrsAreReadableThroughTheApi()
    {
        using var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(ecx, 0xC0000100); a.mov(eax, 0x1000); a.mov(edx, 0); a.wrmsr();
            a.mov(rax, __qword_ptr.fs[0x10]);
            a.hlt();
        }));
        m.Mem.W64(0x1010, 0xCAFE);
        m.RunToHlt();
        Assert.Equal(0xCAFEUL, m.Regs.Rax);
        Assert.True(m.Cpu.TryGetMsr(0xC0000100, out ulong fs));
        Assert.Equal(0x1000UL, fs);
        Assert.False(m.Cpu.TryGetMsr(0x8B, out _));
    }
}
