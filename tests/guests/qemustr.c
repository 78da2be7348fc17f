/* REP string instructions served by the device model: run as type="hvm" (firmware_override) with QEMU
 * (`-machine xenfv`, an IDE disk the test fills with a known pattern, `-vga std`) as its IOREQ server. Xen sends
 * such an instruction as one ioreq with a count and the guest-physical buffer (data_is_ptr), bounded by the page;
 * these checks hold whether it does or goes an iteration at a time, and look at what the guest sees: the data, RCX,
 * RSI and RDI after REP INSW/INSL/OUTSW on QEMU's IDE data port (buffers crossing a page, DF set, partial counts,
 * a sector read over code that already ran), REP INSB/OUTSB on its 16550, REP MOVS and STOS between RAM and QEMU's
 * VGA memory in both directions, and single writes to VGA memory (which Xen queues on the buffered ioreq ring) read
 * back, more of them than the ring holds, one and eight bytes wide. */
#include "rt.h"

RT_GUEST("qemustr");

#define IDE       0x1f0
#define IDE_CTL   0x3f6
#define COM1      0x3f8
#define VGA_SEQ   0x3c4
#define VGA_GFX   0x3ce
#define VGA_MEM   ((volatile uint8_t *)0xa0000)

#define SECTOR 512

static uint8_t area[4][4096] __attribute__((aligned(4096)));
static uint8_t code_page[4096] __attribute__((aligned(4096)));

/* The byte the test writes at offset o of the disk image (XenSharp.Integration.Tests computes the same). */
static uint8_t disk_byte(unsigned long o) { return (uint8_t)(o * 7 + (o >> 9) * 31 + 1); }
/* The byte the guest writes to sector 10 (the test finds it in the image afterwards). */
static uint8_t written_byte(unsigned long i) { return (uint8_t)(0xc3 ^ (i * 5)); }

struct regs { unsigned long c, s, d; };

static struct regs rep_in(int width, uint16_t port, void *dst, unsigned long count, int back)
{
    struct regs r = { count, 0, (unsigned long)dst };
    if (back)
        __asm__ volatile("std");
    switch (width) {
    case 1: __asm__ volatile("rep insb" : "+c"(r.c), "+D"(r.d) : "d"(port) : "memory"); break;
    case 2: __asm__ volatile("rep insw" : "+c"(r.c), "+D"(r.d) : "d"(port) : "memory"); break;
    default: __asm__ volatile("rep insl" : "+c"(r.c), "+D"(r.d) : "d"(port) : "memory"); break;
    }
    __asm__ volatile("cld");
    return r;
}

static struct regs rep_out(int width, uint16_t port, const void *src, unsigned long count)
{
    struct regs r = { count, (unsigned long)src, 0 };
    switch (width) {
    case 1: __asm__ volatile("rep outsb" : "+c"(r.c), "+S"(r.s) : "d"(port) : "memory"); break;
    case 2: __asm__ volatile("rep outsw" : "+c"(r.c), "+S"(r.s) : "d"(port) : "memory"); break;
    default: __asm__ volatile("rep outsl" : "+c"(r.c), "+S"(r.s) : "d"(port) : "memory"); break;
    }
    return r;
}

static struct regs rep_movs(int width, void *dst, const volatile void *src, unsigned long count, int back)
{
    struct regs r = { count, (unsigned long)src, (unsigned long)dst };
    if (back)
        __asm__ volatile("std");
    switch (width) {
    case 1: __asm__ volatile("rep movsb" : "+c"(r.c), "+S"(r.s), "+D"(r.d) :: "memory"); break;
    case 2: __asm__ volatile("rep movsw" : "+c"(r.c), "+S"(r.s), "+D"(r.d) :: "memory"); break;
    default: __asm__ volatile("rep movsl" : "+c"(r.c), "+S"(r.s), "+D"(r.d) :: "memory"); break;
    }
    __asm__ volatile("cld");
    return r;
}

static int check_regs(const char *name, struct regs got, struct regs want)
{
    return rt_check(name, got.c == want.c && got.s == want.s && got.d == want.d,
        "rcx %#lx rsi %#lx rdi %#lx, want %#lx %#lx %#lx", got.c, got.s, got.d, want.c, want.s, want.d);
}

/* ---- IDE (primary channel, drive 0, PIO, LBA28) ---- */

