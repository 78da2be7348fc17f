using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

/// <summary>Page faults on not-present pages, the kind a guest takes all the time (demand paging of a program's text,
/// its first touch of stack, heap and data, copy-on-write after fork): the interpreter's instruction fetch and its fast
/// forms (MOV loads and stores, ALU with memory, MOVZX, CALL, PUSH) report them through the vCPU's abort path, not as
/// thrown exceptions, which cost microseconds each, and the instruction restarts once the handler maps the page.</summary>
public class NotPresentPageTests
{
    const ulong Handler = 0x12000, Log = 0x6000;

    /// <summary>A machine whose #PF handler (on a stack of its own, IST1) counts the fault in R10, notes CR2 in the log
    /// at 0x6000 and RCX at 0x6100, maps the page (identity) and returns to restart the instruction; <paramref name="pages"/>
    /// start not present.</summary>
    static TestMachine Machine(byte[] code, IEnumerable<ulong> pages, JitSettings? jit = null)
    {
        var m = new TestMachine(jit: jit ?? JitSettings.Off);
        m.Mem.Write(Handler, TestMachine.Assemble(64, Handler, a =>
        {
            a.add(rsp, 8);
            a.push(rax); a.push(rdx);
            a.mov(rax, cr2);
            a.mov(__qword_ptr[r10 * 8 + (long)Log], rax);
            a.mov(__qword_ptr[r10 * 8 + (long)Log + 0x100], rcx);
            a.inc(r10);
            a.shr(rax, 12);
            a.mov(rdx, rax); a.shl(rdx, 12); a.or(rdx, 7);
            a.mov(__qword_ptr[rax * 8 + (long)TestMachine.Pt], rdx);
            a.invlpg(__byte_ptr[rdx - 7]);
            a.pop(rdx); a.pop(rax);
            a.iretq();
        }));
        // On a stack of its own: a PUSH's fault leaves RSP on the not-present page.
        m.SetGate64(14, Handler, ist: 1);
        m.Mem.W64(TestMachine.Tss + 0x24, 0x50000);
        m.Enter64(code, fourK: true);
        foreach (ulong page in pages) m.Mem.W64(TestMachine.Pt + page * 8, 0);
        return m;
    }

    static IEnumerable<ulong> Logged(TestMachine m, int n) => Enumerable.Range(0, n).Select(k => m.Mem.R64(Log + (ulong)k * 8));

    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Faults_of_fetches_and_fast_forms_restart_without_a_thrown_exception()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
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
        });
        using var m = Machine(code, [0xA, 0xB, 0xC, 0xD, 0xE, 0xF]);
        // The callee at 0xF000 is itself on a not-present page.
        m.Mem.Write(0xF000, TestMachine.Assemble(64, 0xF000, a => { a.mov(ebx, 0x77); a.ret(); }));
        m.Mem.W64(0xB010, 0x99);
        m.Mem.W64(0xC000, 1);
        m.Mem.W64(0xD000, 0xAB00);
        int thrown = m.RunToHltCountingThrownFaults();
        var r = m.Regs;
        Assert.Equal(6UL, r.R10);
        Assert.Equal(new ulong[] { 0xA008, 0xB010, 0xC000, 0xD001, 0xE7F8, 0xF000 }, Logged(m, 6));
        Assert.Equal(0x1122_3344_5566_7788UL, m.Mem.R64(0xA008));
        Assert.Equal(0x99UL, r.Rcx);
        Assert.Equal(0x1122_3344_5566_7789UL, m.Mem.R64(0xC000));
        Assert.Equal(0xABUL, r.Rdx);
        Assert.Equal(0x1122_3344_5566_7788UL, m.Mem.R64(0xE7F8));
        Assert.Equal(0x77UL, r.Rbx);
        Assert.Equal(0xE7F8UL, r.Rsp);
        Assert.Equal(0, thrown);
    }

    /// <summary>The locked read-modify-write instructions (CMPXCHG, XADD, BTS) on not-present pages: the same.</summary>
    [Fact, Trait("Feature", "x86 instruction emulation")]
    public void Locked_read_modify_writes_on_not_present_pages_restart_without_a_thrown_exception()
    {
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.xor(r10d, r10d);
            a.mov(eax, 5); a.mov(ecx, 9);
            a.@lock.cmpxchg(__dword_ptr[0xA010], ecx);    // holds 5: stores 9
            a.mov(edx, 3);
            a.@lock.xadd(__qword_ptr[0xB020], rdx);       // holds 40: 43, RDX the old 40
            a.@lock.bts(__qword_ptr[0xC000], 4);
            a.hlt();
        });
        using var m = Machine(code, [0xA, 0xB, 0xC]);
        m.Mem.W64(0xA010, 5);
        m.Mem.W64(0xB020, 40);
        int thrown = m.RunToHltCountingThrownFaults();
        Assert.Equal(3UL, m.Regs.R10);
        Assert.Equal(new ulong[] { 0xA010, 0xB020, 0xC000 }, Logged(m, 3));
        Assert.Equal(9UL, m.Mem.R64(0xA010));
        Assert.Equal(43UL, m.Mem.R64(0xB020));
        Assert.Equal(40UL, m.Regs.Rdx);
        Assert.Equal(0x10UL, m.Mem.R64(0xC000));
        Assert.Equal(0, thrown);
    }

    /// <summary>REP STOSB and REP MOVSB running into a not-present page, interpreted and compiled, with
    /// <see cref="IX86Vcpu.BatchStringIo"/> on as the hypervisor runs its guests (each first looks whether the page is a
    /// device's): the #PF names the page and RCX the elements left, and the instruction finishes once the page is mapped
    /// (Linux's clear_user and copy_to_user meet such a page once a page of every fresh mapping).</summary>
    [Theory, Trait("Feature", "x86 instruction emulation")]
    [InlineData(false)]
    [InlineData(true)]
    public void Rep_stos_and_movs_faulting_part_way_restart_without_a_thrown_exception(bool compiled)
    {
        const ulong src = 0x7000, stosAt = 0x9800, movsAt = 0xB800;   // each destination runs into a not-present page
        var code = TestMachine.Assemble(64, TestMachine.CodeAt, a =>
        {
            a.xor(r10d, r10d);
            a.cld();
            a.mov(rdi, stosAt); a.mov(rcx, 0x1000); a.mov(eax, 0x5A);
            a.rep.stosb();
            a.mov(rsi, src); a.mov(rdi, movsAt); a.mov(rcx, 0x1000);
            a.rep.movsb();
            a.hlt();
        });
        using var m = Machine(code, [0xA, 0xC], compiled ? JitSettings.Eager : JitSettings.Off);
        ((IX86Vcpu)m.Cpu).BatchStringIo = true;
        var data = new byte[0x1000];
        new Random(3).NextBytes(data);
        m.Mem.Write(src, data);
        int thrown = m.RunToHltCountingThrownFaults();
        Assert.Equal(2UL, m.Regs.R10);
        Assert.Equal(new ulong[] { 0xA000, 0xC000 }, Logged(m, 2));
        Assert.Equal(0x800UL, m.Mem.R64(Log + 0x100));       // RCX: the elements left when the first one faulted
        Assert.Equal(0x800UL, m.Mem.R64(Log + 0x108));
        for (ulong k = 0; k < 0x1000; k++)
        {
            Assert.Equal(0x5A, m.Mem.R8(stosAt + k));
            Assert.Equal(data[k], m.Mem.R8(movsAt + k));
        }
        Assert.Equal(0, thrown);
    }
}
