/* Debug registers: DR0-DR3 instruction breakpoints (fault, RF steps over), data breakpoints
 * (write and read/write, lengths; trap after the access), I/O breakpoints (CR4.DE), DR6 status
 * bits, single-step (BS), general detect (BD, GD cleared), MOV DR checks (#UD for DR4/5 with
 * CR4.DE, DR4/5 aliasing DR6/7 without it, #GP from ring 3). Built as debug (64) and debug32. */
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
    write_dr7(0);
    rt_set_handler(1, NULL);
}
