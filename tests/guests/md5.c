/* Benchmark: MD5 (RFC 1321) of generated data, 64 MiB unless the command line says size=N[K|M|G].
 * The data stream is x(n+1) = x(n) * 6364136223846793005 + 1442695040888963407 from x(0) = 0,
 * each value emitted as 8 little-endian bytes, so the digest can be reproduced anywhere. */
#include "rt.h"
#include "md5_block.h"

RT_GUEST("md5");

struct md5 { uint32_t h[4]; uint64_t len; uint8_t buf[64]; };

static void md5_init(struct md5 *s)
{
    s->h[0] = 0x67452301, s->h[1] = 0xefcdab89, s->h[2] = 0x98badcfe, s->h[3] = 0x10325476;
    s->len = 0;
}

static void md5_update(struct md5 *s, const uint8_t *p, size_t n)
{
    size_t fill = s->len & 63;
    s->len += n;
    if (fill) {
        size_t k = 64 - fill < n ? 64 - fill : n;
        memcpy(s->buf + fill, p, k);
        p += k, n -= k;
        if (fill + k < 64)
            return;
        md5_block(s->h, s->buf);
    }
    for (; n >= 64; p += 64, n -= 64)
        md5_block(s->h, p);
    memcpy(s->buf, p, n);
}

static void md5_final(struct md5 *s, char hex[33])
{
    uint64_t bits = s->len * 8;
    uint8_t pad[72] = { 0x80 };
    size_t padlen = ((s->len & 63) < 56 ? 56 : 120) - (s->len & 63);
    md5_update(s, pad, padlen);
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(bits >> (8 * i));
    md5_update(s, lenb, 8);
    for (int i = 0; i < 16; i++)
        rt_snprintf(hex + 2 * i, 3, "%02x", (s->h[i / 4] >> (8 * (i % 4))) & 0xff);
}

static void md5_string(const char *str, char hex[33])
{
    struct md5 s;
    md5_init(&s);
    md5_update(&s, (const uint8_t *)str, strlen(str));
    md5_final(&s, hex);
}

static uint64_t parse_size(void)
{
    const char *v = rt_cmdline_value("size");
    if (!v)
        return 64ull << 20;
    const char *end;
    uint64_t n = rt_strtoul(v, &end, 0);
    if (*end == 'K' || *end == 'k') n <<= 10;
    else if (*end == 'M' || *end == 'm') n <<= 20;
    else if (*end == 'G' || *end == 'g') n <<= 30;
    return n;
}

static uint8_t chunk[65536] __attribute__((aligned(64)));

void guest_main(void)
{
    static const struct { const char *in, *out; } v[] = {
        { "", "d41d8cd98f00b204e9800998ecf8427e" },
        { "abc", "900150983cd24fb0d6963f7d28e17f72" },
        { "message digest", "f96b697d7cb7938d525a2f31aaf161d0" },
        { "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
          "57edf4a22be3c955ac49da2e2107b67a" },
    };
    int ok = 1;
    char hex[33];
    for (unsigned i = 0; i < sizeof v / sizeof v[0]; i++) {
        md5_string(v[i].in, hex);
        if (strcmp(hex, v[i].out)) {
            rt_fail("md5.rfc1321_vectors", "md5(\"%s\") = %s want %s", v[i].in, hex, v[i].out);
            ok = 0;
            break;
        }
    }
    if (ok)
        rt_pass("md5.rfc1321_vectors");

    uint64_t size = parse_size();
    uint64_t khz = rt_tsc_khz();
    struct md5 s;
    md5_init(&s);
    uint64_t x = 0, left = size;
    uint64_t t0 = rt_rdtsc();
    while (left) {
        size_t n = left < sizeof chunk ? (size_t)left : sizeof chunk;
        for (size_t i = 0; i < sizeof chunk; i += 8) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            for (int k = 0; k < 8; k++)
                chunk[i + k] = (uint8_t)(x >> (8 * k));
        }
        md5_update(&s, chunk, n);
        left -= n;
    }
    md5_final(&s, hex);
    uint64_t cycles = rt_rdtsc() - t0;
    uint64_t ms = khz ? cycles / khz : 0;
    rt_printf("# md5 bytes=%llu digest=%s\n", (unsigned long long)size, hex);
    rt_printf("# bench md5 bytes=%llu tsc_cycles=%llu tsc_khz=%llu ms=%llu\n", (unsigned long long)size,
              (unsigned long long)cycles, (unsigned long long)khz, (unsigned long long)ms);
    /* reference digests computed independently of this code */
    static const struct { uint64_t size; const char *md5; } ref[] = {
        { 1ull << 20, "103c8e7bab42ce799683a0dc3c316ea5" },
        { 16ull << 20, "593ce13c5a0cda8ff420f1e8bd67ea98" },
        { 64ull << 20, "bd8a01e2c129babbad734684414b44a0" },
    };
    for (unsigned i = 0; i < sizeof ref / sizeof ref[0]; i++)
        if (ref[i].size == size) {
            rt_check("md5.generated_data", !strcmp(hex, ref[i].md5), "digest %s want %s", hex, ref[i].md5);
            return;
        }
    rt_skip("md5.generated_data", "no reference digest for %llu bytes", (unsigned long long)size);
}
