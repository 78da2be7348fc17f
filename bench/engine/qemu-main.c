/* The md5 workload under QEMU: writes 'S' to the debug console port when the hash starts, 'E'
   when it ends, then the digest's first 8 bytes in hex and a newline; the host times S..E. */
#include "workloads.c"

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

#define BUFFER ((uint64_t *)0x4000000)
#define MD5_BYTES (64ULL << 20)

void qemu_main(void)
{
    uint8_t digest[16];
    fill(BUFFER, MD5_BYTES / 8, 4242);
    outb(0xe9, 'S');
    uint64_t r = md5((const uint8_t *)BUFFER, MD5_BYTES, digest);
    outb(0xe9, 'E');
    for (int i = 60; i >= 0; i -= 4)
        outb(0xe9, "0123456789abcdef"[(r >> i) & 15]);
    outb(0xe9, '\n');
}
