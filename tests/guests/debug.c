/* Debug registers: DR0-DR3 instruction breakpoints (fault, RF steps over), data breakpoints
 * (write and read/write, lengths; trap after the access), I/O breakpoints (CR4.DE), DR6 status
 * bits, single-step (BS), general detect (BD, GD cleared), MOV DR checks (#UD for DR4/5 with
 * CR4.DE, DR4/5 aliasing DR6/7 without it, #GP from ring 3, reserved DR6/DR7 bits), IA32_DEBUGCTL
 * (BTF single-stepping on branches), #DB held back by MOV SS, and software interrupts (INT n, INT3,
 * INTO, INT1) from rings 0 and 3 against gate DPL and presence, with their error codes (EXT for
 * INT1 and exceptions). Built as debug (64) and debug32. */
#include "sysarch.h"

RT_GUEST("debug");

#ifdef __x86_64__
#define SPR "rsp"
#else
#define SPR "esp"
#endif
#define CR4_DE 0x8ul
#define RF 0x10000ul
#define DR6_BS 0x4000ul
#define DR6_BD 0x2000ul
#define DR7_GD 0x2000ul

volatile uint32_t watch[4] __attribute__((aligned(16)));
static volatile unsigned long db_count, db_ip, db_dr6, db_dr7;
static volatile int db_set_rf;
static uint8_t user_stack[4096] __attribute__((aligned(16)));

extern char bp_target[], data_write_insn[], data_write_next[], data_read_insn[], data_read_next[];
extern char io_out_next[], gd_insn[], step_start[];
unsigned long bp_target_fn(void);
void data_write_fn(void);
void data_read_fn(void);
void io_out_fn(void);
void user_mov_dr(void);
unsigned long gd_fn(void);

#ifdef __x86_64__
__asm__(
    ".text\n"
    "bp_target_fn:\n"
    "bp_target:\n  mov $42, %eax\n  ret\n"
    "data_write_fn:\n"
    "data_write_insn:\n  movl $5, watch+4(%rip)\n"
    "data_write_next:\n  ret\n"
    "data_read_fn:\n"
    "data_read_insn:\n  mov watch+4(%rip), %eax\n"
    "data_read_next:\n  ret\n"
    "gd_fn:\n"
    "gd_insn:\n  mov %dr0, %rax\n  ret\n"
    "user_mov_dr:\n  mov %dr7, %rax\n  ret\n");
#else
__asm__(
    ".text\n"
    "bp_target_fn:\n"
    "bp_target:\n  mov $42, %eax\n  ret\n"
    "data_write_fn:\n"
    "data_write_insn:\n  movl $5, watch+4\n"
    "data_write_next:\n  ret\n"
    "data_read_fn:\n"
    "data_read_insn:\n  mov watch+4, %eax\n"
    "data_read_next:\n  ret\n"
    "gd_fn:\n"
    "gd_insn:\n  mov %dr0, %eax\n  ret\n"
    "user_mov_dr:\n  mov %dr7, %eax\n  ret\n");
#endif
__asm__(
    ".text\n"
    "io_out_fn:\n  mov $0x5a, %al\n  outb %al, $0x80\n"
    "io_out_next:\n  ret\n");

#define DR_RW(v, name) \
    static inline unsigned long read_##name(void) { unsigned long x; __asm__ volatile("mov %%" #name ", %0" : "=r"(x)); return x; } \
    static inline void write_##name(unsigned long x) { __asm__ volatile("mov %0, %%" #name :: "r"(x) : "memory"); }
DR_RW(0, dr0)
DR_RW(1, dr1)
DR_RW(2, dr2)
DR_RW(3, dr3)
DR_RW(6, dr6)
DR_RW(7, dr7)

static volatile unsigned long db_cx, db_di;

static void db_handler(struct rt_frame *f)
{
    db_count++;
#ifdef __x86_64__
    db_cx = f->rcx;
    db_di = f->rdi;
#else
    db_cx = f->ecx;
    db_di = f->edi;
#endif
    db_ip = f->ip;
    db_dr6 = read_dr6();
    db_dr7 = read_dr7();
    write_dr6(0);
    if (db_set_rf)
        f->flags |= RF;
}

