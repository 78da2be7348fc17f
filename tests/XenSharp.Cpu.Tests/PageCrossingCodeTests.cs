using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>An instruction whose bytes cross into the next page is cached like any block: it must still see a
/// write to its tail bytes, and a remapping of the page its tail comes from, interpreted and compiled.</summary>
public class PageCrossingCodeTests
{
    // f: `mov eax, imm32` starting 3 bytes before the page at 0x11000 (its last two immediate bytes on that page),
    // then `ret`. Callers live on other pages.
    const ulong F = 0x10FFD, Tail = 0x11000, Caller = 0x12000, Patch = 0x13000, Remap = 0x14000, Other = 0x40000;

    static TestMachine Setup(bool jit)
    {
        var m = new TestMachine(jit: jit ? JitSettings.Eager : JitSettings.Off);
        m.Enter64(TestMachine.Assemble(64, Caller, a =>
        {
            a.call(F);
            a.mov(ebx, eax);
            a.call(F);
            a.hlt();
        }), Caller, fourK: true);
        m.Mem.Write(F, TestMachine.Assemble(64, F, a => { a.mov(eax, 0x44332211); a.ret(); }));
        // The same tail on another physical page, but with other immediate bytes.
        m.Mem.Write(Other, [0x99, 0x88, 0xC3]);
        return m;
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false)]
    [InlineData(true)]
    public void A_write_to_the_tail_bytes_is_seen(bool jit)
    {
        using var m = Setup(jit);
        m.Mem.Write(Patch, TestMachine.Assemble(64, Patch, a =>
        {
            a.mov(__byte_ptr[Tail + 1], 0x77);
            a.call(F);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(0x44332211UL, m.Regs.Rbx);
        Assert.Equal(0x44332211UL, m.Regs.Rax);
        m.RunFrom(Patch);
        Assert.Equal(0x77332211UL, m.Regs.Rax);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public void A_remapped_tail_page_is_seen(bool jit, bool reloadCr3)
    {
        using var m = Setup(jit);
        m.Mem.Write(Remap, TestMachine.Assemble(64, Remap, a =>
        {
            // Point the PTE of the tail's page at the other physical page, then flush that translation.
            a.mov(rax, Other | 7);
            a.mov(__qword_ptr[TestMachine.Pt + (Tail >> 12) * 8], rax);
            if (reloadCr3)
            {
                a.mov(rax, cr3);
                a.mov(cr3, rax);
            }
            else
                a.invlpg(__[Tail]);
            a.call(F);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(0x44332211UL, m.Regs.Rax);
        m.RunFrom(Remap);
        Assert.Equal(0x88992211UL, m.Regs.Rax);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void The_crossing_instruction_is_decoded_once()
    {
        using var m = Setup(jit: false);
        m.RunToHlt();
        var block = m.Engine.Blocks.Lookup(F, F, 64);
        Assert.NotNull(block);
        Assert.True(block.Valid);
        m.RunFrom(Caller);
        m.RunFrom(Caller);
        Assert.Equal(0x44332211UL, m.Regs.Rax);
        Assert.Same(block, m.Engine.Blocks.Lookup(F, F, 64));
        // Aged out with the other blocks, and decoded again after.
        m.Engine.AgeCode();
        m.Engine.AgeCode();
        Assert.False(block.Valid);
        Assert.Null(m.Engine.Blocks.Lookup(F, F, 64));
        m.RunFrom(Caller);
        Assert.Equal(0x44332211UL, m.Regs.Rax);
        Assert.NotNull(m.Engine.Blocks.Lookup(F, F, 64));
    }
}
