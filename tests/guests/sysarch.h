/* Helpers shared by the system-architecture guests (tasks32, gates32, limits32, debug):
 * a larger GDT that keeps the runtime's descriptors, descriptor builders, the IDT. */
#ifndef SYSARCH_H
#define SYSARCH_H

#include "rt.h"

#ifdef __x86_64__
#define ASZ "q"
#else
#define ASZ "l"
#endif

extern uint64_t rt_gdt[GDT_ENTRIES];

#define SA_GDT_ENTRIES 40
uint64_t sa_gdt[SA_GDT_ENTRIES] __attribute__((aligned(16)));

/* Copies the runtime's GDT (its busy TSS included) into sa_gdt and loads it. */
static __attribute__((unused)) void sa_gdt_init(void)
{
    memcpy(sa_gdt, rt_gdt, sizeof(uint64_t) * GDT_ENTRIES);
    struct __attribute__((packed)) { uint16_t limit; uintptr_t base; } d = { sizeof sa_gdt - 1, (uintptr_t)sa_gdt };
    __asm__ volatile("lgdt %0" :: "m"(d) : "memory");
}

/* A segment descriptor: access byte (P, DPL, S, type) and the G/D/L/AVL nibble. */
static __attribute__((unused)) uint64_t sa_desc(uintptr_t base, uint32_t limit, unsigned int access, unsigned int flags)
{
    uint64_t b = (uint64_t)base;
    return (limit & 0xFFFFull) | ((b & 0xFFFFFFull) << 16) | ((uint64_t)access << 40) |
           ((uint64_t)((limit >> 16) & 0xF) << 48) | ((uint64_t)(flags & 0xF) << 52) | (((b >> 24) & 0xFF) << 56);
}

/* A call, task, interrupt or trap gate (legacy 8-byte form). */
static __attribute__((unused)) uint64_t sa_gate(uint16_t sel, uint32_t offset, unsigned int access, unsigned int params)
{
    return (offset & 0xFFFFull) | ((uint64_t)sel << 16) | ((uint64_t)(params & 0x1F) << 32) |
           ((uint64_t)access << 40) | ((uint64_t)(offset >> 16) << 48);
}

/* QEMU's TCG without Xen: its known deviations are reported as SKIP. */
static __attribute__((unused)) int sa_on_qemu(void)
{
    uint32_t a, b, c, d;
    rt_cpuid(0x80000000, 0, &a, &b, &c, &d);
    if (rt_xen || a < 0x80000002)
        return 0;
    char brand[17];
    rt_cpuid(0x80000002, 0, (uint32_t *)brand, (uint32_t *)(brand + 4), (uint32_t *)(brand + 8),
             (uint32_t *)(brand + 12));
    brand[16] = 0;
    return !strncmp(brand, "QEMU", 4);
}

static __attribute__((unused)) int sa_busy(uint16_t sel)
{
    return (int)((sa_gdt[sel / 8] >> 41) & 1);
}

static __attribute__((unused)) uint16_t sa_str(void)
{
    uint16_t tr;
    __asm__ volatile("str %0" : "=r"(tr));
    return tr;
}

static __attribute__((unused)) void *sa_idt_base(void)
{
    struct __attribute__((packed)) { uint16_t limit; uintptr_t base; } d;
    __asm__ volatile("sidt %0" : "=m"(d));
    return (void *)d.base;
}

/* Expect a trap: runs fn under rt_try and checks its vector and error code. */
static __attribute__((unused)) void sa_expect(const char *name, void (*fn)(void *), void *arg, unsigned int vector, unsigned long error)
{
    struct rt_trap t;
    if (!rt_try(fn, arg, &t)) {
        rt_fail(name, "no exception, want vector %u error %#lx", vector, error);
        return;
    }
    if (t.vector != vector || t.error_code != error)
        rt_fail(name, "vector %u error %#lx ip %#lx, want vector %u error %#lx", t.vector, t.error_code, t.ip,
                vector, error);
    else
        rt_pass(name);
}

#endif
