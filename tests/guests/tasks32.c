/* Hardware task switches: JMP to a TSS, CALL through a task gate and IRET with NT back, INT n
 * through an IDT task gate, #DF through a task gate, a 16-bit TSS, and the #GP/#TS/#NP checks. */
#include "sysarch.h"

RT_GUEST("tasks32");

struct tss32 {
    uint32_t prev, esp0, ss0, esp1, ss1, esp2, ss2, cr3, eip, eflags;
    uint32_t eax, ecx, edx, ebx, esp, ebp, esi, edi;
    uint32_t es, cs, ss, ds, fs, gs, ldt;
    uint16_t trap, iomap;
} __attribute__((packed));

struct tss16 {
    uint16_t prev, sp0, ss0, sp1, ss1, sp2, ss2, ip, flags;
    uint16_t ax, cx, dx, bx, sp, bp, si, di;
    uint16_t es, cs, ss, ds, ldt;
} __attribute__((packed));

#define SEL_A     0x70   /* 32-bit TSS, entered by JMP */
#define SEL_B     0x78   /* 32-bit TSS, entered by CALL/INT through task gates */
#define SEL_GATEB 0x80   /* task gate to SEL_B */
#define SEL_DF    0x88   /* 32-bit TSS of the #DF task */
#define SEL_T16   0x90   /* 16-bit TSS */
#define SEL_C16   0x98   /* 16-bit code segment of the 16-bit task */
#define SEL_SMALL 0xA0   /* TSS descriptor with a limit below 0x67 */
#define SEL_NP    0xA8   /* TSS descriptor not present */
#define VEC_TASK  0x41   /* IDT task gate to SEL_B */

struct tss32 tss_a, tss_b, tss_df, tss_small;
struct tss16 tss_16;
static uint8_t stack_a[4096] __attribute__((aligned(16)));
static uint8_t stack_b[4096] __attribute__((aligned(16)));
static uint8_t stack_df[4096] __attribute__((aligned(16)));
static struct tss32 *tss_main;

volatile uint32_t seen_eax, seen_tr, seen_flags, seen_link, seen_err, seen_main_busy, seen_runs;
uint8_t *idt_bytes;

extern char task_a_entry[], task_a_resume[], task_b_entry[], task_df_entry[], task16_start[], task16_end[];
void task_body(void);
void task_df_body(void);

__asm__(
    ".text\n"
    "task_a_entry:\n"
    "  mov %eax, seen_eax\n"
    "  call task_body\n"
    "  ljmp $0x48, $0\n"          /* back to the main task (SEL_TSS) */
    "task_a_resume:\n"
    "  jmp task_a_entry\n"
    "task_b_entry:\n"
    "  mov %eax, seen_eax\n"
    "  call task_body\n"
    "  iret\n"                    /* NT is set: back to the task in the link field */
    "  jmp task_b_entry\n"
    "task_df_entry:\n"
    "  pop %eax\n"                /* #DF's error code, pushed on this task's stack */
    "  mov %eax, seen_err\n"
    "  call task_df_body\n"
    "  iret\n"
    "  jmp task_df_entry\n"
    ".code16\n"
    "task16_start:\n"
    "  mov $0x5678, %ax\n"
    "  ljmp $0x48, $0\n"
    "task16_end:\n"
    ".code32\n");

void task_body(void)
{
    seen_tr = sa_str();
    seen_flags = (uint32_t)rt_read_flags();
    struct tss32 *self = seen_tr == SEL_A ? &tss_a : &tss_b;
    seen_link = self->prev;
    seen_main_busy = (uint32_t)sa_busy(SEL_TSS);
    seen_runs++;
}

void task_df_body(void)
{
    seen_tr = sa_str();
    seen_link = tss_df.prev;
    idt_bytes[13 * 8 + 5] |= 0x80;   /* the #GP gate is present again */
    seen_runs++;
}

static void init_tss(struct tss32 *t, void *entry, uint8_t *stack_top)
{
    memset(t, 0, sizeof *t);
    t->eip = (uint32_t)(uintptr_t)entry;
    t->esp = (uint32_t)(uintptr_t)stack_top;
    t->eflags = 2;
    t->cs = SEL_KCODE32;
    t->ss = t->ds = t->es = SEL_KDATA;
    t->cr3 = (uint32_t)rt_read_cr3();
    t->eax = 0xA11CE;
    t->iomap = sizeof *t;
}

static void set_tss(uint16_t sel, void *t, uint32_t limit, int is32)
{
    sa_gdt[sel / 8] = sa_desc((uintptr_t)t, limit, is32 ? 0x89 : 0x81, 0);
}

static void jmp_a(void) { __asm__ volatile("ljmp $0x70, $0" ::: "memory"); }
static void call_gate_b(void) { __asm__ volatile("lcall $0x80, $0" ::: "memory"); }
static void int_gate_b(void) { __asm__ volatile("int $0x41" ::: "memory"); }

