/* Segment limits outside 64-bit mode: pushes and pops against expand-up and expand-down stack
 * segments (#SS(0)), instruction fetch at the CS limit (#GP(0), incl. an instruction crossing it),
 * and every element of string instructions (#GP(0) at the first element past the limit, with the
 * registers of the elements done). INVLPG names a linear address without accessing it: no limit,
 * expand-down or null-selector check applies. */
#include "sysarch.h"

RT_GUEST("limits32");

#define SEL_SS_UP   0x70   /* DPL 3 expand-up data, limit 0xFFF */
#define SEL_SS_DOWN 0x78   /* DPL 3 expand-down data, limit 0xFFF (valid 0x1000..0xFFFFFFFF) */
#define SEL_CODE    0x80   /* ring-0 code at fetch_base with a small limit */
#define SEL_DATA    0x88   /* ring-0 data, limit 0xFFF */

static uint8_t stack_area[0x3000] __attribute__((aligned(4096)));
static uint8_t data_area[0x2000] __attribute__((aligned(4096)));
static uint8_t user_stack[4096] __attribute__((aligned(16)));

extern char push_up_insn[], pop_up_insn[], push_down_insn[], fetch_base[], fetch_mov[], fetch_ret[];
void push_up_ok(void);
void push_up(void);
void pop_up(void);
void push_down(void);
void push_down_ok(void);

__asm__(
    ".text\n"
    "push_up_ok:\n  mov $0x73, %ax\n  mov %ax, %ss\n  mov $0x1000, %esp\n  push %eax\n  ud2\n"
    "push_up:\n  mov $0x73, %ax\n  mov %ax, %ss\n  mov $0x1002, %esp\n"
    "push_up_insn:\n  push %eax\n  ud2\n"
    "pop_up:\n  mov $0x73, %ax\n  mov %ax, %ss\n  mov $0xFFE, %esp\n"
    "pop_up_insn:\n  pop %eax\n  ud2\n"
    "push_down:\n  mov $0x7b, %ax\n  mov %ax, %ss\n  mov $0x1002, %esp\n"
    "push_down_insn:\n  push %eax\n  ud2\n"
    "push_down_ok:\n  mov $0x7b, %ax\n  mov %ax, %ss\n  mov $0x1008, %esp\n  push %eax\n  ud2\n"
    /* Reached by a far call to SEL_CODE: offsets are from fetch_base. */
    "fetch_base:\n  nop\n  nop\n"
    "fetch_mov:\n  mov $0x12345678, %eax\n"
    "fetch_ret:\n  lret\n");

static int on_qemu;

/* Ring-3 stack checks: the fault (or the ud2 that follows a successful access) comes back here. */
static void expect_user(const char *name, void (*fn)(void), unsigned int vector, const char *ip)
{
    struct rt_trap t;
    unsigned int v = rt_run_user(fn, user_stack + sizeof user_stack, &t);
    int ok = v == vector && t.error_code == 0 && (!ip || t.ip == (unsigned long)ip);
    if (!ok && on_qemu && vector == 12 && v == 6) {
        rt_skip(name, "QEMU TCG does not check stack segment limits");
        return;
    }
    rt_check(name, ok, "vector %u error %#lx ip %#lx, want vector %u error 0 ip %#lx", v, t.error_code, t.ip, vector,
             (unsigned long)ip);
}

static void t_stack(void)
{
    sa_gdt[SEL_SS_UP / 8] = sa_desc((uintptr_t)stack_area, 0xFFF, 0xF3, 0x4);
    sa_gdt[SEL_SS_DOWN / 8] = sa_desc((uintptr_t)stack_area, 0xFFF, 0xF7, 0x4);
    expect_user("limits.push.within", push_up_ok, 6, NULL);
    expect_user("limits.push.crossing_limit_ss", push_up, 12, push_up_insn);
    expect_user("limits.pop.crossing_limit_ss", pop_up, 12, pop_up_insn);
    expect_user("limits.push.expand_down_below_ss", push_down, 12, push_down_insn);
    expect_user("limits.push.expand_down_within", push_down_ok, 6, NULL);
}

static void far_call_code(void *arg)
{
    (void)arg;
    __asm__ volatile("lcall $0x80, $0" ::: "eax", "memory");
}

static void t_fetch(void)
{
    uint32_t mov_off = (uint32_t)(fetch_mov - fetch_base), ret_off = (uint32_t)(fetch_ret - fetch_base);
    /* The limit ends inside the 5-byte MOV: fetching it faults. */
    sa_gdt[SEL_CODE / 8] = sa_desc((uintptr_t)fetch_base, mov_off + 2, 0x9B, 0x4);
    struct rt_trap t;
    int trapped = rt_try(far_call_code, NULL, &t);
    int ok = trapped && t.vector == 13 && t.error_code == 0 && t.ip == mov_off && t.cs == SEL_CODE;
    if (!ok && on_qemu && !trapped)
        rt_skip("limits.fetch.crossing_gp", "QEMU TCG does not check the CS limit here");
    else
        rt_check("limits.fetch.crossing_gp", ok, "trapped %d vector %u error %#lx ip %#lx cs %#lx", trapped, t.vector,
                 t.error_code, t.ip, t.cs);
    /* The limit ends just before the RETF: the MOV runs, the RETF's fetch faults. */
    sa_gdt[SEL_CODE / 8] = sa_desc((uintptr_t)fetch_base, ret_off - 1, 0x9B, 0x4);
    trapped = rt_try(far_call_code, NULL, &t);
    ok = trapped && t.vector == 13 && t.error_code == 0 && t.ip == ret_off;
    if (!ok && on_qemu && !trapped)
        rt_skip("limits.fetch.at_limit_gp", "QEMU TCG does not check the CS limit here");
    else
        rt_check("limits.fetch.at_limit_gp", ok, "trapped %d vector %u error %#lx ip %#lx", trapped, t.vector,
                 t.error_code, t.ip);
    /* Everything within the limit: the call returns. */
    sa_gdt[SEL_CODE / 8] = sa_desc((uintptr_t)fetch_base, ret_off, 0x9B, 0x4);
    trapped = rt_try(far_call_code, NULL, &t);
    rt_check("limits.fetch.within", !trapped, "vector %u ip %#lx", t.vector, t.ip);
}

