using XenSharp.Cpu;
using XenSharp.Hypervisor.Common;
using static XenSharp.Public.Hvm.Ioreq;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>
/// Where an HVM/PVH vCPU's port I/O and MMIO exits go (Xen's hvm/intercept.c and hvm_io_intercept): the vCPU's own
/// vLAPIC page first (its base is per vCPU and moves with IA32_APIC_BASE), then the domain's buses, and what no
/// device claims (or a partial device declines) to the IOREQ server; without one, reads return all ones and writes are
/// dropped.
/// </summary>
internal static class HvmIo
{
    public static ulong AllOnes(int size) => size >= 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;

    public static ulong PortRead(Vcpu v, ushort port, int size)
    {
        if (v.Domain.Arch.PortIo.TryFind(port, out var device, out ulong offset))
        {
            if (device is not IPartialIoHandler partial)
            {
                if (HvmIoStats.On) HvmIoStats.Count(HvmIoStats.Kind.PioRead, port, HvmIoStats.Who.Hypervisor);
                return device.Read(v, offset, size) & AllOnes(size);
            }
            if (partial.TryRead(v, offset, size, out ulong value))
            {
                if (HvmIoStats.On) HvmIoStats.Count(HvmIoStats.Kind.PioRead, port, HvmIoStats.Who.Hypervisor);
                return value & AllOnes(size);
            }
        }
        return UnclaimedRead(v, IOREQ_TYPE_PIO, port, size);
    }

    public static void PortWrite(Vcpu v, ushort port, int size, ulong value)
    {
        if (v.Domain.Arch.PortIo.TryFind(port, out var device, out ulong offset))
        {
            if (device is not IPartialIoHandler partial)
            {
                if (HvmIoStats.On) HvmIoStats.Count(HvmIoStats.Kind.PioWrite, port, HvmIoStats.Who.Hypervisor);
                device.Write(v, offset, size, value & AllOnes(size));
                return;
            }
            if (partial.TryWrite(v, offset, size, value & AllOnes(size)))
            {
                if (HvmIoStats.On) HvmIoStats.Count(HvmIoStats.Kind.PioWrite, port, HvmIoStats.Who.Hypervisor);
                return;
            }
        }
        UnclaimedWrite(v, IOREQ_TYPE_PIO, port, size, value & AllOnes(size));
    }

    public static ulong MmioRead(Vcpu v, ulong gpa, int size)
    {
        if (FindMmio(v, gpa, out var device, out ulong offset))
        {
            if (HvmIoStats.On) HvmIoStats.Count(HvmIoStats.Kind.MmioRead, gpa, HvmIoStats.Who.Hypervisor);
            return device.Read(v, offset, size) & AllOnes(size);
        }
        return UnclaimedRead(v, IOREQ_TYPE_COPY, gpa, size);
    }

    public static void MmioWrite(Vcpu v, ulong gpa, int size, ulong value)
    {
        if (FindMmio(v, gpa, out var device, out ulong offset))
        {
            if (HvmIoStats.On) HvmIoStats.Count(HvmIoStats.Kind.MmioWrite, gpa, HvmIoStats.Who.Hypervisor);
            device.Write(v, offset, size, value & AllOnes(size));
        }
        else
            UnclaimedWrite(v, IOREQ_TYPE_COPY, gpa, size, value & AllOnes(size));
    }

    /// <summary>
    /// A REP string exit covering <see cref="VcpuExit.Count"/> iterations (Xen's hvmemul_do_io with reps): sent to the
    /// IOREQ server that claims its whole span as one ioreq, with the guest-physical buffer as data_is_ptr, else done
    /// here an iteration at a time through the ordinary path (the domain's own devices, PCI configuration, the
    /// in-process server, nobody). Returns the iterations done.
    /// </summary>
    public static ulong Repeated(Vcpu v, in VcpuExit exit)
    {
        bool mmio = exit.Reason == VcpuExitReason.Mmio;
        uint type = mmio ? IOREQ_TYPE_COPY : IOREQ_TYPE_PIO;
        ulong address = mmio ? exit.Address : exit.Port;
        int size = exit.Size;
        var servers = v.Domain.Arch.Ioreq;
        bool local = mmio ? FindMmio(v, address, out _, out _) : v.Domain.Arch.PortIo.TryFind((ushort)address, out _, out _);
        if (!local && servers.Any && (mmio || address is < 0xCF8 or > 0xCFF))
        {
            long t0 = HvmIoStats.On ? System.Diagnostics.Stopwatch.GetTimestamp() : 0;
            if (servers.TrySend(v, type, address, size, !exit.IsWrite, exit.Data, out ulong done, exit.Count, exit.DataIsPointer, exit.Backward))
            {
                if (HvmIoStats.On)
                    HvmIoStats.Count(mmio ? HvmIoStats.Kind.RepMmio : HvmIoStats.Kind.RepPio, address, HvmIoStats.Who.Ioreq,
                        System.Diagnostics.Stopwatch.GetTimestamp() - t0, done);
                return done;
            }
        }
        long step = exit.Backward ? -size : size;
        for (uint i = 0; i < exit.Count; i++)
        {
            ulong at = mmio ? address + (ulong)(step * i) : address;
            ulong buffer = exit.Data + (ulong)(step * i);
            if (exit.IsWrite)
            {
                ulong value = exit.DataIsPointer ? ReadGuest(v, buffer, size) : exit.Data;
                if (mmio)
                    MmioWrite(v, at, size, value);
                else
                    PortWrite(v, (ushort)at, size, value);
            }
            else
            {
                ulong value = mmio ? MmioRead(v, at, size) : PortRead(v, (ushort)at, size);
                if (exit.DataIsPointer)
                    WriteGuest(v, buffer, size, value);
            }
        }
        return exit.Count;
    }

