/* HYPERVISOR_xen_version: every sub-op a domU may use, the ones it may not, and unknown ones. */
#include "rt.h"
#include <xen/version.h>
#include <xen/features.h>

RT_GUEST("xen_version");

static int nul_terminated(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!s[i])
            return 1;
    return 0;
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("xen_version.all", "no Xen");
        return;
    }
    uint32_t a, b, c, d;
    rt_cpuid(rt_xen_cpuid_base + 1, 0, &a, &b, &c, &d);
    long v = HYPERVISOR_xen_version(XENVER_version, NULL);
    rt_check("xen_version.version", v > 0 && (uint32_t)v == a, "XENVER_version %#lx, CPUID base+1 EAX %#x", v, a);
    rt_printf("# Xen %ld.%ld\n", v >> 16, v & 0xffff);

    xen_extraversion_t extra;
    memset(extra, 0x55, sizeof extra);
    long rc = HYPERVISOR_xen_version(XENVER_extraversion, extra);
    rt_check("xen_version.extraversion", rc == 0 && nul_terminated(extra, sizeof extra), "rc %ld", rc);

    xen_compile_info_t ci;
    memset(&ci, 0x55, sizeof ci);
    rc = HYPERVISOR_xen_version(XENVER_compile_info, &ci);
    rt_check("xen_version.compile_info", rc == 0 && nul_terminated(ci.compiler, sizeof ci.compiler) &&
             nul_terminated(ci.compile_date, sizeof ci.compile_date), "rc %ld", rc);

    xen_capabilities_info_t caps;
    memset(caps, 0, sizeof caps);
    rc = HYPERVISOR_xen_version(XENVER_capabilities, caps);
    caps[sizeof caps - 1] = 0;
    int hvm64 = 0;
    for (const char *p = caps; *p; p++)
        if (!strncmp(p, "hvm-3.0-x86_64", 14))
            hvm64 = 1;
    rt_check("xen_version.capabilities", rc == 0 && hvm64, "rc %ld caps '%s'", rc, caps);
    rt_printf("# capabilities: %s\n", caps);

    xen_changeset_info_t cs;
    memset(cs, 0x55, sizeof cs);
    rc = HYPERVISOR_xen_version(XENVER_changeset, cs);
    rt_check("xen_version.changeset", rc == 0 && nul_terminated(cs, sizeof cs), "rc %ld", rc);

    xen_platform_parameters_t pp = { 0 };
    rc = HYPERVISOR_xen_version(XENVER_platform_parameters, &pp);
    rt_check_eq("xen_version.platform_parameters", (uint64_t)rc, 0);

    rc = HYPERVISOR_xen_version(XENVER_pagesize, NULL);
    rt_check_eq("xen_version.pagesize", (uint64_t)rc, 4096);

    xen_domain_handle_t h;
    rc = HYPERVISOR_xen_version(XENVER_guest_handle, h);
    rt_check_eq("xen_version.guest_handle", (uint64_t)rc, 0);

    xen_feature_info_t fi = { .submap_idx = 0 };
    rc = HYPERVISOR_xen_version(XENVER_get_features, &fi);
    uint32_t need = (1u << XENFEAT_auto_translated_physmap) | (1u << XENFEAT_hvm_callback_vector) |
                    (1u << XENFEAT_hvm_safe_pvclock) | (1u << XENFEAT_writable_page_tables);
    rt_check("xen_version.get_features", rc == 0 && (fi.submap & need) == need && !(fi.submap & (1u << XENFEAT_dom0)),
             "rc %ld submap %#x (an HVM/PVH domU has auto_translated_physmap, writable_page_tables, "
             "hvm_safe_pvclock, hvm_callback_vector and not dom0)", rc, fi.submap);
    rt_printf("# features[0] = %#x\n", fi.submap);
    fi.submap_idx = XENFEAT_NR_SUBMAPS;
    rc = HYPERVISOR_xen_version(XENVER_get_features, &fi);
    rt_check_eq("xen_version.get_features_bad_submap", (uint64_t)rc, (uint64_t)-XEN_EINVAL);

    rc = HYPERVISOR_xen_version(XENVER_pagesize, &pp);
    rt_check_eq("xen_version.pagesize_with_buffer", (uint64_t)rc, (uint64_t)-XEN_EINVAL);

    /* An unprivileged domain reads "<denied>" for the command line and gets -EPERM for the
     * build id; unknown sub-ops do not exist. */
    static xen_commandline_t cmd;
    memset(cmd, 0x55, sizeof cmd);
    rc = HYPERVISOR_xen_version(XENVER_commandline, cmd);
    rt_check("xen_version.commandline_denied", rc == 0 && !strcmp(cmd, "<denied>"), "rc %ld text '%.16s'", rc, cmd);
    rc = HYPERVISOR_xen_version(XENVER_build_id, NULL);
    rt_check_eq("xen_version.build_id_denied", (uint64_t)rc, (uint64_t)-XEN_EPERM);
    rc = HYPERVISOR_xen_version(0x7fff, NULL);
    rt_check_eq("xen_version.unknown_subop", (uint64_t)rc, (uint64_t)-XEN_ENOSYS);
}