static void t_jmp(void)
{
    init_tss(&tss_a, task_a_entry, stack_a + sizeof stack_a);
    set_tss(SEL_A, &tss_a, sizeof tss_a - 1, 1);
    seen_runs = 0;
    rt_write_cr0(rt_read_cr0() & ~8ul);
    jmp_a();
    unsigned long cr0 = rt_read_cr0();
    __asm__ volatile("clts");
    rt_check("tasks.jmp.ran", seen_runs == 1 && seen_tr == SEL_A, "runs %u tr %#x", seen_runs, seen_tr);
    rt_check_eq("tasks.jmp.registers_loaded", seen_eax, 0xA11CE);
    rt_check("tasks.jmp.nt_clear", !(seen_flags & 0x4000), "flags %#x", seen_flags);
    rt_check("tasks.jmp.old_not_busy", !seen_main_busy, "main task busy while A runs");
    rt_check_eq("tasks.jmp.back", sa_str(), SEL_TSS);
    rt_check("tasks.jmp.busy_bits", !sa_busy(SEL_A) && sa_busy(SEL_TSS), "A busy %d main busy %d", sa_busy(SEL_A),
             sa_busy(SEL_TSS));
    rt_check_eq("tasks.jmp.state_saved", tss_a.eip, (uint32_t)(uintptr_t)task_a_resume);
    rt_check("tasks.cr0_ts", (cr0 & 8) != 0, "cr0 %#lx", cr0);
}

static void t_call_iret(void)
{
    init_tss(&tss_b, task_b_entry, stack_b + sizeof stack_b);
    set_tss(SEL_B, &tss_b, sizeof tss_b - 1, 1);
    sa_gdt[SEL_GATEB / 8] = sa_gate(SEL_B, 0, 0x85, 0);
    seen_runs = 0;
    call_gate_b();
    __asm__ volatile("clts");
    rt_check("tasks.call_gate.ran", seen_runs == 1 && seen_tr == SEL_B, "runs %u tr %#x", seen_runs, seen_tr);
    rt_check("tasks.call_gate.nt_set", (seen_flags & 0x4000) != 0, "flags %#x", seen_flags);
    rt_check_eq("tasks.call_gate.link", seen_link, SEL_TSS);
    rt_check("tasks.call_gate.caller_busy", seen_main_busy != 0, "main task not busy while B runs");
    rt_check_eq("tasks.iret_nt.back", sa_str(), SEL_TSS);
    rt_check("tasks.iret_nt.busy_bits", !sa_busy(SEL_B) && sa_busy(SEL_TSS), "B busy %d main busy %d",
             sa_busy(SEL_B), sa_busy(SEL_TSS));
    rt_check("tasks.iret_nt.caller_nt_clear", !(rt_read_flags() & 0x4000), "flags %#lx", rt_read_flags());
    rt_check("tasks.iret_nt.saved_nt_clear", !(tss_b.eflags & 0x4000), "B's saved flags %#x", tss_b.eflags);
}

static void t_int_gate(void)
{
    init_tss(&tss_b, task_b_entry, stack_b + sizeof stack_b);
    set_tss(SEL_B, &tss_b, sizeof tss_b - 1, 1);
    uint64_t *idt = sa_idt_base();
    uint64_t saved = idt[VEC_TASK];
    idt[VEC_TASK] = sa_gate(SEL_B, 0, 0x85, 0);
    seen_runs = 0;
    int_gate_b();
    __asm__ volatile("clts");
    idt[VEC_TASK] = saved;
    rt_check("tasks.int_gate.ran", seen_runs == 1 && seen_tr == SEL_B && (seen_flags & 0x4000), "runs %u tr %#x flags %#x",
             seen_runs, seen_tr, seen_flags);
    rt_check_eq("tasks.int_gate.link", seen_link, SEL_TSS);
    rt_check_eq("tasks.int_gate.back", sa_str(), SEL_TSS);
}

static void bad_selector_load(void *arg)
{
    (void)arg;
    __asm__ volatile("mov %0, %%ds" :: "r"(0x1234) : "memory");
}

static void t_double_fault(void)
{
    init_tss(&tss_df, task_df_entry, stack_df + sizeof stack_df);
    set_tss(SEL_DF, &tss_df, sizeof tss_df - 1, 1);
    uint64_t *idt = sa_idt_base();
    idt_bytes = (uint8_t *)idt;
    uint64_t saved = idt[8];
    idt[8] = sa_gate(SEL_DF, 0, 0x85, 0);
    idt_bytes[13 * 8 + 5] &= 0x7F;   /* #GP's gate not present: #GP then #NP is a double fault */
    seen_runs = 0;
    seen_err = 0xFFFF;
    struct rt_trap t;
    int trapped = rt_try(bad_selector_load, NULL, &t);
    __asm__ volatile("clts");
    idt[8] = saved;
    idt_bytes[13 * 8 + 5] |= 0x80;
    rt_check("tasks.df_gate.ran", seen_runs == 1 && seen_tr == SEL_DF, "runs %u tr %#x", seen_runs, seen_tr);
    rt_check_eq("tasks.df_gate.error_code", seen_err, 0);
    rt_check_eq("tasks.df_gate.link", seen_link, SEL_TSS);
    rt_check("tasks.df_gate.restarted", trapped && t.vector == 13 && t.error_code == 0x1234,
             "trapped %d vector %u error %#lx", trapped, t.vector, t.error_code);
}

