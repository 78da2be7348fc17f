namespace XenSharp.Public;

/// <summary>xen/include/public/xen-compat.h.</summary>
public static class XenCompat
{
    /// <summary>The newest interface version these definitions follow (Xen 4.14).</summary>
    public const uint XEN_LATEST_INTERFACE_VERSION = 0x00040e00;
}
