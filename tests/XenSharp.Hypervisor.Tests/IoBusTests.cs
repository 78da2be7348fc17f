using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86;
using XenSharp.Hypervisor.X86.Io;
using XenSharp.Public;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.Tests;

[Trait("Feature", "x86/PVH")]
public class IoBusTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private sealed class Recorder(ulong readValue = 0) : IIoHandler
    {
        public readonly List<(ulong Offset, int Size, ulong? Written)> Accesses = new();
        public ulong Read(Vcpu v, ulong offset, int size) { Accesses.Add((offset, size, null)); return readValue; }
        public void Write(Vcpu v, ulong offset, int size, ulong value) => Accesses.Add((offset, size, value));
    }

    [Fact]
    public void RangesAreFoundByAnyAddressInsideThemAndNeverOverlap()
    {
        var bus = new IoBus("test");
        var a = new Recorder();
        var b = new Recorder();
        Assert.True(bus.TryRegister(0x100, 0x10, a));
        Assert.True(bus.TryRegister(0x110, 0x10, b)); // adjacent is fine
        Assert.False(bus.TryRegister(0x10F, 1, b));   // last byte of a
        Assert.False(bus.TryRegister(0xF0, 0x11, b)); // reaches a's first byte
        Assert.False(bus.TryRegister(0x80, 0x200, b)); // covers both
        Assert.False(bus.TryRegister(0x200, 0, b));    // empty
        Assert.False(bus.TryRegister(ulong.MaxValue, 2, b)); // wraps
        Assert.True(bus.TryRegister(ulong.MaxValue - 0xF, 0x10, b)); // the very top
        Assert.Equal(3, bus.Count);

        Assert.True(bus.TryFind(0x100, out var h, out ulong off));
        Assert.Same(a, h);
        Assert.Equal(0UL, off);
        Assert.True(bus.TryFind(0x10F, out h, out off));
        Assert.Same(a, h);
        Assert.Equal(0xFUL, off);
        Assert.True(bus.TryFind(0x115, out h, out off));
        Assert.Same(b, h);
        Assert.Equal(5UL, off);
        Assert.True(bus.TryFind(ulong.MaxValue, out h, out off));
        Assert.Equal(0xFUL, off);
        Assert.False(bus.TryFind(0xFF, out _, out _));
        Assert.False(bus.TryFind(0x120, out _, out _));
        Assert.False(bus.TryFind(0, out _, out _));

        // Only the owner removes a range; then its addresses are free again.
        Assert.False(bus.Unregister(0x100, b));
        Assert.True(bus.Unregister(0x100, a));
        Assert.False(bus.TryFind(0x105, out _, out _));
        Assert.True(bus.TryRegister(0x100, 0x10, b));
        Assert.Throws<InvalidOperationException>(() => bus.Register(0x104, 4, a));
    }

    [Fact]
    public void AccessesGoToTheDeviceWithTheirOffsetAndSize()
    {
        var g = new Guest(_host, vcpus: 1);
        var dev = new Recorder(readValue: 0x1122334455667788);
        g.Domain.Arch.PortIo.Register(0x300, 8, dev);
        g.Domain.Arch.Mmio.Register(0xF000_0000, 0x1000, dev);
        Assert.Equal(0x88UL, HvmIo.PortRead(g.Vcpu(), 0x302, 1)); // trimmed to the access size
        HvmIo.PortWrite(g.Vcpu(), 0x304, 2, 0xABCDEF);
        Assert.Equal(0x55667788UL, HvmIo.MmioRead(g.Vcpu(), 0xF000_0010, 4));
        HvmIo.MmioWrite(g.Vcpu(), 0xF000_0FF8, 8, ulong.MaxValue);
        Assert.Equal([(2UL, 1, null), (4UL, 2, 0xCDEF), (0x10UL, 4, null), (0xFF8UL, 8, ulong.MaxValue)], dev.Accesses);
    }

    private sealed class FakeIoreqServer : IIoreqServer
    {
        public readonly List<string> Seen = new();
        public bool TryRead(ushort domid, uint type, ulong address, int size, out ulong value)
        {
            Seen.Add($"r d{domid} t{type} {address:x}/{size}");
            value = 0x42;
            return address == 0x70;
        }
        public bool TryWrite(ushort domid, uint type, ulong address, int size, ulong value)
        {
            Seen.Add($"w d{domid} t{type} {address:x}/{size}={value:x}");
            return true;
        }
    }

    [Fact]
    public void WhatNoDeviceClaimsGoesToTheIoreqServerOrReadsAllOnes()
    {
        var g = new Guest(_host, vcpus: 1);
        var v = g.Vcpu();
        Assert.Equal(0xFFUL, HvmIo.PortRead(v, 0x70, 1));
        Assert.Equal(0xFFFFUL, HvmIo.PortRead(v, 0x70, 2));
        Assert.Equal(0xFFFF_FFFFUL, HvmIo.MmioRead(v, 0xF000_0000, 4));
        Assert.Equal(ulong.MaxValue, HvmIo.MmioRead(v, 0xF000_0000, 8));
        HvmIo.PortWrite(v, 0x70, 1, 5); // dropped

        var server = new FakeIoreqServer();
        _host.IoreqServer = server;
        Assert.Equal(0x42UL, HvmIo.PortRead(v, 0x70, 1));
        Assert.Equal(0xFFUL, HvmIo.PortRead(v, 0x71, 1)); // the server declined it
        HvmIo.PortWrite(v, 0x80, 1, 0x1FF);
        Assert.Equal(0xFFFF_FFFFUL, HvmIo.MmioRead(v, 0xF000_0004, 4));
        HvmIo.MmioWrite(v, 0xF000_0004, 2, 0x12345);
        // Claimed accesses never reach it: the debug console and the vLAPIC page.
        HvmIo.PortWrite(v, HvmDomain.DebugConsolePort, 1, 'x');
        HvmIo.MmioRead(v, Vlapic.DefaultBase + Vlapic.ID, 4);
        Assert.Equal(
        [
            $"r d{g.Id} t{Ioreq.IOREQ_TYPE_PIO} 70/1", $"r d{g.Id} t{Ioreq.IOREQ_TYPE_PIO} 71/1", $"w d{g.Id} t{Ioreq.IOREQ_TYPE_PIO} 80/1=ff",
            $"r d{g.Id} t{Ioreq.IOREQ_TYPE_COPY} f0000004/4", $"w d{g.Id} t{Ioreq.IOREQ_TYPE_COPY} f0000004/2=2345",
        ], server.Seen);
        Assert.Equal("x", System.Text.Encoding.ASCII.GetString(_host.ReadConsoleHistory(g.Id)));
    }

    [Fact]
    public void AVcpuAnswersUnclaimedPortsItselfUntilADeviceOrAnIoreqServerMayClaimOne()
    {
        using var host = new XenHypervisor(new HypervisorOptions { MachineMemoryBytes = 256UL << 20, Pcpus = 1, EngineFactory = m => new XenSharp.Cpu.X86Engine(m) });
        var g = new Guest(host, vcpus: 2);
        var cpu = (XenSharp.Cpu.IX86Vcpu)g.Vcpu(0).Engine!;
        var other = (XenSharp.Cpu.IX86Vcpu)g.Vcpu(1).Engine!;
        bool Marked(ushort port) => cpu.UnclaimedPorts is { } map && (map[port >> 6] & (1UL << (port & 63))) != 0;

        g.Domain.Arch.OfferUnclaimedPorts(g.Vcpu(0));
        Assert.True(Marked(0x42));
        Assert.False(Marked(HvmDomain.DebugConsolePort));
        Assert.False(Marked(g.Domain.Arch.Pm1a.Port));
        Assert.Null(other.UnclaimedPorts); // given per vCPU, as each meets an unclaimed port

        // A device that claims a port takes the map from every vCPU first; the next offer leaves its port out.
        g.Domain.Arch.PortIo.Register(0x42, 1, new Recorder());
        Assert.Null(cpu.UnclaimedPorts);
        g.Domain.Arch.OfferUnclaimedPorts(g.Vcpu(0));
        Assert.False(Marked(0x42));
        Assert.True(Marked(0x43));

        // Once an IOREQ server exists, what no device claims is the device model's: every port exits again.
        Assert.Equal(0, g.Domain.Arch.Ioreq.Create(0, 0, out _));
        Assert.Null(cpu.UnclaimedPorts);
        g.Domain.Arch.OfferUnclaimedPorts(g.Vcpu(0));
        Assert.Null(cpu.UnclaimedPorts);
    }

    [Fact]
    public void TheVlapicPageFollowsEachVcpusApicBase()
    {
        var g = new Guest(_host, vcpus: 2);
        const ulong moved = 0xFED0_0000;
        Assert.True(g.Vcpu(1).Arch.Vlapic.TryWriteMsr(Vlapic.MsrApicBase, moved | Vlapic.ApicBaseEnable));
        // vCPU 1 finds its APIC at the new base; vCPU 0's stays where it was, and the old page is vCPU 1's no more.
        Assert.Equal(2UL << 24, HvmIo.MmioRead(g.Vcpu(1), moved + Vlapic.ID, 4));
        Assert.Equal(0UL, HvmIo.MmioRead(g.Vcpu(0), Vlapic.DefaultBase + Vlapic.ID, 4));
        Assert.Equal(0xFFFF_FFFFUL, HvmIo.MmioRead(g.Vcpu(1), Vlapic.DefaultBase + Vlapic.ID, 4));
        Assert.Equal(0xFFFF_FFFFUL, HvmIo.MmioRead(g.Vcpu(0), moved + Vlapic.ID, 4));
    }

    [Fact]
    public void Pm1aSleepToS5PowersOffAtThePortTheToolstackChose()
    {
        var g = new Guest(_host, vcpus: 1);
        ShutdownReason? reason = null;
        _host.DomainShutdown += (_, e) => { if (e.DomainId == g.Id) reason = e.Reason; };
        _host.SetAcpiSleepControl(g.Id, 0x1804, 5);
        const ulong slpEn = 1 << 13;
        HvmIo.PortWrite(g.Vcpu(), 0xB004, 2, slpEn | (5 << 10)); // the old port is nobody's now
        HvmIo.PortWrite(g.Vcpu(), 0x1804, 2, slpEn | (7 << 10)); // S5 is type 5 here
        HvmIo.PortWrite(g.Vcpu(), 0x1804, 2, 5 << 10);           // no SLP_EN
        Assert.Null(g.Domain.ShutdownReason);
        HvmIo.PortWrite(g.Vcpu(), 0x1804, 2, slpEn | (5 << 10));
        Assert.Equal(Public.Sched.SHUTDOWN_poweroff, g.Domain.ShutdownReason);
        Assert.True(TestHosts.WaitUntil(() => reason is not null));
        Assert.Equal(ShutdownReason.Poweroff, reason);
    }

    [Fact]
    [Trait("Feature", "x86/HVM"), Trait("Feature", "x86/HVM OVMF")]
    public void HvmloaderRelocatingTheAcpiPortsLeavesPm1aControlToTheDeviceModel()
    {
        // hvmloader sets the parameter itself, as Xen lets a guest; its FADT then names QEMU's PM1a control register.
        var g = new Guest(_host, vcpus: 1, type: DomainKind.Hvm);
        var p = new XenHvmParam { Domid = Xen.DOMID_SELF, Index = Params.HVM_PARAM_ACPI_IOPORTS_LOCATION, Value = 2 };
        Assert.Equal(-Errno.EINVAL, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_param, ref p));
        Assert.True(g.Domain.Arch.PortIo.TryFind(0xB004, out _, out _));
        p.Value = 1;
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_param, ref p));
        Assert.Equal(1UL, _host.GetHvmParam(g.Id, Params.HVM_PARAM_ACPI_IOPORTS_LOCATION));
        Assert.False(g.Domain.Arch.PortIo.TryFind(0xB004, out _, out _));
        // OVMF reads the register, sets a bit and writes it back: no ones read from nowhere, no S5.
        HvmIo.PortWrite(g.Vcpu(), 0xB004, 2, 0xFFFF);
        Assert.Null(g.Domain.ShutdownReason);
        p = new XenHvmParam { Domid = Xen.DOMID_SELF, Index = Params.HVM_PARAM_VM86_TSS_SIZED, Value = 0xFC100000UL | (0x280UL << 32) };
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_param, ref p));
        p = new XenHvmParam { Domid = Xen.DOMID_SELF, Index = Params.HVM_PARAM_IDENT_PT, Value = 0x1000 };
        Assert.Equal(-Errno.EPERM, g.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_param, ref p));

        // A guest the toolstack gave its own ACPI sleep register keeps it.
        var h = new Guest(_host, vcpus: 1, type: DomainKind.Hvm);
        _host.SetAcpiSleepControl(h.Id, 0xB004, 7);
        p = new XenHvmParam { Domid = Xen.DOMID_SELF, Index = Params.HVM_PARAM_ACPI_IOPORTS_LOCATION, Value = 1 };
        Assert.Equal(0, h.Call(Xen.__HYPERVISOR_hvm_op, HvmOp.HVMOP_set_param, ref p));
        Assert.True(h.Domain.Arch.PortIo.TryFind(0xB004, out var handler, out _));
        Assert.Same(h.Domain.Arch.Pm1a, handler);
    }

    [Fact]
    public void Pm1aCannotMoveOntoATakenPort()
    {
        var g = new Guest(_host, vcpus: 1);
        var ex = Assert.Throws<HypervisorException>(() => _host.SetAcpiSleepControl(g.Id, HvmDomain.DebugConsolePort, 5));
        Assert.Equal(Public.Errno.EEXIST, ex.Errno);
        Assert.Equal((ushort)0xB004, g.Domain.Arch.Pm1a.Port);
        Assert.True(g.Domain.Arch.PortIo.TryFind(0xB004, out var h, out _));
        Assert.Same(g.Domain.Arch.Pm1a, h);
    }
}
