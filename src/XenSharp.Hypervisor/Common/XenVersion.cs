using System.Text;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Common;

/// <summary>__HYPERVISOR_xen_version: this hypervisor presents itself as Xen 4.14.</summary>
internal static class XenVersion
{
    public const int Major = 4, Minor = 14;
    public const string ExtraVersion = ".0";
    public const string Capabilities = "xen-3.0-x86_64 xen-3.0-x86_32p hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64";
    public const string Changeset = "XenSharp";
    /// <summary>HYPERVISOR_VIRT_START of x86_64 (what XENVER_platform_parameters reports).</summary>
    public const ulong VirtStart = 0xFFFF800000000000;
    /// <summary>__HYPERVISOR_COMPAT_VIRT_START: what 32-bit guests are told.</summary>
    public const uint CompatVirtStart = 0xF5800000;

    /// <summary>XENVER_get_features submap 0: only what is honoured. Translated guests own their page
    /// tables, so writable_page_tables holds trivially, as Xen reports for HVM and PVH.</summary>
    public const uint FeatureSubmap0 =
        (1u << Features.XENFEAT_writable_page_tables) |
        (1u << Features.XENFEAT_auto_translated_physmap) |
        (1u << Features.XENFEAT_hvm_callback_vector) |
        (1u << Features.XENFEAT_hvm_safe_pvclock);

    /// <summary>Submap 0 for a 64-bit PV guest, as Xen reports it: its L4s may live anywhere, mmu_update can keep A/D
    /// bits, and grant mappings into its page tables keep the guest's available bits (Linux refuses to boot PV
    /// without all three).</summary>
    public const uint PvFeatureSubmap0 =
        (1u << Features.XENFEAT_pae_pgdir_above_4gb) |
        (1u << Features.XENFEAT_mmu_pt_update_preserve_ad) |
        (1u << Features.XENFEAT_gnttab_map_avail_bits);

    /// <summary>xen_compile_info_t: compiler, compile_by, compile_domain, compile_date.</summary>
    public static byte[] CompileInfo()
    {
        var buf = new byte[Public.Version.XEN_COMPILE_INFO_SIZE];
        Put(buf, 0, 64, "dotnet " + Environment.Version);
        Put(buf, 64, 16, "xensharp");
        Put(buf, 80, 32, "localdomain");
        Put(buf, 112, 32, "unknown");
        return buf;
    }

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        ulong arg = a.A2;
        switch ((int)a.A1)
        {
            case Public.Version.XENVER_version:
                return (Major << 16) | Minor;
            case Public.Version.XENVER_extraversion:
                return WriteString(v, arg, ExtraVersion, Public.Version.XEN_EXTRAVERSION_LEN);
            case Public.Version.XENVER_compile_info:
                return GuestAccess.CopyTo(v, arg, CompileInfo()) ? 0 : -Errno.EFAULT;
            case Public.Version.XENVER_capabilities:
                return WriteString(v, arg, Capabilities, Public.Version.XEN_CAPABILITIES_INFO_LEN);
            case Public.Version.XENVER_changeset:
                return WriteString(v, arg, Changeset, Public.Version.XEN_CHANGESET_INFO_LEN);
            case Public.Version.XENVER_platform_parameters:
                if (v.Compat)
                    return GuestAccess.Write(v, arg, new Public.Compat.XenPlatformParameters32 { VirtStart = CompatVirtStart }) ? 0 : -Errno.EFAULT;
                return GuestAccess.Write(v, arg, new XenPlatformParameters { VirtStart = VirtStart }) ? 0 : -Errno.EFAULT;
            case Public.Version.XENVER_get_features:
            {
                if (!GuestAccess.Read(v, arg, out XenFeatureInfo fi))
                    return -Errno.EFAULT;
                if (fi.SubmapIdx >= Features.XENFEAT_NR_SUBMAPS)
                    return -Errno.EINVAL;
                fi.Submap = v.Domain.Pv is null ? FeatureSubmap0 : PvFeatureSubmap0;
                return GuestAccess.Write(v, arg, fi) ? 0 : -Errno.EFAULT;
            }
            case Public.Version.XENVER_pagesize:
                return arg != 0 ? -Errno.EINVAL : FrameTable.PageSize;
            case Public.Version.XENVER_guest_handle:
                return GuestAccess.CopyTo(v, arg, v.Domain.Handle.ToByteArray(bigEndian: true)) ? 0 : -Errno.EFAULT;
            case Public.Version.XENVER_commandline:
                // The hypervisor's own command line is a host detail; only privileged domains may see it.
                return WriteString(v, arg, v.Domain.IsPrivileged ? v.Domain.Host.CommandLine : "<denied>",
                    Public.Version.XEN_COMMANDLINE_LEN);
            case Public.Version.XENVER_build_id:
                return v.Domain.IsPrivileged ? -Errno.ENODATA : -Errno.EPERM;
            default:
                return -Errno.ENOSYS;
        }
    }

    private static long WriteString(Vcpu v, ulong addr, string s, int size)
    {
        var buf = new byte[size];
        Put(buf, 0, size, s);
        return GuestAccess.CopyTo(v, addr, buf) ? 0 : -Errno.EFAULT;
    }

    private static void Put(byte[] buf, int offset, int size, string s)
    {
        var bytes = Encoding.ASCII.GetBytes(s);
        Array.Copy(bytes, 0, buf, offset, Math.Min(bytes.Length, size - 1));
    }
}
