/* Virtual-8086 mode: IRET into it from ring 0, real-mode addressing there, INT n to a protected-mode
 * handler (VM86 frame with ES/DS/FS/GS, data segments nulled, VM in the saved flags) and IRET
 * back, IOPL-sensitive INT n and CLI (#GP when IOPL < 3), HLT (#GP), a port access through the
 * TSS I/O bitmap (none: #GP). */
#include "sysarch.h"

RT_GUEST("vm86_32");

#define V86_SEG  0x0700        /* code, data and stack segment: linear 0x7000 */
#define V86_BASE 0x7000
#define FL_VM    0x20000u

extern char v86_start[], v86_int[], v86_hlt[], v86_end[], v86_cli[], v86_out[];

/* Copied to 0x7000 and run with CS = DS = SS = 0x0700. */
__asm__(
    ".code16\n"
    "v86_start:\n"
    "  mov $0x1234, %ax\n"
    "  mov %cs, %bx\n"
    "v86_int:\n"
    "  int $0x51\n"
    "  mov %ax, %cx\n"          /* the handler's answer */
    "  mov %ds, %dx\n"          /* DS restored by the IRET back */
    "  movw $0x55aa, 0x100\n"   /* DS:0x100 = linear 0x7100 */
    "v86_cli:\n"
    "  cli\n"
    "v86_out:\n"
    "  outb %al, $0x80\n"
    "v86_hlt:\n"
    "  hlt\n"
    "v86_end:\n"
    ".code32\n");

static volatile uint32_t h_eax, h_ebx, h_cs, h_ip, h_flags, h_ds, h_es, h_v86_ds, h_v86_ss, h_v86_sp, h_count;
static volatile uint32_t g_ecx, g_edx, g_ip, g_cs, g_flags, g_count, g_first_ip;

static void int51(struct rt_frame *f)
{
    uint32_t *v86 = &f->ss;   /* after SS: ES, DS, FS, GS of the interrupted VM86 code */
    h_count++;
    h_eax = f->eax;
    h_ebx = f->ebx;
    h_cs = f->cs;
    h_ip = f->ip;
    h_flags = f->flags;
    h_ds = f->ds;             /* as the stub found them on entry: nulled by the processor */
    h_es = f->es;
    h_v86_ds = v86[2];
    h_v86_ss = f->ss;
    h_v86_sp = f->sp;
    f->eax = 0x5678;
}

/* #GP from VM86 code: note where and with what, then step over the instruction. */
static void gp(struct rt_frame *f)
{
    if (g_count++ == 0)
        g_first_ip = f->ip;
    g_ecx = f->ecx;
    g_edx = f->edx;
    g_ip = f->ip;
    g_cs = f->cs;
    g_flags = f->flags;
    if (f->ip == (uint32_t)(v86_hlt - v86_start))
        rt_catch_exit(13);
    f->ip += f->ip == (uint32_t)(v86_cli - v86_start) ? 1 : 2;
}

static uint32_t v86_iopl;

static void enter_v86(void *arg)
{
    (void)arg;
    uint32_t flags = FL_VM | 2u | (v86_iopl << 12);
    __asm__ volatile("push $0\n\t"          /* GS */
                     "push $0\n\t"          /* FS */
                     "push %1\n\t"          /* DS */
                     "push %1\n\t"          /* ES */
                     "push %1\n\t"          /* SS */
                     "push $0xF00\n\t"      /* SP */
                     "push %0\n\t"          /* EFLAGS with VM */
                     "push %1\n\t"          /* CS */
                     "push $0\n\t"          /* IP */
                     "iret" :: "r"(flags), "r"((uint32_t)V86_SEG) : "memory");
}

static uint32_t off(const char *p) { return (uint32_t)(p - v86_start); }

void guest_main(void)
{
    memcpy((void *)V86_BASE, v86_start, (size_t)(v86_end - v86_start));
    *(volatile uint16_t *)(V86_BASE + 0x100) = 0;
    rt_set_handler(0x51, int51);
    rt_set_gate(0x51, 0, 3);   /* INT n from VM86 runs at CPL 3: the gate needs DPL 3 */
    rt_set_handler(13, gp);

    /* IOPL 3: INT n and CLI are allowed; OUT still needs the I/O bitmap, HLT never runs at CPL 3. */
    v86_iopl = 3;
    struct rt_trap t;
    int trapped = rt_try(enter_v86, NULL, &t);
    rt_check("vm86.int.reached_handler", h_count == 1 && (h_eax & 0xFFFF) == 0x1234 && (h_ebx & 0xFFFF) == V86_SEG,
             "count %u eax %#x ebx %#x", h_count, h_eax, h_ebx);
    rt_check("vm86.int.frame", h_cs == V86_SEG && h_ip == off(v86_int) + 2 && (h_flags & FL_VM) && h_v86_ds == V86_SEG &&
             h_v86_ss == V86_SEG && h_v86_sp == 0xF00, "cs %#x ip %#x flags %#x ds %#x ss %#x sp %#x", h_cs, h_ip,
             h_flags, h_v86_ds, h_v86_ss, h_v86_sp);
    rt_check("vm86.int.data_segments_nulled", h_ds == 0 && h_es == 0, "ds %#x es %#x", h_ds, h_es);
    rt_check("vm86.iret_back", (g_ecx & 0xFFFF) == 0x5678 && (g_edx & 0xFFFF) == V86_SEG, "ecx %#x edx %#x", g_ecx, g_edx);
    rt_check_eq("vm86.real_mode_addressing", *(volatile uint16_t *)(V86_BASE + 0x100), 0x55aa);
    rt_check("vm86.out_without_bitmap_gp", g_count == 2 && g_first_ip == off(v86_out), "#GP count %u, first at %#x",
             g_count, g_first_ip);
    rt_check("vm86.hlt_gp", trapped && t.vector == 13 && g_ip == off(v86_hlt) && g_cs == V86_SEG && (g_flags & FL_VM),
             "trapped %d vector %u ip %#x cs %#x flags %#x", trapped, t.vector, g_ip, g_cs, g_flags);

    /* IOPL 0: INT n is IOPL-sensitive. */
    v86_iopl = 0;
    h_count = g_count = 0;
    trapped = rt_try(enter_v86, NULL, &t);
    rt_check("vm86.int_iopl0_gp", h_count == 0 && g_first_ip == off(v86_int), "handler ran %u times, first #GP at %#x",
             h_count, g_first_ip);
    rt_check("vm86.cli_iopl0_gp", g_count == 4 && trapped, "#GP count %u (int, cli, out, hlt)", g_count);

    rt_set_handler(13, NULL);
    rt_set_handler(0x51, NULL);
    rt_set_gate(0x51, 0, 0);
}
