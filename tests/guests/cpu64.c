/* Engine conformance for long mode (no Xen services needed). */
#include "rt.h"

RT_GUEST("cpu64");

/* The runtime's identity map: 4 PDs of 2 MiB pages under one PDPT and PML4. */
extern uint64_t rt_pml4[512], rt_pdpt[512], rt_pd[2048];
static volatile uint64_t *const test_pd = rt_pd;
static void paging_on(void) {}
static void paging_off(void) {}

#include "cpu_common.h"

/* ---------------- 64-bit integer ---------------- */

__asm__(".pushsection .text\n"
        ".globl t_noncanon\n t_noncanon: movabs $0x8000000000000000, %rax\n"
        ".globl t_noncanon_insn\n t_noncanon_insn: mov (%rax), %rax\n ret\n"
        ".globl t_ud_lm\n t_ud_lm: .byte 0x06\n ret\n"     /* push %es: invalid in 64-bit mode */
        ".popsection\n");
void t_noncanon(void), t_noncanon_insn(void), t_ud_lm(void);

/* Neither RTM nor HLE is advertised: XBEGIN, XEND, XABORT and XTEST are undefined, while the
 * XACQUIRE/XRELEASE prefixes leave their instructions as they are. */
static void t_xbegin(void *a) { (void)a; __asm__ volatile(".byte 0xc7, 0xf8, 0, 0, 0, 0" ::: "memory", "eax"); }
static void t_xend(void *a) { (void)a; __asm__ volatile(".byte 0x0f, 0x01, 0xd5" ::: "memory"); }
static void t_xabort(void *a) { (void)a; __asm__ volatile(".byte 0xc6, 0xf8, 0x01" ::: "memory", "eax"); }
static void t_xtest(void *a) { (void)a; __asm__ volatile(".byte 0x0f, 0x01, 0xd6" ::: "memory", "cc"); }

static void expect_ud(const char *name, void (*fn)(void *))
{
    struct rt_trap t;
    int trapped = rt_try(fn, NULL, &t);
    rt_check(name, trapped && t.vector == 6, "trapped %d vector %u", trapped, t.vector);
}

static void invlpg_noncanonical(void *a)
{
    (void)a;
    unsigned long nc = 0x8000000000000000ul;
    __asm__ volatile("invlpg (%0)\n\tinvlpg (%%rsp,%0)\n\tinvlpg %%fs:(%0)" :: "r"(nc) : "memory");
}

static void test_tsx_and_invlpg(void)
{
    expect_ud("tsx.xbegin_ud", t_xbegin);
    expect_ud("tsx.xend_ud", t_xend);
    expect_ud("tsx.xabort_ud", t_xabort);
    expect_ud("tsx.xtest_ud", t_xtest);
    static volatile uint32_t lockword;
    lockword = 1;
    __asm__ volatile(".byte 0xf2\n\tlock addl $2, %0\n\t.byte 0xf3\n\tmovl $9, %0" : "+m"(lockword) :: "memory", "cc");
    rt_check_eq("tsx.hle_prefixes_ignored", lockword, 9);
    struct rt_trap t;
    int trapped = rt_try(invlpg_noncanonical, NULL, &t);
    rt_check("paging.invlpg_noncanonical_no_fault", !trapped, "vector %u error %#lx", t.vector, t.error_code);
}

