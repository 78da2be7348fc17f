using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>
/// <see cref="IX86Vcpu.DirectPortReads"/>: an IN the hypervisor's reader answers completes inside <see cref="IVcpu.Run"/>
/// with that value, in the register width the IN names; one it declines, and every OUT, still exits.
/// </summary>
public sealed class DirectPortReadTests
{
    private sealed class Reader(uint answered, ulong value) : IDirectPortReads
    {
        public readonly List<(uint Port, int Size)> Reads = new();

        public bool TryRead(uint port, int size, out ulong v)
        {
            Reads.Add((port, size));
            v = value;
            return port == answered;
        }
    }

    [Fact]
    public void AnAnsweredInNeverLeavesRunAndADeclinedOneExits()
    {
        using var m = new TestMachine();
        var reader = new Reader(0xB008, 0x1122_3344_5566_7788UL);
        ((IX86Vcpu)m.Cpu).DirectPortReads = reader;
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(ebx, 0xAAAA_AAAAu);
            a.mov(dx, 0xB008);
            a.@in(eax, dx);            // answered: EAX = low 32 bits
            a.mov(ecx, eax);
            a.mov(eax, 0xAAAA_AAAAu);
            a.@in(al, dx);             // answered: AL only
            a.mov(esi, eax);
            a.@in(al, 0x61);           // declined: exits
            a.@out(dx, al);            // OUT always exits
            a.hlt();
        }));

        var e = m.Run();
        Assert.Equal((VcpuExitReason.Io, 0x61u, 1, false), (e.Reason, e.Port, e.Size, e.IsWrite));
        Assert.Equal(0x5566_7788UL, m.Regs.Rcx);
        Assert.Equal(0xAAAA_AA88UL, m.Regs.Rsi);
        Assert.Equal([(0xB008u, 4), (0xB008u, 1), (0x61u, 1)], reader.Reads);
        m.Cpu.CompleteExit(0x20);
        e = m.Run();
        Assert.Equal((VcpuExitReason.Io, 0xB008u, true), (e.Reason, e.Port, e.IsWrite));
        Assert.Equal(0x20UL, e.Data & 0xFF);
    }
}
