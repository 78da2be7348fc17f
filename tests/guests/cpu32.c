/* Engine conformance for 32-bit protected mode (no Xen services needed). */
#include "rt.h"

RT_GUEST("cpu32");

/* PAE page tables built here: paging is off at entry in a 32-bit guest. */
static uint64_t pae_pdpt[4] __attribute__((aligned(32)));
static volatile uint64_t pae_pd[2048] __attribute__((aligned(4096)));
static volatile uint64_t *const test_pd = pae_pd;

static void paging_on(void)
{
    for (int i = 0; i < 2048; i++)
        pae_pd[i] = ((uint64_t)i << 21) | 0x87;   /* P RW US PS */
    for (int i = 0; i < 4; i++)
        pae_pdpt[i] = (uintptr_t)&pae_pd[512 * i] | 1;
    rt_write_cr4(rt_read_cr4() | 0x20);
    uint32_t a, b, c, d;
    rt_cpuid(0x80000000, 0, &a, &b, &c, &d);
    if (a >= 0x80000001) {
        rt_cpuid(0x80000001, 0, &a, &b, &c, &d);
        if (d & (1u << 20))
            rt_wrmsr(MSR_EFER, rt_rdmsr(MSR_EFER) | EFER_NXE);
    }
    rt_write_cr3((uintptr_t)pae_pdpt);
    rt_write_cr0(rt_read_cr0() | 0x80000000ul);
}

static void paging_off(void)
{
    rt_write_cr0(rt_read_cr0() & ~0x80000000ul);
    rt_write_cr4(rt_read_cr4() & ~0x20ul);
}

#include "cpu_common.h"

__asm__(".pushsection .text\n"
        ".globl t_into\n t_into: mov $0x7fffffff, %eax\n add $1, %eax\n into\n .globl t_into_after\n t_into_after: ret\n"
        ".globl t_bound\n t_bound: mov $5, %eax\n .globl t_bound_insn\n t_bound_insn: bound %eax, bound_pair\n ret\n"
        ".popsection\n"
        ".pushsection .data\n bound_pair: .long 10, 20\n .popsection\n");
void t_into(void), t_into_after(void), t_bound(void), t_bound_insn(void);

static void test_legacy_only(void)
{
    expect_trap("exception.of_into", t_into, 4, 0, (uintptr_t)t_into_after);
    expect_trap("exception.br_bound", t_bound, 5, 0, (uintptr_t)t_bound_insn);
    uint8_t al = 0x15;
    __asm__ volatile("addb $0x27, %0\n\tdaa" : "+a"(al) :: "cc");
    rt_check_eq("arith.daa", al, 0x42);
    uint16_t ax = 0x0109;
    __asm__ volatile("aam" : "+a"(ax) :: "cc");   /* AL 0x09 → AH 0, AL 9 */
    rt_check_eq("arith.aam", ax, 0x0009);
    /* PUSHA/POPA round trip */
    uint32_t before = 0x11111111, after = 0;
    __asm__ volatile("mov %1, %%edi\n\tpusha\n\txor %%edi, %%edi\n\tpopa\n\tmov %%edi, %0"
                     : "=r"(after) : "r"(before) : "edi", "memory");
    rt_check_eq("arith.pusha_popa", after, before);
}

void guest_main(void)
{
    test_arith();
    test_legacy_only();
    test_strings();
    test_exceptions();
    test_cpuid();
    test_sse2();
    test_x87();
    test_smc();
    test_single_step();
    test_user_mode();
    test_ring3_gates();
    test_arith_more();
    test_segments();
    test_lapic_timer();
    test_paging();
    test_realmode();
}