static void test_long_mode(void)
{
    uint64_t a = 0xffffffffffffffffull, d;
    __asm__ volatile("mulq %2" : "+a"(a), "=d"(d) : "r"(0xffffffffffffffffull) : "cc");
    rt_check("arith64.mul128", a == 1 && d == 0xfffffffffffffffeull, "rdx:rax %#llx:%#llx",
             (unsigned long long)d, (unsigned long long)a);
    a = 0;
    d = 1;
    __asm__ volatile("divq %2" : "+a"(a), "+d"(d) : "r"(3ull) : "cc");
    rt_check("arith64.div128", a == 0x5555555555555555ull && d == 1, "q %#llx r %#llx",
             (unsigned long long)a, (unsigned long long)d);
    int64_t q = -9, r = -1;
    __asm__ volatile("cqo\n\tidivq %2" : "+a"(q), "=d"(r) : "r"(4ll) : "cc");
    rt_check("arith64.idiv", q == -2 && r == -1, "q %lld r %lld", (long long)q, (long long)r);
    uint64_t v = 0x0123456789abcdefull;
    __asm__ volatile("bswap %0" : "+r"(v));
    rt_check_eq("arith64.bswap", v, 0xefcdab8967452301ull);
    uint32_t low = 0xffffffff;
    uint64_t wide = 0xdeadbeef00000000ull;
    __asm__ volatile("mov %1, %k0" : "+r"(wide) : "r"(low));
    rt_check_eq("arith64.mov32_zero_extends", wide, 0xffffffffull);
    int64_t sx;
    __asm__ volatile("movslq %1, %0" : "=r"(sx) : "r"(-5));
    rt_check_eq("arith64.movsxd", (uint64_t)sx, (uint64_t)-5ll);
    uint64_t shr = 0x8000000000000000ull;
    __asm__ volatile("sarq $63, %0" : "+r"(shr) :: "cc");
    rt_check_eq("arith64.sar63", shr, ~0ull);
    uint64_t rip;
    __asm__ volatile("lea 0(%%rip), %0" : "=r"(rip));
    rt_check("arith64.rip_relative", rip > (uintptr_t)test_long_mode - 0x10000 && rip < (uintptr_t)test_long_mode + 0x10000,
             "lea rip %#llx", (unsigned long long)rip);

    static volatile __int128 m16 __attribute__((aligned(16)));
    m16 = 0;
    uint64_t lo = 0x1111111111111111ull, hi = 0x2222222222222222ull, elo = 0, ehi = 0;
    unsigned long fl;
    __asm__ volatile("lock cmpxchg16b %0\n\tpushf\n\tpop %3"
                     : "+m"(m16), "+a"(elo), "+d"(ehi), "=r"(fl) : "b"(lo), "c"(hi) : "cc", "memory");
    rt_check("arith64.cmpxchg16b", (fl & FL_ZF) && (uint64_t)m16 == lo && (uint64_t)(m16 >> 64) == hi,
             "zf %lu", fl & FL_ZF);

    expect_trap("exception.gp_noncanonical", t_noncanon, 13, 0, (uintptr_t)t_noncanon_insn);
    expect_trap("exception.ud_invalid_in_64bit", t_ud_lm, 6, 0, (uintptr_t)t_ud_lm);

    uint64_t efer = rt_rdmsr(MSR_EFER);
    rt_check("modes.efer_lma", (efer & 0x500) == 0x500, "EFER %#llx (want LME and LMA)", (unsigned long long)efer);
}

/* ---------------- IST ---------------- */

static volatile uintptr_t ist_frame;

static void ist_handler(struct rt_frame *f)
{
    ist_frame = (uintptr_t)f;
}

static void test_ist(void)
{
    rt_set_handler(0x81, ist_handler);
    rt_set_gate(0x81, 3, 0);
    __asm__ volatile("int $0x81" ::: "memory");
    uintptr_t lo = (uintptr_t)rt_ist_stacks[2], hi = lo + sizeof rt_ist_stacks[2];
    rt_check("idt.ist_stack_used", ist_frame >= lo && ist_frame < hi, "frame at %#lx, IST3 is %#lx-%#lx",
             (unsigned long)ist_frame, (unsigned long)lo, (unsigned long)hi);
    /* the CPU aligns RSP to 16 before pushing on an IST stack: the frame ends at the stack top */
    struct rt_frame *f = (struct rt_frame *)ist_frame;
    rt_check("idt.ist_frame_at_top", (uintptr_t)(&f->ss + 1) == hi, "frame end %#lx top %#lx",
             (unsigned long)(uintptr_t)(&f->ss + 1), (unsigned long)hi);
    rt_set_gate(0x81, 0, 0);
    ist_frame = 0;
    __asm__ volatile("int $0x81" ::: "memory");
    rt_check("idt.no_ist_same_stack", !(ist_frame >= lo && ist_frame < hi), "frame at %#lx", (unsigned long)ist_frame);
    rt_set_handler(0x81, NULL);
}

/* ---------------- SYSCALL / SYSRET ---------------- */

#define MSR_STAR  0xC0000081
#define MSR_LSTAR 0xC0000082
#define MSR_FMASK 0xC0000084

volatile uint64_t sc_count, sc_rcx[2], sc_r11[2], sc_rax[2], sc_cs[2], sc_ss[2];
uint8_t sc_stack[4096] __attribute__((aligned(16)));
void syscall_entry(void), syscall_user(void), syscall_user_ret1(void), syscall_user_ret2(void);
void syscall_second(void);

