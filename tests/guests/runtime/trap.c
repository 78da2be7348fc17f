/* GDT/TSS/IDT set-up, trap dispatch and the try/catch used by tests that expect exceptions. */
#include "rt.h"

#ifdef __x86_64__
struct idt_gate { uint16_t off0, sel; uint8_t ist, attr; uint16_t off1; uint32_t off2, zero; };
struct tss {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3, iomap_base;
} __attribute__((packed));
#else
struct idt_gate { uint16_t off0, sel; uint8_t zero, attr; uint16_t off1; };
struct tss {
    uint32_t prev, esp0, ss0, esp1, ss1, esp2, ss2, cr3, eip, eflags;
    uint32_t eax, ecx, edx, ebx, esp, ebp, esi, edi;
    uint32_t es, cs, ss, ds, fs, gs, ldt;
    uint16_t trap, iomap_base;
} __attribute__((packed));
#endif

extern uint64_t rt_gdt[GDT_ENTRIES];
extern uint8_t rt_isr_stubs[];
extern void rt_user_exit_stub(void);

static struct idt_gate idt[256] __attribute__((aligned(16)));
static struct tss tss __attribute__((aligned(16)));
static rt_handler handlers[256];
uint8_t rt_ist_stacks[7][4096] __attribute__((aligned(16)));
uint8_t rt_ring0_stack[8192] __attribute__((aligned(16)));

struct catch_ctx {
    rt_jmp_buf jb;
    struct rt_trap *out;
    struct catch_ctx *prev;
};
static struct catch_ctx *volatile cur_catch;

static void set_gate(unsigned int v, unsigned int ist, unsigned int dpl)
{
    uintptr_t off = (uintptr_t)(rt_isr_stubs + 16 * v);
    struct idt_gate *g = &idt[v];
    g->off0 = (uint16_t)off;
    g->sel = SEL_KCODE;
    g->attr = (uint8_t)(0x8E | (dpl << 5));   /* present interrupt gate */
    g->off1 = (uint16_t)(off >> 16);
#ifdef __x86_64__
    g->ist = (uint8_t)ist;
    g->off2 = (uint32_t)(off >> 32);
    g->zero = 0;
#else
    (void)ist;
    g->zero = 0;
#endif
}

void rt_set_gate(unsigned int vector, unsigned int ist, unsigned int dpl)
{
    set_gate(vector, ist, dpl);
}

void rt_load_idt(void)
{
    struct __attribute__((packed)) { uint16_t limit; uintptr_t base; } d = { sizeof idt - 1, (uintptr_t)idt };
    __asm__ volatile("lidt %0" :: "m"(d));
}

void rt_cpu_tables_init(void)
{
    uintptr_t base = (uintptr_t)&tss;
    uint64_t limit = sizeof tss - 1;
#ifdef __x86_64__
    tss.rsp[0] = (uintptr_t)(rt_ring0_stack + sizeof rt_ring0_stack);
    for (int i = 0; i < 7; i++)
        tss.ist[i] = (uintptr_t)(rt_ist_stacks[i] + sizeof rt_ist_stacks[i]);
    rt_gdt[SEL_TSS / 8 + 1] = (uint64_t)base >> 32;
#else
    tss.esp0 = (uintptr_t)(rt_ring0_stack + sizeof rt_ring0_stack);
    tss.ss0 = SEL_KDATA;
#endif
    tss.iomap_base = sizeof tss;   /* no I/O bitmap: ring 3 port access faults */
    rt_gdt[SEL_TSS / 8] = (limit & 0xFFFF) | ((uint64_t)(base & 0xFFFFFF) << 16) | (0x89ull << 40) |
                          (((limit >> 16) & 0xF) << 48) | ((uint64_t)((base >> 24) & 0xFF) << 56);
    __asm__ volatile("ltr %w0" :: "r"(SEL_TSS));

    for (unsigned int v = 0; v < 256; v++)
        set_gate(v, 0, 0);
    set_gate(3, 0, 3);                      /* int3 and into usable from ring 3 */
    set_gate(4, 0, 3);
    set_gate(RT_USER_EXIT_VECTOR, 0, 3);
#ifdef __x86_64__
    set_gate(8, 7, 0);                      /* #DF on its own stack */
#endif
    rt_load_idt();
}

void rt_set_handler(unsigned int vector, rt_handler h)
{
    handlers[vector & 0xFF] = h;
}

static const char *const names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP",
    "#PF", "rsvd15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
};

const char *rt_vector_name(unsigned int v)
{
    if (v < 32 && names[v])
        return names[v];
    return v < 32 ? "reserved" : "interrupt";
}

void rt_trap(struct rt_frame *f)
{
    unsigned int v = (unsigned int)f->vector;
    if (handlers[v]) {
        handlers[v](f);
        return;
    }
    struct catch_ctx *c = cur_catch;
    if (c) {
        c->out->vector = v;
        c->out->error_code = f->error_code;
        c->out->ip = f->ip;
        c->out->cs = f->cs;
        c->out->cr2 = v == 14 ? rt_read_cr2() : 0;
        cur_catch = c->prev;
        rt_longjmp(&c->jb, 1);
    }
    if (v < 32) {
        rt_fail("rt.unexpected_trap", "vector %u %s error %#lx ip %#lx cs %#lx cr2 %#lx", v,
                rt_vector_name(v), (unsigned long)f->error_code, (unsigned long)f->ip,
                (unsigned long)f->cs, v == 14 ? rt_read_cr2() : 0ul);
        rt_done();
    }
    rt_fail("rt.unexpected_interrupt", "vector %u ip %#lx", v, (unsigned long)f->ip);
}

int rt_try(void (*fn)(void *), void *arg, struct rt_trap *t)
{
    struct catch_ctx c;
    c.out = t;
    c.prev = cur_catch;
    if (rt_setjmp(&c.jb))
        return 1;
    cur_catch = &c;
    fn(arg);
    cur_catch = c.prev;
    return 0;
}

void rt_catch_exit(unsigned int vector)
{
    struct catch_ctx *c = cur_catch;
    if (!c) {
        rt_fail("rt.catch_exit", "no active rt_try for vector %u", vector);
        rt_done();
    }
    c->out->vector = vector;
    c->out->error_code = 0;
    c->out->ip = 0;
    c->out->cs = 0;
    c->out->cr2 = 0;
    cur_catch = c->prev;
    rt_longjmp(&c->jb, 1);
}

struct user_call { void (*fn)(void); void *stack_top; };

static void enter_user(void *arg)
{
    struct user_call *u = arg;
    uintptr_t *sp = (uintptr_t *)((uintptr_t)u->stack_top & ~(uintptr_t)15);
    *--sp = (uintptr_t)rt_user_exit_stub;   /* fn's return address: back to ring 0 via int 0x80 */
    rt_enter_user(u->fn, sp);
}

unsigned int rt_run_user(void (*fn)(void), void *stack_top, struct rt_trap *t)
{
    struct user_call u = { fn, stack_top };
    if (rt_try(enter_user, &u, t))
        return t->vector;
    return 0xFFFFFFFFu;
}
