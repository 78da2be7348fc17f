/* The HVM power paths that run through the device model, as Xen's have them: run as type="hvm" (firmware_override)
 * with Debian's QEMU as the device model. The kernel does what hvmloader does for the PIIX4 power management function
 * (its I/O base at 0xB000, enabled), then, as `mode=` on its command line says:
 *   poweroff  writes SLP_EN with hvmloader's \_S5 SLP_TYP (0) to PM1a_CNT (0xB004, QEMU's), and QEMU reports the
 *             poweroff to Xen (XEN_DMOP_remote_shutdown);
 *   reset     writes 6 to the PIIX3 reset control register (0xCF9, QEMU's), and QEMU reports a reboot;
 *   button    enables the power button in PM1a_EN (0xB002, Xen's own PM1a event block), prints "# waiting" and waits
 *             (120 s) for PWRBTN_STS, which `xl trigger DOM power` (or `xl shutdown -F` without PV drivers) sets,
 *             then powers off as in poweroff.
 * A domain that is still running afterwards FAILs; so the runtime's DONE line only appears when QEMU did not act. */
#include "rt.h"

RT_GUEST("hvmacpi");

#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc
#define PIIX4_PM_DEVFN_DEV 1
#define PIIX4_PM_DEVFN_FN 3
#define PM_BASE 0xb000
#define PM1A_STS (PM_BASE + 0)
#define PM1A_EN (PM_BASE + 2)
#define PM1A_CNT (PM_BASE + 4)
#define PWRBTN (1u << 8)
#define SLP_EN (1u << 13)
#define RESET_CONTROL 0xcf9

static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }

static uint32_t cfg_addr(unsigned int dev, unsigned int fn, unsigned int reg)
{
    return 0x80000000u | (dev << 11) | (fn << 8) | (reg & 0xfc);
}

static int mode_is(const char *word)
{
    const char *m = rt_cmdline_value("mode");
    size_t n = strlen(word);
    return m && strncmp(m, word, n) == 0 && (m[n] == 0 || m[n] == ' ');
}

/* Waits up to `ms` for the domain to be taken away; returns only if it was not. */
static void linger(unsigned int ms)
{
    uint64_t end = rt_deadline(ms);
    while (!rt_expired(end))
        rt_pause();
}

static void sleep_s5(void)
{
    rt_printf("# S5 through PIIX4 PM1a_CNT\n");
    rt_outw(PM1A_CNT, SLP_EN);   /* SLP_TYP 0: hvmloader's \_S5 */
    linger(30000);
    rt_fail("hvmacpi.s5", "the domain still runs 30 s after S5");
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("hvmacpi.all", "no Xen");
        return;
    }
    outl(PCI_ADDR, cfg_addr(PIIX4_PM_DEVFN_DEV, PIIX4_PM_DEVFN_FN, 0));
    uint32_t id = inl(PCI_DATA);
    if (id != 0x71138086u) {
        rt_skip("hvmacpi.all", "no PIIX4 power management function (id %#x): no device model", id);
        return;
    }
    /* hvmloader's set-up: PMBA (0x40) with the I/O space bit, then PMREGMISC.PMIOSE (0x80). */
    outl(PCI_ADDR, cfg_addr(PIIX4_PM_DEVFN_DEV, PIIX4_PM_DEVFN_FN, 0x40));
    outl(PCI_DATA, PM_BASE | 1);
    outl(PCI_ADDR, cfg_addr(PIIX4_PM_DEVFN_DEV, PIIX4_PM_DEVFN_FN, 0x80));
    rt_outb(PCI_DATA, 1);
    outl(PCI_ADDR, cfg_addr(PIIX4_PM_DEVFN_DEV, PIIX4_PM_DEVFN_FN, 0x40));
    rt_check_eq("hvmacpi.pmba", inl(PCI_DATA) & 0xffc0, PM_BASE);

    if (mode_is("reset")) {
        rt_printf("# reset through 0xcf9\n");
        rt_outb(RESET_CONTROL, 0x06);
        linger(30000);
        rt_fail("hvmacpi.reset", "the domain still runs 30 s after the reset");
    } else if (mode_is("button")) {
        rt_outw(PM1A_STS, PWRBTN);   /* write-one-to-clear anything stale */
        rt_outw(PM1A_EN, PWRBTN);
        rt_printf("# waiting for the power button\n");
        uint64_t end = rt_deadline(120000);
        while (!(inw(PM1A_STS) & PWRBTN) && !rt_expired(end))
            rt_pause();
        if (!(inw(PM1A_STS) & PWRBTN)) {
            rt_fail("hvmacpi.button", "no power button event in 120 s");
            return;
        }
        rt_outw(PM1A_STS, PWRBTN);
        rt_printf("# power button pressed\n");
        sleep_s5();
    } else {
        sleep_s5();
    }
}
