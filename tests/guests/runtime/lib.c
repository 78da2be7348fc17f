/* The few libc pieces the guests need, and a small printf. */
#include "rt.h"

void *memset(void *d, int c, size_t n)
{
    uint8_t *p = d;
    while (n--)
        *p++ = (uint8_t)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *p = d;
    const uint8_t *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    uint8_t *p = d;
    const uint8_t *q = s;
    if (p < q)
        while (n--)
            *p++ = *q++;
    else
        while (n--)
            p[n] = q[n];
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (uint8_t)*a - (uint8_t)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (uint8_t)*a - (uint8_t)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

unsigned long rt_strtoul(const char *s, const char **end, int base)
{
    unsigned long v = 0;
    if (base == 0) {
        base = 10;
        if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
            base = 16, s += 2;
    }
    for (;; s++) {
        int d;
        if (*s >= '0' && *s <= '9') d = *s - '0';
        else if (*s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
        else break;
        if (d >= base)
            break;
        v = v * (unsigned long)base + (unsigned long)d;
    }
    if (end)
        *end = s;
    return v;
}

const char *rt_cmdline_value(const char *key)
{
    size_t k = strlen(key);
    const char *p = rt_cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!strncmp(p, key, k) && p[k] == '=')
            return p + k + 1;
        while (*p && *p != ' ')
            p++;
    }
    return NULL;
}

/* printf: %d %i %u %x %X %o %c %s %p %%, flags '-', '0', '#', width, precision for %s,
 * length modifiers l, ll, z. */
struct out { char *buf; size_t size, len; };

static void put(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

int rt_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(&o, *fmt);
            continue;
        }
        int left = 0, zero = 0, alt = 0, width = 0, prec = -1, lng = 0;
        for (;; fmt++) {
            if (fmt[1] == '-') left = 1;
            else if (fmt[1] == '0') zero = 1;
            else if (fmt[1] == '#') alt = 1;
            else break;
        }
        fmt++;
        if (*fmt == '*') {
            width = va_arg(ap, int);
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        if (*fmt == '.') {
            fmt++;
            prec = 0;
            if (*fmt == '*') {
                prec = va_arg(ap, int);
                fmt++;
            }
            while (*fmt >= '0' && *fmt <= '9')
                prec = prec * 10 + (*fmt++ - '0');
        }
        while (*fmt == 'l' || *fmt == 'z') {
            lng += *fmt == 'z' ? (sizeof(size_t) == 8 ? 2 : 0) : 1;
            fmt++;
        }
        char tmp[32];
        const char *s = tmp;
        size_t n = 0;
        const char *prefix = "";
        switch (*fmt) {
        case 'c':
            tmp[0] = (char)va_arg(ap, int);
            n = 1;
            break;
        case 's':
            s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            n = strlen(s);
            if (prec >= 0 && (size_t)prec < n)
                n = (size_t)prec;
            break;
        case '%':
            tmp[0] = '%';
            n = 1;
            break;
        case 'd': case 'i': case 'u': case 'x': case 'X': case 'o': case 'p': {
            unsigned long long v;
            int neg = 0, base = 10;
            if (*fmt == 'p') {
                v = (uintptr_t)va_arg(ap, void *);
                base = 16;
                alt = 1;
            } else if (*fmt == 'd' || *fmt == 'i') {
                long long sv = lng >= 2 ? va_arg(ap, long long) : lng == 1 ? va_arg(ap, long) : va_arg(ap, int);
                neg = sv < 0;
                v = neg ? 0ull - (unsigned long long)sv : (unsigned long long)sv;
            } else {
                v = lng >= 2 ? va_arg(ap, unsigned long long) : lng == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
                base = (*fmt == 'u') ? 10 : (*fmt == 'o') ? 8 : 16;
            }
            const char *digits = *fmt == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
            char *e = tmp + sizeof tmp;
            char *p = e;
            do {
                *--p = digits[v % (unsigned)base];
                v /= (unsigned)base;
            } while (v);
            s = p;
            n = (size_t)(e - p);
            if (neg)
                prefix = "-";
            else if (alt && base == 16)
                prefix = *fmt == 'X' ? "0X" : "0x";
            break;
        }
        default:
            put(&o, '%');
            put(&o, *fmt);
            if (!*fmt)
                fmt--;
            continue;
        }
        size_t plen = strlen(prefix);
        int pad = width - (int)(n + plen);
        if (!left && !zero)
            for (; pad > 0; pad--)
                put(&o, ' ');
        for (const char *q = prefix; *q; q++)
            put(&o, *q);
        if (!left && zero)
            for (; pad > 0; pad--)
                put(&o, '0');
        for (size_t i = 0; i < n; i++)
            put(&o, s[i]);
        for (; pad > 0; pad--)
            put(&o, ' ');
    }
    if (size)
        buf[o.len < size ? o.len : size - 1] = 0;
    return (int)o.len;
}

int rt_snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = rt_vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

#ifndef __x86_64__
/* 64-bit division helpers that gcc calls on i386 (there is no 32-bit libgcc to link). */
static uint64_t udivmod64(uint64_t n, uint64_t d, uint64_t *rem)
{
    uint64_t q = 0, r = 0;
    if (d == 0) {
        __asm__ volatile("ud2");
    }
    if ((n >> 32) == 0 && (d >> 32) == 0) {
        *rem = (uint32_t)n % (uint32_t)d;
        return (uint32_t)n / (uint32_t)d;
    }
    for (int i = 63; i >= 0; i--) {
        r = (r << 1) | ((n >> i) & 1);
        if (r >= d) {
            r -= d;
            q |= 1ull << i;
        }
    }
    *rem = r;
    return q;
}

uint64_t __udivmoddi4(uint64_t n, uint64_t d, uint64_t *rem);
uint64_t __udivmoddi4(uint64_t n, uint64_t d, uint64_t *rem)
{
    uint64_t r, q = udivmod64(n, d, &r);
    if (rem)
        *rem = r;
    return q;
}
uint64_t __udivdi3(uint64_t n, uint64_t d);
uint64_t __umoddi3(uint64_t n, uint64_t d);
int64_t __divdi3(int64_t n, int64_t d);
int64_t __moddi3(int64_t n, int64_t d);

uint64_t __udivdi3(uint64_t n, uint64_t d) { uint64_t r; return udivmod64(n, d, &r); }
uint64_t __umoddi3(uint64_t n, uint64_t d) { uint64_t r; udivmod64(n, d, &r); return r; }
int64_t __divdi3(int64_t n, int64_t d)
{
    uint64_t r, q = udivmod64(n < 0 ? -(uint64_t)n : (uint64_t)n, d < 0 ? -(uint64_t)d : (uint64_t)d, &r);
    return ((n < 0) != (d < 0)) ? -(int64_t)q : (int64_t)q;
}
int64_t __moddi3(int64_t n, int64_t d)
{
    uint64_t r;
    udivmod64(n < 0 ? -(uint64_t)n : (uint64_t)n, d < 0 ? -(uint64_t)d : (uint64_t)d, &r);
    return n < 0 ? -(int64_t)r : (int64_t)r;
}
#endif
