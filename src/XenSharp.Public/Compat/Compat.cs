using System.Runtime.InteropServices;

namespace XenSharp.Public.Compat;

// The layouts 32-bit guests use (Xen's compat/*.h, i.e. the public headers built for x86_32): guest
// handles, unsigned long, xen_ulong_t and xen_pfn_t are 4 bytes, and uint64_t is only 4-byte aligned.

/// <summary>x86_32 shared_info offsets (2344 bytes): 32 vcpu_info, 32-bit event words, wallclock, arch.</summary>
public static class SharedInfo32
{
    public const int Size = 2344, OffsetEvtchnPending = 0x800, OffsetEvtchnMask = 0x880, OffsetWcVersion = 0x900,
        OffsetWcSec = 0x904, OffsetWcNsec = 0x908, OffsetArch = 0x90C, OffsetWcSecHi = 0x924;
    /// <summary>evtchn_pending_sel is a 32-bit word at offset 4 of vcpu_info.</summary>
    public const int VcpuInfoOffsetPendingSel = 4;
    /// <summary>32 words of 32 bits.</summary>
    public const int EVTCHN_2L_NR_CHANNELS = 32 * 32;
}

[StructLayout(LayoutKind.Sequential)]
public struct XenMemoryReservation32
{
    public uint ExtentStart;
    public uint NrExtents;
    public uint ExtentOrder;
    public uint MemFlags;
    public ushort Domid;
}

[StructLayout(LayoutKind.Sequential)]
public struct XenMemoryExchange32
{
    public XenMemoryReservation32 In;
    public XenMemoryReservation32 Out;
    public uint NrExchanged;

    public const int OffsetNrExchanged = 40;
}

[StructLayout(LayoutKind.Sequential)]
public struct XenAddToPhysmapBatch32
{
    public ushort Domid;
    public ushort Space;
    public ushort Size;
    public ushort ForeignDomid;
    public uint Idxs;
    public uint Gpfns;
    public uint Errs;
}

[StructLayout(LayoutKind.Sequential)]
public struct XenAddToPhysmap32 { public ushort Domid; public ushort Size; public uint Space; public uint Idx; public uint Gpfn; }

[StructLayout(LayoutKind.Sequential)]
public struct XenRemoveFromPhysmap32 { public ushort Domid; public uint Gpfn; }

[StructLayout(LayoutKind.Sequential)]
public struct XenMemoryMap32 { public uint NrEntries; public uint Buffer; }

/// <summary>struct xen_pod_target with i386's 4-byte alignment of uint64_t.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct XenPodTarget32 { public ulong TargetPages; public ulong TotPages; public ulong PodCachePages; public ulong PodEntries; public ushort Domid; }

[StructLayout(LayoutKind.Sequential)]
public struct GnttabSetupTable32 { public ushort Dom; public uint NrFrames; public short Status; public uint FrameList; }

[StructLayout(LayoutKind.Sequential)]
public struct GnttabCopyPtr32 { public uint RefOrGmfn; public ushort Domid; public ushort Offset; }

[StructLayout(LayoutKind.Sequential)]
public struct GnttabCopy32
{
    public GnttabCopyPtr32 Source;
    public GnttabCopyPtr32 Dest;
    public ushort Len;
    public ushort Flags;
    public short Status;
}

[StructLayout(LayoutKind.Sequential)]
public struct GnttabGetStatusFrames32 { public uint NrFrames; public ushort Dom; public short Status; public uint FrameList; }

[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct SchedPoll32 { public uint Ports; public uint NrPorts; public ulong Timeout; }

[StructLayout(LayoutKind.Sequential, Pack = 4)]
public unsafe struct VcpuRunstateInfo32
{
    public int State;
    public ulong StateEntryTime;
    public fixed ulong Time[4];
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct MulticallEntry32
{
    public uint Op;
    public uint Result;
    public fixed uint Args[6];
}

[StructLayout(LayoutKind.Sequential)]
public struct XenPlatformParameters32 { public uint VirtStart; }

/// <summary>struct xen_machphys_mapping of the compat ABI (xen_ulong_t is 32 bits).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenMachphysMapping32 { public uint VStart; public uint VEnd; public uint MaxMfn; }

/// <summary>struct xen_machphys_mfn_list of the compat ABI: a 32-bit handle to 32-bit MFNs.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XenMachphysMfnList32 { public uint MaxExtents; public uint ExtentStart; public uint NrExtents; }
