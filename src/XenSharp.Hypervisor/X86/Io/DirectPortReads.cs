using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>
/// Reads of the ports whose device allows it (<see cref="IDirectReadIoHandler"/>: the PIT and the ACPI PM timer),
/// answered inside the vCPU's run without an exit (<see cref="Cpu.IX86Vcpu.DirectPortReads"/>). Firmware and boot
/// loaders poll these timers in loops (SeaBIOS's and GRUB's delays and calibrations read port 0x61 or the PM timer
/// on every pass, SeaBIOS's disk waits read the PM timer between status reads), and each read as an exit is a
/// trip out of compiled code, through the run loop and the exit handler, and back.
/// </summary>
internal sealed class DirectPortReads(Vcpu v) : Cpu.IDirectPortReads
{
    public bool TryRead(uint port, int size, out ulong value)
    {
        if (port > 0xFFFF || !v.Domain.Arch.PortIo.TryFind(port, out var device, out ulong offset) || device is not IDirectReadIoHandler)
        {
            value = 0;
            return false;
        }
        if (HvmIoStats.On) HvmIoStats.Count(HvmIoStats.Kind.PioRead, port, HvmIoStats.Who.Hypervisor);
        value = device.Read(v, offset, size) & HvmIo.AllOnes(size);
        return true;
    }
}
