/* The device model's IDE CD-ROM through ATAPI, and the media changes xl cd-insert and cd-eject make: run as
 * type="hvm" (firmware_override) with QEMU started by the toolstack and hdc a CD-ROM drive (the secondary channel's
 * master, polled PIO, no interrupts). The kernel asks the drive TEST UNIT READY over and over; with a medium it reads
 * READ CAPACITY and sector 0 (READ(10), 2048 bytes), and prints every change of what it sees as
 *   "# medium LABEL sectors=N"   (LABEL: the sector's leading printable bytes, at most 31)
 *   "# no medium"                (NOT READY)
 * A UNIT ATTENTION (the drive's "medium may have changed") is asked again at once. It stops with PASS once it has seen
 * two different media and then none (the sequence HvmCdromTests drives), else FAILs after `secs=N` (default 240);
 * with `stay=1` it goes on watching after the PASS until then, so that its device model stays for the test to ask.
 * Without a device model one SKIP. */
#include "rt.h"

RT_GUEST("cdrom");

#define ATA       0x170     /* the secondary channel's command block */
#define ATA_CTL   0x376     /* its device control register */
#define ST_ERR    0x01
#define ST_DRQ    0x08
#define ST_BSY    0x80
#define CD_SECTOR 2048

#define SENSE_NOT_READY      2
#define SENSE_UNIT_ATTENTION 6

static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static uint8_t sector[CD_SECTOR] __attribute__((aligned(16)));

/* The status once BSY is clear, or -1 if the drive stays busy. */
static int not_busy(void)
{
    for (unsigned long spins = 0; spins < 20000000; spins++) {
        uint8_t st = rt_inb(ATA + 7);
        if (!(st & ST_BSY))
            return st;
        rt_pause();
    }
    return -1;
}

/* One ATAPI PACKET command with up to `len` bytes of data in: 0 when it completed, the sense key when the drive
 * answered CHECK CONDITION (ERR, the key in the error register's high nibble), -1 when it did not answer. */
static int packet(const uint8_t cdb[12], void *buf, unsigned int len)
{
    rt_outb(ATA + 6, 0xa0);   /* master */
    if (not_busy() < 0)
        return -1;
    rt_outb(ATA + 1, 0);      /* PIO */
    rt_outb(ATA + 4, (uint8_t)CD_SECTOR);
    rt_outb(ATA + 5, CD_SECTOR >> 8);
    rt_outb(ATA + 7, 0xa0);   /* PACKET */
    int st = not_busy();
    if (st < 0)
        return -1;
    if (st & ST_ERR)
        return rt_inb(ATA + 1) >> 4;
    if (!(st & ST_DRQ))
        return -1;
    for (int i = 0; i < 6; i++)
        rt_outw(ATA, (uint16_t)(cdb[2 * i] | cdb[2 * i + 1] << 8));
    unsigned int got = 0;
    for (;;) {
        st = not_busy();
        if (st < 0)
            return -1;
        if (st & ST_ERR)
            return rt_inb(ATA + 1) >> 4;
        if (!(st & ST_DRQ))
            return 0;
        unsigned int n = rt_inb(ATA + 4) | (unsigned int)rt_inb(ATA + 5) << 8;
        for (unsigned int i = 0; i < n; i += 2) {
            uint16_t w = inw(ATA);
            if (got + 1 < len) {
                ((uint8_t *)buf)[got] = (uint8_t)w;
                ((uint8_t *)buf)[got + 1] = (uint8_t)(w >> 8);
            }
            got += 2;
        }
    }
}

/* REQUEST SENSE, as a driver asks after CHECK CONDITION: it also clears a pending UNIT ATTENTION, without which the
 * drive answers every other command with it again. */
static void request_sense(void)
{
    static const uint8_t cdb[12] = { 0x03, 0, 0, 0, 18 };
    uint8_t data[18];
    packet(cdb, data, sizeof data);
}

static int test_unit_ready(void)
{
    static const uint8_t cdb[12] = { 0x00 };
    int r = packet(cdb, 0, 0);
    if (r > 0)
        request_sense();
    return r;
}

static int read_capacity(uint32_t *last_lba)
{
    static const uint8_t cdb[12] = { 0x25 };
    uint8_t data[8];
    int r = packet(cdb, data, sizeof data);
    if (r == 0)
        *last_lba = (uint32_t)data[0] << 24 | (uint32_t)data[1] << 16 | (uint32_t)data[2] << 8 | data[3];
    return r;
}

static int read_sector0(void)
{
    static const uint8_t cdb[12] = { 0x28, 0, 0, 0, 0, 0, 0, 0, 1 };   /* READ(10): LBA 0, one block */
    return packet(cdb, sector, sizeof sector);
}

/* What the drive holds now: 1 with `label` and `sectors` set, 0 for no medium, 2 while it is changing (ask again),
 * -1 when it did not answer. */
static int look(char label[32], uint32_t *sectors)
{
    int r = test_unit_ready();
    if (r == SENSE_UNIT_ATTENTION)
        return 2;
    if (r == SENSE_NOT_READY)
        return 0;
    if (r != 0)
        return -1;
    uint32_t last = 0;
    if ((r = read_capacity(&last)) != 0 || (r = read_sector0()) != 0) {
        if (r < 0)
            return -1;
        request_sense();
        return 2;   /* changed in between */
    }
    int n = 0;
    while (n < 31 && sector[n] >= 0x21 && sector[n] < 0x7f) {
        label[n] = (char)sector[n];
        n++;
    }
    label[n] = 0;
    *sectors = last + 1;
    return 1;
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("cdrom.all", "no Xen");
        return;
    }
    rt_outb(ATA_CTL, 0x02);   /* nIEN: polled */
    rt_outb(ATA + 6, 0xa0);
    uint8_t lo = rt_inb(ATA + 4), hi = rt_inb(ATA + 5);
    if (lo != 0x14 || hi != 0xeb) {
        rt_skip("cdrom.all", "no ATAPI drive on the secondary channel (signature %#x %#x): no device model", lo, hi);
        return;
    }
    rt_pass("cdrom.atapi_signature");

    const char *secs = rt_cmdline_value("secs");
    unsigned int limit = 240;
    if (secs) {
        limit = 0;
        while (*secs >= '0' && *secs <= '9')
            limit = limit * 10 + (unsigned int)(*secs++ - '0');
    }
    uint64_t end = rt_deadline(limit * 1000);
    const char *stay = rt_cmdline_value("stay");
    char last[32] = "", label[32];
    int state = -2, media = 0, passed = 0;
    while (!rt_expired(end)) {
        uint32_t sectors = 0;
        int now = look(label, &sectors);
        if (now < 0) {
            rt_fail("cdrom.answers", "the drive did not answer (status %#x)", rt_inb(ATA + 7));
            return;
        }
        if (now == 2)
            continue;
        if (now != state || (now == 1 && strcmp(label, last) != 0)) {
            if (now == 1) {
                rt_printf("# medium %s sectors=%u\n", label, (unsigned int)sectors);
                if (strcmp(label, last) != 0)
                    media++;
                memcpy(last, label, sizeof last);
            } else {
                rt_printf("# no medium\n");
                if (media >= 2 && !passed) {
                    rt_pass("cdrom.media_changes");
                    passed = 1;
                    if (!stay || *stay != '1')
                        return;
                }
            }
            state = now;
        }
        uint64_t pause = rt_deadline(20);
        while (!rt_expired(pause))
            rt_pause();
    }
    if (!passed)
        rt_fail("cdrom.media_changes", "%d media seen in %u s, the last %s", media, limit, state == 1 ? last : "none");
}
