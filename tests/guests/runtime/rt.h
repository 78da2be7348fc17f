/* The test-kernel runtime: boot, Xen detection, hypercalls, consoles, printf, traps, reporting.
 *
 * A guest defines `void guest_main(void)` and reports results with rt_pass/rt_fail/rt_skip (or the
 * rt_check helpers); the runtime prints the final DONE line and powers the domain off. */
#ifndef RT_H
#define RT_H

#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>
#include <xen/xen.h>
#include <xen/errno.h>
#include <xen/arch-x86/hvm/start_info.h>
#include "layout.h"

#define RT_NORETURN __attribute__((noreturn))
#define RT_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define RT_USER_EXIT_VECTOR 0x80

/* ---- boot information ---- */
extern struct hvm_start_info *rt_start_info;   /* NULL when the magic did not match */
extern const char *rt_cmdline;                 /* "" when none was given */
extern const char *rt_guest_name;              /* defined by each guest through RT_GUEST() */

/* Each guest names itself once: RT_GUEST("cpu64"). A variant built from the same source (e.g. a
 * 32-bit build of a 64-bit guest) defines RT_GUEST_NAME before including it. */
#ifdef RT_GUEST_NAME
#define RT_GUEST(n) const char *rt_guest_name = RT_GUEST_NAME
#else
#define RT_GUEST(n) const char *rt_guest_name = n
#endif

void guest_main(void);

/* ---- Xen ---- */
extern int rt_xen;                 /* 1 when the Xen CPUID leaves and the hypercall page are present */
extern uint32_t rt_xen_cpuid_base; /* 0x40000000 + 0x100 * k, or 0 */
extern uint8_t rt_hypercall_page[4096];

/* Raw hypercall through the hypercall page: number and up to five arguments. */
long rt_hypercall(unsigned int nr, unsigned long a1, unsigned long a2, unsigned long a3,
                  unsigned long a4, unsigned long a5);

static inline long HYPERVISOR_xen_version(int cmd, void *arg)
{ return rt_hypercall(__HYPERVISOR_xen_version, (unsigned long)cmd, (unsigned long)arg, 0, 0, 0); }
static inline long HYPERVISOR_console_io(int cmd, unsigned long count, const void *buf)
{ return rt_hypercall(__HYPERVISOR_console_io, (unsigned long)cmd, count, (unsigned long)buf, 0, 0); }
static inline long HYPERVISOR_memory_op(unsigned int cmd, void *arg)
{ return rt_hypercall(__HYPERVISOR_memory_op, cmd, (unsigned long)arg, 0, 0, 0); }
static inline long HYPERVISOR_event_channel_op(int cmd, void *arg)
{ return rt_hypercall(__HYPERVISOR_event_channel_op, (unsigned long)cmd, (unsigned long)arg, 0, 0, 0); }
static inline long HYPERVISOR_grant_table_op(unsigned int cmd, void *arg, unsigned int count)
{ return rt_hypercall(__HYPERVISOR_grant_table_op, cmd, (unsigned long)arg, count, 0, 0); }
static inline long HYPERVISOR_sched_op(int cmd, void *arg)
{ return rt_hypercall(__HYPERVISOR_sched_op, (unsigned long)cmd, (unsigned long)arg, 0, 0, 0); }
static inline long HYPERVISOR_hvm_op(int cmd, void *arg)
{ return rt_hypercall(__HYPERVISOR_hvm_op, (unsigned long)cmd, (unsigned long)arg, 0, 0, 0); }
static inline long HYPERVISOR_vcpu_op(int cmd, unsigned int vcpu, void *arg)
{ return rt_hypercall(__HYPERVISOR_vcpu_op, (unsigned long)cmd, vcpu, (unsigned long)arg, 0, 0); }

/* HVMOP_get_param / HVMOP_set_param for DOMID_SELF; return the hypercall's result. */
long rt_hvm_get_param(uint32_t index, uint64_t *value);
long rt_hvm_set_param(uint32_t index, uint64_t value);

/* ---- shared_info, events, time (runtime/xenev.c) ---- */
#include <xen/event_channel.h>
#define RT_UPCALL_VECTOR 0xF3
extern struct shared_info *rt_shared_info;
extern volatile unsigned long rt_upcall_count;
/* XENMEM_add_to_physmap(XENMAPSPACE_shared_info) into a page of the image; 0 or -errno. */
long rt_map_shared_info(void);
/* Map shared_info, install the upcall vector handler and set HVM_PARAM_CALLBACK_IRQ to it
 * (vector type). on_upcall runs in interrupt context after evtchn_upcall_pending is cleared. */
