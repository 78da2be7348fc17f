/* Runtime core: boot sequence, Xen detection and hypercalls, console sinks, report lines. */
#include "rt.h"
#include <xen/errno.h>
#include <xen/version.h>
#include <xen/sched.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/event_channel.h>
#include <xen/io/console.h>

struct hvm_start_info *rt_start_info;
const char *rt_cmdline = "";
static char cmdline_copy[1024];
int rt_xen;
uint32_t rt_xen_cpuid_base;
uint8_t rt_hypercall_page[4096] __attribute__((aligned(4096)));
unsigned int rt_console_sinks;
unsigned int rt_passed, rt_failed, rt_skipped;

static struct xencons_interface *pv_console;
static evtchn_port_t pv_console_port;
static volatile int print_lock;

void rt_cpu_tables_init(void);
void rt_main(uint32_t start_info_paddr);

long rt_hypercall(unsigned int nr, unsigned long a1, unsigned long a2, unsigned long a3,
                  unsigned long a4, unsigned long a5)
{
    if (!rt_xen || nr >= 4096 / 32)
        return -XEN_ENOSYS;
    unsigned long ax = (unsigned long)(rt_hypercall_page + nr * 32);
#ifdef __x86_64__
    register unsigned long r10 __asm__("r10") = a4;
    register unsigned long r8 __asm__("r8") = a5;
    /* Every argument register is an output: Xen may clobber the ones a hypercall does not use. */
    __asm__ volatile("call *%%rax"
                     : "+a"(ax), "+D"(a1), "+S"(a2), "+d"(a3), "+r"(r10), "+r"(r8)
                     :
                     : "memory", "cc", "rcx", "r9", "r11");
#else
    __asm__ volatile("call *%%eax"
                     : "+a"(ax), "+b"(a1), "+c"(a2), "+d"(a3), "+S"(a4), "+D"(a5)
                     :
                     : "memory", "cc");
#endif
    return (long)ax;
}

long rt_hvm_get_param(uint32_t index, uint64_t *value)
{
    struct xen_hvm_param p = { .domid = DOMID_SELF, .index = index };
    long rc = HYPERVISOR_hvm_op(HVMOP_get_param, &p);
    *value = p.value;
    return rc;
}

long rt_hvm_set_param(uint32_t index, uint64_t value)
{
    struct xen_hvm_param p = { .domid = DOMID_SELF, .index = index, .value = value };
    return HYPERVISOR_hvm_op(HVMOP_set_param, &p);
}

void rt_cpu_vendor(char out[13])
{
    uint32_t a, b, c, d;
    rt_cpuid(0, 0, &a, &b, &c, &d);
    memcpy(out, &b, 4);
    memcpy(out + 4, &d, 4);
    memcpy(out + 8, &c, 4);
    out[12] = 0;
}

/* Linux's scan: every 0x100 leaves from 0x40000000 for the signature, with at least base+2. */
static void detect_xen(void)
{
    uint32_t a, b, c, d;
    for (uint32_t base = 0x40000000; base < 0x40010000; base += 0x100) {
        rt_cpuid(base, 0, &a, &b, &c, &d);
        if (b == 0x566e6558 && c == 0x65584d4d && d == 0x4d4d566e && a - base >= 2) {
            rt_xen_cpuid_base = base;
            break;
        }
    }
    if (!rt_xen_cpuid_base)
        return;
    rt_cpuid(rt_xen_cpuid_base + 2, 0, &a, &b, &c, &d);
    /* EAX = number of hypercall pages, EBX = the MSR that installs them. */
    rt_wrmsr(b, (uint64_t)(uintptr_t)rt_hypercall_page);
    for (int i = 0; i < 32; i++)
        if (rt_hypercall_page[i])
            rt_xen = 1;
}

static void console_init(void)
{
    if (!rt_xen) {
        rt_console_sinks = RT_SINK_PORT_E9;
        return;
    }
    rt_console_sinks = RT_SINK_CONSOLE_IO;
    uint64_t pfn = 0, port = 0;
    if (rt_hvm_get_param(HVM_PARAM_CONSOLE_PFN, &pfn) == 0 && pfn != 0 &&
        rt_hvm_get_param(HVM_PARAM_CONSOLE_EVTCHN, &port) == 0) {
        pv_console = (struct xencons_interface *)(uintptr_t)(pfn << 12);
        pv_console_port = (evtchn_port_t)port;
        rt_console_sinks |= RT_SINK_PV_RING;
    } else {
        /* No PV console: also use the debug port, which Xen logs for HVM-type domains. */
        rt_console_sinks |= RT_SINK_PORT_E9;
    }
}

