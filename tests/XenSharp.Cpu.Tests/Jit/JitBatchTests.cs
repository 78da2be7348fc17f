using Iced.Intel;
using XenSharp.Cpu.Decoding;
using XenSharp.Cpu.Jit;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests.Jit;

/// <summary>Blocks compiled together into one method (the compiler thread's batches) behave exactly as
/// each block compiled alone and as the interpreter: every body is entered through its own block.</summary>
public class JitBatchTests
{
    /// <summary>A loop split into many blocks: a three-way branch, a call and return, pushes and pops,
    /// loads and stores, and an instruction the compiled code hands to the interpreter (MUL).</summary>
    static byte[] Program() => TestMachine.Assemble(64, TestMachine.CodeAt, a =>
    {
        var top = a.CreateLabel(); var low = a.CreateLabel(); var mid = a.CreateLabel(); var join = a.CreateLabel(); var helper = a.CreateLabel();
        a.mov(eax, 0x67452301);
        a.mov(ebx, 0xEFCDAB89);
        a.xor(ecx, ecx);
        a.xor(r9d, r9d);
        a.sub(rsp, 512);
        a.Label(ref top);
        a.cmp(rcx, 15);
        a.jbe(low);
        a.cmp(rcx, 40);
        a.jbe(mid);
        a.call(helper);
        a.jmp(join);
        a.Label(ref low);
        a.mov(edx, eax);
        a.and(edx, ebx);
        a.push(rax);
        a.mul(rbx);
        a.xor(edx, eax);
        a.pop(rax);
        a.jmp(join);
        a.Label(ref mid);
        a.lea(edx, __[rax + rbx * 2 + 7]);
        a.Label(ref join);
        a.add(eax, edx);
        a.mov(__[rsp + rcx * 8], rax);
        a.add(rbx, __[rsp + rcx * 8]);
        a.rol(eax, 5);
        a.adc(r10, rbx);
        a.add(rcx, 1);
        a.and(rcx, 63);
        a.add(r9, 1);
        a.cmp(r9, 3000);
        a.jne(top);
        a.add(rsp, 512);
        a.hlt();
        a.Label(ref helper);
        a.push(rbx);
        a.mov(rdx, __[rsp + 8]);
        a.xor(rdx, rax);
        a.shr(rdx, 3);
        a.pop(rbx);
        a.ret();
    });

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Blocks_compiled_together_in_one_method_end_as_interpreted()
    {
        var code = Program();
        using var interp = TestMachine.RanToHlt(code, JitSettings.Off);

        // Decoded by a first, interpreted run (the threshold is never reached), then compiled all at once.
        using var m = TestMachine.RanToHlt(code, TestMachine.DecodeOnly);
        Assert.Equal(0, m.Engine.CompiledBlocks);
        var blocks = m.Engine.Blocks.Snapshot().Where(b => b.Valid).ToList();
        Assert.True(blocks.Count >= 8, $"{blocks.Count} blocks");
        CompileQueue.CompileBatch(blocks, m.Engine);
        Assert.Equal(blocks.Count, (int)m.Engine.CompiledBlocks);
        Assert.Equal(0, m.Engine.JitFailures);
        Assert.Equal(blocks.Count, blocks.Select(b => (ulong)b.Entry >> DecodedBlock.EntryBodyShift).Distinct().Count());

        ulong before = m.Cpu.InstructionsRetired;
        m.Run64ToHlt(code);
        // The loop's blocks branch into each other's bodies, so it never leaves the method to have an exit linked.
        Assert.True(m.Engine.WarmBranches > 0);
        Assert.Equal(interp.Cpu.InstructionsRetired, m.Cpu.InstructionsRetired - before);
        var (x, y) = (interp.Regs, m.Regs);
        Assert.Equal(x.Rax, y.Rax); Assert.Equal(x.Rbx, y.Rbx); Assert.Equal(x.Rcx, y.Rcx); Assert.Equal(x.Rdx, y.Rdx);
        Assert.Equal(x.Rsp, y.Rsp); Assert.Equal(x.R9, y.R9); Assert.Equal(x.R10, y.R10);
        Assert.Equal(x.Rip, y.Rip); Assert.Equal(x.Rflags, y.Rflags);
        Assert.Equal(3000UL, y.R9);
    }