static void reset(int set_rf)
{
    write_dr7(0);
    /* B0-B3 may report a matching breakpoint even when it is not enabled: keep the others away. */
    write_dr0(0);
    write_dr1(0);
    write_dr2(0);
    write_dr3(0);
    write_dr6(0);
    db_count = 0;
    db_ip = 0;
    db_dr6 = 0;
    db_set_rf = set_rf;
}

/* DR7 enable for breakpoint n: L bit, R/W and LEN fields. */
static unsigned long dr7_bp(int n, unsigned int rw, unsigned int len)
{
    return (1ul << (2 * n)) | ((unsigned long)rw << (16 + 4 * n)) | ((unsigned long)len << (18 + 4 * n));
}

static void t_exec(void)
{
    reset(1);
    write_dr0((unsigned long)bp_target);
    write_dr7(dr7_bp(0, 0, 0));
    unsigned long r = bp_target_fn();
    write_dr7(0);
    rt_check("debug.exec.fault_once", db_count == 1, "count %lu", db_count);
    rt_check_eq("debug.exec.ip", db_ip, (unsigned long)bp_target);
    rt_check_eq("debug.exec.dr6_b0", db_dr6 & 0xF, 1);
    rt_check_eq("debug.exec.rf_resumes", r, 42);

    reset(1);
    write_dr3((unsigned long)bp_target);
    write_dr7(dr7_bp(3, 0, 0) & ~0xFFul);   /* R/W and LEN set, L3/G3 clear: disabled */
    bp_target_fn();
    rt_check("debug.exec.disabled", db_count == 0, "count %lu", db_count);

    reset(1);
    write_dr3((unsigned long)bp_target);
    write_dr7(2ul << 6);   /* G3 */
    bp_target_fn();
    write_dr7(0);
    rt_check("debug.exec.global_enable", db_count == 1 && (db_dr6 & 0xF) == 8, "count %lu dr6 %#lx", db_count, db_dr6);
}

static void t_data(void)
{
    reset(0);
    write_dr1((unsigned long)&watch[1]);
    write_dr7(dr7_bp(1, 1, 3));   /* write, 4 bytes */
    data_read_fn();
    rt_check("debug.data.write_bp_ignores_read", db_count == 0, "count %lu", db_count);
    data_write_fn();
    write_dr7(0);
    rt_check("debug.data.write_trap", db_count == 1, "count %lu", db_count);
    rt_check_eq("debug.data.write_ip_after", db_ip, (unsigned long)data_write_next);
    rt_check_eq("debug.data.write_dr6_b1", db_dr6 & 0xF, 2);
    rt_check_eq("debug.data.write_done", watch[1], 5);

    reset(0);
    write_dr2((unsigned long)&watch[1]);
    write_dr7(dr7_bp(2, 3, 3));   /* read/write, 4 bytes */
    data_read_fn();
    write_dr7(0);
    rt_check("debug.data.rw_read_trap", db_count == 1 && db_ip == (unsigned long)data_read_next && (db_dr6 & 0xF) == 4,
             "count %lu ip %#lx dr6 %#lx", db_count, db_ip, db_dr6);

    /* A 1-byte breakpoint inside the dword the instruction writes. */
    reset(0);
    write_dr0((unsigned long)&watch[1] + 2);
    write_dr7(dr7_bp(0, 1, 0));
    data_write_fn();
    watch[2] = 7;
    write_dr7(0);
    rt_check("debug.data.len1_overlap", db_count == 1 && (db_dr6 & 0xF) == 1, "count %lu dr6 %#lx", db_count, db_dr6);

    /* REP STOSD: the trap follows the iteration that wrote the watched dword, at the instruction. */
    reset(0);
    write_dr1((unsigned long)&watch[1]);
    write_dr7(dr7_bp(1, 1, 3));
    unsigned long cx = 4, di = (unsigned long)&watch[0], ip;
    __asm__ volatile("lea 1f, %2\n\tcld\n1:\trep stosl" : "+c"(cx), "+D"(di), "=&r"(ip) : "a"(0x77) : "memory");
    write_dr7(0);
    rt_check("debug.data.rep_iteration", db_count == 1 && db_ip == ip && db_cx == 2 && db_di == (unsigned long)&watch[2] &&
             cx == 0 && watch[3] == 0x77, "count %lu ip %#lx (want %#lx) ecx %#lx edi %#lx, after ecx %#lx",
             db_count, db_ip, ip, db_cx, db_di, cx);
}

