using XenSharp.Hypervisor.Common;
using static XenSharp.Public.Hvm.Ioreq;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>
/// Where an HVM/PVH vCPU's port I/O and MMIO exits go (Xen's hvm/intercept.c and hvm_io_intercept): the vCPU's own
/// vLAPIC page first (its base is per vCPU and moves with IA32_APIC_BASE), then the domain's buses, and what no
/// device claims to the IOREQ server; without one, reads return all ones and writes are dropped.
/// </summary>
internal static class HvmIo
{
    public static ulong AllOnes(int size) => size >= 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;

    public static ulong PortRead(Vcpu v, ushort port, int size)
    {
        if (v.Domain.Arch.PortIo.TryFind(port, out var device, out ulong offset))
            return device.Read(v, offset, size) & AllOnes(size);
        return UnclaimedRead(v, IOREQ_TYPE_PIO, port, size);
    }

    public static void PortWrite(Vcpu v, ushort port, int size, ulong value)
    {
        if (v.Domain.Arch.PortIo.TryFind(port, out var device, out ulong offset))
            device.Write(v, offset, size, value & AllOnes(size));
        else
            UnclaimedWrite(v, IOREQ_TYPE_PIO, port, size, value & AllOnes(size));
    }

    public static ulong MmioRead(Vcpu v, ulong gpa, int size)
    {
        if (FindMmio(v, gpa, out var device, out ulong offset))
            return device.Read(v, offset, size) & AllOnes(size);
        return UnclaimedRead(v, IOREQ_TYPE_COPY, gpa, size);
    }

    public static void MmioWrite(Vcpu v, ulong gpa, int size, ulong value)
    {
        if (FindMmio(v, gpa, out var device, out ulong offset))
            device.Write(v, offset, size, value & AllOnes(size));
        else
            UnclaimedWrite(v, IOREQ_TYPE_COPY, gpa, size, value & AllOnes(size));
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
        if (servers.Any && servers.TrySend(v, type, address, size, read: true, 0, out ulong result))
            return result & AllOnes(size);
        return v.Domain.Host.IoreqServer is { } server && server.TryRead(v.Domain.DomainId, type, address, size, out ulong value)
            ? value & AllOnes(size)
            : AllOnes(size);
    }

    private static void UnclaimedWrite(Vcpu v, uint type, ulong address, int size, ulong value)
    {
        var servers = v.Domain.Arch.Ioreq;
        if (servers.Any && servers.TrySend(v, type, address, size, read: false, value, out _))
            return;
        v.Domain.Host.IoreqServer?.TryWrite(v.Domain.DomainId, type, address, size, value);
    }
}