    /// <summary>An element of a repeated access's buffer; the engine gives one in RAM, anything else reads all ones.</summary>
    private static unsafe ulong ReadGuest(Vcpu v, ulong gpa, int size)
    {
        if ((gpa & 0xFFF) + (ulong)size > 0x1000)
            return AllOnes(size);
        byte* page = v.Domain.P2m.GetPage(gpa >> 12, write: false);
        if (page is null)
            return AllOnes(size);
        byte* p = page + (gpa & 0xFFF);
        return size switch { 1 => *p, 2 => *(ushort*)p, 4 => *(uint*)p, _ => *(ulong*)p };
    }

    private static unsafe void WriteGuest(Vcpu v, ulong gpa, int size, ulong value)
    {
        if ((gpa & 0xFFF) + (ulong)size > 0x1000)
            return;
        byte* page = v.Domain.P2m.GetPage(gpa >> 12, write: true);
        if (page is null)
            return;
        byte* p = page + (gpa & 0xFFF);
        switch (size)
        {
            case 1: *p = (byte)value; break;
            case 2: *(ushort*)p = (ushort)value; break;
            case 4: *(uint*)p = (uint)value; break;
            default: *(ulong*)p = value; break;
        }
    }

    /// <summary>The vCPU's own vLAPIC page, wherever its base is now, else the domain's MMIO ranges.</summary>
    private static bool FindMmio(Vcpu v, ulong gpa, out IIoHandler device, out ulong offset)
    {
        var lapic = v.Arch.Vlapic;
        if (lapic.IsMmio(gpa))
        {
            device = lapic;
            offset = gpa & 0xFFF;
            return true;
        }
        return v.Domain.Arch.Mmio.TryFind(gpa, out device, out offset);
    }

    /// <summary>The domain's IOREQ servers first (Xen's hvm_send_ioreq), then the in-process one, else all ones.</summary>
    private static ulong UnclaimedRead(Vcpu v, uint type, ulong address, int size)
    {
        var servers = v.Domain.Arch.Ioreq;
        var kind = type == IOREQ_TYPE_PIO ? HvmIoStats.Kind.PioRead : HvmIoStats.Kind.MmioRead;
        long t0 = HvmIoStats.On ? System.Diagnostics.Stopwatch.GetTimestamp() : 0;
        if (servers.Any && servers.TrySend(v, type, address, size, read: true, 0, out ulong result))
        {
            if (HvmIoStats.On) HvmIoStats.Count(kind, address, HvmIoStats.Who.Ioreq, System.Diagnostics.Stopwatch.GetTimestamp() - t0);
            return result & AllOnes(size);
        }
        ulong value = 0;
        bool served = v.Domain.Host.IoreqServer is { } server && server.TryRead(v.Domain.DomainId, type, address, size, out value);
        if (HvmIoStats.On) HvmIoStats.Count(kind, address, served ? HvmIoStats.Who.InProcess : HvmIoStats.Who.Nobody);
        return served ? value & AllOnes(size) : AllOnes(size);
    }

    private static void UnclaimedWrite(Vcpu v, uint type, ulong address, int size, ulong value)
    {
        var servers = v.Domain.Arch.Ioreq;
        var kind = type == IOREQ_TYPE_PIO ? HvmIoStats.Kind.PioWrite : HvmIoStats.Kind.MmioWrite;
        long t0 = HvmIoStats.On ? System.Diagnostics.Stopwatch.GetTimestamp() : 0;
        if (servers.Any && servers.TrySend(v, type, address, size, read: false, value, out ulong buffered))
        {
            if (HvmIoStats.On)
                HvmIoStats.Count(kind, address, buffered == IoreqServers.SentBuffered ? HvmIoStats.Who.Buffered : HvmIoStats.Who.Ioreq,
                    System.Diagnostics.Stopwatch.GetTimestamp() - t0);
            return;
        }
        if (HvmIoStats.On) HvmIoStats.Count(kind, address, v.Domain.Host.IoreqServer is null ? HvmIoStats.Who.Nobody : HvmIoStats.Who.InProcess);
        v.Domain.Host.IoreqServer?.TryWrite(v.Domain.DomainId, type, address, size, value);
    }
}