static void t_io(void)
{
    unsigned long cr4 = rt_read_cr4();
    rt_write_cr4(cr4 | CR4_DE);
    reset(0);
    write_dr2(0x80);
    write_dr7(dr7_bp(2, 2, 0));
    io_out_fn();
    write_dr7(0);
    rt_write_cr4(cr4);
    rt_check("debug.io.trap", db_count == 1 && db_ip == (unsigned long)io_out_next && (db_dr6 & 0xF) == 4,
             "count %lu ip %#lx dr6 %#lx", db_count, db_ip, db_dr6);
}

static void t_single_step(void)
{
    reset(0);
    __asm__ volatile("pushf\n\t"
                     "or" ASZ " $0x100, (%%" SPR ")\n\t"
                     "popf\n\t"
                     "nop\n\tnop\n\tnop\n\t"
                     "pushf\n\t"
                     "and" ASZ " $~0x100, (%%" SPR ")\n\t"
                     "popf\n\t" ::: "memory", "cc");
    /* nop, nop, nop, pushf, and, and the popf that clears TF each trap. */
    rt_check_eq("debug.step.count", db_count, 6);
    rt_check("debug.step.dr6_bs", (db_dr6 & (DR6_BS | 0xF)) == DR6_BS, "dr6 %#lx", db_dr6);
}

static void t_single_step_mov_ss(void)
{
    reset(0);
    unsigned long scratch;
    __asm__ volatile("pushf\n\t"
                     "or" ASZ " $0x100, (%%" SPR ")\n\t"
                     "popf\n\t"
                     "mov %%ss, %0\n\t"
                     "mov %0, %%ss\n\t"
                     "nop\n\t"
                     "pushf\n\t"
                     "and" ASZ " $~0x100, (%%" SPR ")\n\t"
                     "popf\n\t" : "=&r"(scratch) :: "memory", "cc");
    /* MOV SS holds its trap back until the instruction after it: one #DB covers both. */
    rt_check_eq("debug.step.mov_ss_shadow", db_count, 5);
}

static void int50_handler(struct rt_frame *f)
{
    (void)f;
}

static void t_single_step_int(void)
{
    reset(0);
    rt_set_handler(0x50, int50_handler);
    unsigned long first_ip = 0, after_int;
    __asm__ volatile("lea 1f, %1\n\t"
                     "pushf\n\t"
                     "or" ASZ " $0x100, (%%" SPR ")\n\t"
                     "popf\n\t"
                     "int $0x50\n"
                     "1:\tnop\n\t"
                     "pushf\n\t"
                     "and" ASZ " $~0x100, (%%" SPR ")\n\t"
                     "popf\n\t" : "=m"(first_ip), "=&r"(after_int) :: "memory", "cc");
    rt_set_handler(0x50, NULL);
    /* INT n clears TF for its handler, and no single-step trap follows the INT itself: the next
     * trap comes after the NOP the handler returned to (then pushf, and, popf). */
    rt_check("debug.step.int_n", db_count == 4, "count %lu last ip %#lx (int returns to %#lx)", db_count, db_ip,
             after_int);
}