static void t_tss16(void)
{
    memset(&tss_16, 0, sizeof tss_16);
    tss_16.ip = 0;
    tss_16.flags = 2;
    tss_16.cs = SEL_C16;
    tss_16.ss = tss_16.ds = tss_16.es = SEL_KDATA;
    tss_16.sp = 0x800;
    set_tss(SEL_T16, &tss_16, sizeof tss_16 - 1, 0);
    sa_gdt[SEL_C16 / 8] = sa_desc((uintptr_t)task16_start, 0xFFFF, 0x9B, 0);
    __asm__ volatile("ljmp $0x90, $0" ::: "memory");
    __asm__ volatile("clts");
    rt_check_eq("tasks.tss16.ran", tss_16.ax, 0x5678);
    rt_check_eq("tasks.tss16.ip_saved", tss_16.ip, (uint16_t)(task16_end - task16_start));
    rt_check_eq("tasks.tss16.back", sa_str(), SEL_TSS);
    rt_check("tasks.tss16.busy_bits", !sa_busy(SEL_T16) && sa_busy(SEL_TSS), "16-bit busy %d main busy %d",
             sa_busy(SEL_T16), sa_busy(SEL_TSS));
}

static volatile uint32_t tbit_count, tbit_ip, tbit_dr6, tbit_tr;

static void tbit_db(struct rt_frame *f)
{
    unsigned long dr6;
    __asm__ volatile("mov %%dr6, %0" : "=r"(dr6));
    tbit_count++;
    tbit_ip = f->ip;
    tbit_dr6 = (uint32_t)dr6;
    tbit_tr = sa_str();
}

static void t_trap_bit(void)
{
    init_tss(&tss_a, task_a_entry, stack_a + sizeof stack_a);
    tss_a.trap = 1;
    set_tss(SEL_A, &tss_a, sizeof tss_a - 1, 1);
    __asm__ volatile("mov %0, %%dr6" :: "r"(0ul));
    rt_set_handler(1, tbit_db);
    tbit_count = 0;
    jmp_a();
    __asm__ volatile("clts");
    rt_set_handler(1, NULL);
    if (sa_on_qemu() && tbit_count == 0) {
        rt_skip("tasks.tss_trap_bit", "QEMU TCG ignores the TSS T bit");
        return;
    }
    rt_check("tasks.tss_trap_bit", tbit_count == 1 && tbit_ip == (uint32_t)(uintptr_t)task_a_entry &&
             (tbit_dr6 & 0x8000) && tbit_tr == SEL_A, "count %u ip %#x dr6 %#x tr %#x", tbit_count, tbit_ip,
             tbit_dr6, tbit_tr);
}

static void jmp_busy(void *a) { (void)a; __asm__ volatile("ljmp $0x48, $0" ::: "memory"); }
static void jmp_small(void *a) { (void)a; __asm__ volatile("ljmp $0xA0, $0" ::: "memory"); }
static void jmp_np(void *a) { (void)a; __asm__ volatile("ljmp $0xA8, $0" ::: "memory"); }

static void iret_nt_to_available(void *a)
{
    (void)a;
    tss_main->prev = SEL_A;   /* an available (not busy) TSS */
    __asm__ volatile("pushf; orl $0x4000, (%%esp); popf; iret" ::: "memory");
}

static void t_errors(void)
{
    sa_expect("tasks.busy_gp", jmp_busy, NULL, 13, SEL_TSS);
    init_tss(&tss_small, task_a_entry, stack_a + sizeof stack_a);
    set_tss(SEL_SMALL, &tss_small, 0x60, 1);
    sa_expect("tasks.limit_ts", jmp_small, NULL, 10, SEL_SMALL);
    set_tss(SEL_NP, &tss_small, sizeof tss_small - 1, 1);
    sa_gdt[SEL_NP / 8] &= ~(1ull << 47);
    sa_expect("tasks.not_present_np", jmp_np, NULL, 11, SEL_NP);
    init_tss(&tss_a, task_a_entry, stack_a + sizeof stack_a);
    set_tss(SEL_A, &tss_a, sizeof tss_a - 1, 1);
    uint32_t saved = tss_main->prev;
    sa_expect("tasks.iret_nt_link_ts", iret_nt_to_available, NULL, 10, SEL_A);
    tss_main->prev = saved;
    rt_check_eq("tasks.errors.still_main", sa_str(), SEL_TSS);
}

void guest_main(void)
{
    sa_gdt_init();
    uint64_t d = sa_gdt[SEL_TSS / 8];
    tss_main = (struct tss32 *)(uintptr_t)(((d >> 16) & 0xFFFFFF) | (((d >> 56) & 0xFF) << 24));
    tss_main->cr3 = (uint32_t)rt_read_cr3();
    t_jmp();
    t_call_iret();
    t_int_gate();
    t_double_fault();
    t_tss16();
    t_trap_bit();
    t_errors();
}
