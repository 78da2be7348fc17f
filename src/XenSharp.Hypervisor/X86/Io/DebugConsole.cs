using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>Port 0xE9 (Xen's hvm_print_line): each byte written goes to the domain's console log. Reads are not
/// emulated and return all ones.</summary>
internal sealed unsafe class DebugConsole : IIoHandler
{
    public ulong Read(Vcpu v, ulong offset, int size) => HvmIo.AllOnes(size);

    public void Write(Vcpu v, ulong offset, int size, ulong value)
    {
        byte b = (byte)value;
        v.Domain.Host.GuestConsoleWrite(v.Domain, new ReadOnlySpan<byte>(&b, 1));
    }
}