static void t_general_detect(void)
{
    reset(0);
    write_dr0(0x1234);
    write_dr7(DR7_GD);
    unsigned long v = gd_fn();
    unsigned long dr7 = read_dr7();
    if (sa_on_qemu() && db_count == 0) {
        write_dr7(0);
        const char *names[] = { "debug.gd.fault", "debug.gd.dr6_bd", "debug.gd.cleared", "debug.gd.then_executes" };
        for (unsigned int i = 0; i < 4; i++)
            rt_skip(names[i], "QEMU TCG does not implement DR7.GD");
        return;
    }
    rt_check("debug.gd.fault", db_count == 1 && db_ip == (unsigned long)gd_insn, "count %lu ip %#lx", db_count, db_ip);
    rt_check("debug.gd.dr6_bd", (db_dr6 & DR6_BD) != 0, "dr6 %#lx", db_dr6);
    rt_check("debug.gd.cleared", !(db_dr7 & DR7_GD) && !(dr7 & DR7_GD), "dr7 in handler %#lx after %#lx", db_dr7, dr7);
    rt_check_eq("debug.gd.then_executes", v, 0x1234);
}

static void mov_dr4(void *a)
{
    (void)a;
    unsigned long x;
    __asm__ volatile("mov %%dr4, %0" : "=r"(x));
}

static void t_mov_dr_checks(void)
{
    write_dr6(0);
    unsigned long dr6 = read_dr6();
    rt_check_eq("debug.dr6_fixed_bits", dr6 & 0xFFFFFFFFul, 0xFFFF0FF0ul);
    write_dr7(0);
    rt_check_eq("debug.dr7_fixed_bits", read_dr7() & 0xFFFFFFFFul, 0x400ul);

    unsigned long cr4 = rt_read_cr4();
    rt_write_cr4(cr4 & ~CR4_DE);
    unsigned long dr4;
    __asm__ volatile("mov %%dr4, %0" : "=r"(dr4));
    rt_check_eq("debug.dr4_aliases_dr6", dr4 & 0xFFFFFFFFul, read_dr6() & 0xFFFFFFFFul);
    rt_write_cr4(cr4 | CR4_DE);
    sa_expect("debug.dr4_ud_with_de", mov_dr4, NULL, 6, 0);
    rt_write_cr4(cr4);

    struct rt_trap t;
    unsigned int v = rt_run_user(user_mov_dr, user_stack + sizeof user_stack, &t);
    rt_check("debug.mov_dr_ring3_gp", v == 13 && t.error_code == 0, "vector %u error %#lx", v, t.error_code);
}

static volatile unsigned long ud_flags;

static void ud_handler(struct rt_frame *f)
{
    ud_flags = f->flags;
    f->ip += 2;
}

static void t_fault_rf(void)
{
    rt_set_handler(6, ud_handler);
    ud_flags = 0;
    __asm__ volatile("ud2" ::: "memory");
    rt_set_handler(6, NULL);
    if (sa_on_qemu() && !(ud_flags & RF)) {
        rt_skip("debug.fault_pushes_rf", "QEMU TCG does not set RF in the saved flags of a fault");
        return;
    }
    rt_check("debug.fault_pushes_rf", (ud_flags & RF) != 0, "saved flags %#lx", ud_flags);
}

static void mov_dr4_write(void *a)
{
    (void)a;
    __asm__ volatile("mov %0, %%dr4" :: "r"(0ul));
}

#ifdef __x86_64__
static void dr7_high_write(void *a)
{
    (void)a;
    __asm__ volatile("mov %0, %%dr7" :: "r"(1ul << 32));
}

static void dr6_high_write(void *a)
{
    (void)a;
    __asm__ volatile("mov %0, %%dr6" :: "r"(1ul << 40));
}
#endif

static void t_dr_reserved_bits(void)
{
    /* DR7 bit 10 reads 1; bits 11 (RTM, not advertised), 12, 14 and 15 read 0. */
    write_dr7(0xD800ul);
    rt_check_eq("debug.dr7_reserved_read_0", read_dr7(), 0x400ul);
    write_dr7(0);
    /* DR6: B0-B3, BD, BS, BT are writable; bits 4-11 and 16-31 read 1, bit 12 reads 0. */
    write_dr6(0xFFFFFFFFul);
    rt_check_eq("debug.dr6_writable_bits", read_dr6(), 0xFFFFEFFFul);
    write_dr6(0);
    unsigned long cr4 = rt_read_cr4();
    rt_write_cr4(cr4 & ~CR4_DE);
    unsigned long dr5;
    write_dr7(0x401ul);
    __asm__ volatile("mov %%dr5, %0" : "=r"(dr5));
    write_dr7(0);
    rt_check_eq("debug.dr5_aliases_dr7", dr5, 0x401ul);
    rt_write_cr4(cr4 | CR4_DE);
    sa_expect("debug.dr4_write_ud_with_de", mov_dr4_write, NULL, 6, 0);
    rt_write_cr4(cr4);
#ifdef __x86_64__
    sa_expect("debug.dr7_high_bits_gp", dr7_high_write, NULL, 13, 0);
    sa_expect("debug.dr6_high_bits_gp", dr6_high_write, NULL, 13, 0);
    write_dr0(0xFFFF800012345678ul);
    rt_check_eq("debug.dr0_64bit", read_dr0(), 0xFFFF800012345678ul);
    write_dr0(0);
#endif
}

