namespace XenSharp.Cpu.Tests;

/// <summary>64-bit call gates (no parameters; RSP0 from the 64-bit TSS; SS becomes null).</summary>
public class GateTests
{
    [Fact]
    public void Ring3CallThrough64BitGateSwitchesStackAndRetfqReturns()
    {
        using var m = new TestMachine();
        const ulong target = 0x11000, ptr = 0x5000, rsp0 = 0x70000;
        // call far [0x5000] (REX.W: m16:64); mov rbx, cs; vmcall
        byte[] user = [0x48, 0xFF, 0x1C, 0x25, 0x00, 0x50, 0x00, 0x00, 0x48, 0x8C, 0xCB, 0x0F, 0x01, 0xC1];
        m.Enter64(user);
        m.Mem.Write(target, [0x0F, 0x01, 0xC1, 0x48, 0xCB]); // vmcall; retfq
        ulong lo = (target & 0xFFFF) | (0x18UL << 16) | (0xECUL << 40) | (((target >> 16) & 0xFFFF) << 48);
        m.Mem.W64(TestMachine.Gdt + 0x50, lo);
        m.Mem.W64(TestMachine.Gdt + 0x58, target >> 32);
        m.Mem.W64(ptr, 0xDEAD);
        m.Mem.W16(ptr + 8, 0x53);
        m.Mem.W64(TestMachine.Tss + 4, rsp0);
        var s = m.SRegs;
        s.Gdt.Limit = 0x5F;
        s.Cs = new Segment { Selector = 0x3B, Limit = 0xFFFF_FFFF, Attributes = 0xA0FB };
        s.Ss = s.Ds = s.Es = new Segment { Selector = 0x33, Limit = 0xFFFF_FFFF, Attributes = 0xC0F3 };
        m.Cpu.SetSpecialRegisters(s);

        Assert.Equal(VcpuExitReason.Hypercall, m.Run().Reason);
        var r = m.Regs;
        Assert.Equal(rsp0 - 32, r.Rsp);
        Assert.Equal(TestMachine.CodeAt + 8, m.Mem.R64(r.Rsp));
        Assert.Equal(0x3BUL, m.Mem.R64(r.Rsp + 8));
        Assert.Equal(TestMachine.StackTop, m.Mem.R64(r.Rsp + 16));
        Assert.Equal(0x33UL, m.Mem.R64(r.Rsp + 24));
        Assert.Equal(0x18, m.SRegs.Cs.Selector);
        Assert.Equal(0, m.SRegs.Ss.Selector);

        Assert.Equal(VcpuExitReason.Hypercall, m.Run().Reason);
        r = m.Regs;
        Assert.Equal(0x3BUL, r.Rbx & 0xFFFF);
        Assert.Equal(TestMachine.StackTop, r.Rsp);
        Assert.Equal(0x33, m.SRegs.Ss.Selector);
    }

    [Fact]
    public void CallGateWithNonzeroUpperTypeRaisesGeneralProtection()
    {
        using var m = new TestMachine();
        const ulong target = 0x11000;
        byte[] code = [0x48, 0xFF, 0x1C, 0x25, 0x00, 0x50, 0x00, 0x00, 0xF4];
        m.Enter64(code);
        // #GP handler: store the error code and halt.
        m.Mem.Write(0x12000, [0x58, 0x48, 0x89, 0x04, 0x25, 0x00, 0x60, 0x00, 0x00, 0xF4]); // pop rax; mov [0x6000], rax; hlt
        m.SetGate64(13, 0x12000);
        ulong lo = (target & 0xFFFF) | (0x18UL << 16) | (0x8CUL << 40);
        m.Mem.W64(TestMachine.Gdt + 0x50, lo);
        m.Mem.W64(TestMachine.Gdt + 0x58, 0x0000_0C00_0000_0000UL); // type bits in the upper half
        m.Mem.W64(0x5000, 0);
        m.Mem.W16(0x5008, 0x50);
        var s = m.SRegs; s.Gdt.Limit = 0x5F; m.Cpu.SetSpecialRegisters(s);
        m.RunToHlt();
        Assert.Equal(0x50UL, m.Mem.R64(0x6000));
    }

    [Fact]
    public void Ring3CallThrough16BitGateCopiesWordParametersAndRetfReleasesThem()
    {
        using var m = new TestMachine();
        // Ring 3, 16-bit: push 0x1111; push 0x2222; call far 0x5B:0; vmcall
        byte[] user = [0x68, 0x11, 0x11, 0x68, 0x22, 0x22, 0x9A, 0x00, 0x00, 0x5B, 0x00, 0x0F, 0x01, 0xC1];
        m.Enter32(user, at: 0x8000);
        m.Mem.Write(0x9000, [0x0F, 0x01, 0xC1, 0xCA, 0x04, 0x00]); // vmcall; retf 4 (16-bit)
        m.Mem.W64(TestMachine.Gdt + 0x50, 0x0000_FB00_0000_FFFFUL);              // 16-bit code, DPL 3
        m.Mem.W64(TestMachine.Gdt + 0x58, 0x0000_E402_0060_9000UL);              // 16-bit call gate, DPL 3, 2 words
        m.Mem.W64(TestMachine.Gdt + 0x60, 0x0000_9B00_0000_FFFFUL);              // 16-bit code, DPL 0
        m.Mem.W64(TestMachine.Gdt + 0x68, 0x0000_F300_0000_FFFFUL);              // 16-bit data, DPL 3
        m.Mem.W32(TestMachine.Tss + 4, 0x70000);
        m.Mem.W32(TestMachine.Tss + 8, 0x10);
        var s = m.SRegs;
        s.Gdt.Limit = 0x6F;
        s.Cs = new Segment { Selector = 0x53, Limit = 0xFFFF, Attributes = 0x00FB };
        s.Ss = s.Ds = s.Es = new Segment { Selector = 0x6B, Limit = 0xFFFF, Attributes = 0x00F3 };
        m.Cpu.SetSpecialRegisters(s);
        m.Cpu.SetRegisters(new Registers { Rip = 0x8000, Rsp = 0x7000, Rflags = 2 });

        Assert.Equal(VcpuExitReason.Hypercall, m.Run().Reason);
        var r = m.Regs;
        Assert.Equal(0x70000UL - 12, r.Rsp);
        Assert.Equal(0x800B, m.Mem.R16(r.Rsp));       // return IP
        Assert.Equal(0x53, m.Mem.R16(r.Rsp + 2));     // return CS
        Assert.Equal(0x2222, m.Mem.R16(r.Rsp + 4));   // parameters in the caller's order
        Assert.Equal(0x1111, m.Mem.R16(r.Rsp + 6));
        Assert.Equal(0x7000 - 4, m.Mem.R16(r.Rsp + 8));
        Assert.Equal(0x6B, m.Mem.R16(r.Rsp + 10));
        Assert.Equal(0x60, m.SRegs.Cs.Selector);

        Assert.Equal(VcpuExitReason.Hypercall, m.Run().Reason);
        Assert.Equal(0x7000UL, m.Regs.Rsp & 0xFFFF);
        Assert.Equal(0x53, m.SRegs.Cs.Selector);
        Assert.Equal(0x6B, m.SRegs.Ss.Selector);
    }
}
