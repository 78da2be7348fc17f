/* Selectors, fixed low-memory addresses and constants shared by the runtime's C and assembly. */
#ifndef RT_LAYOUT_H
#define RT_LAYOUT_H

#define SEL_KCODE32 0x08
#define SEL_KCODE64 0x10
#define SEL_KDATA   0x18
#define SEL_UCODE32 0x20   /* SYSRET's STAR base: SS = base + 8, 64-bit CS = base + 16 */
#define SEL_UDATA   0x28
#define SEL_UCODE64 0x30
#define SEL_CODE16  0x38
#define SEL_DATA16  0x40
#define SEL_TSS     0x48   /* 16 bytes in long mode */
#define SEL_TEST_NP    0x58   /* not-present data segment (tests #NP) */
#define SEL_TEST_BASE  0x60   /* data segment with base 0x10000 (tests segment bases) */
#define SEL_TEST_LIMIT 0x68   /* data segment with limit 0xFFF (tests limit checks) */
#define GDT_ENTRIES 14

#ifdef __x86_64__
#define SEL_KCODE SEL_KCODE64
#else
#define SEL_KCODE SEL_KCODE32
#endif

/* Low-memory pages used for real-mode code: mode-switch blob and the AP start-up trampoline.
 * They sit below the 64 KiB mark so real-mode code runs with CS = 0 (mode switch) and
 * CS = vector << 8 (SIPI). */
#define RT_MODESWITCH_BASE 0x6000
#define RT_TRAMPOLINE_BASE 0x8000

#define RT_STACK_SIZE 16384
#define RT_MAX_CPUS 4

#define MSR_EFER 0xC0000080
#define EFER_SCE 0x001
#define EFER_LME 0x100
#define EFER_NXE 0x800

#endif
