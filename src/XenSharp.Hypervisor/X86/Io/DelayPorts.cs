using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>
/// Ports 0x80 (POST codes) and 0xED, which firmware and Linux write to as an I/O delay: Xen lets an HVM guest reach
/// them directly (they are clear in its I/O bitmap), so they never reach the device model. With no hardware behind
/// them here, writes go nowhere and reads float to all ones, and the access ends in the hypervisor instead of an
/// ioreq round trip.
/// </summary>
internal sealed class DelayPorts : IIoHandler
{
    public const ushort PostCode = 0x80, AltDelay = 0xED;

    public static void Register(IoBus portIo)
    {
        var ports = new DelayPorts();
        portIo.Register(PostCode, 1, ports);
        portIo.Register(AltDelay, 1, ports);
    }

    public ulong Read(Vcpu v, ulong offset, int size) => HvmIo.AllOnes(size);

    public void Write(Vcpu v, ulong offset, int size, ulong value)
    {
    }
}