    /// <summary>Compiled code is entered through a bare address (<see cref="DecodedBlock.Entry"/>): the block's
    /// <see cref="DecodedBlock.Compiled"/> must keep the method's code alive through collections, or the next entry
    /// would jump into freed memory.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Compiled_code_stays_alive_through_collections_while_its_blocks_are_held()
    {
        var code = Program();
        using var interp = TestMachine.RanToHlt(code, JitSettings.Off);

        using var m = TestMachine.RanToHlt(code, TestMachine.DecodeOnly);
        var method = CompileBlocks(m);
        for (int k = 0; k < 3; k++)
        {
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
            GC.WaitForPendingFinalizers();
        }
        Assert.True(method.IsAlive);

        ulong before = m.Cpu.InstructionsRetired;
        m.Run64ToHlt(code);
        Assert.Equal(interp.Cpu.InstructionsRetired, m.Cpu.InstructionsRetired - before);
        Assert.Equal(interp.Regs.Rax, m.Regs.Rax);
        Assert.Equal(interp.Regs.Rbx, m.Regs.Rbx);
        Assert.Equal(interp.Regs.R10, m.Regs.R10);
        Assert.Equal(3000UL, m.Regs.R9);
    }

    /// <summary>Compiles the machine's blocks as one batch; a weak reference to the method's DynamicMethod, whose
    /// code each block's entry word points into.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static WeakReference CompileBlocks(TestMachine m)
    {
        var blocks = m.Engine.Blocks.Snapshot().Where(b => b.Valid).ToList();
        CompileQueue.CompileBatch(blocks, m.Engine);
        var method = blocks[0].Compiled!;
        for (int k = 0; k < blocks.Count; k++)
        {
            Assert.Same(method, blocks[k].Compiled);
            Assert.Equal(method.EntryOf(k), blocks[k].Entry);
        }
        return new WeakReference(method.Method);
    }

    /// <summary>Two vCPUs that make a block hot together can queue it twice, and the compiler thread then
    /// translates it again into a later method, in another place among that method's bodies. Until the new
    /// code is published (after the .NET JIT has compiled it) the vCPUs keep running the code published
    /// first, which must still run its own block's body.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Code_published_for_a_block_runs_its_body_while_the_block_is_compiled_again()
    {
        var code = Program();
        using var interp = TestMachine.RanToHlt(code, JitSettings.Off);

        using var m = TestMachine.RanToHlt(code, TestMachine.DecodeOnly);
        var blocks = m.Engine.Blocks.Snapshot().Where(b => b.Valid).ToList();
        Assert.True(blocks.Count >= 8, $"{blocks.Count} blocks");
        CompileQueue.CompileBatch(blocks, m.Engine);
        Assert.Equal(blocks.Count, (int)m.Engine.CompiledBlocks);
        var published = blocks.Select(b => b.Entry).ToList();

        // The second translation, each block in another place, not published yet.
        var again = Enumerable.Reverse(blocks).ToList();
        var second = BlockTranslator.CompileBatch(again, out _, out _);
        Assert.Equal(again.Count, second.Count);
        Assert.Equal(published, blocks.Select(b => b.Entry));

        ulong before = m.Cpu.InstructionsRetired;
        m.Run64ToHlt(code);
        Assert.Equal(interp.Cpu.InstructionsRetired, m.Cpu.InstructionsRetired - before);
        var (x, y) = (interp.Regs, m.Regs);
        Assert.Equal(x.Rax, y.Rax); Assert.Equal(x.Rbx, y.Rbx); Assert.Equal(x.Rcx, y.Rcx); Assert.Equal(x.Rdx, y.Rdx);
        Assert.Equal(x.Rsp, y.Rsp); Assert.Equal(x.R9, y.R9); Assert.Equal(x.R10, y.R10);
        Assert.Equal(x.Rip, y.Rip); Assert.Equal(x.Rflags, y.Rflags);
    }
}
