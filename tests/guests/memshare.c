/*
 * Sharing target: fills SHARE_PAGES pages with a pattern that depends only on the page's index, so that two of these
 * guests hold identical pages for a sharing agent (xen-memshare) to share from outside, then checks them round after
 * round, 20 ms apart. Each NMI (`xl trigger DOM nmi`) makes it write its own id (cmdline "id=N") over the next of its
 * pages, which it checks from then on against that id instead. A page shared with another guest must therefore keep
 * reading as this guest's own data whatever the other writes. Run by the integration tests, not on its own.
 */
#include "rt.h"

RT_GUEST("memshare");

#define SHARE_PAGES 512

static volatile uint8_t pages[SHARE_PAGES][4096] __attribute__((aligned(4096)));
static volatile int nmis;
static int written;
static unsigned long id;

static void on_nmi(struct rt_frame *f)
{
    (void)f;
    nmis++;
}

static uint8_t pattern(unsigned int page, unsigned int off)
{
    return (uint8_t)(page * 7u + off * 13u + (off >> 8));
}

static uint8_t expected(unsigned int page, unsigned int off)
{
    return (int)page < written ? (uint8_t)(id + page) : pattern(page, off);
}

static void pause_ms(unsigned int ms)
{
    static volatile int never;
    rt_wait_for(&never, (uint64_t)ms * 1000000);
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("memshare.all", "no Xen");
        return;
    }
    const char *arg = rt_cmdline_value("id");
    id = arg ? rt_strtoul(arg, NULL, 10) : 1;
    rt_set_handler(2, on_nmi);
    for (unsigned int p = 0; p < SHARE_PAGES; p++)
        for (unsigned int o = 0; o < 4096; o++)
            pages[p][o] = pattern(p, o);
    rt_printf("# ready id=%lu pages=0x%lx count=%u\n", id, (unsigned long)(uintptr_t)pages, SHARE_PAGES);
    unsigned long bad = 0;
    for (unsigned long n = 1; n <= 100000; n++) {
        /* An NMI asks for one more page of this guest's own. */
        while (written < nmis && written < SHARE_PAGES) {
            for (unsigned int o = 0; o < 4096; o++)
                pages[written][o] = (uint8_t)(id + (unsigned int)written);
            written++;
        }
        unsigned long wrong = 0;
        for (unsigned int p = 0; p < SHARE_PAGES; p++)
            for (unsigned int o = 0; o < 4096; o += 61)
                wrong += pages[p][o] != expected(p, o);
        bad += wrong != 0;
        if (n % 8 == 0 || wrong)
            rt_printf("# round %lu id=%lu written=%d wrong=%lu bad=%lu\n", n, id, written, wrong, bad);
        pause_ms(20);
    }
    rt_check_eq("memshare.rounds_intact", bad, 0);
}
