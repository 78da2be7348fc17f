/* Call gates: a far CALL from ring 3 through a 32-bit call gate to ring 0 (stack from the TSS,
 * parameters copied, old SS:ESP pushed), RETF back to ring 3 (parameters released, DS nulled),
 * a same-privilege call through a gate, and the #GP/#NP checks. */
#include "sysarch.h"

RT_GUEST("gates32");

#define SEL_CG32   0x70   /* DPL 3 gate to gate_entry32, 2 parameters */
#define SEL_CGS    0x78   /* DPL 0 gate to gate_same (same privilege) */
#define SEL_CGDPL0 0x80   /* DPL 0 gate, called from ring 3 */
#define SEL_CGNP   0x88   /* not present */
#define SEL_CGDATA 0x90   /* DPL 3 gate whose target selector is a data segment */
#define SEL_CGBADSS 0xA0  /* DPL 3 gate to gate_bad_ss (returns with an unusable SS) */

volatile uint32_t g_esp, g_cs, g_ss, g_p0, g_p1, g_old_esp, g_old_ss, g_ret_cs;
volatile uint32_t u_result, u_ds, u_es, u_cs, u_ss, u_esp_before, u_esp_after;
static uint8_t user_stack[4096] __attribute__((aligned(16)));

extern char gate_entry32[], gate_same[], gate_bad_ss[], gate_bad_ss_lret[];
void user_call_bad_ss(void);
void user_call32(void);
void user_call_dpl0(void);
void user_call_np(void);
void user_call_data(void);
void user_jmp_gate(void);

__asm__(
    ".text\n"
    "gate_entry32:\n"
    "  mov %esp, g_esp\n"
    "  mov %cs, %eax\n  mov %eax, g_cs\n"
    "  mov %ss, %eax\n  mov %eax, g_ss\n"
    "  mov 4(%esp), %eax\n  mov %eax, g_ret_cs\n"
    "  mov 8(%esp), %eax\n  mov %eax, g_p1\n"
    "  mov 12(%esp), %eax\n  mov %eax, g_p0\n"
    "  mov 16(%esp), %eax\n  mov %eax, g_old_esp\n"
    "  mov 20(%esp), %eax\n  mov %eax, g_old_ss\n"
    "  mov $0x18, %eax\n  mov %eax, %ds\n"      /* a DPL-0 data segment: RETF to ring 3 nulls DS */
    "  mov $0xC0DE, %eax\n"
    "  lret $8\n"
    "gate_same:\n"
    "  mov %esp, g_esp\n"
    "  mov 4(%esp), %eax\n  mov %eax, g_ret_cs\n"
    "  lret\n"
    /* Ring 3: call the gate with two parameters, then look at the segment registers. */
    "user_call32:\n"
    "  mov %esp, u_esp_before\n"
    "  push $0x11111111\n"
    "  push $0x22222222\n"
    "  lcall $0x73, $0\n"
    "  mov %ds, %ecx\n"
    "  mov $0x2b, %edx\n  mov %edx, %ds\n"
    "  mov %ecx, u_ds\n"
    "  mov %eax, u_result\n"
    "  mov %esp, u_esp_after\n"
    "  mov %es, %ecx\n  mov %ecx, u_es\n"
    "  mov %cs, %ecx\n  mov %ecx, u_cs\n"
    "  mov %ss, %ecx\n  mov %ecx, u_ss\n"
    "  ret\n"
    "user_call_dpl0:\n  lcall $0x83, $0\n  ret\n"
    "user_call_np:\n  lcall $0x8b, $0\n  ret\n"
    "user_call_data:\n  lcall $0x93, $0\n  ret\n"
    "user_jmp_gate:\n  ljmp $0x73, $0\n  ret\n"
    "user_call_bad_ss:\n  lcall $0xa3, $0\n  ret\n"
    /* Ring 0: replace the caller's SS with KDATA|3 (RPL 3, DPL 0) and return to it. */
    "gate_bad_ss:\n  movl $0x1b, 12(%esp)\n"
    "gate_bad_ss_lret:\n  lret\n");