static int ide_wait(uint8_t mask, uint8_t want)
{
    for (unsigned long spins = 0; spins < 20000000; spins++) {
        uint8_t st = rt_inb(IDE + 7);
        if (!(st & 0x80) && (st & mask) == want)
            return 1;
        if (!(st & 0x80) && (st & 0x01))
            return 0;   /* ERR */
        rt_pause();
    }
    return 0;
}

static int ide_command(uint8_t cmd, uint32_t lba, uint8_t count)
{
    if (!ide_wait(0x40, 0x40))
        return 0;
    rt_outb(IDE + 6, 0xe0 | ((lba >> 24) & 0x0f));
    rt_outb(IDE + 2, count);
    rt_outb(IDE + 3, (uint8_t)lba);
    rt_outb(IDE + 4, (uint8_t)(lba >> 8));
    rt_outb(IDE + 5, (uint8_t)(lba >> 16));
    rt_outb(IDE + 7, cmd);
    return ide_wait(0x08, 0x08);   /* DRQ: a sector is ready to move */
}

static int sector_is(const uint8_t *p, unsigned long lba, unsigned long *bad)
{
    for (unsigned long i = 0; i < SECTOR; i++)
        if (p[i] != disk_byte(lba * SECTOR + i)) {
            *bad = i;
            return 0;
        }
    return 1;
}

static uint32_t code_result(void) { return ((uint32_t (*)(void))code_page)(); }

static void check_ide(void)
{
    unsigned long bad = 0;
    rt_outb(IDE_CTL, 0x02);   /* nIEN: polled, no interrupt */
    rt_outb(IDE + 6, 0xe0);
    if (!ide_wait(0x40, 0x40)) {
        rt_skip("qemustr.ide", "no IDE disk answers (status %#x)", rt_inb(IDE + 7));
        return;
    }

    /* Sectors 3-6 in one command, each moved differently. */
    if (!rt_check("qemustr.ide_read_command", ide_command(0x20, 3, 4), "status %#x", rt_inb(IDE + 7)))
        return;
    uint8_t *across = &area[0][4096 - 100];                    /* 100 bytes in one page, 412 in the next */
    check_regs("qemustr.insw_across_page_regs", rep_in(2, IDE, across, 256, 0),
        (struct regs){ 0, 0, (unsigned long)(across + SECTOR) });
    rt_check("qemustr.insw_across_page_data", sector_is(across, 3, &bad), "byte %lu differs", bad);

    ide_wait(0x08, 0x08);
    uint8_t *back = &area[2][100];                             /* DF=1: the last word first, going down */
    check_regs("qemustr.insw_backward_regs", rep_in(2, IDE, back + SECTOR - 2, 256, 1),
        (struct regs){ 0, 0, (unsigned long)(back - 2) });
    int ok = 1;
    for (unsigned long k = 0; k < 256 && ok; k++) {
        const uint8_t *w = back + SECTOR - 2 - 2 * k;
        ok = w[0] == disk_byte(4 * SECTOR + 2 * k) && w[1] == disk_byte(4 * SECTOR + 2 * k + 1);
        bad = k;
    }
    rt_check("qemustr.insw_backward_data", ok, "word %lu differs", bad);

    ide_wait(0x08, 0x08);
    check_regs("qemustr.insl_regs", rep_in(4, IDE, area[1], 128, 0), (struct regs){ 0, 0, (unsigned long)area[1] + SECTOR });
    rt_check("qemustr.insl_data", sector_is(area[1], 5, &bad), "byte %lu differs", bad);

    ide_wait(0x08, 0x08);
    uint8_t *halves = &area[3][0];
    check_regs("qemustr.insw_first_part_regs", rep_in(2, IDE, halves, 100, 0), (struct regs){ 0, 0, (unsigned long)halves + 200 });
    check_regs("qemustr.insw_rest_regs", rep_in(2, IDE, halves + 200, 156, 0), (struct regs){ 0, 0, (unsigned long)halves + SECTOR });
    rt_check("qemustr.insw_parts_data", sector_is(halves, 6, &bad), "byte %lu differs", bad);

    /* REP OUTSW from a buffer across a page to sector 10, which the test reads in the image, then back in. */
    uint8_t *out = &area[1][4096 - 300];
    for (unsigned long i = 0; i < SECTOR; i++)
        out[i] = written_byte(i);
    if (rt_check("qemustr.ide_write_command", ide_command(0x30, 10, 1), "status %#x", rt_inb(IDE + 7))) {
        check_regs("qemustr.outsw_regs", rep_out(2, IDE, out, 256), (struct regs){ 0, (unsigned long)out + SECTOR, 0 });
        rt_check("qemustr.ide_write_done", ide_wait(0x88, 0x00), "status %#x", rt_inb(IDE + 7));
        if (ide_command(0x20, 10, 1)) {
            rep_in(2, IDE, area[3], 256, 0);
            ok = 1;
            for (unsigned long i = 0; i < SECTOR && ok; i++)
                ok = area[3][i] == written_byte(i), bad = i;
            rt_check("qemustr.outsw_read_back", ok, "byte %lu differs", bad);
        }
    }

    /* Code that ran, then a sector read over it with REP INSW: the new code runs, not the old. Sector 11 gets
     * `mov $2, %eax; ret` first. */
    static const uint8_t old_code[] = { 0xb8, 0x01, 0x00, 0x00, 0x00, 0xc3 }, new_code[] = { 0xb8, 0x02, 0x00, 0x00, 0x00, 0xc3 };
    for (unsigned long i = 0; i < SECTOR; i++)
        area[2][i] = i < sizeof(new_code) ? new_code[i] : 0xcc;
    for (unsigned long i = 0; i < sizeof(old_code); i++)
        code_page[i] = old_code[i];
    rt_check_eq("qemustr.code_before", code_result(), 1);
    if (ide_command(0x30, 11, 1)) {
        rep_out(2, IDE, area[2], 256);
        ide_wait(0x88, 0x00);
        if (ide_command(0x20, 11, 1)) {
            rep_in(2, IDE, code_page, 256, 0);
            rt_check_eq("qemustr.code_read_over_runs", code_result(), 2);
        }
    }
}

