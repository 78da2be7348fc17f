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
static const uint32_t md5_k[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};
static const uint8_t md5_r[64] = {
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
    5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
};

static void md5_block(uint32_t h[4], const uint8_t *p)
{
    uint32_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int g;
        if (i < 16) { f = (b & c) | (~b & d); g = i; }
        else if (i < 32) { f = (d & b) | (~d & c); g = (5 * i + 1) & 15; }
        else if (i < 48) { f = b ^ c ^ d; g = (3 * i + 5) & 15; }
        else { f = c ^ (b | ~d); g = (7 * i) & 15; }
        uint32_t t = d;
        d = c;
        c = b;
        uint32_t x = a + f + md5_k[i] + m[g];
        b = b + (x << md5_r[i] | x >> (32 - md5_r[i]));
        a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d;
}

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

struct entry_table {
    uint64_t magic;
    uint64_t (*int_loop)(uint64_t, uint64_t);
    uint64_t (*mem_loop)(uint64_t *, uint64_t, uint64_t);
    uint64_t (*fill)(uint64_t *, uint64_t, uint64_t);
    uint64_t (*md5)(const uint8_t *, uint64_t, uint8_t *);
};

__attribute__((section(".entry"), used))
const struct entry_table entry_table = { 0x31454e49474e4558ULL /* "XENGINE1" */, int_loop, mem_loop, fill, md5 };
