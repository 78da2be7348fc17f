/* Suspends itself with SCHEDOP_shutdown(SHUTDOWN_suspend), as a Linux guest does when the toolstack writes
 * control/shutdown = suspend, and checks what it finds when the call returns: 0 (resumed in a new domain, as
 * after xl save + xl restore) with its memory, its registers and MSRs as they were, and a different domid.
 * Run by the toolstack's save/restore tests, not on its own: after `# suspending` it waits to be saved. */
#include "rt.h"
#include <xen/sched.h>

RT_GUEST("suspend");

#define PATTERN_WORDS (256 * 1024) /* 2 MiB */
static uint64_t pattern[PATTERN_WORDS];

static uint64_t fill(uint64_t seed)
{
    uint64_t x = seed, sum = 0;
    for (size_t i = 0; i < PATTERN_WORDS; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        pattern[i] = x;
        sum += x * (i + 1);
    }
    return sum;
}

static uint64_t checksum(void)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < PATTERN_WORDS; i++)
        sum += pattern[i] * (i + 1);
    return sum;
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("suspend.all", "no Xen");
        return;
    }
    domid_t before = 0, after = 0;
    rt_check_eq("suspend.domid_before", rt_domid(&before), 0);
    uint64_t sum = fill(0x9E3779B97F4A7C15ull ^ before);
    const uint64_t kgs = 0xFFFF888012345000ull, lstar = 0xFFFFFFFF81234560ull, star = 0x0023001000000000ull;
    rt_wrmsr(0xC0000102, kgs);
    rt_wrmsr(0xC0000082, lstar);
    rt_wrmsr(0xC0000081, star);
    unsigned long cr3 = rt_read_cr3(), cr4 = rt_read_cr4();
    /* FPU control state no compiled code changes: MXCSR (round toward zero, DAZ) and the x87 control word
     * (53-bit precision); both come back only if the x87/SSE state is saved. */
    uint32_t mxcsr = 0x7FC0, mxcsr_after;
    uint16_t fcw = 0x027F, fcw_after;
    __asm__ volatile("ldmxcsr %0" :: "m"(mxcsr));
    __asm__ volatile("fldcw %0" :: "m"(fcw));

    rt_printf("# suspending\n");
    struct sched_shutdown sd = { .reason = SHUTDOWN_suspend };
    register uint64_t r12 __asm__("r12") = 0x1122334455667788ull;
    register uint64_t r15 __asm__("r15") = 0x8877665544332211ull;
    long rc;
    /* The hypercall with callee-saved registers holding known values across it. */
    __asm__ volatile("" : "+r"(r12), "+r"(r15));
    rc = HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
    __asm__ volatile("" : "+r"(r12), "+r"(r15));

    rt_printf("# resumed: rc=%ld\n", rc);
    rt_check_eq("suspend.resumed_in_new_domain", (uint64_t)rc, 0);
    rt_check_eq("suspend.callee_saved_r12", r12, 0x1122334455667788ull);
    rt_check_eq("suspend.callee_saved_r15", r15, 0x8877665544332211ull);
    rt_check_eq("suspend.memory", checksum(), sum);
    rt_check_eq("suspend.msr_kernel_gs_base", rt_rdmsr(0xC0000102), kgs);
    rt_check_eq("suspend.msr_lstar", rt_rdmsr(0xC0000082), lstar);
    rt_check_eq("suspend.msr_star", rt_rdmsr(0xC0000081), star);
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr_after));
    __asm__ volatile("fnstcw %0" : "=m"(fcw_after));
    rt_check_eq("suspend.mxcsr", mxcsr_after, mxcsr);
    rt_check_eq("suspend.x87_control_word", fcw_after, fcw);
    rt_check_eq("suspend.cr3", rt_read_cr3(), cr3);
    rt_check_eq("suspend.cr4", rt_read_cr4(), cr4);
    rt_check_eq("suspend.domid_after", rt_domid(&after), 0);
    rt_check("suspend.new_domid", after != before, "domid %u before and after", before);
}
