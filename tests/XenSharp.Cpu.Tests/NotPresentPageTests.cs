using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>Page faults on not-present pages, the kind a guest takes all the time (demand paging of a program's text,
/// its first touch of stack, heap and data, copy-on-write after fork): the interpreter's instruction fetch and its fast
/// forms (MOV loads and stores, ALU with memory, MOVZX, CALL, PUSH) report them through the vCPU's abort path, not as
/// thrown exceptions, which cost microseconds each, and the instruction restarts once the handler maps the page.</summary>
public class NotPresentPageTests
{
    /// <summary>Pages 0xA..0xF start not present; the #PF handler counts the fault, notes CR2, maps the page (identity)
    /// and returns to restart the instruction.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Faults_of_fetches_and_fast_forms_restart_without_a_thrown_exception()
    {
        using var m = new TestMachine(jit: JitSettings.Off);
        const ulong handler = 0x12000, log = 0x6000;
        m.Mem.Write(handler, TestMachine.Assemble(64, handler, a =>
        {
            a.add(rsp, 8);
            a.push(rax); a.push(rdx);
            a.mov(rax, cr2);
            a.mov(__qword_ptr[r10 * 8 + (long)log], rax);
            a.inc(r10);
            a.shr(rax, 12);
            a.mov(rdx, rax); a.shl(rdx, 12); a.or(rdx, 7);
            a.mov(__qword_ptr[rax * 8 + (long)TestMachine.Pt], rdx);
            a.invlpg(__byte_ptr[rdx - 7]);
            a.pop(rdx); a.pop(rax);
            a.iretq();
        }));
        // On a stack of its own (IST1): the PUSH's fault leaves RSP on the not-present page.
        m.SetGate64(14, handler, ist: 1);
        m.Mem.W64(TestMachine.Tss + 0x24, 0x50000);
        // The callee at 0xF000 is itself on a not-present page: the CALL's target fetch faults.
        m.Mem.Write(0xF000, TestMachine.Assemble(64, 0xF000, a => { a.mov(ebx, 0x77); a.ret(); }));
        m.Enter64(TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.xor(r10d, r10d);
            a.mov(rax, 0x1122_3344_5566_7788UL);
            a.mov(__qword_ptr[0xA008], rax);              // MOV store
            a.mov(rcx, __qword_ptr[0xB010]);              // MOV load (the page holds 0x99 at 0xB010)
            a.add(__qword_ptr[0xC000], rax);              // ALU on memory (reads then writes)
            a.movzx(edx, __byte_ptr[0xD001]);             // MOVZX load
            a.mov(rsp, 0xE800UL);
            a.push(rax);                                  // PUSH onto a not-present stack page
            a.mov(r8, 0xF000UL);
            a.call(r8);                                   // not a fast form; its target's fetch faults
            a.hlt();
        }), fourK: true);
        m.Mem.W64(0xB010, 0x99);
        m.Mem.W64(0xC000, 1);
        m.Mem.W64(0xD000, 0xAB00);
        for (ulong page = 0xA; page <= 0xF; page++) m.Mem.W64(TestMachine.Pt + page * 8, 0);
        int thread = Environment.CurrentManagedThreadId, thrown = 0;
        EventHandler<System.Runtime.ExceptionServices.FirstChanceExceptionEventArgs> count = (_, e) =>
        {
            if (Environment.CurrentManagedThreadId == thread && e.Exception.GetType().Name == "GuestFault") thrown++;
        };
        AppDomain.CurrentDomain.FirstChanceException += count;
        try { m.RunToHlt(); }
        finally { AppDomain.CurrentDomain.FirstChanceException -= count; }
        var r = m.Regs;
        Assert.Equal(6UL, r.R10);
        Assert.Equal(new ulong[] { 0xA008, 0xB010, 0xC000, 0xD001, 0xE7F8, 0xF000 }, Enumerable.Range(0, 6).Select(k => m.Mem.R64(log + (ulong)k * 8)));
        Assert.Equal(0x1122_3344_5566_7788UL, m.Mem.R64(0xA008));
        Assert.Equal(0x99UL, r.Rcx);
        Assert.Equal(0x1122_3344_5566_7789UL, m.Mem.R64(0xC000));
        Assert.Equal(0xABUL, r.Rdx);
        Assert.Equal(0x1122_3344_5566_7788UL, m.Mem.R64(0xE7F8));
        Assert.Equal(0x77UL, r.Rbx);
        Assert.Equal(0xE7F8UL, r.Rsp);
        Assert.Equal(0, thrown);
    }
}
