/* The PC platform Xen emulates for an HVM guest, driven as an OS drives it: the 8259 pair initialised as Linux
 * does, PIT channel 0 ticks through the 8259 and then through the IOAPIC, channel 2 counted down as TSC calibration
 * does, the RTC read after update-in-progress clears and its periodic interrupt through the IOAPIC, HPET
 * comparator interrupts on an IOAPIC GSI and through the legacy replacement route, and the ACPI PM timer
 * advancing. Run as type="hvm" (firmware_override); a PVH domain or no Xen has none of it and only SKIPs. */
#include "rt.h"

RT_GUEST("hvmplat");

#define LAPIC           0xfee00000ul
#define IOAPIC          0xfec00000ul
#define HPET            0xfed00000ul
#define PM_TMR          0xb008
#define PIC_BASE        0x30        /* master vectors 0x30-0x37, slave 0x38-0x3f, as Linux */
#define IOAPIC_PIT_VEC  0x50
#define IOAPIC_RTC_VEC  0x58
#define IOAPIC_HPET_VEC 0x60
#define HPET_GSI        20

static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline volatile uint32_t *reg32(unsigned long a) { return (volatile uint32_t *)a; }
static inline volatile uint64_t *reg64(unsigned long a) { return (volatile uint64_t *)a; }

static uint32_t ioapic_read(unsigned int reg) { *reg32(IOAPIC) = reg; return *reg32(IOAPIC + 0x10); }
static void ioapic_write(unsigned int reg, uint32_t v) { *reg32(IOAPIC) = reg; *reg32(IOAPIC + 0x10) = v; }
static void ioapic_route(unsigned int pin, uint32_t low)
{
    ioapic_write(0x11 + 2 * pin, 0);            /* destination APIC id 0 */
    ioapic_write(0x10 + 2 * pin, low);
}
#define MASKED (1u << 16)

static uint8_t cmos_read(uint8_t index) { rt_outb(0x70, index); return rt_inb(0x71); }
static void cmos_write(uint8_t index, uint8_t v) { rt_outb(0x70, index); rt_outb(0x71, v); }

static volatile int pic_ticks, ioapic_ticks, rtc_ticks, hpet_ticks, legacy_ticks;

static void on_pic_timer(struct rt_frame *f) { (void)f; pic_ticks++; rt_outb(0x20, 0x20); }
static void on_ioapic_pit(struct rt_frame *f) { (void)f; ioapic_ticks++; rt_lapic_eoi(); }
static void on_rtc(struct rt_frame *f) { (void)f; cmos_read(0x0c); rtc_ticks++; rt_lapic_eoi(); }
static void on_hpet(struct rt_frame *f) { (void)f; hpet_ticks++; rt_lapic_eoi(); }
static void on_legacy(struct rt_frame *f) { (void)f; legacy_ticks++; rt_outb(0x20, 0x20); }

static int wait_count(volatile int *count, int n)
{
    uint64_t deadline = rt_deadline(5000);
    rt_sti();
    while (*count < n && !rt_expired(deadline))
        rt_pause();
    return *count;
}

static void pic_init(void)
{
    rt_outb(0x21, 0xff);
    rt_outb(0xa1, 0xff);
    rt_outb(0x20, 0x11);
    rt_outb(0x21, PIC_BASE);
    rt_outb(0x21, 0x04);
    rt_outb(0x21, 0x01);
    rt_outb(0xa0, 0x11);
    rt_outb(0xa1, PIC_BASE + 8);
    rt_outb(0xa1, 0x02);
    rt_outb(0xa1, 0x01);
}

static void pit_periodic(uint16_t count)
{
    rt_outb(0x43, 0x34);
    rt_outb(0x40, (uint8_t)count);
    rt_outb(0x40, (uint8_t)(count >> 8));
}

static void check_pic(void)
{
    pic_init();
    rt_outb(0x21, 0xff);
    rt_check_eq("hvmplat.pic_imr", rt_inb(0x21), 0xff);
    rt_outb(0x21, 0xfe);                        /* only IRQ 0 */
    rt_set_handler(PIC_BASE, on_pic_timer);
    pit_periodic(1193);                         /* 1 kHz */
    rt_sti();
    rt_check("hvmplat.pit_through_pic", wait_count(&pic_ticks, 5) >= 5, "%d ticks", pic_ticks);
    rt_cli();
    rt_outb(0x21, 0xff);
}