#define MSR_DEBUGCTL 0x1D9
#define DEBUGCTL_BTF 0x2ul

static void wrmsr_debugctl(void *a)
{
    rt_wrmsr(MSR_DEBUGCTL, (uintptr_t)a);
}

static void t_debugctl(void)
{
    if (sa_on_qemu()) {
        rt_skip("debug.debugctl", "QEMU TCG has no IA32_DEBUGCTL");
        return;
    }
    rt_check_eq("debug.debugctl.reset", rt_rdmsr(MSR_DEBUGCTL), 0);
    struct rt_trap t;
    int trapped = rt_try(wrmsr_debugctl, (void *)DEBUGCTL_BTF, &t);
    rt_check("debug.debugctl.btf_writable", !trapped && rt_rdmsr(MSR_DEBUGCTL) == DEBUGCTL_BTF, "trap %d value %#llx",
             trapped, (unsigned long long)rt_rdmsr(MSR_DEBUGCTL));
    rt_wrmsr(MSR_DEBUGCTL, 0);
    /* Bits 2-5 and 16 up are reserved; no LBR stack exists to enable. */
    sa_expect("debug.debugctl.reserved_gp", wrmsr_debugctl, (void *)0x4ul, 13, 0);
    sa_expect("debug.debugctl.high_gp", wrmsr_debugctl, (void *)0x10000ul, 13, 0);

    /* BTF with TF: the first trap follows the taken JMP (not the NOPs before it); the #DB clears
     * BTF, so every instruction after it traps again (nop, pushf, and, popf). */
    reset(0);
    unsigned long target;
    rt_wrmsr(MSR_DEBUGCTL, DEBUGCTL_BTF);
    __asm__ volatile("lea 2f, %0\n\t"
                     "pushf\n\t"
                     "or" ASZ " $0x100, (%%" SPR ")\n\t"
                     "popf\n\t"
                     "nop\n\tnop\n\t"
                     "jmp 2f\n\t"
                     "nop\n"
                     "2:\tnop\n\t"
                     "pushf\n\t"
                     "and" ASZ " $~0x100, (%%" SPR ")\n\t"
                     "popf\n\t" : "=&r"(target) :: "memory", "cc");
    unsigned long ctl = (unsigned long)rt_rdmsr(MSR_DEBUGCTL);
    rt_wrmsr(MSR_DEBUGCTL, 0);
    rt_check("debug.debugctl.btf_steps_branches", db_count == 5 && (db_dr6 & DR6_BS) && ctl == 0,
             "count %lu (want 5) dr6 %#lx debugctl after %#lx", db_count, db_dr6, ctl);
    /* The first trap's address is gone (the handler records the last); step alone from the jump. */
    reset(0);
    rt_wrmsr(MSR_DEBUGCTL, DEBUGCTL_BTF);
    db_ip = 0;
    __asm__ volatile("pushf\n\t"
                     "or" ASZ " $0x100, (%%" SPR ")\n\t"
                     "popf\n\t"
                     "nop\n\t"
                     "jmp 3f\n\t"
                     "nop\n"
                     "3:\tpushf\n\t"
                     "and" ASZ " $~0x100, (%%" SPR ")\n\t"
                     "popf\n\t" ::: "memory", "cc");
    rt_wrmsr(MSR_DEBUGCTL, 0);
    rt_check("debug.debugctl.btf_count", db_count == 4, "count %lu (want 4: jmp, pushf, and, popf)", db_count);
    (void)target;
}

