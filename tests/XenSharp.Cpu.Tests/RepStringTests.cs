using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>REP MOVS and STOS of every element size as the engine copies them a page at a time: across page
/// boundaries, with elements straddling them, overlapping, and faulting part-way (the fault reports the
/// iteration it stopped at, with RCX, RSI and RDI counting what was done, and the instruction restarts).</summary>
public class RepStringTests
{
    public static TheoryData<bool> Jit => new() { false, true };

    private static TestMachine Machine(bool jit) => new(jit: jit ? JitSettings.Eager : JitSettings.Off);

    private static void Fill(TestMachine m, ulong at, int bytes, int seed)
    {
        var rng = new Random(seed);
        var data = new byte[bytes];
        rng.NextBytes(data);
        m.Mem.Write(at, data);
    }

    private static byte[] Read(TestMachine m, ulong at, int bytes)
    {
        var b = new byte[bytes];
        for (int i = 0; i < bytes; i++) b[i] = m.Mem.R8(at + (ulong)i);
        return b;
    }

    private static int IndexOf(byte[] code, byte[] pattern)
    {
        for (int i = 0; i + pattern.Length <= code.Length; i++)
            if (code.AsSpan(i, pattern.Length).SequenceEqual(pattern)) return i;
        throw new InvalidOperationException("pattern not in the code");
    }