long rt_events_init(void (*on_upcall)(void));
/* 2-level ABI: handle every pending unmasked port (clearing its pending bit); returns how many. */
unsigned int rt_evtchn_2l_dispatch(void (*handler)(evtchn_port_t port));
void rt_evtchn_2l_mask(evtchn_port_t port);
int rt_evtchn_2l_pending(evtchn_port_t port);
void rt_evtchn_2l_clear(evtchn_port_t port);
/* EVTCHNOP_unmask: makes a freshly bound 2-level port deliverable whatever its initial mask. */
long rt_evtchn_unmask(evtchn_port_t port);
/* Xen system time (ns since boot) from vcpu_info[0].time. */
uint64_t rt_xen_time_ns(void);
/* Enable interrupts and spin until *flag is set or timeout_ns of Xen time pass; returns *flag. */
int rt_wait_for(volatile int *flag, uint64_t timeout_ns);
/* Our domain id (from an unbound channel's EVTCHNOP_status); 0 or -errno. */
long rt_domid(domid_t *out);

/* ---- console output ---- */
int rt_printf(const char *fmt, ...) RT_PRINTF(1, 2);
int rt_vprintf(const char *fmt, va_list ap);
int rt_snprintf(char *buf, size_t size, const char *fmt, ...) RT_PRINTF(3, 4);
int rt_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
/* Which sinks carry output: bit 0 console_io, bit 1 PV console ring, bit 2 port 0xE9. */
extern unsigned int rt_console_sinks;
#define RT_SINK_CONSOLE_IO 1u
#define RT_SINK_PV_RING    2u
#define RT_SINK_PORT_E9    4u
/* Write raw bytes to one sink; returns the bytes written or a negative errno. */
long rt_console_io_write(const char *s, size_t n);
/* Reads the console's ring and port from the HVM params again (after a soft reset they are new). */
void rt_console_reconnect(void);
long rt_pv_console_write(const char *s, size_t n);

/* ---- reporting: the lines the test harness parses ---- */
void rt_pass(const char *name);
void rt_fail(const char *name, const char *fmt, ...) RT_PRINTF(2, 3);
void rt_skip(const char *name, const char *fmt, ...) RT_PRINTF(2, 3);
/* PASS when ok, else FAIL with the formatted detail; returns ok. */
int rt_check(const char *name, int ok, const char *fmt, ...) RT_PRINTF(3, 4);
/* PASS when got == want, else FAIL "got 0x.. want 0x.."; returns got == want. */
int rt_check_eq(const char *name, uint64_t got, uint64_t want);
/* Print DONE and power off (Xen: SCHEDOP_shutdown; otherwise isa-debug-exit, then hlt). */
void rt_done(void) RT_NORETURN;
extern unsigned int rt_passed, rt_failed, rt_skipped;

/* ---- traps ---- */
#ifdef __x86_64__
struct rt_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rdi, rsi, rbp, rbx, rdx, rcx, rax;
    uint64_t vector, error_code, ip, cs, flags, sp, ss;
};
#else
struct rt_frame {
    uint32_t es, ds, edi, esi, ebp, esp_unused, ebx, edx, ecx, eax;
    uint32_t vector, error_code, ip, cs, flags, sp, ss;   /* sp/ss only when coming from ring 3 */
};
#endif

struct rt_trap {
    unsigned int vector;
    unsigned long error_code;
    unsigned long ip;
    unsigned long cr2;
    unsigned long cs;
};

typedef void (*rt_handler)(struct rt_frame *f);
/* Install a handler for a vector; it runs with interrupts off and returns to the interrupted code
 * (it may edit the frame). NULL restores the default (catch or report). */
void rt_set_handler(unsigned int vector, rt_handler h);
/* Set the IST index (1..7, 64-bit only) and the DPL (0 or 3) of a vector's gate. */
void rt_set_gate(unsigned int vector, unsigned int ist, unsigned int dpl);
/* Run fn(arg); when it raises a trap with no handler, stop it and fill *t. Returns 0 when fn
 * returned normally and 1 when it trapped. Nests. */
