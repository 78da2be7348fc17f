using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86;
using XenSharp.Hypervisor.X86.Io;

namespace XenSharp.Hypervisor.Tests.Platform;

/// <summary>An HVM domain whose emulated platform the tests program as a guest would: port and MMIO accesses go
/// through <see cref="HvmIo"/> as the vCPU's exits do.</summary>
internal sealed class HvmPlatformGuest
{
    public HvmPlatformGuest(XenHypervisor host, int vcpus = 1, long timeOffsetSeconds = 0, DomainKind kind = DomainKind.Hvm)
    {
        Id = host.CreateDomain(new DomainCreateConfig(kind, 16 * 1024, vcpus) { TimeOffsetSeconds = timeOffsetSeconds });
        Domain = host.FindDomain(Id)!;
    }

    public ushort Id { get; }
    public Domain Domain { get; }
    public Vcpu Vcpu(int i = 0) => Domain.Vcpus[i];
    public HvmPlatform Platform => Domain.Arch.Platform!;

    public byte In(ushort port) => (byte)HvmIo.PortRead(Vcpu(), port, 1);
    public ulong In(ushort port, int size) => HvmIo.PortRead(Vcpu(), port, size);
    public void Out(ushort port, byte value) => HvmIo.PortWrite(Vcpu(), port, 1, value);
    public void Out(ushort port, int size, ulong value) => HvmIo.PortWrite(Vcpu(), port, size, value);
    public ulong Read(ulong gpa, int size = 4) => HvmIo.MmioRead(Vcpu(), gpa, size);
    public void Write(ulong gpa, ulong value, int size = 4) => HvmIo.MmioWrite(Vcpu(), gpa, size, value);

    /// <summary>vCPU <paramref name="i"/>'s vLAPIC software-enabled, and on vCPU 0 LINT0 in ExtINT mode as BIOSes
    /// leave it (virtual wire), so the 8259's output reaches the vCPU.</summary>
    public Vlapic EnableLapic(int i = 0)
    {
        var l = Vcpu(i).Arch.Vlapic;
        l.MmioWrite(Vlapic.DefaultBase + Vlapic.SVR, 4, 0x1FF);
        if (i == 0)
            l.MmioWrite(Vlapic.DefaultBase + Vlapic.LVT_LINT0, 4, 0x700);
        return l;
    }

    /// <summary>Linux's init_8259A: both chips masked, ICW1-4 with vectors 0x30 and 0x38, cascade on IR2, then
    /// everything unmasked.</summary>
    public void InitPic(byte masterBase = 0x30, byte slaveBase = 0x38, bool autoEoi = false)
    {
        Out(0x21, 0xFF);
        Out(0xA1, 0xFF);
        Out(0x20, 0x11);
        Out(0x21, masterBase);
        Out(0x21, 0x04);
        Out(0x21, (byte)(autoEoi ? 0x03 : 0x01));
        Out(0xA0, 0x11);
        Out(0xA1, slaveBase);
        Out(0xA1, 0x02);
        Out(0xA1, 0x01);
        Out(0x21, 0x00);
        Out(0xA1, 0x00);
    }

    /// <summary>Writes IOAPIC redirection entry <paramref name="pin"/> through IOREGSEL/IOWIN.</summary>
    public void Route(int pin, ulong entry)
    {
        Write(Vioapic.DefaultBase, (ulong)(0x10 + 2 * pin + 1));
        Write(Vioapic.DefaultBase + 0x10, entry >> 32);
        Write(Vioapic.DefaultBase, (ulong)(0x10 + 2 * pin));
        Write(Vioapic.DefaultBase + 0x10, (uint)entry);
    }

    public ulong RedirectionEntry(int pin)
    {
        Write(Vioapic.DefaultBase, (ulong)(0x10 + 2 * pin));
        ulong lo = Read(Vioapic.DefaultBase + 0x10);
        Write(Vioapic.DefaultBase, (ulong)(0x10 + 2 * pin + 1));
        return lo | (Read(Vioapic.DefaultBase + 0x10) << 32);
    }

    public static bool InIrr(Vlapic l, byte vector) =>
        ((l.MmioRead(Vlapic.DefaultBase + Vlapic.IRR + (ulong)(vector >> 5) * 0x10, 4) >> (vector & 31)) & 1) != 0;
    public static bool InTmr(Vlapic l, byte vector) =>
        ((l.MmioRead(Vlapic.DefaultBase + Vlapic.TMR + (ulong)(vector >> 5) * 0x10, 4) >> (vector & 31)) & 1) != 0;

    public void LapicEoi(int i = 0) => Vcpu(i).Arch.Vlapic.MmioWrite(Vlapic.DefaultBase + Vlapic.EOI, 4, 0);
}