    [Theory]
    [MemberData(nameof(Jit))]
    public void RepMovsOfEachSizeCopiesAcrossPages(bool jit)
    {
        foreach (int es in new[] { 1, 2, 4, 8 })
        {
            using var m = Machine(jit);
            const ulong src = 0x100008, dst = 0x180010;
            int count = 3 * 4096 / es + 5;
            Fill(m, src, count * es + 64, es);
            m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
            {
                a.cld();
                a.mov(rsi, src); a.mov(rdi, dst); a.mov(rcx, (ulong)count);
                switch (es)
                {
                    case 1: a.rep.movsb(); break;
                    case 2: a.rep.movsw(); break;
                    case 4: a.rep.movsd(); break;
                    default: a.rep.movsq(); break;
                }
                a.hlt();
            }));
            m.RunToHlt();
            var r = m.Regs;
            ulong bytes = (ulong)(count * es);
            Assert.Equal(0UL, r.Rcx);
            Assert.Equal(src + bytes, r.Rsi);
            Assert.Equal(dst + bytes, r.Rdi);
            Assert.Equal(Read(m, src, (int)bytes), Read(m, dst, (int)bytes));
            Assert.Equal(0, m.Mem.R8(dst + bytes)); // not one byte further
        }
    }

    [Theory]
    [MemberData(nameof(Jit))]
    public void RepMovsdWithElementsStraddlingPageBoundaries(bool jit)
    {
        using var m = Machine(jit);
        const ulong src = 0x100FFE, dst = 0x181FFD;
        const int count = 2100;
        Fill(m, src, count * 4, 7);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.cld();
            a.mov(rsi, src); a.mov(rdi, dst); a.mov(rcx, (ulong)count);
            a.rep.movsd();
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(0UL, m.Regs.Rcx);
        Assert.Equal(dst + count * 4, m.Regs.Rdi);
        Assert.Equal(Read(m, src, count * 4), Read(m, dst, count * 4));
    }

    [Theory]
    [MemberData(nameof(Jit))]
    public void OverlappingForwardRepMovsqRepeatsTheFirstElement(bool jit)
    {
        using var m = Machine(jit);
        const ulong src = 0x100000;
        m.Mem.W64(src, 0x1122334455667788);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.cld();
            a.mov(rsi, src); a.mov(rdi, src + 8); a.mov(rcx, 1000);
            a.rep.movsq();
            a.hlt();
        }));
        m.RunToHlt();
        for (ulong i = 0; i <= 1000; i++)
            Assert.Equal(0x1122334455667788UL, m.Mem.R64(src + i * 8));
        Assert.Equal(0UL, m.Mem.R64(src + 1001 * 8));
    }

    [Theory]
    [MemberData(nameof(Jit))]
    public void OverlappingBackwardCopyByLowerDestinationMatchesElementOrder(bool jit)
    {
        using var m = Machine(jit);
        const ulong src = 0x100004;
        Fill(m, src, 5000 * 8, 3);
        var before = Read(m, src, 5000 * 8);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.cld();
            a.mov(rsi, src); a.mov(rdi, src - 4); a.mov(rcx, 5000);
            a.rep.movsq();
            a.hlt();
        }));
        m.RunToHlt();
        // Element by element forward, a destination below its source never overwrites a source element yet to be read.
        Assert.Equal(before, Read(m, src - 4, 5000 * 8));
    }

    [Theory]
    [MemberData(nameof(Jit))]
    public void RepMovsqFaultingPartWayReportsProgressAndRestarts(bool jit)
    {
        using var m = Machine(jit);
        const ulong src = 0x7008, dst = 0x9010;   // the destination runs from page 9 into page 10
        const int count = 1000;
        Fill(m, src, count * 8, 11);
        ulong handler = 0x12000;
        // #PF: note the error code, CR2, RCX, RSI, RDI and the faulting RIP, map page 10, and return to restart.
        m.Mem.Write(handler, TestMachine.Assemble(64, handler, a =>
        {
            a.pop(r12);
            a.mov(r13, cr2);
            a.mov(r14, rcx); a.mov(r15, rsi); a.mov(rbx, rdi);
            a.mov(r9, __qword_ptr[rsp]);
            a.mov(rax, TestMachine.Pt + 10 * 8);
            a.mov(rdx, 0xA000UL | 7);
            a.mov(__qword_ptr[rax], rdx);
            a.invlpg(__byte_ptr[0xA000]);
            a.inc(r10);
            a.iretq();
        }));
        m.SetGate64(14, handler);
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.xor(r10d, r10d);
            a.cld();
            a.mov(rsi, src); a.mov(rdi, dst); a.mov(rcx, (ulong)count);
            a.rep.movsq();
            a.hlt();
        });
        m.Enter64(code, fourK: true);
        m.Mem.W64(TestMachine.Pt + 10 * 8, 0);
        m.RunToHlt();
        var r = m.Regs;
        ulong done = (0xA000 - dst) / 8;        // whole elements before page 10
        Assert.Equal(1UL, r.R10);                // one fault
        Assert.Equal(2UL, r.R12);                // write, supervisor, not present
        Assert.Equal(0xA000UL, r.R13);
        Assert.Equal((ulong)count - done, r.R14);
        Assert.Equal(src + done * 8, r.R15);
        Assert.Equal(dst + done * 8, r.Rbx);
        Assert.Equal(TestMachine.CodeAt + (ulong)IndexOf(code, [0xF3, 0x48, 0xA5]), r.R9); // the REP MOVSQ itself
        Assert.Equal(0UL, r.Rcx);
        Assert.Equal(src + count * 8, r.Rsi);
        Assert.Equal(dst + count * 8, r.Rdi);
        Assert.Equal(Read(m, src, count * 8), Read(m, dst, count * 8));
    }

    [Theory]
    [MemberData(nameof(Jit))]
    public void RepMovsbFromAnUnmappedSourcePageFaultsOnTheRead(bool jit)
    {
        using var m = Machine(jit);
        const ulong src = 0x7F00, dst = 0x9000;   // the source runs from page 7 into page 8
        ulong handler = 0x12000;
        m.Mem.Write(handler, TestMachine.Assemble(64, handler, a =>
        {
            a.pop(r12); a.mov(r13, cr2); a.mov(r14, rcx); a.mov(r15, rsi); a.mov(rbx, rdi);
            a.hlt();
        }));
        m.SetGate64(14, handler);
        Fill(m, src, 0x100, 5);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.cld();
            a.mov(rsi, src); a.mov(rdi, dst); a.mov(rcx, 0x300);
            a.rep.movsb();
            a.hlt();
        }), fourK: true);
        m.Mem.W64(TestMachine.Pt + 8 * 8, 0);
        m.RunToHlt();
        var r = m.Regs;
        Assert.Equal(0UL, r.R12);                // read, supervisor, not present
        Assert.Equal(0x8000UL, r.R13);
        Assert.Equal(0x200UL, r.R14);
        Assert.Equal(0x8000UL, r.R15);
        Assert.Equal(dst + 0x100, r.Rbx);
        Assert.Equal(Read(m, src, 0x100), Read(m, dst, 0x100));
        Assert.Equal(0, m.Mem.R8(dst + 0x100));
    }

    [Theory]
    [MemberData(nameof(Jit))]
    public void RepMovsdWith32BitAddressesWrapsItsIndexes(bool jit)
    {
        using var m = Machine(jit);
        // ESI starts 8 bytes below 4 GiB: the third element is read from linear 0 (the 32-bit index wraps), not 4 GiB.
        m.Mem.W32(0x0, 0xCAFEF00D);
        m.Mem.W32(0x4, 0x0BADBEEF);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.cld();
            a.mov(esi, unchecked((int)0xFFFFFFF8)); a.mov(edi, 0x100000); a.mov(ecx, 4);
            a.db(0x67); a.rep.movsd();          // address-size prefix: ESI, EDI and ECX
            a.hlt();
        }));
        // Linear 0xFFFFFFF8 lies in the identity map's 4th GiB, which the test tables do not map: map it to page 0x6000.
        m.Mem.W64(TestMachine.Pdpt + 3 * 8, 0x30000 | 7);
        m.Mem.W64(0x30000 + 511 * 8, 0x31000 | 7);
        m.Mem.W64(0x31000 + 511 * 8, 0x6000 | 7);
        m.Mem.W32(0x6FF8, 0x11111111);
        m.Mem.W32(0x6FFC, 0x22222222);
        m.RunToHlt();
        Assert.Equal(0x11111111u, m.Mem.R32(0x100000));
        Assert.Equal(0x22222222u, m.Mem.R32(0x100004));
        Assert.Equal(0xCAFEF00Du, m.Mem.R32(0x100008));
        Assert.Equal(0x0BADBEEFu, m.Mem.R32(0x10000C));
        Assert.Equal(8UL, m.Regs.Rsi);
        Assert.Equal(0UL, m.Regs.Rcx);
    }
}
