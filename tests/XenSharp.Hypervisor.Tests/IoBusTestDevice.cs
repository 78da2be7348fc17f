using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86;
using XenSharp.Hypervisor.X86.Io;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// A device that exists only for tests (tests/guests/iobus.c drives it): an ID and a scratch register on I/O ports
/// 0x5A0-0x5A7; on a 4 KiB MMIO page the ID, a 64-bit scratch register, a doorbell that pulses its edge GSI, a
/// register that raises or lowers its level GSI, and the count of doorbell writes.
/// </summary>
internal sealed class IoBusTestDevice
{
    public const ushort Port = 0x5A0;
    public const ulong MmioBase = 0xFEB00000;
    public const uint Id = 0x53554249; // "IBUS"
    public const ulong RegId = 0x00, RegScratch = 0x08, RegDoorbell = 0x10, RegLevel = 0x18, RegRings = 0x20;
    public const uint EdgeGsi = 5, LevelGsi = 9;
    public const byte EdgeVector = 0x61, LevelVector = 0x62;

    private readonly IrqLine _edge, _level;
    private ulong _portScratch, _mmioScratch;
    private int _rings;

    public IoBusTestDevice(IrqRouter irq)
    {
        _edge = irq.Line(EdgeGsi);
        _level = irq.Line(LevelGsi);
        Ports = new PortRegisters(this);
        Registers = new MmioRegisters(this);
    }

    public IIoHandler Ports { get; }
    public IIoHandler Registers { get; }
    public int Rings => Volatile.Read(ref _rings);

    /// <summary>Registers the device on the domain's buses and routes its GSIs to vCPU 0's vLAPIC.</summary>
    public static IoBusTestDevice Attach(HvmDomain hvm)
    {
        var dev = new IoBusTestDevice(hvm.Irq);
        hvm.PortIo.Register(Port, 8, dev.Ports);
        hvm.Mmio.Register(MmioBase, 0x1000, dev.Registers);
        hvm.Routes.SetRoute(EdgeGsi, 0, EdgeVector, levelTriggered: false);
        hvm.Routes.SetRoute(LevelGsi, 0, LevelVector, levelTriggered: true);
        return dev;
    }

    private sealed class PortRegisters(IoBusTestDevice d) : IIoHandler
    {
        public ulong Read(Vcpu v, ulong offset, int size) => offset switch
        {
            0 => Id,
            4 => Volatile.Read(ref d._portScratch),
            _ => ulong.MaxValue,
        };

        public void Write(Vcpu v, ulong offset, int size, ulong value)
        {
            if (offset == 4)
                Volatile.Write(ref d._portScratch, value);
        }
    }

    private sealed class MmioRegisters(IoBusTestDevice d) : IIoHandler
    {
        public ulong Read(Vcpu v, ulong offset, int size) => offset switch
        {
            RegId => Id,
            RegScratch => Volatile.Read(ref d._mmioScratch),
            RegLevel => d._level.Level ? 1UL : 0,
            RegRings => (ulong)d.Rings,
            _ => 0,
        };

        public void Write(Vcpu v, ulong offset, int size, ulong value)
        {
            switch (offset)
            {
                case RegScratch:
                    Volatile.Write(ref d._mmioScratch, value);
                    break;
                case RegDoorbell:
                    Interlocked.Increment(ref d._rings);
                    d._edge.Pulse();
                    break;
                case RegLevel:
                    d._level.Set(value != 0);
                    break;
            }
        }
    }
}
