/* A second vCPU started as Linux starts one on PVH (INIT-SIPI-SIPI through the xAPIC into a
 * real-mode trampoline); both vCPUs then race on shared counters. */
#include "rt.h"

RT_GUEST("smp");

#define ROUNDS 200000

static volatile uint32_t locked_counter, plain_counter, lock_word;
static volatile uint32_t ap_apic_id = 0xffffffff, ap_cpuid_apic = 0xffffffff, ap_mode_ok, ap_done, ap_seen;
static volatile int go;

static void spin_lock(volatile uint32_t *l)
{
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
        while (*l)
            rt_pause();
}

static void spin_unlock(volatile uint32_t *l)
{
    __atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

static void race(void)
{
    for (int i = 0; i < ROUNDS; i++) {
        __asm__ volatile("lock incl %0" : "+m"(locked_counter) :: "memory", "cc");
        spin_lock(&lock_word);
        plain_counter = plain_counter + 1;
        spin_unlock(&lock_word);
    }
}

#define IPI_VECTOR 0x50
static volatile uint32_t bsp_apic_id;
static volatile int ipi_count[2];

static void ipi_handler(struct rt_frame *f)
{
    (void)f;
    ipi_count[rt_lapic_id() == bsp_apic_id ? 0 : 1]++;
    rt_lapic_eoi();
}

static void ap_main(unsigned int cpu)
{
    (void)cpu;
    uint32_t a, b, c, d;
    rt_cpuid(1, 0, &a, &b, &c, &d);
    ap_cpuid_apic = b >> 24;
    ap_apic_id = rt_lapic_id();
#ifdef __x86_64__
    ap_mode_ok = (rt_rdmsr(MSR_EFER) & 0x400) != 0;   /* LMA */
#else
    ap_mode_ok = (rt_read_cr0() & 1) != 0;
#endif
    __atomic_store_n(&ap_seen, 1, __ATOMIC_RELEASE);
    while (!go)
        rt_pause();
    race();
    __atomic_store_n(&ap_done, 1, __ATOMIC_RELEASE);
    /* Stay available for IPIs. */
    for (;;)
        __asm__ volatile("sti\n\thlt\n\tcli" ::: "memory");
}

static void wait_ipis(int who, int n)
{
    uint64_t deadline = rt_deadline(5000);
    while (ipi_count[who] < n && !rt_expired(deadline))
        rt_pause();
}

static void test_ipis(uint32_t target)
{
    for (int i = 1; i <= 5; i++) {
        rt_lapic_send_ipi(target, IPI_VECTOR | (1u << 14));   /* fixed, assert */
        wait_ipis(1, i);
    }
    rt_check_eq("smp.fixed_ipi_to_ap", (uint64_t)ipi_count[1], 5);
    rt_sti();
    rt_lapic_send_ipi(0, IPI_VECTOR | (1u << 14) | (1u << 18));   /* shorthand: self */
    wait_ipis(0, 1);
    rt_cli();
    rt_check_eq("smp.self_ipi", (uint64_t)ipi_count[0], 1);
}

void guest_main(void)
{
    uint32_t a, b, c, d;
    rt_cpuid(1, 0, &a, &b, &c, &d);
    uint32_t bsp = rt_lapic_id();
    bsp_apic_id = bsp;
    rt_set_handler(IPI_VECTOR, ipi_handler);
    rt_check("smp.bsp_apic_id", bsp == b >> 24, "LAPIC ID register %u, CPUID.1 EBX[31:24] %u", bsp, b >> 24);

    uint32_t ids[RT_MAX_CPUS];
    int n = rt_acpi_apic_ids(ids, RT_MAX_CPUS);
    rt_printf("# MADT: %d processor(s):", n);
    for (int i = 0; i < n; i++)
        rt_printf(" %u", ids[i]);
    rt_printf("\n");
    uint32_t target = 0xffffffff;
    if (n > 0) {
        rt_pass("smp.madt");
        for (int i = 0; i < n; i++)
            if (ids[i] != bsp) {
                target = ids[i];
                break;
            }
    } else {
        rt_fail("smp.madt", "no ACPI MADT (rt_acpi_apic_ids returned %d)", n);
        target = rt_xen ? bsp + 2 : bsp + 1;   /* Xen gives vCPU i APIC id 2i */
    }
    if (target == 0xffffffff) {
        rt_skip("smp.ap_started", "only one processor (give the domain vcpus = 2)");
        return;
    }
    int rc = rt_start_ap(target, ap_main, 1);
    if (!rt_check("smp.ap_started", rc == 0, "APIC id %u did not reach the trampoline's C entry", target))
        return;
    /* rt_start_ap returns once the AP is alive, which is just before it calls ap_main. */
    for (uint64_t seen = rt_deadline(30000); !__atomic_load_n(&ap_seen, __ATOMIC_ACQUIRE) && !rt_expired(seen);)
        rt_pause();
    rt_check("smp.ap_apic_id", ap_apic_id == target && ap_cpuid_apic == target,
             "LAPIC ID %u, CPUID %u, want %u", ap_apic_id, ap_cpuid_apic, target);
    rt_check("smp.ap_mode", ap_mode_ok, "the AP is not in the BSP's mode");

    uint64_t t0 = rt_rdtsc();
    go = 1;
    race();
    uint64_t deadline = rt_deadline(120000);
    while (!__atomic_load_n(&ap_done, __ATOMIC_ACQUIRE) && !rt_expired(deadline))
        rt_pause();
    uint64_t t1 = rt_rdtsc();
    rt_printf("# race took %llu TSC cycles\n", (unsigned long long)(t1 - t0));
    rt_check("smp.ap_finished", ap_done, "the AP did not finish its rounds");
    rt_check_eq("smp.locked_counter", locked_counter, 2 * ROUNDS);
    rt_check_eq("smp.spinlock_counter", plain_counter, 2 * ROUNDS);
    if (ap_done)
        test_ipis(target);
}