static volatile unsigned int gp_count;
static volatile unsigned long gp_error;
static volatile unsigned int gp_skip;

/* #GP from a string instruction: note it, restore the data segments and skip the instruction. */
static void gp_handler(struct rt_frame *f)
{
    gp_count++;
    gp_error = f->error_code;
    f->ds = f->es = SEL_KDATA;
    f->ip += gp_skip;
}

struct regs3 { uint32_t si, di, cx; };

static void check_string(const char *name, unsigned int count, struct regs3 got, struct regs3 want)
{
    int ok = count == 1 && gp_error == 0 && got.si == want.si && got.di == want.di && got.cx == want.cx;
    if (!ok && on_qemu && count == 0) {
        rt_skip(name, "QEMU TCG does not check data segment limits");
        return;
    }
    rt_check(name, ok, "faults %u error %#lx esi %#x edi %#x ecx %#x, want 1 fault esi %#x edi %#x ecx %#x", count,
             gp_error, got.si, got.di, got.cx, want.si, want.di, want.cx);
}

static void t_strings(void)
{
    sa_gdt[SEL_DATA / 8] = sa_desc((uintptr_t)data_area, 0xFFF, 0x93, 0x4);
    rt_set_handler(13, gp_handler);
    uint32_t sel = SEL_DATA;

    struct regs3 r = { 0xFF8, 0x100, 16 };
    gp_count = 0; gp_skip = 2;
    __asm__ volatile("push %%ds\n\tpush %%es\n\tmov %3, %%ds\n\tmov %3, %%es\n\tcld\n\trep movsb\n\tpop %%es\n\tpop %%ds"
                     : "+S"(r.si), "+D"(r.di), "+c"(r.cx) : "r"(sel) : "memory");
    check_string("limits.string.rep_movsb_source", gp_count, r, (struct regs3){ 0x1000, 0x108, 8 });

    r = (struct regs3){ 0, 0xFF0, 8 };
    gp_count = 0; gp_skip = 2;
    __asm__ volatile("push %%ds\n\tpush %%es\n\tmov %3, %%ds\n\tmov %3, %%es\n\tcld\n\trep stosl\n\tpop %%es\n\tpop %%ds"
                     : "+S"(r.si), "+D"(r.di), "+c"(r.cx) : "r"(sel), "a"(0x5A5A5A5A) : "memory");
    check_string("limits.string.rep_stosl_destination", gp_count, r, (struct regs3){ 0, 0x1000, 4 });

    r = (struct regs3){ 0xFFF, 0, 0 };
    gp_count = 0; gp_skip = 2;
    __asm__ volatile("push %%ds\n\tpush %%es\n\tmov %3, %%ds\n\tmov %3, %%es\n\tcld\n\tlodsw\n\tpop %%es\n\tpop %%ds"
                     : "+S"(r.si), "+D"(r.di), "+c"(r.cx) : "r"(sel) : "memory", "eax");
    check_string("limits.string.lodsw_last_byte", gp_count, r, (struct regs3){ 0xFFF, 0, 0 });

    rt_set_handler(13, NULL);
}

static void invlpg_es(void *arg)
{
    uint32_t sel = (uint32_t)(uintptr_t)arg;
    __asm__ volatile("push %%es\n\tmov %0, %%es\n\t"
                     "invlpg %%es:0x5000\n\t"      /* beyond an expand-up limit of 0xFFF */
                     "invlpg %%es:0x10\n\t"        /* below an expand-down limit of 0xFFF */
                     "pop %%es" :: "r"(sel) : "memory");
}

static void t_invlpg(void)
{
    sa_gdt[SEL_DATA / 8] = sa_desc((uintptr_t)data_area, 0xFFF, 0x93, 0x4);
    sa_gdt[SEL_SS_DOWN / 8] = sa_desc((uintptr_t)stack_area, 0xFFF, 0xF7, 0x4);
    struct rt_trap t;
    static const struct { const char *name; uint32_t sel; } cases[] = {
        { "limits.invlpg.past_limit", SEL_DATA },
        { "limits.invlpg.expand_down", SEL_SS_DOWN | 3 },
        { "limits.invlpg.null_selector", 0 },
    };
    for (unsigned int i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int trapped = rt_try(invlpg_es, (void *)(uintptr_t)cases[i].sel, &t);
        rt_check(cases[i].name, !trapped, "vector %u error %#lx", t.vector, t.error_code);
    }
}

void guest_main(void)
{
    on_qemu = sa_on_qemu();
    sa_gdt_init();
    t_stack();
    t_fetch();
    t_strings();
    t_invlpg();
}
