/*
 * Introspection target: a loop that writes a known byte of a data page, calls a function alone in its own code page
 * and executes an INT3, pausing 20 ms between rounds, for xen-access (write, exec and breakpoint modes) to report
 * from outside. The guest checks that each of its actions completes as it would without an observer: the write
 * lands, the call returns its result, and the breakpoint reaches its own #BP handler with the return address just
 * past the INT3 (the observer re-injects it). Run by the integration tests, not on its own.
 */
#include "rt.h"

RT_GUEST("access");

static volatile uint8_t access_page[4096] __attribute__((aligned(4096)));

unsigned long access_exec_target(unsigned long x);
void access_breakpoint_fn(void);
extern char access_breakpoint[];

/* The exec target fills a page of its own, so that the first fetch from that page is the call below. */
__asm__(".pushsection .text.access_exec, \"ax\"\n"
        ".balign 4096\n"
        ".globl access_exec_target\n"
        "access_exec_target:\n"
        "    lea 1(%rdi), %rax\n"
        "    ret\n"
        ".balign 4096\n"
        ".popsection\n"
        ".text\n"
        ".globl access_breakpoint_fn\n"
        "access_breakpoint_fn:\n"
        ".globl access_breakpoint\n"
        "access_breakpoint:\n"
        "    int3\n"
        "    ret\n");

static volatile unsigned long bp_seen, bp_ip;

static void on_breakpoint(struct rt_frame *f)
{
    bp_seen++;
    bp_ip = f->ip;
}

static void pause_ms(unsigned int ms)
{
    static volatile int never;
    rt_wait_for(&never, (uint64_t)ms * 1000000);
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("access.all", "no Xen");
        return;
    }
    rt_set_handler(3, on_breakpoint);
    rt_printf("# ready write=0x%lx exec=0x%lx breakpoint=0x%lx\n", (unsigned long)(uintptr_t)&access_page[0x123],
              (unsigned long)(uintptr_t)access_exec_target, (unsigned long)(uintptr_t)access_breakpoint);
    unsigned long rounds = 30000, bad = 0;
    const char *arg = rt_cmdline_value("rounds");
    if (arg) {
        rounds = 0;
        while (*arg >= '0' && *arg <= '9')
            rounds = rounds * 10 + (unsigned long)(*arg++ - '0');
    }
    for (unsigned long n = 1; n <= rounds; n++) {
        access_page[0x123] = (uint8_t)n;
        unsigned long r = access_exec_target(n);
        unsigned long before = bp_seen;
        access_breakpoint_fn();
        int ok = access_page[0x123] == (uint8_t)n && r == n + 1 && bp_seen == before + 1 &&
                 bp_ip == (unsigned long)(uintptr_t)access_breakpoint + 1;
        bad += !ok;
        if (n % 16 == 0 || !ok)
            rt_printf("# round %lu ok=%d breakpoints=%lu bad=%lu\n", n, ok, (unsigned long)bp_seen, bad);
        pause_ms(20);
    }
    rt_check_eq("access.rounds_intact", bad, 0);
}
