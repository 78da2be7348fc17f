/* The workloads under QEMU's TCG, the engine benchmark's second peer. The kernel command line gives the
   loop lengths ("INT_ITERATIONS MEM_WORDS MEM_ITERATIONS MD5_BYTES CALL_ITERATIONS", as the native peer
   takes them). For each workload, in the order int-loop, mem-loop, call-loop, md5, this writes 'S' to the
   debug console port when it starts and 'E' when it ends, then its result's 16 hex digits and a newline;
   the host times each S..E. */
#include "workloads.c"

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

#define BUFFER ((uint64_t *)0x4000000)

static void report(uint64_t r)
{
    outb(0xe9, 'E');
    for (int i = 60; i >= 0; i -= 4)
        outb(0xe9, "0123456789abcdef"[(r >> i) & 15]);
    outb(0xe9, '\n');
}

static uint64_t number(const char **p)
{
    uint64_t v = 0;
    while (**p == ' ')
        (*p)++;
    while (**p >= '0' && **p <= '9')
        v = v * 10 + (uint64_t)(*(*p)++ - '0');
    return v;
}

/* start: the PVH start info (struct hvm_start_info), whose cmdline_paddr is at offset 24. */
void qemu_main(const uint8_t *start)
{
    const char *cmdline = (const char *)(uintptr_t)*(const uint64_t *)(start + 24);
    uint64_t int_n = number(&cmdline), words = number(&cmdline), mem_n = number(&cmdline);
    uint64_t md5_bytes = number(&cmdline), call_n = number(&cmdline);
    uint8_t digest[16];

    outb(0xe9, 'S');
    report(int_loop(int_n, 12345));

    fill(BUFFER, words, 777);
    outb(0xe9, 'S');
    report(mem_loop(BUFFER, words, mem_n));

    outb(0xe9, 'S');
    report(call_loop(call_n, 99));

    fill(BUFFER, md5_bytes / 8, 4242);
    outb(0xe9, 'S');
    report(md5((const uint8_t *)BUFFER, md5_bytes, digest));
}