/* User code: two SYSCALLs; the first returns with SYSRET, the second ends the test. */
__asm__(".pushsection .text\n"
        "syscall_user:\n"
        " mov $0x1234, %eax\n"
        " syscall\n"
        "syscall_user_ret1:\n"
        " add $1, %eax\n"
        " syscall\n"
        "syscall_user_ret2:\n"
        " ud2\n"
        "syscall_entry:\n"
        " mov %rsp, %r9\n"                 /* user RSP; SYSCALL does not switch stacks */
        " mov $sc_stack + 4096, %rsp\n"
        " mov sc_count, %r8\n"
        " mov %rcx, sc_rcx(,%r8,8)\n"
        " mov %r11, sc_r11(,%r8,8)\n"
        " mov %rax, sc_rax(,%r8,8)\n"
        " mov %cs, %rdx\n"
        " mov %rdx, sc_cs(,%r8,8)\n"
        " mov %ss, %rdx\n"
        " mov %rdx, sc_ss(,%r8,8)\n"
        " incq sc_count\n"
        " cmpq $2, sc_count\n"
        " je syscall_second\n"
        " mov %r9, %rsp\n"
        " sysretq\n"
        ".popsection\n");

void syscall_second(void)
{
    rt_catch_exit(0x100);
}

static uint8_t sc_user_stack[4096] __attribute__((aligned(16)));

static void test_syscall(void)
{
    uint64_t efer = rt_rdmsr(MSR_EFER);
    rt_wrmsr(MSR_EFER, efer | EFER_SCE);
    rt_wrmsr(MSR_STAR, ((uint64_t)SEL_UCODE32 << 48) | ((uint64_t)SEL_KCODE64 << 32));
    rt_wrmsr(MSR_LSTAR, (uintptr_t)syscall_entry);
    rt_wrmsr(MSR_FMASK, FL_TF | FL_DF | 0x200);
    sc_count = 0;
    struct rt_trap t;
    unsigned int v = rt_run_user(syscall_user, sc_user_stack + sizeof sc_user_stack, &t);
    rt_check("syscall.round_trip", v == 0x100 && sc_count == 2, "ended with vector %u after %llu syscalls", v,
             (unsigned long long)sc_count);
    rt_check("syscall.rcx_is_return_rip", sc_rcx[0] == (uintptr_t)syscall_user_ret1 &&
             sc_rcx[1] == (uintptr_t)syscall_user_ret2, "rcx %#llx %#llx",
             (unsigned long long)sc_rcx[0], (unsigned long long)sc_rcx[1]);
    /* ring 3 started with RFLAGS = 0x2; `add $1` to 0x1234 then leaves PF set */
    rt_check("syscall.r11_is_rflags", sc_r11[0] == 0x2 && sc_r11[1] == (0x2 | FL_PF), "r11 %#llx %#llx",
             (unsigned long long)sc_r11[0], (unsigned long long)sc_r11[1]);
    rt_check("syscall.kernel_selectors", sc_cs[0] == SEL_KCODE64 && sc_ss[0] == SEL_KCODE64 + 8,
             "cs %#llx ss %#llx", (unsigned long long)sc_cs[0], (unsigned long long)sc_ss[0]);
    rt_check("syscall.sysret_resumed_user", sc_rax[0] == 0x1234 && sc_rax[1] == 0x1235, "rax %#llx %#llx",
             (unsigned long long)sc_rax[0], (unsigned long long)sc_rax[1]);
    rt_wrmsr(MSR_EFER, efer);
}

/* ---------------- paging structures: 4-level walk ---------------- */

