/* Port I/O that no part of Xen emulates, answered by the device model: run as type="hvm" (firmware_override) with
 * QEMU (`-machine xenfv`) attached as its IOREQ server. PCI configuration space through 0xCF8/0xCFC (the i440FX host
 * bridge and the PIIX3 of the xenfv machine, an empty slot, sizes of 1, 2 and 4 bytes, a PIIX3 PIRQ route register
 * written and read back) and the 16550 UART at 0x3F8 (scratch and interrupt-enable registers, the line status, and a
 * line sent through the transmit register, which the test finds in QEMU's serial output). Without a device model
 * the ports read all ones and every check fails, so the checks SKIP unless the host bridge answers. */
#include "rt.h"

RT_GUEST("qemuio");

#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc
#define COM1     0x3f8

static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }

static uint32_t cfg_addr(unsigned int dev, unsigned int fn, unsigned int reg)
{
    return 0x80000000u | (dev << 11) | (fn << 8) | (reg & 0xfc);
}

static uint32_t cfg_read32(unsigned int dev, unsigned int fn, unsigned int reg)
{
    outl(PCI_ADDR, cfg_addr(dev, fn, reg));
    return inl(PCI_DATA);
}

static uint16_t cfg_read16(unsigned int dev, unsigned int fn, unsigned int reg)
{
    outl(PCI_ADDR, cfg_addr(dev, fn, reg));
    return inw(PCI_DATA + (reg & 2));
}

static uint8_t cfg_read8(unsigned int dev, unsigned int fn, unsigned int reg)
{
    outl(PCI_ADDR, cfg_addr(dev, fn, reg));
    return rt_inb(PCI_DATA + (reg & 3));
}

static void cfg_write8(unsigned int dev, unsigned int fn, unsigned int reg, uint8_t v)
{
    outl(PCI_ADDR, cfg_addr(dev, fn, reg));
    rt_outb(PCI_DATA + (reg & 3), v);
}

static void check_pci(void)
{
    rt_check_eq("qemuio.pci_host_bridge_id", cfg_read32(0, 0, 0), 0x12378086);   /* i440FX */
    rt_check_eq("qemuio.pci_piix3_id", cfg_read32(1, 0, 0), 0x70008086);         /* PIIX3 ISA bridge */
    rt_check_eq("qemuio.pci_piix3_class", cfg_read32(1, 0, 8) >> 8, 0x060100);    /* ISA bridge */
    rt_check_eq("qemuio.pci_word_read", cfg_read16(1, 0, 2), 0x7000);
    rt_check_eq("qemuio.pci_byte_read", cfg_read8(0, 0, 1), 0x80);
    rt_check_eq("qemuio.pci_empty_slot", cfg_read32(31, 0, 0), 0xffffffff);
    /* The address register reads back what was written. */
    outl(PCI_ADDR, cfg_addr(1, 0, 0x60));
    rt_check_eq("qemuio.pci_address_readback", inl(PCI_ADDR), cfg_addr(1, 0, 0x60));
    /* PIRQA's route: QEMU keeps it and tells Xen (set_pci_link_route). */
    cfg_write8(1, 0, 0x60, 0x0b);
    rt_check_eq("qemuio.pci_piix3_pirq_route", cfg_read8(1, 0, 0x60), 0x0b);
    cfg_write8(1, 0, 0x60, 0x80);
    rt_check_eq("qemuio.pci_piix3_pirq_disabled", cfg_read8(1, 0, 0x60), 0x80);
}

static void uart_putc(char c)
{
    unsigned int spins = 0;
    while (!(rt_inb(COM1 + 5) & 0x20) && ++spins < 1000000)   /* THR empty */
        rt_pause();
    rt_outb(COM1, (uint8_t)c);
}

static void check_uart(void)
{
    rt_outb(COM1 + 7, 0x5a);
    rt_check_eq("qemuio.uart_scratch", rt_inb(COM1 + 7), 0x5a);
    rt_outb(COM1 + 7, 0xa5);
    rt_check_eq("qemuio.uart_scratch_again", rt_inb(COM1 + 7), 0xa5);
    rt_outb(COM1 + 1, 0x00);
    rt_check_eq("qemuio.uart_ier", rt_inb(COM1 + 1), 0x00);
    /* 8N1 at 115200: DLAB, divisor 1, then the line control read back. */
    rt_outb(COM1 + 3, 0x80);
    rt_outb(COM1 + 0, 0x01);
    rt_outb(COM1 + 1, 0x00);
    rt_outb(COM1 + 3, 0x03);
    rt_check_eq("qemuio.uart_lcr", rt_inb(COM1 + 3), 0x03);
    rt_check("qemuio.uart_lsr_thr_empty", (rt_inb(COM1 + 5) & 0x60) == 0x60, "LSR %#x", rt_inb(COM1 + 5));
    for (const char *s = "qemuio: hello through the 16550\r\n"; *s; s++)
        uart_putc(*s);
    rt_pass("qemuio.uart_sent");
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("qemuio.all", "no Xen");
        return;
    }
    outl(PCI_ADDR, cfg_addr(0, 0, 0));
    if (inl(PCI_DATA) == 0xffffffffu) {
        rt_skip("qemuio.all", "no device model answers PCI configuration space");
        return;
    }
    check_pci();
    check_uart();
}