static void t_call_gate_inward(void)
{
    sa_gdt[SEL_CG32 / 8] = sa_gate(SEL_KCODE32, (uint32_t)(uintptr_t)gate_entry32, 0xEC, 2);
    struct rt_trap t;
    unsigned int v = rt_run_user(user_call32, user_stack + sizeof user_stack, &t);
    if (!rt_check("gates.call32.returned", v == RT_USER_EXIT_VECTOR, "vector %u error %#lx ip %#lx", v, t.error_code, t.ip))
        return;
    uint32_t esp0 = (uint32_t)(uintptr_t)(rt_ring0_stack + sizeof rt_ring0_stack);
    rt_check_eq("gates.call32.ring0_cs", g_cs, SEL_KCODE32);
    rt_check_eq("gates.call32.tss_ss", g_ss, SEL_KDATA);
    rt_check_eq("gates.call32.tss_esp", g_esp, esp0 - 24);
    rt_check("gates.call32.params_copied", g_p0 == 0x11111111 && g_p1 == 0x22222222, "p0 %#x p1 %#x", g_p0, g_p1);
    rt_check_eq("gates.call32.old_ss", g_old_ss, SEL_UDATA | 3);
    rt_check_eq("gates.call32.old_esp", g_old_esp, u_esp_before - 8);
    rt_check_eq("gates.call32.return_cs", g_ret_cs, SEL_UCODE32 | 3);
    rt_check_eq("gates.retf_outer.result", u_result, 0xC0DE);
    rt_check_eq("gates.retf_outer.cs", u_cs, SEL_UCODE32 | 3);
    rt_check_eq("gates.retf_outer.ss", u_ss, SEL_UDATA | 3);
    rt_check_eq("gates.retf_outer.params_released", u_esp_after, u_esp_before);
    rt_check_eq("gates.retf_outer.ds_nulled", u_ds, 0);
    rt_check_eq("gates.retf_outer.es_kept", u_es, SEL_UDATA | 3);
}

static void t_same_privilege(void)
{
    sa_gdt[SEL_CGS / 8] = sa_gate(SEL_KCODE32, (uint32_t)(uintptr_t)gate_same, 0x8C, 3);
    uint32_t before;
    __asm__ volatile("mov %%esp, %0\n\tlcall $0x78, $0" : "=&r"(before) :: "eax", "memory");
    rt_check_eq("gates.same_privilege.frame", g_esp, before - 8);
    rt_check_eq("gates.same_privilege.return_cs", g_ret_cs, SEL_KCODE32);
}

static void expect_user(const char *name, void (*fn)(void), unsigned int vector, unsigned long error)
{
    struct rt_trap t;
    unsigned int v = rt_run_user(fn, user_stack + sizeof user_stack, &t);
    rt_check(name, v == vector && t.error_code == error, "vector %u error %#lx, want vector %u error %#lx", v,
             t.error_code, vector, error);
}

static void t_errors(void)
{
    sa_gdt[SEL_CGDPL0 / 8] = sa_gate(SEL_KCODE32, (uint32_t)(uintptr_t)gate_entry32, 0x8C, 0);
    sa_gdt[SEL_CGNP / 8] = sa_gate(SEL_KCODE32, (uint32_t)(uintptr_t)gate_entry32, 0x6C, 0);
    sa_gdt[SEL_CGDATA / 8] = sa_gate(SEL_KDATA, 0, 0xEC, 0);
    expect_user("gates.gate_dpl_gp", user_call_dpl0, 13, SEL_CGDPL0);
    expect_user("gates.gate_not_present_np", user_call_np, 11, SEL_CGNP);
    expect_user("gates.target_not_code_gp", user_call_data, 13, SEL_KDATA);
    expect_user("gates.jmp_inward_gp", user_jmp_gate, 13, SEL_KCODE32);

    /* RETF to ring 3 checks the outer SS before leaving ring 0: the #GP is raised at the RETF. */
    sa_gdt[SEL_CGBADSS / 8] = sa_gate(SEL_KCODE32, (uint32_t)(uintptr_t)gate_bad_ss, 0xEC, 0);
    struct rt_trap t;
    unsigned int v = rt_run_user(user_call_bad_ss, user_stack + sizeof user_stack, &t);
    rt_check("gates.retf_outer.bad_ss_gp", v == 13 && t.error_code == SEL_KDATA && t.ip == (unsigned long)gate_bad_ss_lret &&
             t.cs == SEL_KCODE32, "vector %u error %#lx ip %#lx cs %#lx", v, t.error_code, t.ip, t.cs);
}

extern char iret_bad_ss_insn[];
static void iret_bad_ss(void *arg)
{
    (void)arg;
    __asm__ volatile("push $0x1b\n\t"        /* SS: KDATA with RPL 3 (DPL 0) */
                     "push %%esp\n\t"
                     "pushf\n\t"
                     "push $0x23\n\t"        /* CS: ring-3 code */
                     "push $0\n\t"
                     "iret_bad_ss_insn: iret" ::: "memory");
}

void guest_main(void)
{
    sa_gdt_init();
    t_call_gate_inward();
    t_same_privilege();
    t_errors();
    struct rt_trap t;
    int trapped = rt_try(iret_bad_ss, NULL, &t);
    rt_check("gates.iret_outer.bad_ss_gp", trapped && t.vector == 13 && t.error_code == SEL_KDATA &&
             t.ip == (unsigned long)iret_bad_ss_insn && t.cs == SEL_KCODE32, "trapped %d vector %u error %#lx ip %#lx cs %#lx",
             trapped, t.vector, t.error_code, t.ip, t.cs);
}
