using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>The interpreter's return-address prediction: a RET that comes back where the matching CALL said takes the
/// return site from the calling block rather than from the jump cache; one that goes elsewhere goes where the stack
/// says.</summary>
[Trait("Feature", "x86 instruction emulation")]
public class ReturnPredictionTests
{
    const ulong Callee = TestMachine.CodeAt + 0x1000;

    /// <summary>One function, in a page of its own (so each CALL ends its block), called from two sites in turn, 100
    /// times each: every return lands at its own site (the sums come out right) and each is predicted. The function's
    /// own successor slots cannot serve it: its return site changes with every call. A function in the caller's page,
    /// which the block follows into and returns from within the same block, neither pushes nor pops.</summary>
    [Fact]
    public void A_function_called_from_two_sites_returns_to_each_through_the_prediction()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var loop = a.CreateLabel();
            var near = a.CreateLabel();
            a.xor(eax, eax); a.xor(ebx, ebx); a.xor(esi, esi);
            a.mov(ecx, 100);
            a.Label(ref loop);
            a.mov(edi, 1); a.call(Callee); a.add(rbx, rax);
            a.call(near);
            a.mov(edi, 2); a.call(Callee); a.add(rsi, rax);
            a.dec(ecx); a.jnz(loop);
            a.hlt();
            a.Label(ref near);
            a.inc(r8); a.ret();
        });
        using var m = new TestMachine(jit: JitSettings.Off);
        m.Mem.Write(Callee, TestMachine.Assemble(64, Callee, a => { a.add(rax, rdi); a.ret(); }));
        m.Enter64(code, fourK: true);
        m.RunToHlt();
        ulong acc = 0, first = 0, second = 0;
        for (int i = 0; i < 100; i++) { acc += 1; first += acc; acc += 2; second += acc; }
        Assert.Equal((acc, first, second, 100UL), (m.Regs.Rax, m.Regs.Rbx, m.Regs.Rsi, m.Regs.R8));
        Assert.Equal(200, ((X86Vcpu)m.Cpu).ReturnsPredicted);
    }

    /// <summary>A callee that rewrites its return address (as a retpoline does) returns to the new address, not to the
    /// instruction after the CALL, and that return is not counted as predicted.</summary>
    [Fact]
    public void A_return_address_rewritten_by_the_callee_is_where_the_ret_goes()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            var loop = a.CreateLabel();
            var elsewhere = a.CreateLabel();
            a.xor(ebx, ebx); a.xor(esi, esi);
            a.mov(ecx, 50);
            a.Label(ref loop);
            a.lea(r9, __[elsewhere]);
            a.call(Callee);
            a.inc(rbx); // skipped: the callee returns to `elsewhere`
            a.Label(ref elsewhere);
            a.inc(rsi);
            a.dec(ecx); a.jnz(loop);
            a.hlt();
        });
        using var m = new TestMachine(jit: JitSettings.Off);
        // The callee sends its RET to the address in R9.
        m.Mem.Write(Callee, TestMachine.Assemble(64, Callee, a => { a.mov(__qword_ptr[rsp], r9); a.ret(); }));
        m.Enter64(code, fourK: true);
        m.RunToHlt();
        Assert.Equal(0UL, m.Regs.Rbx);
        Assert.Equal(50UL, m.Regs.Rsi);
        Assert.Equal(0, ((X86Vcpu)m.Cpu).ReturnsPredicted);
    }
}