void rt_console_reconnect(void)
{
    pv_console = 0;
    pv_console_port = 0;
    console_init();
}

long rt_console_io_write(const char *s, size_t n)
{
    return HYPERVISOR_console_io(CONSOLEIO_write, n, s);
}

long rt_pv_console_write(const char *s, size_t n)
{
    if (!pv_console)
        return -XEN_ENODEV;
    volatile struct xencons_interface *intf = pv_console;
    size_t done = 0;
    unsigned int waits = 0;
    while (done < n) {
        XENCONS_RING_IDX cons = intf->out_cons, prod = intf->out_prod;
        rt_mb();
        size_t space = sizeof(intf->out) - (prod - cons);
        if (space == 0) {
            /* The backend drains the ring; give it time, but never hang the test on it. */
            struct evtchn_send send = { .port = pv_console_port };
            HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
            HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
            if (++waits > 100000)
                break;
            continue;
        }
        while (space-- && done < n)
            intf->out[MASK_XENCONS_IDX(prod++, intf->out)] = s[done++];
        rt_mb();
        intf->out_prod = prod;
    }
    struct evtchn_send send = { .port = pv_console_port };
    HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
    return (long)done;
}

static void emit(const char *s, size_t n)
{
    if (rt_console_sinks & RT_SINK_CONSOLE_IO) {
        if (rt_console_io_write(s, n) < 0)
            rt_console_sinks &= ~RT_SINK_CONSOLE_IO;   /* e.g. -EPERM for a domU on release Xen */
    }
    if (rt_console_sinks & RT_SINK_PV_RING)
        rt_pv_console_write(s, n);
    if (rt_console_sinks & RT_SINK_PORT_E9)
        for (size_t i = 0; i < n; i++)
            rt_outb(0xE9, (uint8_t)s[i]);
}

int rt_vprintf(const char *fmt, va_list ap)
{
    char buf[512];
    int n = rt_vsnprintf(buf, sizeof buf, fmt, ap);
    size_t len = n < (int)sizeof buf ? (size_t)n : sizeof buf - 1;
    while (__atomic_exchange_n(&print_lock, 1, __ATOMIC_ACQUIRE))
        rt_pause();
    emit(buf, len);
    __atomic_store_n(&print_lock, 0, __ATOMIC_RELEASE);
    return n;
}

int rt_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = rt_vprintf(fmt, ap);
    va_end(ap);
    return n;
}

/* ---- report lines ---- */

void rt_pass(const char *name)
{
    __atomic_fetch_add(&rt_passed, 1, __ATOMIC_RELAXED);
    rt_printf("PASS %s\n", name);
}