int rt_try(void (*fn)(void *), void *arg, struct rt_trap *t);
/* Run fn in ring 3 on the given stack (flat segments). fn may return (reported as vector
 * RT_USER_EXIT_VECTOR) or trap. Returns the vector that ended it; *t gets the details. */
unsigned int rt_run_user(void (*fn)(void), void *stack_top, struct rt_trap *t);
/* Leave the innermost rt_try as if a trap `vector` had happened (for entry paths such as SYSCALL
 * that are not interrupt gates). */
void rt_catch_exit(unsigned int vector) RT_NORETURN;
const char *rt_vector_name(unsigned int vector);
extern uint8_t rt_ist_stacks[7][4096];
extern uint8_t rt_ring0_stack[8192];

typedef struct { unsigned long regs[9]; } rt_jmp_buf;
int rt_setjmp(rt_jmp_buf *b) __attribute__((returns_twice));
void rt_longjmp(rt_jmp_buf *b, int val) RT_NORETURN;
void rt_enter_user(void (*fn)(void), void *sp) RT_NORETURN;

/* ---- CPU helpers ---- */
static inline void rt_cpuid(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{ __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub)); }
static inline uint64_t rt_rdmsr(uint32_t msr)
{ uint32_t lo, hi; __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr)); return ((uint64_t)hi << 32) | lo; }
static inline void rt_wrmsr(uint32_t msr, uint64_t v)
{ __asm__ volatile("wrmsr" :: "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory"); }
static inline uint64_t rt_rdtsc(void)
{ uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }
static inline void rt_outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void rt_outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t rt_inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline unsigned long rt_read_cr0(void) { unsigned long v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline unsigned long rt_read_cr2(void) { unsigned long v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline unsigned long rt_read_cr3(void) { unsigned long v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline unsigned long rt_read_cr4(void) { unsigned long v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline void rt_write_cr0(unsigned long v) { __asm__ volatile("mov %0, %%cr0" :: "r"(v) : "memory"); }
static inline void rt_write_cr3(unsigned long v) { __asm__ volatile("mov %0, %%cr3" :: "r"(v) : "memory"); }
static inline void rt_write_cr4(unsigned long v) { __asm__ volatile("mov %0, %%cr4" :: "r"(v) : "memory"); }
static inline void rt_invlpg(const volatile void *p) { __asm__ volatile("invlpg (%0)" :: "r"(p) : "memory"); }
static inline void rt_sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void rt_cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void rt_pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void rt_barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void rt_mb(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline unsigned long rt_read_flags(void)
{ unsigned long f; __asm__ volatile("pushf; pop %0" : "=r"(f)); return f; }

/* Processor vendor string (12 chars + NUL) and a TSC frequency estimate in kHz (0 if unknown). */
void rt_cpu_vendor(char out[13]);
uint64_t rt_tsc_khz(void);
/* Timeouts on the TSC: rt_expired(rt_deadline(ms)) becomes true after about ms milliseconds. */
uint64_t rt_deadline(unsigned int ms);
int rt_expired(uint64_t deadline);

/* ---- SMP (xAPIC INIT-SIPI-SIPI into a real-mode trampoline) ---- */
/* Start the CPU with the given APIC id running fn on its own stack; returns 0 once the AP is alive, which may
 * be just before fn starts: fn signals what the caller waits for. */
int rt_start_ap(uint32_t apic_id, void (*fn)(unsigned int cpu), unsigned int cpu);
uint32_t rt_lapic_id(void);
/* Write the xAPIC ICR (destination APIC id, low word) and wait for delivery; EOI. */
void rt_lapic_send_ipi(uint32_t apic_id, uint32_t icr_low);
void rt_lapic_eoi(void);
/* APIC ids of the enabled processors from the ACPI MADT (RSDP from hvm_start_info, else the BIOS
 * area scan); returns how many, or -1 without ACPI. */
int rt_acpi_apic_ids(uint32_t *ids, int max);

/* ---- mode switches ---- */
/* Drop to real mode, run a fixed real-mode routine on `in`, and come back. The routine returns
 * ((in + 0x1234) & 0xFFFF) | (segment arithmetic check << 16) -- see realmode.S. */
uint32_t rt_realmode_call(uint32_t in);

/* ---- small libc ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
const char *rt_cmdline_value(const char *key);   /* "key=value" → pointer to value, or NULL */
unsigned long rt_strtoul(const char *s, const char **end, int base);

#endif
