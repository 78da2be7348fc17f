using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>
/// <see cref="IX86Vcpu.UnclaimedPorts"/>: IN and OUT on ports the map marks are answered in the engine (all ones,
/// writes dropped) with no exit; a port the map does not mark, or an access with one byte outside it, still exits.
/// </summary>
public sealed class UnclaimedPortTests
{
    private static TestMachine Machine(Action<Assembler> code, params ushort[] unclaimed)
    {
        var m = new TestMachine();
        var map = new ulong[0x10000 / 64];
        foreach (var p in unclaimed)
            map[p >> 6] |= 1UL << (p & 63);
        ((IX86Vcpu)m.Cpu).UnclaimedPorts = map;
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { code(a); a.hlt(); }));
        return m;
    }

    [Fact]
    public void InAndOutOnUnclaimedPortsNeverLeaveRun()
    {
        using var m = Machine(a =>
        {
            a.mov(rax, 0x1122334455667788UL);
            a.@in(al, 0x42);                    // AL only
            a.mov(rbx, rax);
            a.mov(rax, 0x1122334455667788UL);
            a.mov(dx, 0x42);
            a.@in(eax, dx);                     // not marked beyond 0x42: exits below
            a.mov(rcx, rax);
            a.@out(0x42, al);
        }, 0x42);

        var e = m.Run();
        // The byte read of 0x42 was answered inside: RBX holds the old value with AL all ones.
        Assert.Equal((VcpuExitReason.Io, 0x42u, 4, false), (e.Reason, e.Port, e.Size, e.IsWrite));
        Assert.Equal(0x11223344556677FFUL, m.Regs.Rbx);
        m.Cpu.CompleteExit(0xCAFEBABE);
        // The OUT to 0x42 is dropped inside too: the next exit is the HLT.
        m.RunToHlt();
        Assert.Equal(0xCAFEBABEUL, m.Regs.Rcx);
    }

    [Fact]
    public void A32BitInFromFourUnclaimedPortsIsAllOnesAndClearsTheUpperHalf()
    {
        using var m = Machine(a => { a.mov(rax, ulong.MaxValue - 0xFFFF_FFFFUL); a.mov(dx, 0x40); a.@in(eax, dx); }, 0x40, 0x41, 0x42, 0x43);
        m.RunToHlt();
        Assert.Equal(0xFFFF_FFFFUL, m.Regs.Rax);
    }

    [Fact]
    public void WithoutAMapEveryPortExits()
    {
        using var m = new TestMachine();
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a => { a.@in(al, 0x42); a.hlt(); }));
        Assert.Equal(VcpuExitReason.Io, m.Run().Reason);
    }
}