/* ---- 16550 ---- */

static void check_uart(void)
{
    static const char line[] = "qemustr: rep outsb through the 16550\r\n";
    rt_outb(COM1 + 3, 0x03);
    check_regs("qemustr.outsb_regs", rep_out(1, COM1, line, sizeof(line) - 1),
        (struct regs){ 0, (unsigned long)line + sizeof(line) - 1, 0 });
    rt_outb(COM1 + 7, 0x77);
    uint8_t *buf = &area[0][4096 - 40];
    for (int i = 0; i < 80; i++)
        buf[i] = 0;
    check_regs("qemustr.insb_regs", rep_in(1, COM1 + 7, buf, 64, 0), (struct regs){ 0, 0, (unsigned long)buf + 64 });
    int ok = 1;
    for (int i = 0; i < 80; i++)
        ok &= buf[i] == (i < 64 ? 0x77 : 0);
    rt_check("qemustr.insb_data", ok, "scratch bytes not where they belong");
}

/* ---- VGA memory ---- */

static void vga_seq(uint8_t i, uint8_t v) { rt_outb(VGA_SEQ, i); rt_outb(VGA_SEQ + 1, v); }
static void vga_gfx(uint8_t i, uint8_t v) { rt_outb(VGA_GFX, i); rt_outb(VGA_GFX + 1, v); }

static uint8_t vga_pattern(unsigned long i) { return (uint8_t)(i * 13 + 5); }

