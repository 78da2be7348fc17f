/* A freestanding workload compiled by gcc and run both on the host and in the engine; the
 * results must match. Built by build.sh (the binary and expected values are checked in). */
typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;
typedef int i32;
typedef unsigned short u16;
typedef unsigned char u8;

static u64 rotl(u64 x, int r) { return (x << r) | (x >> (64 - r)); }

static u64 mix(u64 x)
{
    x ^= x >> 33; x *= 0xff51afd7ed558ccdUL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53UL; x ^= x >> 33;
    return x;
}

static void sort(i32 *a, int n)
{
    for (int i = 1; i < n; i++) {
        i32 v = a[i]; int j = i - 1;
        while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; }
        a[j + 1] = v;
    }
}

static unsigned my_strlen(const char *s) { unsigned n = 0; while (s[n]) n++; return n; }

static char buf[4096];
static u8 bytes[1024];
static i32 arr[200];
static double dv[64];
static float fv[64];

__attribute__((noinline)) static u64 divs(u64 seed)
{
    u64 acc = 0;
    for (int i = 1; i < 500; i++) {
        u64 a = mix(seed + i);
        i64 s = (i64)a;
        u32 b = (u32)(a >> 7) | 1;
        acc += a / (u64)(i * 7 + 3) + a % (u64)(i + 1);
        acc ^= (u64)(s / (i64)(i - 250 == 0 ? 1 : i - 250));
        acc += (u32)a / b + (u32)a % b;
        acc += (u64)((i32)a / (i32)(i - 100 == 0 ? 3 : i - 100));
        acc += (u16)a / (u16)(i | 1) + (u8)a % (u8)(i | 1);
        unsigned __int128 p = (unsigned __int128)a * (a ^ 0x9e3779b97f4a7c15UL);
        acc += (u64)(p >> 64) ^ (u64)p;
        acc = rotl(acc, i & 63);
    }
    return acc;
}

__attribute__((noinline)) static u64 strings(void)
{
    u64 acc = 0;
    for (int i = 0; i < 4000; i++) buf[i] = (char)('a' + (i * 7) % 26);
    buf[3000] = 0;
    acc += my_strlen(buf);
    for (int i = 0; i < 1024; i++) bytes[i] = (u8)(i * 13 + 5);
    u64 sum = 0;
    for (int i = 0; i < 1024; i++) sum += bytes[i] * (u64)(i & 15);
    acc = acc * 31 + sum;
    for (int i = 0; i < 1000; i++) if (bytes[i] == 0x42) { acc += i; break; }
    u8 mx = 0; for (int i = 0; i < 1024; i++) if (bytes[i] > mx) mx = bytes[i];
    return acc * 17 + mx;
}

__attribute__((noinline)) static u64 floats(u64 seed)
{
    double s = 0; float f = 0;
    for (int i = 0; i < 64; i++) {
        dv[i] = (double)(i64)(mix(seed + i) % 100000) / 7.0 - 1000.0;
        fv[i] = (float)dv[i] * 0.5f;
    }
    for (int i = 0; i < 64; i++) {
        s += dv[i] * dv[(i + 3) & 63] / (1.0 + (i & 7));
        s += __builtin_sqrt(dv[i] < 0 ? -dv[i] : dv[i]);
        f += fv[i] * fv[(i + 5) & 63];
        if (dv[i] > 500.0) s -= 1.25;
    }
    i64 r = (i64)s;
    i32 g = (i32)f;
    u64 bits; __builtin_memcpy(&bits, &s, 8);
    u32 fb; __builtin_memcpy(&fb, &f, 4);
    long double ld = (long double)(r % 1000000) * 3.0L + 0.5L;
    return (u64)r ^ ((u64)(u32)g << 20) ^ bits ^ ((u64)fb << 32) ^ (u64)(i64)(ld * 2);
}

__attribute__((noinline)) static u64 sorting(u64 seed)
{
    for (int i = 0; i < 200; i++) arr[i] = (i32)mix(seed * 3 + i);
    sort(arr, 200);
    u64 acc = 0;
    for (int i = 0; i < 200; i++) acc = acc * 1000003 + (u32)arr[i];
    return acc;
}

__attribute__((noinline)) static u64 bitops(u64 seed)
{
    u64 acc = 0;
    for (int i = 0; i < 300; i++) {
        u64 x = mix(seed ^ (u64)i);
        acc += (u64)__builtin_popcountl(x) + (u64)__builtin_ctzl(x | 1) + (u64)__builtin_clzl(x | 1);
        acc ^= __builtin_bswap64(x) >> (i & 31);
        i64 sx = (i64)x >> (i & 63);
        acc += (u64)sx;
        switch (x & 7) {
        case 0: acc += 11; break; case 1: acc ^= 0x1234; break; case 2: acc -= 99; break;
        case 3: acc = rotl(acc, 5); break; case 4: acc *= 3; break; default: acc += x & 0xFF; break;
        }
        acc += (x > acc) ? 1 : 0;
        acc += ((i32)x < 0) ? 2 : 0;
    }
    return acc;
}

void run(u64 *out)
{
    out[0] = divs(12345);
    out[1] = strings();
    out[2] = floats(777);
    out[3] = sorting(42);
    out[4] = bitops(99);
    out[5] = 0x600DF00D;
}
