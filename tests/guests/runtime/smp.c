/* Mode-switch call and secondary CPU start-up through the xAPIC (INIT, SIPI, SIPI). */
#include "rt.h"

extern char rt_ms_start[], rt_ms_end[];
extern char rt_tramp_start[], rt_tramp_end[], rt_tramp_stack[], rt_tramp_cr3[], rt_tramp_efer[];
extern char rt_tramp_entry[], rt_tramp_arg[];
extern uint8_t rt_stacks[];
void rt_load_idt(void);

uint32_t rt_realmode_call(uint32_t in)
{
    memcpy((void *)RT_MODESWITCH_BASE, rt_ms_start, (size_t)(rt_ms_end - rt_ms_start));
    uint32_t (*fn)(uint32_t) = (uint32_t (*)(uint32_t))(uintptr_t)RT_MODESWITCH_BASE;
    return fn(in);
}

#define LAPIC_BASE 0xFEE00000ul
#define LAPIC_ID   0x20
#define LAPIC_SVR  0xF0
#define LAPIC_ICRL 0x300
#define LAPIC_ICRH 0x310

static inline uint32_t lapic_read(unsigned int reg) { return *(volatile uint32_t *)(LAPIC_BASE + reg); }
static inline void lapic_write(unsigned int reg, uint32_t v) { *(volatile uint32_t *)(LAPIC_BASE + reg) = v; }

void rt_lapic_eoi(void)
{
    lapic_write(0xB0, 0);
}

uint32_t rt_lapic_id(void)
{
    return lapic_read(LAPIC_ID) >> 24;
}

static void (*volatile ap_fn[RT_MAX_CPUS])(unsigned int);
static volatile int ap_alive[RT_MAX_CPUS];

static void ap_entry(unsigned int cpu)
{
    rt_load_idt();
    lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100);   /* accept fixed interrupts */
    ap_alive[cpu] = 1;
    ap_fn[cpu](cpu);
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* A short busy wait; the protocol's delays only matter to real hardware. */
static void spin(unsigned long n)
{
    for (volatile unsigned long i = 0; i < n; i++)
        rt_pause();
}

void rt_lapic_send_ipi(uint32_t apic_id, uint32_t low)
{
    lapic_write(LAPIC_ICRH, apic_id << 24);
    lapic_write(LAPIC_ICRL, low);
    for (unsigned long i = 0; i < 1000000 && (lapic_read(LAPIC_ICRL) & (1u << 12)); i++)
        rt_pause();
}

int rt_start_ap(uint32_t apic_id, void (*fn)(unsigned int cpu), unsigned int cpu)
{
    if (cpu == 0 || cpu >= RT_MAX_CPUS)
        return -1;
    uint8_t *base = (uint8_t *)RT_TRAMPOLINE_BASE;
    memcpy(base, rt_tramp_start, (size_t)(rt_tramp_end - rt_tramp_start));
    *(uint64_t *)(base + (rt_tramp_stack - rt_tramp_start)) = (uintptr_t)(rt_stacks + (cpu + 1) * RT_STACK_SIZE);
    *(uint32_t *)(base + (rt_tramp_cr3 - rt_tramp_start)) = (uint32_t)rt_read_cr3();
    /* LMA is status, not control: writing it before paging is on is refused (#GP on Xen). */
    *(uint32_t *)(base + (rt_tramp_efer - rt_tramp_start)) = (uint32_t)rt_rdmsr(MSR_EFER) & ~0x400u;
    *(uint64_t *)(base + (rt_tramp_entry - rt_tramp_start)) = (uintptr_t)ap_entry;
    *(uint64_t *)(base + (rt_tramp_arg - rt_tramp_start)) = cpu;
    ap_fn[cpu] = fn;
    ap_alive[cpu] = 0;
    rt_mb();

    lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100);   /* software-enable the local APIC */
    rt_lapic_send_ipi(apic_id, 0x4500);                                /* INIT, level assert */
    spin(10000);
    for (int i = 0; i < 2; i++) {
        rt_lapic_send_ipi(apic_id, 0x4600 | (RT_TRAMPOLINE_BASE >> 12)); /* start-up at the trampoline */
        spin(2000);
        if (ap_alive[cpu])
            break;
    }
    /* A busy host may run the AP's thread late: wait up to 30 s, repeating the start-up each second (an AP that
     * has started ignores it, as hardware does). */
    uint64_t deadline = rt_deadline(30000), again = rt_deadline(1000);
    while (!ap_alive[cpu] && !rt_expired(deadline)) {
        if (rt_expired(again)) {
            rt_lapic_send_ipi(apic_id, 0x4600 | (RT_TRAMPOLINE_BASE >> 12));
            again = rt_deadline(1000);
        }
        rt_pause();
    }
    return ap_alive[cpu] ? 0 : -1;
}

/* ---- ACPI MADT: the APIC ids of the processors ---- */

static const uint8_t *find_rsdp(void)
{
    if (rt_start_info && rt_start_info->rsdp_paddr)
        return (const uint8_t *)(uintptr_t)rt_start_info->rsdp_paddr;
    for (uintptr_t p = 0xE0000; p < 0x100000; p += 16)
        if (!memcmp((const void *)p, "RSD PTR ", 8))
            return (const uint8_t *)p;
    return NULL;
}

static int madt_scan(const uint8_t *madt, uint32_t *ids, int max)
{
    uint32_t len = *(const uint32_t *)(madt + 4);
    int n = 0;
    for (uint32_t off = 44; off + 2 <= len && n < max;) {
        uint8_t type = madt[off], elen = madt[off + 1];
        if (elen < 2)
            break;
        if (type == 0 && elen >= 8 && (*(const uint32_t *)(madt + off + 4) & 1))
            ids[n++] = madt[off + 3];
        off += elen;
    }
    return n;
}

int rt_acpi_apic_ids(uint32_t *ids, int max)
{
    const uint8_t *rsdp = find_rsdp();
    if (!rsdp || memcmp(rsdp, "RSD PTR ", 8))
        return -1;
    int xsdt = rsdp[15] >= 2 && *(const uint64_t *)(rsdp + 24);
    const uint8_t *sdt = xsdt ? (const uint8_t *)(uintptr_t)*(const uint64_t *)(rsdp + 24)
                              : (const uint8_t *)(uintptr_t)*(const uint32_t *)(rsdp + 16);
    uint32_t len = *(const uint32_t *)(sdt + 4);
    unsigned int esz = xsdt ? 8 : 4;
    for (uint32_t off = 36; off + esz <= len; off += esz) {
        uint64_t addr = xsdt ? *(const uint64_t *)(sdt + off) : *(const uint32_t *)(sdt + off);
        const uint8_t *t = (const uint8_t *)(uintptr_t)addr;
        if (!memcmp(t, "APIC", 4))
            return madt_scan(t, ids, max);
    }
    return -1;
}
