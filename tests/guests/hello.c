/* The demo guest: greets through every console it has, shows what it sees of its platform
 * (CPU, Xen version, memory map) and checks a few things it can verify on its own. */
#include "rt.h"
#include <xen/version.h>

RT_GUEST("hello");

extern char __image_start[], __image_end[];

static uint32_t crc32(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint32_t crc = 0xffffffff;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1)));
    }
    return ~crc;
}

static const char *memtype(uint32_t t)
{
    switch (t) {
    case XEN_HVM_MEMMAP_TYPE_RAM: return "RAM";
    case XEN_HVM_MEMMAP_TYPE_RESERVED: return "reserved";
    case XEN_HVM_MEMMAP_TYPE_ACPI: return "ACPI";
    case XEN_HVM_MEMMAP_TYPE_NVS: return "NVS";
    case XEN_HVM_MEMMAP_TYPE_UNUSABLE: return "unusable";
    case XEN_HVM_MEMMAP_TYPE_DISABLED: return "disabled";
    case XEN_HVM_MEMMAP_TYPE_PMEM: return "pmem";
    default: return "?";
    }
}

static void banner(void)
{
    static const char *const art[] = {
        "+-----------------------------------------------------+",
        "|  __  __              ____  _                        |",
        "|  \\ \\/ /___ _ __     / ___|| |__   __ _ _ __ _ __    |",
        "|   \\  // _ \\ '_ \\    \\___ \\| '_ \\ / _` | '__| '_ \\   |",
        "|   /  \\  __/ | | |    ___) | | | | (_| | |  | |_) |  |",
        "|  /_/\\_\\___|_| |_|   |____/|_| |_|\\__,_|_|  | .__/   |",
        "|                     test kernel            |_|      |",
        "+-----------------------------------------------------+",
    };
    for (unsigned i = 0; i < sizeof art / sizeof art[0]; i++)
        rt_printf("# %s\n", art[i]);
}

static void greet(void)
{
    /* Written raw to each console, so it carries the commentary prefix itself. */
    static const char msg[] = "# Hello from the XenSharp test kernel!\n";
    banner();
    if (!rt_xen) {
        rt_printf("%s", msg);
        rt_skip("hello.console_io", "no Xen (output goes to port 0xE9)");
        rt_skip("hello.pv_console", "no Xen");
        return;
    }
    long rc = rt_console_io_write(msg, sizeof msg - 1);
    if (rc == -XEN_EPERM)
        rt_skip("hello.console_io", "CONSOLEIO_write refused for this domain (-EPERM)");
    else
        rt_check("hello.console_io", rc == 0, "CONSOLEIO_write returned %ld", rc);
    if (rt_console_sinks & RT_SINK_PV_RING) {
        rc = rt_pv_console_write(msg, sizeof msg - 1);
        rt_check("hello.pv_console", rc == (long)(sizeof msg - 1), "wrote %ld of %u bytes", rc,
                 (unsigned)(sizeof msg - 1));
    } else {
        rt_fail("hello.pv_console", "HVM_PARAM_CONSOLE_PFN/EVTCHN not available");
    }
}

static void show_cpu(void)
{
    char vendor[13], brand[49] = "";
    uint32_t a, b, c, d;
    rt_cpu_vendor(vendor);
    rt_cpuid(0x80000000, 0, &a, &b, &c, &d);
    if (a >= 0x80000004) {
        for (uint32_t l = 0; l < 3; l++)
            rt_cpuid(0x80000002 + l, 0, (uint32_t *)(brand + 16 * l), (uint32_t *)(brand + 16 * l + 4),
                     (uint32_t *)(brand + 16 * l + 8), (uint32_t *)(brand + 16 * l + 12));
        brand[48] = 0;
    }
    rt_printf("# CPU: %s \"%s\"\n", vendor, brand);
    uint64_t khz = rt_tsc_khz();
    rt_printf("# TSC: %llu kHz\n", (unsigned long long)khz);
    rt_check("hello.cpu_vendor", strlen(vendor) == 12, "vendor '%s'", vendor);
}

static void show_xen(void)
{
    if (!rt_xen) {
        rt_skip("hello.xen_version", "no Xen");
        return;
    }
    long v = HYPERVISOR_xen_version(XENVER_version, NULL);
    xen_extraversion_t extra;
    memset(extra, 0, sizeof extra);
    long rc = HYPERVISOR_xen_version(XENVER_extraversion, extra);
    extra[sizeof extra - 1] = 0;
    xen_capabilities_info_t caps;
    memset(caps, 0, sizeof caps);
    HYPERVISOR_xen_version(XENVER_capabilities, caps);
    caps[sizeof caps - 1] = 0;
    rt_printf("# Xen %ld.%ld%s (%s)\n", v >> 16, v & 0xffff, extra, caps);
    uint32_t a, b, c, d;
    rt_cpuid(rt_xen_cpuid_base + 1, 0, &a, &b, &c, &d);
    rt_check("hello.xen_version", v >= (4 << 16) && (uint32_t)v == a && rc == 0,
             "XENVER_version %#lx, CPUID leaf %#x says %#x, extraversion rc %ld", v,
             rt_xen_cpuid_base + 1, a, rc);
    domid_t domid;
    if (rt_domid(&domid) == 0)
        rt_printf("# I am domain %u\n", domid);
    if (rt_map_shared_info() == 0) {
        uint64_t ns = rt_xen_time_ns();
        rt_printf("# Xen system time: %llu.%03llu s\n", (unsigned long long)(ns / 1000000000ull),
                  (unsigned long long)(ns / 1000000ull % 1000));
    }
}

static void show_memmap(void)
{
    struct hvm_start_info *si = rt_start_info;
    if (si->version < 1 || !si->memmap_entries) {
        rt_skip("hello.memmap", "hvm_start_info version %u has no memory map", si->version);
        return;
    }
    const struct hvm_memmap_table_entry *e = (const void *)(uintptr_t)si->memmap_paddr;
    uint64_t ram = 0;
    int covers = 0;
    for (uint32_t i = 0; i < si->memmap_entries; i++) {
        rt_printf("# memmap %2u: %#012llx-%#012llx %s\n", i, (unsigned long long)e[i].addr,
                  (unsigned long long)(e[i].addr + e[i].size - 1), memtype(e[i].type));
        if (e[i].type == XEN_HVM_MEMMAP_TYPE_RAM) {
            ram += e[i].size;
            if (e[i].addr <= (uintptr_t)__image_start && e[i].addr + e[i].size >= (uintptr_t)__image_end)
                covers = 1;
        }
    }
    rt_printf("# RAM: %llu KiB\n", (unsigned long long)(ram >> 10));
    rt_check("hello.memmap", covers, "no RAM entry covers the kernel at %p-%p", __image_start, __image_end);
}

void guest_main(void)
{
    greet();
    show_cpu();
    show_xen();
    show_memmap();
    static const char fox[] = "The quick brown fox jumps over the lazy dog";
    uint32_t crc = crc32(fox, sizeof fox - 1);
    rt_printf("# crc32(\"%s\") = %08x\n", fox, crc);
    rt_check_eq("hello.crc32", crc, 0x414fa339);
    uint64_t f0 = 0, f1 = 1;
    for (int i = 0; i < 90; i++) {
        uint64_t t = f0 + f1;
        f0 = f1;
        f1 = t;
    }
    rt_check_eq("hello.fibonacci90", f0, 2880067194370816120ull);
}
