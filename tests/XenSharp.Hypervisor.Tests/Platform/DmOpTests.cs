using XenSharp.Public;
using XenSharp.Public.Hvm;
using static XenSharp.Public.Hvm.DmOp;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>__HYPERVISOR_dm_op as a device model calls it on the HVM domain it serves: the interrupt operations reach
/// the domain's 8259s and IOAPIC; bad buffers, domains and arguments get Xen's errnos.</summary>
[Trait("Feature", "Hypervisor emulated platform devices")]
public class DmOpTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    private const ulong Bufs = Guest.Scratch, Op = Guest.Scratch + 0x100;

    private static long DmOp(Guest dm, ushort domid, uint op, ReadOnlySpan<byte> args, ulong size = 32, uint nrBufs = 1)
    {
        var header = new byte[32];
        BitConverter.TryWriteBytes(header.AsSpan(0), op);
        args.CopyTo(header.AsSpan(8));
        dm.Host.WriteGuestMemory(dm.Id, Op, header);
        dm.Write(Bufs, new XenDmOpBuf { H = Op, Size = size });
        return dm.Call(Xen.__HYPERVISOR_dm_op, domid, nrBufs, Bufs);
    }

    [Fact]
    public void InterruptOperationsDriveTheTargetsPlatform()
    {
        var dm = new Guest(_host, vcpus: 1, privileged: true);
        var target = new HvmPlatformGuest(_host, vcpus: 3);
        target.EnableLapic();
        target.InitPic();
        target.Out(0x4D1, 0x08); // IRQ 11 level, as a BIOS sets PCI IRQs

        Assert.Equal(0, DmOp(dm, target.Id, XEN_DMOP_set_isa_irq_level, [1, 1]));
        Assert.Equal(0x31, target.Vcpu().Arch.Acknowledge());
        Assert.Equal(0, DmOp(dm, target.Id, XEN_DMOP_set_isa_irq_level, [1, 0]));
        target.Out(0x20, 0x20);

        // Device 2 INTA is on link 2; routed to IRQ 11 it reaches the slave 8259.
        Assert.Equal(0, DmOp(dm, target.Id, XEN_DMOP_set_pci_link_route, [2, 11]));
        Assert.Equal(11, target.Platform.Irq.LinkRoute(2));
        Assert.Equal(0, DmOp(dm, target.Id, XEN_DMOP_set_pci_intx_level, [0, 0, 0, 2, 0, 1]));
        Assert.Equal(0x3B, target.Vcpu().Arch.Acknowledge());
        Assert.True(target.Domain.Arch.Irq.Level(X86.PlatformIrq.PciIntxGsi(2, 0)));
        Assert.Equal(0, DmOp(dm, target.Id, XEN_DMOP_set_pci_intx_level, [0, 0, 0, 2, 0, 0]));
        Assert.False(target.Domain.Arch.Irq.Level(X86.PlatformIrq.PciIntxGsi(2, 0)));

        Assert.Equal(0, DmOp(dm, target.Id, XEN_DMOP_nr_vcpus, []));
        Assert.Equal(3u, dm.Read<uint>(Op + 8));
    }

    [Fact]
    public void BadCallsGetXensErrnos()
    {
        var dm = new Guest(_host, vcpus: 1, privileged: true);
        var domU = new Guest(_host, vcpus: 1);
        var target = new HvmPlatformGuest(_host);
        Assert.Equal(-Errno.EINVAL, DmOp(dm, target.Id, XEN_DMOP_set_isa_irq_level, [16, 1]));
        Assert.Equal(-Errno.EINVAL, DmOp(dm, target.Id, XEN_DMOP_set_isa_irq_level, [3, 2]));
        Assert.Equal(-Errno.EINVAL, DmOp(dm, target.Id, XEN_DMOP_set_pci_link_route, [4, 5]));
        Assert.Equal(-Errno.EINVAL, DmOp(dm, target.Id, XEN_DMOP_set_pci_intx_level, [0, 0, 0, 32, 0, 1]));
        Assert.Equal(-Errno.EINVAL, DmOp(dm, target.Id, XEN_DMOP_set_pci_intx_level, [1, 0, 0, 2, 0, 1]));
        Assert.Equal(-Errno.EOPNOTSUPP, DmOp(dm, target.Id, 99, []));
        var ev = new byte[24];
        ev[0] = 7; // no such vCPU
        Assert.Equal(-Errno.EINVAL, DmOp(dm, target.Id, XEN_DMOP_inject_event, ev));
        ev[0] = 0; ev[7] = 1; // pad0
        Assert.Equal(-Errno.EINVAL, DmOp(dm, target.Id, XEN_DMOP_inject_event, ev));
        Assert.Equal(-Errno.EFAULT, DmOp(dm, target.Id, XEN_DMOP_set_isa_irq_level, [1, 1], size: 9)); // too short
        Assert.Equal(-Errno.E2BIG, DmOp(dm, target.Id, XEN_DMOP_nr_vcpus, [], nrBufs: 3));
        Assert.Equal(-Errno.ESRCH, DmOp(dm, 999, XEN_DMOP_nr_vcpus, []));
        Assert.Equal(-Errno.EPERM, DmOp(dm, dm.Id, XEN_DMOP_nr_vcpus, []));
        Assert.Equal(-Errno.EPERM, DmOp(domU, target.Id, XEN_DMOP_nr_vcpus, []));
        Assert.Equal(-Errno.EFAULT, dm.Call(Xen.__HYPERVISOR_dm_op, target.Id, 1, Guest.Bad));
        var pad = new byte[32];
        BitConverter.TryWriteBytes(pad.AsSpan(0), XEN_DMOP_nr_vcpus);
        pad[4] = 1;
        dm.Host.WriteGuestMemory(dm.Id, Op, pad);
        Assert.Equal(-Errno.EINVAL, dm.Call(Xen.__HYPERVISOR_dm_op, target.Id, 1, Bufs));
        Assert.False(target.Domain.Arch.Irq.Level(3));
    }
}
