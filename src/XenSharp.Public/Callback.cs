using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/callback.h: where a PV guest wants events, failsafe returns and syscalls.</summary>
public static class Callback
{
    public const ushort CALLBACKTYPE_event = 0, CALLBACKTYPE_failsafe = 1, CALLBACKTYPE_syscall = 2,
        CALLBACKTYPE_nmi = 4, CALLBACKTYPE_sysenter = 5, CALLBACKTYPE_syscall32 = 7;
    public const ushort CALLBACKF_mask_events = 1 << 0;
    public const int CALLBACKOP_register = 0, CALLBACKOP_unregister = 1;
}

/// <summary>struct callback_register (16 bytes on x86_64).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CallbackRegister
{
    public ushort Type;
    public ushort Flags;
    public uint Pad;
    public ulong Address;
}

/// <summary>struct callback_unregister.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CallbackUnregister
{
    public ushort Type;
    public ushort Pad;
}

/// <summary>struct callback_register of the compat ABI (12 bytes): the address is a code selector and an EIP.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CompatCallbackRegister
{
    public ushort Type;
    public ushort Flags;
    public uint Cs;
    public uint Eip;
}
