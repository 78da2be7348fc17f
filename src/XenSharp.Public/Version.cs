using System.Runtime.InteropServices;

namespace XenSharp.Public;

/// <summary>xen/include/public/version.h.</summary>
public static class Version
{
    public const int XENVER_version = 0, XENVER_extraversion = 1, XENVER_compile_info = 2,
        XENVER_capabilities = 3, XENVER_changeset = 4, XENVER_platform_parameters = 5, XENVER_get_features = 6,
        XENVER_pagesize = 7, XENVER_guest_handle = 8, XENVER_commandline = 9, XENVER_build_id = 10;
    public const int XEN_EXTRAVERSION_LEN = 16, XEN_CAPABILITIES_INFO_LEN = 1024, XEN_CHANGESET_INFO_LEN = 64,
        XEN_COMMANDLINE_LEN = 1024;
    /// <summary>sizeof(struct xen_compile_info): compiler[64], compile_by[16], compile_domain[32], compile_date[32].</summary>
    public const int XEN_COMPILE_INFO_SIZE = 144;
}

[StructLayout(LayoutKind.Sequential)]
public struct XenFeatureInfo
{
    public uint SubmapIdx;
    public uint Submap;
}

[StructLayout(LayoutKind.Sequential)]
public struct XenPlatformParameters
{
    public ulong VirtStart;
}
