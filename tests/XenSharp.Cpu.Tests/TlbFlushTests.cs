using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>The soft TLB's flushes, which drop only the entries filled since the last one (its fill logs):
/// whatever path an entry took there, a flush that must drop it does.</summary>
public class TlbFlushTests
{
    const ulong PteOf6000 = TestMachine.Pt + 6 * 8;

    /// <summary>64-bit code over 4 KiB pages with CR4.PGE set; 0x6000 holds 1 and 0x7000 holds 2.</summary>
    static TestMachine Machine(Action<Assembler> code)
    {
        var m = new TestMachine();
        m.Mem.W64(0x6000, 1); m.Mem.W64(0x7000, 2);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.mov(rax, cr4); a.bts(rax, 7); a.mov(cr4, rax);
            code(a);
            a.hlt();
        }), fourK: true);
        return m;
    }

    static void Map6000(Assembler a, ulong frame, bool global)
    {
        a.mov(rax, frame | 7 | (global ? 0x100UL : 0));
        a.mov(__qword_ptr[PteOf6000], rax);
    }

    [Fact, Trait("Feature", "x86 system architecture emulation")]
    public void AnEntryRefilledAsNonGlobalAfterBeingGlobalIsDroppedByACr3Write()
    {
        using var m = Machine(a =>
        {
            Map6000(a, 0x6000, global: true);
            a.invlpg(__[0x6000]);
            a.mov(r8, __qword_ptr[0x6000]);       // filled as a global entry
            Map6000(a, 0x7000, global: false);
            a.invlpg(__[0x6000]);
            a.mov(r9, __qword_ptr[0x6000]);       // the same entry, refilled as non-global
            Map6000(a, 0x6000, global: false);
            a.mov(rax, cr3); a.mov(cr3, rax);      // drops every non-global translation
            a.mov(r10, __qword_ptr[0x6000]);
        });
        m.RunToHlt();
        Assert.Equal((1UL, 2UL, 1UL), (m.Regs.R8, m.Regs.R9, m.Regs.R10));
    }

    [Fact, Trait("Feature", "x86 system architecture emulation")]
    public void AGlobalEntryIsDroppedWhenCr4PgeIsToggled()
    {
        using var m = Machine(a =>
        {
            Map6000(a, 0x6000, global: true);
            a.invlpg(__[0x6000]);
            a.mov(r8, __qword_ptr[0x6000]);
            a.mov(rax, cr3); a.mov(cr3, rax);      // a non-global flush in between
            a.mov(r9, __qword_ptr[0x6000]);
            Map6000(a, 0x7000, global: true);
            a.mov(rax, cr4); a.btr(rax, 7); a.mov(cr4, rax); a.bts(rax, 7); a.mov(cr4, rax);
            a.mov(r10, __qword_ptr[0x6000]);
        });
        m.RunToHlt();
        Assert.Equal((1UL, 1UL, 2UL), (m.Regs.R8, m.Regs.R9, m.Regs.R10));
    }

    [Fact, Trait("Feature", "x86 system architecture emulation")]
    public void ANonGlobalEntryWrittenThroughIsDroppedByACr3Write()
    {
        using var m = Machine(a =>
        {
            Map6000(a, 0x6000, global: false);
            a.invlpg(__[0x6000]);
            a.mov(__qword_ptr[0x6000], 5);        // filled for writing
            Map6000(a, 0x7000, global: false);
            a.mov(rax, cr3); a.mov(cr3, rax);
            a.mov(__qword_ptr[0x6000], 9);        // goes to 0x7000 now
            a.mov(r8, __qword_ptr[0x6000]);
        });
        m.RunToHlt();
        Assert.Equal(9UL, m.Regs.R8);
        Assert.Equal(5UL, m.Mem.R64(0x6000));
        Assert.Equal(9UL, m.Mem.R64(0x7000));
    }
}
