/* Parks its vCPU in a known place for a debugger reading it from outside (xenctx): guest_main calls ctx_outer,
 * ctx_middle and ctx_parked, which prints its stack pointer, loads the seed into r12 and seed+1 into r13 and halts
 * with interrupts on at ctx_halt for ever. Frame pointers make the call chain walkable. Run by the integration
 * tests, not on its own. */
#include "rt.h"

RT_GUEST("vcpuctx");

#define CTX_SEED 0x5eed0000c0ffee00ul

__attribute__((noinline)) void ctx_parked(unsigned long seed)
{
    unsigned long rsp;
    __asm__ volatile("mov %%rsp, %0" : "=r"(rsp));
    rt_printf("# parked rsp=%#lx seed=%#lx\n", rsp, seed);
    __asm__ volatile(
        "mov %0, %%r12\n\t"
        "lea 1(%0), %%r13\n\t"
        ".globl ctx_halt\n"
        "ctx_halt:\n\t"
        "sti\n\t"
        "hlt\n\t"
        "jmp ctx_halt"
        :: "r"(seed) : "r12", "r13", "memory");
}

/* The empty asm after each call keeps the compiler from turning it into a jump, so each level keeps its frame. */
__attribute__((noinline)) void ctx_middle(unsigned long seed)
{
    ctx_parked(seed);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void ctx_outer(unsigned long seed)
{
    ctx_middle(seed);
    __asm__ volatile("" ::: "memory");
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("vcpuctx.all", "no Xen");
        return;
    }
    ctx_outer(CTX_SEED);
    __asm__ volatile("" ::: "memory");
}