static void test_four_level(void)
{
    uint64_t cr3 = rt_read_cr3();
    uint64_t cr4 = rt_read_cr4();
    rt_check("paging.long_mode_pae", (cr4 & 0x20) && (rt_read_cr0() & 0x80000000ul), "cr0 %#lx cr4 %#llx",
             rt_read_cr0(), (unsigned long long)cr4);
    rt_check_eq("paging.cr3_is_pml4", cr3 & ~0xfffull, (uintptr_t)rt_pml4);
    /* Alias: map a new PML4 slot (512 GiB) to the same PDPT and read through it. */
    static volatile uint32_t probe = 0x600dcafe;
    uint64_t saved = rt_pml4[1];
    rt_pml4[1] = rt_pml4[0];
    rt_write_cr3(cr3);
    volatile uint32_t *alias = (volatile uint32_t *)((uintptr_t)&probe + (1ull << 39));
    uint32_t got = *alias;
    *alias = 0x12345678;
    rt_check("paging.pml4_alias", got == 0x600dcafe && probe == 0x12345678, "read %#x, then probe %#x", got, probe);
    rt_pml4[1] = saved;
    rt_write_cr3(cr3);
    struct rt_trap t;
    int faulted = rt_try(rd, (void *)alias, &t);
    rt_check("paging.pml4_unmapped_after_flush", faulted && t.vector == 14 && t.error_code == 0 &&
             t.cr2 == (uintptr_t)alias, "faulted %d vector %u err %#lx", faulted, t.vector, t.error_code);
}

/* ---------------- process-context identifiers ---------------- */

static struct { uint64_t pcid, addr; } __attribute__((aligned(16))) pcid_desc;
static unsigned long pcid_type;

static void do_invpcid(void *unused)
{
    (void)unused;
    __asm__ volatile("invpcid %0, %1" :: "m"(pcid_desc), "r"(pcid_type) : "memory");
}

static void set_cr4(void *v) { rt_write_cr4((unsigned long)v); }

static void test_pcid(void)
{
    uint32_t a, b, c, d;
    rt_cpuid(1, 0, &a, &b, &c, &d);
    if (!(c & (1u << 17))) {
        rt_skip("paging.pcid.all", "no PCID");
        return;
    }
    uint64_t cr3 = rt_read_cr3(), cr4 = rt_read_cr4();
    struct rt_trap t;
    /* Turning PCIDs on needs PCID 0 in CR3. */
    rt_write_cr3(cr3 | 5);
    int gp = rt_try(set_cr4, (void *)(uintptr_t)(cr4 | (1ul << 17)), &t) && t.vector == 13;
    rt_write_cr3(cr3);
    rt_check("paging.pcid.enable_needs_pcid0", gp && !(rt_read_cr4() & (1ul << 17)), "gp %d cr4 %#lx", gp, rt_read_cr4());
    rt_write_cr4(cr4 | (1ul << 17));

    /* PCID 9, bit 63 set (keep its translations): the walk still starts at the PML4; bit 63 is not stored. */
    static volatile uint32_t probe = 0x1234;
    uint64_t saved = rt_pml4[1];
    rt_pml4[1] = rt_pml4[0];
    rt_write_cr3(cr3 | 9 | (1ull << 63));
    volatile uint32_t *alias = (volatile uint32_t *)((uintptr_t)&probe + (1ull << 39));
    uint32_t got = *alias;
    uint64_t now = rt_read_cr3();
    rt_check("paging.pcid.cr3", got == 0x1234 && now == (cr3 | 9), "read %#x cr3 %#llx", got, (unsigned long long)now);

    /* INVPCID of one address in the current PCID drops the translation that went away. */
    rt_pml4[1] = saved;
    pcid_type = 0, pcid_desc.pcid = 9, pcid_desc.addr = (uintptr_t)alias;
    do_invpcid(0);
    int faulted = rt_try(rd, (void *)alias, &t) && t.vector == 14;
    rt_check("paging.invpcid.address", faulted && t.cr2 == (uintptr_t)alias, "faulted %d cr2 %#lx", faulted, t.cr2);

    /* #GP for reserved descriptor bits, a non-canonical type-0 address and an unknown type. */
    pcid_type = 0, pcid_desc.pcid = 1ull << 12, pcid_desc.addr = 0;
    int r1 = rt_try(do_invpcid, 0, &t) && t.vector == 13;
    pcid_desc.pcid = 9, pcid_desc.addr = 1ull << 47;
    int r2 = rt_try(do_invpcid, 0, &t) && t.vector == 13;
    pcid_type = 4, pcid_desc.addr = 0;
    int r3 = rt_try(do_invpcid, 0, &t) && t.vector == 13;
    rt_check("paging.invpcid.gp", r1 && r2 && r3, "reserved %d non-canonical %d type 4 %d", r1, r2, r3);

    rt_write_cr3(cr3);
    rt_write_cr4(cr4);
}

void guest_main(void)
{
    test_arith();
    test_long_mode();
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
    test_ist();
    test_syscall();
    test_paging();
    test_four_level();
    test_pcid();
    test_tsx_and_invlpg();
    test_realmode();
}
