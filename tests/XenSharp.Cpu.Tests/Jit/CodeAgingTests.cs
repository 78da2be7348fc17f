using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>Aging of cached code (<see cref="X86Engine.AgeCode"/>): blocks that stopped running are dropped and
/// decoded again when they run again, blocks that keep running (through the run loop or through compiled links)
/// stay, and writes to code decoded again after a trim still reach it.</summary>
public class CodeAgingTests
{
    static TestMachine Machine(bool jit) => new(jit: jit ? JitSettings.Eager : JitSettings.Off);

    /// <summary>md5's shape: a loop split into blocks by a three-way branch, so compiled blocks link to each other.</summary>
    static byte[] BranchingLoop() => TestMachine.Assemble(64, TestMachine.CodeAt, a =>
    {
        var top = a.CreateLabel(); var low = a.CreateLabel(); var mid = a.CreateLabel(); var join = a.CreateLabel();
        a.mov(eax, 0x67452301);
        a.mov(ebx, 0xEFCDAB89);
        a.xor(ecx, ecx);
        a.Label(ref top);
        a.cmp(rcx, 15);
        a.jbe(low);
        a.cmp(rcx, 31);
        a.jbe(mid);
        a.mov(edx, eax);
        a.not(edx);
        a.xor(edx, ebx);
        a.jmp(join);
        a.Label(ref low);
        a.mov(edx, eax);
        a.and(edx, ebx);
        a.jmp(join);
        a.Label(ref mid);
        a.lea(edx, __[rax + rbx * 2 + 7]);
        a.Label(ref join);
        a.add(eax, edx);
        a.rol(eax, 7);
        a.xor(ebx, eax);
        a.inc(ecx);
        a.cmp(ecx, 3000);
        a.jb(top);
        a.hlt();
    });

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false)]
    [InlineData(true)]
    public void Blocks_not_run_since_the_last_pass_are_dropped_and_run_again_as_before(bool jit)
    {
        using var m = Machine(jit);
        m.Enter64(BranchingLoop(), fourK: true);
        m.RunToHlt();
        var first = m.Regs;
        int cached = m.Engine.CachedBlocks;
        Assert.True(cached > 1);
        // Everything ran in the period that just ended; nothing has run in the next one.
        Assert.Equal(0, m.Engine.AgeCode());
        Assert.Equal(cached, m.Engine.AgeCode());
        Assert.Equal(0, m.Engine.CachedBlocks);

        m.RunFrom(TestMachine.CodeAt);
        Assert.Equal(first.Rax, m.Regs.Rax);
        Assert.Equal(first.Rbx, m.Regs.Rbx);
        Assert.Equal(first.Rip, m.Regs.Rip);
        // The same blocks again, less any the first entry alone needed.
        Assert.InRange(m.Engine.CachedBlocks, cached - 1, cached);
        if (jit)
            Assert.Equal(0, m.Engine.JitFailures);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false)]
    [InlineData(true)]
    public void Blocks_that_keep_running_stay_cached(bool jit)
    {
        // Compiled, most of the loop's blocks are entered through links rather than the run loop: what a block
        // entered by the run loop links to must stay with it.
        using var m = Machine(jit);
        m.Enter64(BranchingLoop(), fourK: true);
        m.RunToHlt();
        var first = m.Regs;
        Assert.Equal(0, m.Engine.AgeCode());
        // What the very first entry alone needed (a block from its second instruction, say) goes now.
        m.RunFrom(TestMachine.CodeAt);
        m.Engine.AgeCode();
        int cached = m.Engine.CachedBlocks;
        long compiled = m.Engine.CompiledBlocks;
        if (jit)
            Assert.True(m.Engine.LinkedExits > 0);
        for (int pass = 0; pass < 3; pass++)
        {
            m.RunFrom(TestMachine.CodeAt);
            Assert.Equal(0, m.Engine.AgeCode());
            Assert.Equal(cached, m.Engine.CachedBlocks);
        }
        // Nothing was translated twice.
        Assert.Equal(compiled, m.Engine.CompiledBlocks);
        Assert.Equal(first.Rax, m.Regs.Rax);
        Assert.Equal(first.Rbx, m.Regs.Rbx);
    }

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Run_counts_decay_with_each_pass_so_that_only_blocks_run_often_are_compiled()
    {
        // A loop of RCX turns; the compiler takes blocks the interpreter ran 100 times.
        using var m = new TestMachine(jit: new JitSettings(Enabled: true, Threshold: 100, Background: false));
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var top = a.CreateLabel();
            a.Label(ref top);
            a.add(eax, 3);
            a.dec(ecx);
            a.jnz(top);
            a.hlt();
        }), fourK: true);
        void Turns(uint n)
        {
            m.Cpu.GetRegisters(out var r);
            r.Rcx = n;
            m.Cpu.SetRegisters(r);
            m.RunFrom(TestMachine.CodeAt);
        }
        // 40 turns a period: 40, then 20 + 40 after a pass, 30 + 40 after the next... never 100 (it tends to 80).
        Turns(40);
        for (int pass = 0; pass < 6; pass++)
        {
            m.Engine.AgeCode();
            Turns(40);
        }
        Assert.Equal(0, m.Engine.CompiledBlocks);
        // 150 turns in one period reach it.
        m.Engine.AgeCode();
        Turns(150);
        Assert.True(m.Engine.CompiledBlocks > 0);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false)]
    [InlineData(true)]
    public void A_code_page_written_after_its_blocks_were_dropped_is_seen_when_decoded_again(bool jit)
    {
        const ulong F = TestMachine.CodeAt + 0x1000, Patch = TestMachine.CodeAt + 0x2000, Again = TestMachine.CodeAt + 0x3000;
        using var m = Machine(jit);
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.call(F);
            a.mov(ebx, eax);
            a.hlt();
        }), fourK: true);
        // f: mov eax, imm32; ret — the guest patches the immediate's low byte at F + 1.
        m.Mem.Write(F, TestMachine.Assemble(64, F, a => { a.mov(eax, 1); a.ret(); }));
        m.Mem.Write(Patch, TestMachine.Assemble(64, Patch, a => { a.mov(__byte_ptr[F + 1], 2); a.hlt(); }));
        m.Mem.Write(Again, TestMachine.Assemble(64, Again, a =>
        {
            a.call(F);
            a.mov(ebx, eax);
            a.mov(__byte_ptr[F + 1], 3);
            a.call(F);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(1UL, m.Regs.Rbx);

        // Drop f's blocks, then let its frame stop being a code frame (one more pass with it empty).
        m.Engine.AgeCode();
        Assert.True(m.Engine.AgeCode() > 0);
        m.Engine.AgeCode();
        Assert.Equal(0, m.Engine.CachedBlocks);

        // A write while f is not decoded: the vCPU may keep a writable translation of the page.
        m.RunFrom(Patch);
        Assert.Equal(2, m.Mem.R8(F + 1));

        // f decoded again sees the patch, and a write to it now drops it again.
        m.RunFrom(Again);
        Assert.Equal(2UL, m.Regs.Rbx);
        Assert.Equal(3UL, m.Regs.Rax);
    }

    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false)]
    [InlineData(true)]
    public void Dropped_blocks_are_not_kept_alive_by_the_jump_caches(bool jit)
    {
        const ulong Elsewhere = TestMachine.CodeAt + 0x4000;
        using var m = Machine(jit);
        m.Enter64(BranchingLoop(), fourK: true);
        m.Mem.Write(Elsewhere, TestMachine.Assemble(64, Elsewhere, a => { a.nop(); a.hlt(); }));
        m.RunToHlt();
        var entry = EntryBlock(m);
        Assert.True(entry.IsAlive);
        m.Engine.AgeCode();
        m.Engine.AgeCode();
        Assert.Equal(0, m.Engine.CachedBlocks);

        // The vCPU's next block lookup, of other code, lets go of what its jump caches held from the loop.
        m.RunFrom(Elsewhere);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        Assert.False(entry.IsAlive);
    }

    /// <summary>The loop's first block (identity-mapped), held weakly; not inlined so that no local keeps it.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    static WeakReference EntryBlock(TestMachine m) =>
        new(m.Engine.Blocks.Lookup(TestMachine.CodeAt, TestMachine.CodeAt, 64) ?? throw new InvalidOperationException("entry block not cached"));
}