static void report_detail(const char *word, const char *name, const char *fmt, va_list ap)
{
    char detail[400];
    rt_vsnprintf(detail, sizeof detail, fmt, ap);
    /* One line per result: a newline inside the detail would break the format. */
    for (char *p = detail; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    rt_printf("%s %s: %s\n", word, name, detail);
}

void rt_fail(const char *name, const char *fmt, ...)
{
    __atomic_fetch_add(&rt_failed, 1, __ATOMIC_RELAXED);
    va_list ap;
    va_start(ap, fmt);
    report_detail("FAIL", name, fmt, ap);
    va_end(ap);
}

void rt_skip(const char *name, const char *fmt, ...)
{
    __atomic_fetch_add(&rt_skipped, 1, __ATOMIC_RELAXED);
    va_list ap;
    va_start(ap, fmt);
    report_detail("SKIP", name, fmt, ap);
    va_end(ap);
}

int rt_check(const char *name, int ok, const char *fmt, ...)
{
    if (ok) {
        rt_pass(name);
        return 1;
    }
    __atomic_fetch_add(&rt_failed, 1, __ATOMIC_RELAXED);
    va_list ap;
    va_start(ap, fmt);
    report_detail("FAIL", name, fmt, ap);
    va_end(ap);
    return 0;
}

int rt_check_eq(const char *name, uint64_t got, uint64_t want)
{
    return rt_check(name, got == want, "got %#llx want %#llx",
                    (unsigned long long)got, (unsigned long long)want);
}

void rt_done(void)
{
    rt_printf("DONE passed=%u failed=%u skipped=%u\n", rt_passed, rt_failed, rt_skipped);
    if (rt_xen) {
        struct sched_shutdown sd = { .reason = SHUTDOWN_poweroff };
        HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
    } else {
        /* QEMU's isa-debug-exit: the process exits with (value << 1) | 1. */
        rt_outb(0x501, rt_failed ? 1 : 0);
    }
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* ---- TSC frequency ---- */

uint64_t rt_tsc_khz(void)
{
    uint32_t a, b, c, d;
    if (rt_xen_cpuid_base && rt_xen_cpuid_base + 3 <= ({ rt_cpuid(rt_xen_cpuid_base, 0, &a, &b, &c, &d); a; })) {
        rt_cpuid(rt_xen_cpuid_base + 3, 0, &a, &b, &c, &d);
        if (c)
            return c;
    }
    if (rt_xen)
        return 0;
    /* Calibrate against PIT channel 2 in one-shot mode: 11932 ticks of 1.193182 MHz = 10 ms. */
    rt_outb(0x61, (uint8_t)((rt_inb(0x61) & ~0x02) | 0x01));
    rt_outb(0x43, 0xB0);
    rt_outb(0x42, 11932 & 0xFF);
    rt_outb(0x42, 11932 >> 8);
    uint64_t t0 = rt_rdtsc();
    unsigned long spins = 0;
    while (!(rt_inb(0x61) & 0x20))
        if (++spins > 100000000ul)
            return 0;
    uint64_t t1 = rt_rdtsc();
    return (t1 - t0) / 10;
}

static uint64_t cached_khz;

uint64_t rt_deadline(unsigned int ms)
{
    if (!cached_khz)
        cached_khz = rt_tsc_khz();
    if (!cached_khz)
        cached_khz = 3000000;   /* unknown: assume 3 GHz */
    return rt_rdtsc() + cached_khz * ms;
}

int rt_expired(uint64_t deadline)
{
    return (int64_t)(rt_rdtsc() - deadline) >= 0;
}

/* ---- boot ---- */

static void fpu_init(void)
{
    unsigned long cr0 = rt_read_cr0();
    cr0 &= ~(1ul << 2);            /* EM */
    cr0 |= (1ul << 1) | (1ul << 5); /* MP, NE */
    rt_write_cr0(cr0);
    uint32_t a, b, c, d;
    rt_cpuid(1, 0, &a, &b, &c, &d);
    if (d & (1u << 24))            /* FXSR: enable SSE state and #XM */
        rt_write_cr4(rt_read_cr4() | (1ul << 9) | (1ul << 10));
    __asm__ volatile("fninit");
}

void rt_main(uint32_t start_info_paddr)
{
    struct hvm_start_info *si = (struct hvm_start_info *)(uintptr_t)start_info_paddr;
    if (si && si->magic == XEN_HVM_START_MAGIC_VALUE)
        rt_start_info = si;
    rt_cpu_tables_init();
    fpu_init();
    detect_xen();
    if (!rt_xen) {
        /* Firmware (e.g. SeaBIOS under QEMU) leaves the 8259 PICs delivering the PIT on vector 8,
         * which would look like a double fault; PVH under Xen has no PIC. */
        rt_outb(0x21, 0xff);
        rt_outb(0xa1, 0xff);
    }
    console_init();
    if (rt_start_info && rt_start_info->cmdline_paddr) {
        const char *src = (const char *)(uintptr_t)rt_start_info->cmdline_paddr;
        size_t i = 0;
        while (i < sizeof cmdline_copy - 1 && src[i])
            cmdline_copy[i] = src[i], i++;
        rt_cmdline = cmdline_copy;
    }
    char vendor[13];
    rt_cpu_vendor(vendor);
    rt_printf("# guest %s (%s) vendor=%s xen=%s cmdline=\"%s\"\n", rt_guest_name,
              sizeof(void *) == 8 ? "64-bit" : "32-bit", vendor,
              rt_xen ? "yes" : "no", rt_cmdline);
    if (!rt_check("rt.start_info_magic", rt_start_info != NULL, "%%ebx=%#x magic=%#x",
                  start_info_paddr, si ? si->magic : 0))
        rt_done();
    if (rt_xen_cpuid_base)
        rt_check("rt.hypercall_page", rt_xen, "Xen leaves at %#x but the page stayed empty",
                 rt_xen_cpuid_base);
    guest_main();
    rt_done();
}
