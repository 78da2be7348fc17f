/*
 * Runs x86-64 instruction sequences natively in user mode and reports the resulting state,
 * so the engine's results can be compared with the host CPU's.
 *
 * stdin:  repeated cases, each a struct oracle_in; end of input ends the run.
 * stdout: one struct oracle_out per case.
 *
 * The code page, data page and stack live at fixed addresses (ORACLE_CODE, ORACLE_DATA) so
 * that the engine can run the same bytes at the same addresses. A case ends when execution
 * reaches the HLT placed after its body (a #GP at CPL 3) or when it faults elsewhere; the
 * signal handler captures the register file (including the FXSAVE image) from the signal
 * context and jumps back to the loop.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

#define ORACLE_CODE 0x10000000UL
#define ORACLE_DATA 0x20000000UL
#define PAGE 4096
#define CODE_MAX 4080
#define NO_FAULT 0xffffffffu
#define TIMEOUT 0xfffffffeu

/* GPR order everywhere: rax rcx rdx rbx rsp rbp rsi rdi r8..r15 (the encoding order). */
struct oracle_in {
    uint64_t gpr[16];
    uint64_t rflags;
    uint8_t fx[512];          /* FXSAVE image loaded with FXRSTOR64 */
    uint32_t code_len;
    uint32_t pad;
    uint8_t code[CODE_MAX];
    uint8_t data[PAGE];
};

struct oracle_out {
    uint64_t gpr[16];
    uint64_t rip;
    uint64_t rflags;
    uint8_t fx[512];
    uint32_t vector;          /* NO_FAULT, TIMEOUT or the exception vector */
    uint32_t error_code;
    uint64_t cr2;
    uint8_t data[PAGE];
    uint8_t code[PAGE];       /* the code page as the case left it (a store may rewrite it) */
};

static struct oracle_in in;
static struct oracle_out out;
static sigjmp_buf back;

/* Staging area popped by enter_guest: rflags, then rax..r15 in encoding order (rsp slot skipped
   by the pops and loaded last). */
uint64_t oracle_stage[18];
uint64_t oracle_entry = ORACLE_CODE;
void enter_guest(const uint8_t *fx);

__asm__(
    ".text\n"
    ".globl enter_guest\n"
    "enter_guest:\n"
    "  fxrstor64 (%rdi)\n"
    "  lea oracle_stage(%rip), %rsp\n"
    "  popfq\n"
    "  pop %rax\n"
    "  pop %rcx\n"
    "  pop %rdx\n"
    "  pop %rbx\n"
    "  lea 8(%rsp), %rsp\n"
    "  pop %rbp\n"
    "  pop %rsi\n"
    "  pop %rdi\n"
    "  pop %r8\n"
    "  pop %r9\n"
    "  pop %r10\n"
    "  pop %r11\n"
    "  pop %r12\n"
    "  pop %r13\n"
    "  pop %r14\n"
    "  pop %r15\n"
    "  mov oracle_stage+40(%rip), %rsp\n"
    "  jmp *oracle_entry(%rip)\n");

static const int greg_index[16] = {
    REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
    REG_R8, REG_R9, REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15,
};

static void on_signal(int sig, siginfo_t *si, void *ctx)
{
    ucontext_t *uc = ctx;
    (void)si;
    /* The kernel leaves AC as the guest code set it; with CR0.AM the handler's own unaligned
       accesses would fault. */
    __asm__ volatile("pushfq; andq $~0x40000, (%%rsp); popfq" ::: "memory", "cc");
    for (int i = 0; i < 16; i++)
        out.gpr[i] = (uint64_t)uc->uc_mcontext.gregs[greg_index[i]];
    out.rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    out.rflags = (uint64_t)uc->uc_mcontext.gregs[REG_EFL];
    if (uc->uc_mcontext.fpregs)
        memcpy(out.fx, uc->uc_mcontext.fpregs, 512);
    out.error_code = (uint32_t)uc->uc_mcontext.gregs[REG_ERR];
    out.cr2 = (uint64_t)uc->uc_mcontext.gregs[REG_CR2];
    if (sig == SIGVTALRM)
        out.vector = TIMEOUT;
    else if (out.rip == ORACLE_CODE + in.code_len - 1 && ((uint8_t *)ORACLE_CODE)[in.code_len - 1] == 0xf4 &&
             uc->uc_mcontext.gregs[REG_TRAPNO] == 13)
        out.vector = NO_FAULT; /* reached the closing HLT */
    else
        out.vector = (uint32_t)uc->uc_mcontext.gregs[REG_TRAPNO];
    siglongjmp(back, 1);
}

static int read_full(void *p, size_t n)
{
    uint8_t *b = p;
    while (n) {
        ssize_t r = read(0, b, n);
        if (r <= 0)
            return -1;
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

static void write_full(const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t r = write(1, b, n);
        if (r <= 0)
            exit(2);
        b += r;
        n -= (size_t)r;
    }
}

int main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1) {
        /* --layout: lets the test side check that both agree on the binary format. */
        printf("%zu %zu %lu %lu\n", sizeof(struct oracle_in), sizeof(struct oracle_out), ORACLE_CODE, ORACLE_DATA);
        return 0;
    }
    uint8_t *code = mmap((void *)ORACLE_CODE, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    uint8_t *data = mmap((void *)ORACLE_DATA, PAGE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (code != (void *)ORACLE_CODE || data != (void *)ORACLE_DATA) {
        perror("oracle: mmap");
        return 1;
    }
    static uint8_t altstack[65536];
    stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack };
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    int sigs[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGVTALRM };
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, NULL);

    static uint8_t fx_aligned[512] __attribute__((aligned(16)));
    while (read_full(&in, sizeof in) == 0) {
        if (in.code_len == 0 || in.code_len > CODE_MAX) {
            fprintf(stderr, "oracle: bad code length %u\n", in.code_len);
            return 1;
        }
        memset(code, 0xcc, PAGE);
        memcpy(code, in.code, in.code_len);
        memcpy(data, in.data, PAGE);
        memcpy(fx_aligned, in.fx, 512);
        memset(&out, 0, sizeof out);
        oracle_stage[0] = in.rflags;
        for (int i = 0; i < 16; i++)
            oracle_stage[1 + i] = in.gpr[i];
        /* CPU time, not wall time: a loaded machine must not turn a slow case into a timeout. */
        struct itimerval t = { .it_value = { .tv_sec = 1, .tv_usec = 0 } };
        if (sigsetjmp(back, 1) == 0) {
            setitimer(ITIMER_VIRTUAL, &t, NULL);
            enter_guest(fx_aligned);
        }
        struct itimerval off = { 0 };
        setitimer(ITIMER_VIRTUAL, &off, NULL);
        memcpy(out.data, data, PAGE);
        memcpy(out.code, code, PAGE);
        write_full(&out, sizeof out);
    }
    return 0;
}
