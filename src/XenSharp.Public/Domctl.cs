namespace XenSharp.Public;

/// <summary>xen/include/public/domctl.h: the parts the toolstack's control calls carry.</summary>
public static class Domctl
{
    /// <summary>
    /// XEN_DOMCTL_setnodeaffinity/getnodeaffinity (struct xen_domctl_nodeaffinity: one xenctl_bitmap of nodes, bit n
    /// of byte n / 8). Setting every node means "derive it from the vCPUs' affinities" again.
    /// </summary>
    public const uint XEN_DOMCTL_setnodeaffinity = 68, XEN_DOMCTL_getnodeaffinity = 69;

    /// <summary>XEN_DOMCTL_sendtrigger's trigger values.</summary>
    public const uint XEN_DOMCTL_SENDTRIGGER_NMI = 0, XEN_DOMCTL_SENDTRIGGER_RESET = 1, XEN_DOMCTL_SENDTRIGGER_INIT = 2,
        XEN_DOMCTL_SENDTRIGGER_POWER = 3, XEN_DOMCTL_SENDTRIGGER_SLEEP = 4;
}