static void check_vga(void)
{
    /* Planar, plane 0 only, no odd/even, write mode 0 with every bit from the CPU, read mode 0 of plane 0, and the
     * 64 KiB window at 0xA0000: VGA memory then behaves as plain bytes, without QEMU mapping it as RAM. */
    vga_seq(2, 0x01);
    vga_seq(4, 0x06);
    vga_gfx(0, 0x00);
    vga_gfx(1, 0x00);
    vga_gfx(3, 0x00);
    vga_gfx(4, 0x00);
    vga_gfx(5, 0x00);
    vga_gfx(6, 0x05);
    vga_gfx(8, 0xff);
    VGA_MEM[0] = 0x5a;
    if (VGA_MEM[0] != 0x5a) {
        rt_skip("qemustr.vga", "no VGA memory at 0xA0000 (read %#x)", VGA_MEM[0]);
        return;
    }

    /* RAM to VGA, 4 bytes at a time across a page of VGA memory, then VGA to RAM a byte at a time across a RAM page. */
    uint8_t *src = &area[0][1000];
    for (unsigned long i = 0; i < 3000; i++)
        src[i] = vga_pattern(i);
    volatile uint8_t *vga = VGA_MEM + 0xf00;
    check_regs("qemustr.movsl_to_mmio_regs", rep_movs(4, (void *)vga, src, 750, 0),
        (struct regs){ 0, (unsigned long)src + 3000, (unsigned long)vga + 3000 });
    int ok = 1;
    unsigned long bad = 0;
    for (unsigned long i = 0; i < 3000 && ok; i += 97)
        ok = vga[i] == vga_pattern(i), bad = i;
    rt_check("qemustr.movsl_to_mmio_data", ok, "VGA byte %lu differs", bad);

    uint8_t *dst = &area[2][4096 - 1500];
    check_regs("qemustr.movsb_from_mmio_regs", rep_movs(1, dst, vga, 3000, 0),
        (struct regs){ 0, (unsigned long)vga + 3000, (unsigned long)dst + 3000 });
    ok = 1;
    for (unsigned long i = 0; i < 3000 && ok; i++)
        ok = dst[i] == vga_pattern(i), bad = i;
    rt_check("qemustr.movsb_from_mmio_data", ok, "byte %lu differs", bad);

    /* DF=1: 500 words from VGA memory downwards, to RAM downwards. */
    uint16_t *wdst = (uint16_t *)&area[3][2000];
    for (unsigned long i = 0; i < 1200; i++)
        ((uint8_t *)&area[3][0])[1000 + i] = 0;
    check_regs("qemustr.movsw_backward_regs", rep_movs(2, wdst, vga + 1998, 500, 1),
        (struct regs){ 0, (unsigned long)vga + 998, (unsigned long)wdst - 1000 });
    ok = 1;
    for (unsigned long i = 1002; i < 2002 && ok; i++)
        ok = area[3][i] == vga_pattern(i - 2), bad = i;
    rt_check("qemustr.movsw_backward_data", ok && area[3][1001] == 0 && area[3][2002] == 0, "byte %lu differs", bad);

    /* REP STOSL to VGA memory, read back a byte at a time. */
    struct regs r = { 1100, 0, (unsigned long)(VGA_MEM + 0x3000) };
    __asm__ volatile("rep stosl" : "+c"(r.c), "+D"(r.d) : "a"(0xdeadbeefu) : "memory");
    check_regs("qemustr.stosl_to_mmio_regs", r, (struct regs){ 0, 0, (unsigned long)VGA_MEM + 0x3000 + 4400 });
    ok = 1;
    for (unsigned long i = 0; i < 4400 && ok; i++)
        ok = VGA_MEM[0x3000 + i] == (uint8_t)(0xdeadbeefu >> (8 * (i & 3))), bad = i;
    rt_check("qemustr.stosl_to_mmio_data", ok && VGA_MEM[0x3000 + 4400] != 0xef, "byte %lu differs", bad);

    /* Single writes the guest does not wait for (the buffered ring holds 511), then read back in order. */
    for (unsigned long i = 0; i < 3000; i++)
        VGA_MEM[0x8000 + i] = (uint8_t)(i * 3 + 1);
    ok = 1;
    for (unsigned long i = 0; i < 3000 && ok; i++)
        ok = VGA_MEM[0x8000 + i] == (uint8_t)(i * 3 + 1), bad = i;
    rt_check("qemustr.vga_byte_writes", ok, "byte %lu reads %#x", bad, VGA_MEM[0x8000 + bad]);
    volatile uint64_t *q = (volatile uint64_t *)(VGA_MEM + 0xc000);
    for (unsigned long i = 0; i < 700; i++)
        q[i] = 0x0102030405060708ull * (i + 1);
    ok = 1;
    for (unsigned long i = 0; i < 700 && ok; i++)
        ok = q[i] == 0x0102030405060708ull * (i + 1), bad = i;
    rt_check("qemustr.vga_qword_writes", ok, "qword %lu differs", bad);
    /* A write then a read of the same byte, many times: every read sees the write before it. */
    ok = 1;
    for (unsigned long i = 0; i < 1000 && ok; i++) {
        VGA_MEM[0x10] = (uint8_t)i;
        ok = VGA_MEM[0x10] == (uint8_t)i, bad = i;
    }
    rt_check("qemustr.vga_write_then_read", ok, "iteration %lu", bad);
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("qemustr.all", "no Xen");
        return;
    }
    rt_outb(COM1 + 7, 0x5a);
    if (rt_inb(COM1 + 7) != 0x5a) {
        rt_skip("qemustr.all", "no device model answers the 16550");
        return;
    }
    check_ide();
    check_uart();
    check_vga();
}