static volatile uint16_t ss_image;
static volatile unsigned long int51_count;
static void int51_handler(struct rt_frame *f)
{
    (void)f;
    int51_count++;
}

static unsigned long gate_offset(unsigned int v)
{
#ifdef __x86_64__
    uint64_t *g = (uint64_t *)sa_idt_base() + 2 * v;
    return (unsigned long)((g[0] & 0xFFFF) | ((g[0] >> 32) & 0xFFFF0000ull) | (g[1] << 32));
#else
    uint64_t *g = (uint64_t *)sa_idt_base() + v;
    return (unsigned long)((g[0] & 0xFFFF) | ((g[0] >> 32) & 0xFFFF0000ull));
#endif
}

static void t_mov_ss_data_breakpoint(void)
{
    uint16_t ss;
    __asm__ volatile("mov %%ss, %0" : "=r"(ss));
    ss_image = ss;
    /* A read breakpoint on MOV SS's source: the #DB waits until the next instruction has run. */
    reset(0);
    write_dr0((unsigned long)&ss_image);
    write_dr7(dr7_bp(0, 3, 1));
    unsigned long after;
    __asm__ volatile("lea 1f, %0\n\t"
                     "mov ss_image, %%ss\n\t"
                     "nop\n"
                     "1:" : "=&r"(after) :: "memory");
    write_dr7(0);
    rt_check("debug.mov_ss.data_bp_after_next", db_count == 1 && db_ip == after && (db_dr6 & 0xF) == 1,
             "count %lu ip %#lx (want %#lx) dr6 %#lx", db_count, db_ip, after, db_dr6);

    /* ... and when that instruction is INT n, the #DB is taken at the first instruction of its handler. */
    reset(0);
    int51_count = 0;
    rt_set_handler(0x51, int51_handler);
    write_dr0((unsigned long)&ss_image);
    write_dr7(dr7_bp(0, 3, 1));
    __asm__ volatile("mov ss_image, %%ss\n\t"
                     "int $0x51" ::: "memory");
    write_dr7(0);
    rt_set_handler(0x51, NULL);
    rt_check("debug.mov_ss.int_n_db_in_handler",
             db_count == 1 && int51_count == 1 && db_ip == gate_offset(0x51) && (db_dr6 & 0xF) == 1,
             "count %lu int %lu ip %#lx (want handler %#lx) dr6 %#lx", db_count, int51_count, db_ip, gate_offset(0x51),
             db_dr6);
}

/* ---- software interrupts against gate DPL and presence ---- */

static uint64_t *idt_gate(unsigned int v)
{
#ifdef __x86_64__
    return (uint64_t *)sa_idt_base() + 2 * v;
#else
    return (uint64_t *)sa_idt_base() + v;
#endif
}

static void gate_present(unsigned int v, int p)
{
    if (p)
        *idt_gate(v) |= 1ull << 47;
    else
        *idt_gate(v) &= ~(1ull << 47);
}

void u_int3(void), u_int52(void), u_icebp(void), u_into(void);
__asm__(".text\n"
        "u_int3:\n  int3\n  ret\n"
        "u_int52:\n  int $0x52\n  ret\n"
        "u_icebp:\n  .byte 0xf1\n  ret\n"
#ifndef __x86_64__
        "u_into:\n  mov $0x7f, %al\n  add $1, %al\n  into\n  ret\n"
#endif
        );

static void k_int3(void *a) { (void)a; __asm__ volatile("int3" ::: "memory"); }
static void k_int52(void *a) { (void)a; __asm__ volatile("int $0x52" ::: "memory"); }
static void k_icebp(void *a) { (void)a; __asm__ volatile(".byte 0xf1" ::: "memory"); }
static void k_ud2(void *a) { (void)a; __asm__ volatile("ud2" ::: "memory"); }
#ifdef __x86_64__
static void k_into(void *a) { (void)a; __asm__ volatile(".byte 0xce" ::: "memory"); }
#endif