/* Spins with interrupts enabled until *count reaches n, in a loop of several blocks with no call, port access or
 * timer read in it: once compiled, nothing in the loop itself returns to the run loop, so a tick reaches it only if
 * the interrupt's arrival makes the running vCPU leave the guest (Xen's vcpu_kick). Gives up after cap turns. */
static int spin_count(volatile int *count, int n, unsigned long cap)
{
    unsigned long turns = 0, odd = 0;
    rt_sti();
    __asm__ volatile(
        ".p2align 6\n"
        "1: pause\n"
        "   cmpl %[n], %[count]\n"
        "   jge 3f\n"
        "   add $1, %[turns]\n"
        "   test $1, %[turns]\n"
        "   jz 2f\n"
        "   add $1, %[odd]\n"
        "2: cmp %[cap], %[turns]\n"
        "   jb 1b\n"
        "3:\n"
        : [turns] "+r"(turns), [odd] "+r"(odd)
        : [count] "m"(*count), [n] "r"(n), [cap] "r"(cap)
        : "cc", "memory");
    rt_cli();
    return *count;
}

static void check_busy_loop(void)
{
    pic_ticks = 0;
    rt_outb(0x21, 0xfe);
    rt_set_handler(PIC_BASE, on_pic_timer);
    pit_periodic(1193);                         /* 1 kHz */
    /* 200 ms of ticks: long past the point where the loop is compiled. */
    rt_check("hvmplat.pit_reaches_a_busy_loop", spin_count(&pic_ticks, 200, 1ul << 28) >= 200, "%d ticks", pic_ticks);
    rt_outb(0x21, 0xff);
}

static void check_ioapic(void)
{
    uint32_t ver = ioapic_read(1);
    rt_check_eq("hvmplat.ioapic_version", ver & 0xff, 0x11);
    rt_check_eq("hvmplat.ioapic_pins", ((ver >> 16) & 0xff) + 1, 48);
    rt_set_handler(IOAPIC_PIT_VEC, on_ioapic_pit);
    ioapic_route(2, IOAPIC_PIT_VEC);            /* ISA IRQ 0 arrives on GSI 2 */
    rt_sti();
    rt_check("hvmplat.pit_through_ioapic", wait_count(&ioapic_ticks, 5) >= 5, "%d ticks", ioapic_ticks);
    rt_cli();
    ioapic_route(2, MASKED | IOAPIC_PIT_VEC);
    rt_outb(0x43, 0x30);                        /* channel 0: mode 0, no count: stopped */
}

static void check_pit_channel2(void)
{
    rt_outb(0x61, (rt_inb(0x61) & ~0x02) | 0x01);
    rt_outb(0x43, 0xb0);
    rt_outb(0x42, 0xff);
    rt_outb(0x42, 0xff);
    uint64_t deadline = rt_deadline(5000);
    while (!(rt_inb(0x61) & 0x20) && !rt_expired(deadline))
        rt_pause();
    rt_check("hvmplat.pit_channel2_countdown", (rt_inb(0x61) & 0x20) != 0, "port 0x61 %#x", rt_inb(0x61));
}

static int bcd_ok(uint8_t b, int max) { return (b & 0xf) <= 9 && (b >> 4) * 10 + (b & 0xf) <= max; }

