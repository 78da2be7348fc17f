/*
 * The native peer of the engine benchmark: maps the same flat workload binary at the address it
 * was linked for and calls the same entry points on the host CPU, so the instruction stream is the
 * one the engine runs.
 *
 * usage: native WORKLOADS.BIN INT_ITERATIONS MEM_WORDS MEM_ITERATIONS MD5_BYTES
 * prints: "int-loop SECONDS CHECKSUM", "mem-loop ...", "md5 ..." (the md5 checksum is the first
 * 8 digest bytes, little-endian).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define LOAD 0x200000UL

struct entry_table {
    uint64_t magic;
    uint64_t (*int_loop)(uint64_t, uint64_t);
    uint64_t (*mem_loop)(uint64_t *, uint64_t, uint64_t);
    uint64_t (*fill)(uint64_t *, uint64_t, uint64_t);
    uint64_t (*md5)(const uint8_t *, uint64_t, uint8_t *);
    uint64_t (*call_loop)(uint64_t, uint64_t);
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: %s WORKLOADS.BIN INT_ITERATIONS MEM_WORDS MEM_ITERATIONS MD5_BYTES CALL_ITERATIONS\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 1; }
    uint8_t *image = mmap((void *)LOAD, 1 << 20, PROT_READ | PROT_WRITE | PROT_EXEC,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (image != (void *)LOAD) { perror("mmap"); return 1; }
    fread(image, 1, 1 << 20, f);
    fclose(f);
    const struct entry_table *t = (const void *)image;
    if (t->magic != 0x31454e49474e4558ULL) { fprintf(stderr, "%s: not a workload image\n", argv[1]); return 1; }

    uint64_t int_n = strtoull(argv[2], 0, 0), words = strtoull(argv[3], 0, 0);
    uint64_t mem_n = strtoull(argv[4], 0, 0), md5_bytes = strtoull(argv[5], 0, 0);
    uint64_t call_n = strtoull(argv[6], 0, 0);
    uint64_t bytes = words * 8 > md5_bytes ? words * 8 : md5_bytes;
    uint64_t *buf = aligned_alloc(4096, bytes);
    uint8_t digest[16];

    double t0 = now();
    uint64_t r = t->int_loop(int_n, 12345);
    printf("int-loop %.6f %016llx\n", now() - t0, (unsigned long long)r);

    t->fill(buf, words, 777);
    t0 = now();
    r = t->mem_loop(buf, words, mem_n);
    printf("mem-loop %.6f %016llx\n", now() - t0, (unsigned long long)r);

    t->fill(buf, md5_bytes / 8, 4242);
    t0 = now();
    r = t->md5((const uint8_t *)buf, md5_bytes, digest);
    printf("md5 %.6f %016llx\n", now() - t0, (unsigned long long)r);

    t0 = now();
    r = t->call_loop(call_n, 99);
    printf("call-loop %.6f %016llx\n", now() - t0, (unsigned long long)r);
    return 0;
}
