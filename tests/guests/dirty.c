/* Keeps writing memory for log-dirty and live migration: a counter page, and a region of 256 pages that takes
 * the counter's values in turn (value n at page n % 256, word (n / 256) % 512), while it only reads another
 * region. Every 2^20 writes it checks that the last 256 × 512 values are all where it put them (any page a
 * migration failed to send again would break that) and prints `# tick N`. Prints the regions' addresses first
 * (`# dirty ...`); with `ticks=N` it powers off after N ticks, else it runs until destroyed. Run by the
 * hypervisor's log-dirty tests and the toolstack's migration tests, not on its own. */
#include "rt.h"

RT_GUEST("dirty");

#define PAGES 256
#define WORDS 512

static volatile uint64_t region[PAGES][WORDS] __attribute__((aligned(4096)));
static volatile uint64_t untouched[4][WORDS] __attribute__((aligned(4096)));
static volatile uint64_t counter[WORDS] __attribute__((aligned(4096)));

static int verify(uint64_t n)
{
    uint64_t first = n > PAGES * WORDS ? n - PAGES * WORDS + 1 : 1;
    for (uint64_t k = first; k <= n; k++)
        if (region[k % PAGES][(k / PAGES) % WORDS] != k) {
            rt_fail("dirty.values_kept", "value %lu missing at page %lu word %lu (found %lu)", (unsigned long)k,
                    (unsigned long)(k % PAGES), (unsigned long)((k / PAGES) % WORDS),
                    (unsigned long)region[k % PAGES][(k / PAGES) % WORDS]);
            return 0;
        }
    return 1;
}

void guest_main(void)
{
    const char *t = rt_cmdline_value("ticks");
    unsigned long ticks = t ? rt_strtoul(t, NULL, 10) : 0;
    rt_printf("# dirty region=%lx pages=%d untouched=%lx counter=%lx\n", (unsigned long)region, PAGES,
              (unsigned long)untouched, (unsigned long)counter);
    uint64_t n = 0, sink = 0;
    unsigned long tick = 0;
    for (;;) {
        n++;
        region[n % PAGES][(n / PAGES) % WORDS] = n;
        counter[0] = n;
        sink += untouched[n & 3][n & (WORDS - 1)];
        if ((n & 0xFFFFF) == 0) {
            if (!verify(n) || counter[0] != n)
                break;
            rt_printf("# tick %lu n=%lu\n", ++tick, (unsigned long)n);
            if (ticks && tick >= ticks) {
                rt_pass("dirty.values_kept");
                break;
            }
        }
    }
    rt_check_eq("dirty.untouched_reads_zero", sink, 0);
}