static void check_rtc(void)
{
    uint64_t deadline = rt_deadline(2000);
    while ((cmos_read(0x0a) & 0x80) && !rt_expired(deadline))
        rt_pause();
    uint8_t sec = cmos_read(0), min = cmos_read(2), hour = cmos_read(4), mon = cmos_read(8), year = cmos_read(9);
    rt_check("hvmplat.rtc_time_bcd", bcd_ok(sec, 59) && bcd_ok(min, 59) && bcd_ok(hour, 23) && bcd_ok(mon, 12) && mon && bcd_ok(year, 99),
             "%02x:%02x:%02x month %02x year %02x", hour, min, sec, mon, year);
    rt_check_eq("hvmplat.rtc_reg_d_valid", cmos_read(0x0d), 0x80);
    rt_set_handler(IOAPIC_RTC_VEC, on_rtc);
    ioapic_route(8, IOAPIC_RTC_VEC);
    cmos_read(0x0c);
    cmos_write(0x0a, 0x26);                     /* 1024 Hz */
    cmos_write(0x0b, cmos_read(0x0b) | 0x40);   /* PIE */
    rt_sti();
    rt_check("hvmplat.rtc_periodic_through_ioapic", wait_count(&rtc_ticks, 5) >= 5, "%d interrupts", rtc_ticks);
    rt_cli();
    cmos_write(0x0b, cmos_read(0x0b) & ~0x40);
    ioapic_route(8, MASKED | IOAPIC_RTC_VEC);
}

static void check_hpet(void)
{
    uint64_t cap = *reg64(HPET);
    if (((cap >> 16) & 0xffff) != 0x8086) {
        rt_skip("hvmplat.hpet", "no HPET (capabilities %#lx)", (unsigned long)cap);
        return;
    }
    rt_check_eq("hvmplat.hpet_period_fs", cap >> 32, 16000000);
    uint64_t period = 1000000000000000ull / (cap >> 32) / 1000;     /* 1 ms in ticks */
    rt_set_handler(IOAPIC_HPET_VEC, on_hpet);
    ioapic_route(HPET_GSI, IOAPIC_HPET_VEC);
    *reg64(HPET + 0x100) = (HPET_GSI << 9) | (1 << 6) | (1 << 3) | (1 << 2);   /* periodic, VAL_SET, enabled */
    *reg64(HPET + 0x108) = period;
    *reg64(HPET + 0x10) = 1;
    rt_sti();
    rt_check("hvmplat.hpet_periodic_through_ioapic", wait_count(&hpet_ticks, 5) >= 5, "%d interrupts", hpet_ticks);
    rt_cli();
    rt_check("hvmplat.hpet_counter_runs", *reg64(HPET + 0xf0) != 0, "main counter 0");
    *reg64(HPET + 0x10) = 0;
    ioapic_route(HPET_GSI, MASKED | IOAPIC_HPET_VEC);

    /* Legacy replacement: timer 0 takes IRQ 0 of the 8259. */
    rt_set_handler(PIC_BASE, on_legacy);
    rt_outb(0x21, 0xfe);
    *reg64(HPET + 0xf0) = 0;
    *reg64(HPET + 0x100) = (1 << 6) | (1 << 3) | (1 << 2);
    *reg64(HPET + 0x108) = period;
    *reg64(HPET + 0x10) = 3;
    rt_sti();
    rt_check("hvmplat.hpet_legacy_route_irq0", wait_count(&legacy_ticks, 3) >= 3, "%d interrupts", legacy_ticks);
    rt_cli();
    *reg64(HPET + 0x10) = 0;
    rt_outb(0x21, 0xff);
}

static void check_pm_timer(void)
{
    uint32_t start = inl(PM_TMR);
    uint64_t deadline = rt_deadline(2000);
    /* 3.579545 MHz: about 3580 ticks a millisecond. */
    while ((uint32_t)(inl(PM_TMR) - start) < 3580 && !rt_expired(deadline))
        rt_pause();
    uint32_t moved = inl(PM_TMR) - start;
    rt_check("hvmplat.pm_timer_advances", moved >= 3580 && moved < 0x80000000u, "moved %u ticks", moved);
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("hvmplat.all", "no Xen");
        return;
    }
    uint32_t ver = ioapic_read(1);
    if (ver == 0xffffffffu) {
        rt_skip("hvmplat.all", "no emulated platform (not an HVM domain)");
        return;
    }
    /* The local APIC enabled, LINT0 as ExtINT (virtual wire) so the 8259 reaches this vCPU. */
    *reg32(LAPIC + 0xf0) |= 0x100;
    *reg32(LAPIC + 0x350) = 0x700;
    check_pic();
    check_busy_loop();
    check_ioapic();
    check_pit_channel2();
    check_rtc();
    check_hpet();
    check_pm_timer();
}