static void expect_user_int(const char *name, void (*fn)(void), unsigned int vector, unsigned long error)
{
    struct rt_trap t;
    unsigned int v = rt_run_user(fn, user_stack + sizeof user_stack, &t);
    int has_error = vector == 13 || vector == 11;
    rt_check(name, v == vector && (!has_error || t.error_code == error), "vector %u error %#lx, want vector %u error %#lx",
             v, t.error_code, vector, error);
}

static void t_soft_int(void)
{
    rt_set_handler(1, NULL);
    /* From ring 3 a DPL-0 gate refuses INT n, INT3 and INTO with #GP(vector*8+2), EXT clear ... */
    rt_set_gate(3, 0, 0);
    rt_set_gate(0x52, 0, 0);
    rt_set_gate(4, 0, 0);
    rt_set_gate(1, 0, 0);
    expect_user_int("swint.int3_dpl0_from_ring3_gp", u_int3, 13, 3 * 8 + 2);
    expect_user_int("swint.int_n_dpl0_from_ring3_gp", u_int52, 13, 0x52 * 8 + 2);
#ifndef __x86_64__
    expect_user_int("swint.into_dpl0_from_ring3_gp", u_into, 13, 4 * 8 + 2);
#endif
    /* ... but not INT1, which is delivered like a hardware #DB. */
    expect_user_int("swint.icebp_ignores_dpl", u_icebp, 1, 0);
    /* DPL 3 lets them through. */
    rt_set_gate(3, 0, 3);
    rt_set_gate(0x52, 0, 3);
    expect_user_int("swint.int3_dpl3_from_ring3", u_int3, 3, 0);
    expect_user_int("swint.int_n_dpl3_from_ring3", u_int52, 0x52, 0);
#ifndef __x86_64__
    rt_set_gate(4, 0, 3);
    expect_user_int("swint.into_dpl3_from_ring3", u_into, 4, 0);
#else
    sa_expect("swint.into_ud_in_64bit", k_into, NULL, 6, 0);
#endif
    /* Not present: #NP(vector*8+2) after the DPL check passed; the DPL check comes first. */
    gate_present(0x52, 0);
    expect_user_int("swint.int_n_not_present_ring3_np", u_int52, 11, 0x52 * 8 + 2);
    sa_expect("swint.int_n_not_present_ring0_np", k_int52, NULL, 11, 0x52 * 8 + 2);
    rt_set_gate(0x52, 0, 0);
    gate_present(0x52, 0);
    expect_user_int("swint.int_n_not_present_dpl0_ring3_gp", u_int52, 13, 0x52 * 8 + 2);
    gate_present(0x52, 1);
    gate_present(3, 0);
    sa_expect("swint.int3_not_present_np", k_int3, NULL, 11, 3 * 8 + 2);
    gate_present(3, 1);
    /* INT1 and exceptions are external to the program: EXT is set in their error codes. */
    gate_present(1, 0);
    sa_expect("swint.icebp_not_present_np_ext", k_icebp, NULL, 11, 1 * 8 + 2 + 1);
    expect_user_int("swint.icebp_not_present_ring3_np_ext", u_icebp, 11, 1 * 8 + 2 + 1);
    gate_present(1, 1);
    gate_present(6, 0);
    sa_expect("swint.exception_not_present_np_ext", k_ud2, NULL, 11, 6 * 8 + 2 + 1);
    gate_present(6, 1);
    rt_set_gate(3, 0, 3);
    rt_set_gate(4, 0, 3);
    rt_set_gate(0x52, 0, 0);
    rt_set_handler(1, db_handler);
}

void guest_main(void)
{
    rt_set_handler(1, db_handler);
    t_exec();
    t_data();
    t_io();
    t_single_step();
    t_single_step_mov_ss();
    t_single_step_int();
    t_general_detect();
    t_mov_dr_checks();
    t_fault_rf();
    t_dr_reserved_bits();
    t_debugctl();
    t_mov_ss_data_breakpoint();
    t_soft_int();
    write_dr7(0);
    rt_set_handler(1, NULL);
}
