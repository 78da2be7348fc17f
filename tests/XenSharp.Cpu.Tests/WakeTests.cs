using System.Runtime.CompilerServices;
using XenSharp.Cpu.Decoding;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>A guest that halts and wakes to an interrupt a few milliseconds later, as an idle guest's tick does,
/// running a path that differs between wake-ups through code rewritten since the last one; and the decoded form
/// such a wake-up reads, kept to one cache line per instruction.</summary>
public class WakeTests
{
    private const ulong Handler = 0x12000, Patch = 0x13000;

    [Fact]
    public void DecodedInstructionIsOneCacheLine() => Assert.Equal(64, Unsafe.SizeOf<DecodedInsn>());

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WakeUpsAfterLongHaltsRunTheirOwnPath(bool compiled)
    {
        const int Wakes = 12;
        using var m = new TestMachine(jit: compiled ? JitSettings.Eager : JitSettings.Off);
        m.Mem.Write(Patch, TestMachine.Assemble(64, Patch, a =>
        {
            a.mov(eax, 0); // the immediate is rewritten with each wake-up's count
            a.ret();
        }));
        m.Mem.Write(Handler, TestMachine.Assemble(64, Handler, a =>
        {
            var work = a.CreateLabel();
            var even = a.CreateLabel();
            var next = a.CreateLabel();
            a.inc(ebx);
            // A path of 2 to 5 iterations, odd and even ones through different blocks.
            a.mov(ecx, ebx);
            a.and(ecx, 3);
            a.add(ecx, 2);
            a.Label(ref work);
            a.test(ecx, 1);
            a.jz(even);
            a.add(r8, rcx);
            a.jmp(next);
            a.Label(ref even);
            a.lea(r9, __[r9 + rcx * 2]);
            a.Label(ref next);
            a.dec(ecx);
            a.jnz(work);
            // Code the last wake-up ran, rewritten: its decoded block is dropped.
            a.mov(rdi, Patch);
            a.call(rdi);
            a.add(r10, rax);
            a.mov(__dword_ptr[rdi + 1], ebx);
            a.iretq();
        }));
        m.SetGate64(0x40, Handler);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var loop = a.CreateLabel();
            a.xor(ebx, ebx);
            a.xor(r8d, r8d);
            a.xor(r9d, r9d);
            a.xor(r10d, r10d);
            a.sti();
            a.Label(ref loop);
            a.hlt();
            a.jmp(loop);
        }));
        var src = new Source();
        m.Cpu.InterruptSource = src;
        m.RunToHlt();
        ulong odd = 0, twiceEven = 0, patched = 0;
        for (int k = 1; k <= Wakes; k++)
        {
            Thread.Sleep(3);
            src.Pending = true;
            m.RunToHlt();
            for (int c = (k & 3) + 2; c > 0; c--)
                if ((c & 1) != 0) odd += (ulong)c; else twiceEven += 2UL * (ulong)c;
            patched += (ulong)(k - 1);
        }
        var r = m.Regs;
        Assert.Equal((ulong)Wakes, r.Rbx);
        Assert.Equal(odd, r.R8);
        Assert.Equal(twiceEven, r.R9);
        Assert.Equal(patched, r.R10);
    }

    private sealed class Source : IInterruptSource
    {
        public volatile bool Pending;
        public bool HasPendingInterrupt => Pending;

        public int Acknowledge()
        {
            if (!Pending) return -1;
            Pending = false;
            return 0x40;
        }
    }
}
