/*
 * The engine benchmark's workloads, built freestanding (no libc, no PIC) and linked at a fixed
 * address as a flat binary. The same bytes run in the engine and natively (bench/engine/native.c
 * maps them at the same address), so both execute the same instruction stream.
 *
 * The binary starts with a table of entry points (struct entry_table) so that the loaders need
 * no symbol lookup. Every entry is an ordinary SysV function returning a checksum.
 */
#include <stdint.h>
#include <stddef.h>
#include "md5_block.h"

/* (a) Integer loop: dependent arithmetic in registers, nothing gcc can fold into a formula. */
static uint64_t int_loop(uint64_t iterations, uint64_t seed)
{
    uint64_t x = seed | 1, acc = 0;
    for (uint64_t i = 0; i < iterations; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc += (x & 0xffff) * 3 + (acc >> 5);
        if (x & 0x100)
            acc ^= i;
    }
    return acc ^ x;
}

/* (b) Memory-bound loop: pseudo-random read-modify-write over a buffer larger than caches. */
static uint64_t mem_loop(uint64_t *buf, uint64_t words, uint64_t iterations)
{
    uint64_t mask = words - 1, idx = 1, sum = 0;
    for (uint64_t i = 0; i < iterations; i++) {
        idx = (idx * 6364136223846793005ULL + 1442695040888963407ULL);
        uint64_t j = (idx >> 20) & mask;
        sum += buf[j];
        buf[j] = sum ^ i;
    }
    return sum;
}

/* Fills a buffer with a xorshift stream (input for md5 and mem_loop). */
static uint64_t fill(uint64_t *buf, uint64_t words, uint64_t seed)
{
    uint64_t x = seed | 1;
    for (uint64_t i = 0; i < words; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = x;
    }
    return x;
}

/* (c) MD5 (RFC 1321) over a whole buffer; returns the first 8 digest bytes and stores all 16. */
static uint64_t md5(const uint8_t *p, uint64_t len, uint8_t out[16])
{
    uint32_t h[4] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476 };
    uint64_t full = len & ~63ULL;
    for (uint64_t o = 0; o < full; o += 64)
        md5_block(h, p + o);
    uint8_t tail[128];
    uint64_t rest = len - full, n = rest < 56 ? 64 : 128;
    for (uint64_t i = 0; i < n; i++)
        tail[i] = i < rest ? p[full + i] : i == rest ? 0x80 : 0;
    uint64_t bits = len * 8;
    for (int i = 0; i < 8; i++)
        tail[n - 8 + i] = (uint8_t)(bits >> (8 * i));
    for (uint64_t o = 0; o < n; o += 64)
        md5_block(h, tail + o);
    for (int i = 0; i < 16; i++)
        out[i] = (uint8_t)(h[i / 4] >> (8 * (i % 4)));
    uint64_t r = 0;
    for (int i = 0; i < 8; i++)
        r |= (uint64_t)out[i] << (8 * i);
    return r;
}

/*
 * (d) Call loop: a chain of eight small functions, each in a page of its own, as kernel code calls
 * from one subsystem into another: every call and return crosses pages, so the engine goes from one
 * compiled block to another at each of them rather than running on within one.
 */
struct call_state { uint64_t a, b, c, d; };
#define CALLEE __attribute__((noinline, aligned(4096)))
CALLEE static uint64_t call7(struct call_state *s, uint64_t x)
{
    s->a += x;
    if (s->a & 1)
        s->b ^= x;
    return s->a ^ s->b;
}
#define CALL_LINK(n, next) \
    CALLEE static uint64_t call##n(struct call_state *s, uint64_t x) \
    { \
        s->c += x >> n; \
        if (s->c & 2) \
            s->d ^= x; \
        return next(s, x ^ s->d) + n; \
    }
CALL_LINK(6, call7)
CALL_LINK(5, call6)
CALL_LINK(4, call5)
CALL_LINK(3, call4)
CALL_LINK(2, call3)
CALL_LINK(1, call2)
CALL_LINK(0, call1)

static uint64_t call_loop(uint64_t iterations, uint64_t seed)
{
    struct call_state s = { seed, seed >> 3, seed << 2, 0 };
    uint64_t r = 0;
    for (uint64_t i = 0; i < iterations; i++)
        r += call0(&s, i ^ r);
    return r;
}

struct entry_table {
    uint64_t magic;
    uint64_t (*int_loop)(uint64_t, uint64_t);
    uint64_t (*mem_loop)(uint64_t *, uint64_t, uint64_t);
    uint64_t (*fill)(uint64_t *, uint64_t, uint64_t);
    uint64_t (*md5)(const uint8_t *, uint64_t, uint8_t *);
    uint64_t (*call_loop)(uint64_t, uint64_t);
};

__attribute__((section(".entry"), used))
const struct entry_table entry_table = { 0x31454e49474e4558ULL /* "XENGINE1" */, int_loop, mem_loop, fill, md5, call_loop };
