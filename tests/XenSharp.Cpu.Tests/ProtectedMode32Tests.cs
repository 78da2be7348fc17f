using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace XenSharp.Cpu.Tests;

public class ProtectedMode32Tests
{
    [Fact]
    public void PvhEntryStateRunsFlat32BitCode()
    {
        using var m = new TestMachine();
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(eax, 5);
            a.add(eax, 7);
            a.mov(__dword_ptr[0x5000], eax);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(12UL, m.Regs.Rax);
        Assert.Equal(12u, m.Mem.R32(0x5000));
    }

    [Fact]
    public void CountingLoopAndCallRet()
    {
        using var m = new TestMachine();
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            var loop = a.CreateLabel();
            var fn = a.CreateLabel();
            a.xor(eax, eax);
            a.mov(ecx, 1000);
            a.Label(ref loop);
            a.call(fn);
            a.dec(ecx);
            a.jnz(loop);
            a.hlt();
            a.Label(ref fn);
            a.add(eax, 3);
            a.ret();
        }));
        m.RunToHlt();
        Assert.Equal(3000UL, m.Regs.Rax);
        Assert.Equal(TestMachine.StackTop, m.Regs.Rsp);
        Assert.True(m.Cpu.InstructionsRetired >= 4000);
    }

    [Fact]
    public void SteadyStateExecutionDoesNotAllocate()
    {
        using var m = new TestMachine();
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            var loop = a.CreateLabel();
            a.mov(ecx, 200000);
            a.Label(ref loop);
            a.add(eax, ecx);
            a.mov(__dword_ptr[0x6000], eax);
            a.movzx(edx, __byte_ptr[0x6001]);
            a.push(edx);
            a.pop(ebx);
            a.dec(ecx);
            a.jnz(loop);
            a.hlt();
        }));
        // Warm up (decode, JIT), then measure the second pass.
        m.RunToHlt();
        m.Cpu.SetRegisters(new Registers { Rip = TestMachine.CodeAt, Rsp = TestMachine.StackTop, Rflags = 2 });
        long before = GC.GetAllocatedBytesForCurrentThread();
        m.RunToHlt();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated < 64 * 1024, $"{allocated} bytes allocated for 1.4M instructions");
    }

    [Fact]
    public void VmcallExitsWithRipPastTheInstruction()
    {
        using var m = new TestMachine();
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(eax, 17);
            a.vmcall();
            a.mov(ebx, eax);
            a.hlt();
        }));
        var e = m.Run();
        Assert.Equal(VcpuExitReason.Hypercall, e.Reason);
        var r = m.Regs;
        Assert.Equal(TestMachine.CodeAt + 5 + 3, r.Rip);
        r.Rax = 0xFFFF_FFDA; // -ENOSYS
        m.Cpu.SetRegisters(r);
        m.RunToHlt();
        Assert.Equal(0xFFFF_FFDAUL, m.Regs.Rbx);
    }

    [Fact]
    public void VmmcallIsAHypercallToo()
    {
        using var m = new TestMachine();
        m.Enter32(new byte[] { 0x0F, 0x01, 0xD9, 0xF4 }); // vmmcall; hlt
        Assert.Equal(VcpuExitReason.Hypercall, m.Run().Reason);
        Assert.Equal(TestMachine.CodeAt + 3, m.Regs.Rip);
        m.RunToHlt();
    }

    [Fact]
    public void OutAndInExitAndInCompletesWithTheValue()
    {
        using var m = new TestMachine();
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(al, 0x41);
            a.@out(0xE9, al);
            a.mov(dx, 0x3F8);
            a.mov(eax, 0x12345678);
            a.@out(dx, eax);
            a.mov(eax, 0xFFFFFFFF);
            a.@in(ax, dx);
            a.hlt();
        }));
        var e = m.Run();
        Assert.Equal(VcpuExitReason.Io, e.Reason);
        Assert.Equal(0xE9u, e.Port);
        Assert.True(e.IsWrite);
        Assert.Equal(1, e.Size);
        Assert.Equal(0x41UL, e.Data);
        e = m.Run();
        Assert.Equal(VcpuExitReason.Io, e.Reason);
        Assert.Equal(0x3F8u, e.Port);
        Assert.Equal(4, e.Size);
        Assert.Equal(0x12345678UL, e.Data);
        e = m.Run();
        Assert.Equal(VcpuExitReason.Io, e.Reason);
        Assert.False(e.IsWrite);
        Assert.Equal(2, e.Size);
        m.Cpu.CompleteExit(0xBEEF);
        m.RunToHlt();
        Assert.Equal(0xFFFFBEEFUL, m.Regs.Rax);
    }

    [Fact]
    public void RepOutsbExitsOncePerByte()
    {
        using var m = new TestMachine();
        m.Mem.Write(0x6000, "hi!"u8);
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(esi, 0x6000);
            a.mov(ecx, 3);
            a.mov(dx, 0xE9);
            a.rep.outsb();
            a.hlt();
        }));
        var got = new List<byte>();
        while (true)
        {
            var e = m.Run();
            if (e.Reason == VcpuExitReason.Hlt) break;
            Assert.Equal(VcpuExitReason.Io, e.Reason);
            got.Add((byte)e.Data);
        }
        Assert.Equal("hi!"u8.ToArray(), got.ToArray());
        Assert.Equal(0UL, m.Regs.Rcx);
        Assert.Equal(0x6003UL, m.Regs.Rsi);
    }

    [Fact]
    public void RepInswStoresEachCompletedValue()
    {
        using var m = new TestMachine();
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(edi, 0x6000);
            a.mov(ecx, 2);
            a.mov(dx, 0x1F0);
            a.rep.insw();
            a.hlt();
        }));
        ushort v = 0x1111;
        while (true)
        {
            var e = m.Run();
            if (e.Reason == VcpuExitReason.Hlt) break;
            Assert.Equal(VcpuExitReason.Io, e.Reason);
            Assert.Equal(0x1F0u, e.Port);
            m.Cpu.CompleteExit(v);
            v += 0x1111;
        }
        Assert.Equal(0x1111, m.Mem.R16(0x6000));
        Assert.Equal(0x2222, m.Mem.R16(0x6002));
        Assert.Equal(0x6004UL, m.Regs.Rdi);
    }

    [Fact]
    public void AccessBeyondTheSegmentLimitRaisesGp()
    {
        using var m = new TestMachine();
        ulong handler = 0x11000;
        m.Mem.Write(handler, TestMachine.Assemble(32, handler, a => { a.pop(ebx); a.mov(ecx, 13); a.hlt(); }));
        m.SetGate32(13, handler);
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(ax, 0x48);
            a.mov(es, ax);
            a.mov(__dword_ptr.es[0xFF0], 0x1234);   // inside: linear 0x6FF0
            a.mov(edx, __dword_ptr.es[0x1000]);     // beyond the limit
            a.hlt();
        }));
        // GDT 0x48: data segment base 0x6000, limit 0xFFF (byte granular).
        m.Mem.W64(TestMachine.Gdt + 0x48, 0x0040_9300_6000_0FFFUL);
        m.RunToHlt();
        Assert.Equal(0x1234u, m.Mem.R32(0x6FF0));
        Assert.Equal(13UL, m.Regs.Rcx);
        Assert.Equal(0UL, m.Regs.Rbx);
    }

    [Fact, Trait("Feature", "x86 system architecture emulation")]
    public void AccessCrossingTheSegmentLimitRaisesGp()
    {
        using var m = new TestMachine();
        ulong handler = 0x11000;
        m.Mem.Write(handler, TestMachine.Assemble(32, handler, a => { a.pop(ebx); a.mov(ecx, 13); a.hlt(); }));
        m.SetGate32(13, handler);
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.mov(ax, 0x48);
            a.mov(es, ax);
            a.mov(esi, __dword_ptr.es[0xFFC]);      // last four bytes inside the limit
            a.mov(edx, 1);
            a.mov(edi, 0xFFD);
            a.mov(edx, __dword_ptr.es[edi]);        // first byte inside, last byte beyond
            a.hlt();
        }));
        // GDT 0x48: data segment base 0x6000, limit 0xFFF (byte granular).
        m.Mem.W64(TestMachine.Gdt + 0x48, 0x0040_9300_6000_0FFFUL);
        m.Mem.W32(0x6FFC, 0xCAFEF00D);
        m.RunToHlt();
        Assert.Equal(0xCAFEF00DUL, m.Regs.Rsi);
        Assert.Equal(1UL, m.Regs.Rdx);
        Assert.Equal(13UL, m.Regs.Rcx);
        Assert.Equal(0UL, m.Regs.Rbx);
    }

    [Fact]
    public void HltExitsAndStaysHaltedWithoutInterrupts()
    {
        using var m = new TestMachine();
        m.Enter32(new byte[] { 0xF4, 0x90, 0xF4 });
        m.RunToHlt();
        Assert.Equal(TestMachine.CodeAt + 1, m.Regs.Rip);
        m.RunToHlt();
        Assert.Equal(TestMachine.CodeAt + 1, m.Regs.Rip);
    }

    [Fact]
    public void DivideByZeroIsDeliveredThroughTheIdt()
    {
        using var m = new TestMachine();
        ulong handler = 0x11000;
        m.Mem.Write(handler, TestMachine.Assemble(32, handler, a =>
        {
            a.mov(ebx, 0xDE);
            a.pop(ecx); // EIP
            a.hlt();
        }));
        m.SetGate32(0, handler);
        m.Enter32(TestMachine.Assemble(32, TestMachine.CodeAt, a =>
        {
            a.xor(ecx, ecx);
            a.mov(eax, 1);
            a.div(ecx);
            a.hlt();
        }));
        m.RunToHlt();
        Assert.Equal(0xDEUL, m.Regs.Rbx);
        Assert.Equal(TestMachine.CodeAt + 2 + 5, m.Regs.Rcx);
    }
}
