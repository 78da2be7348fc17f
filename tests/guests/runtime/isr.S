/* Descriptor tables, exception/interrupt entry stubs and setjmp/longjmp. */
#include "layout.h"

	.section .data
	.balign 16
	.globl rt_gdt, rt_gdt_desc
rt_gdt:
	.quad 0
	.quad 0x00CF9A000000FFFF        /* SEL_KCODE32 */
	.quad 0x00AF9A000000FFFF        /* SEL_KCODE64 */
	.quad 0x00CF92000000FFFF        /* SEL_KDATA */
	.quad 0x00CFFA000000FFFF        /* SEL_UCODE32 (DPL 3) */
	.quad 0x00CFF2000000FFFF        /* SEL_UDATA (DPL 3) */
	.quad 0x00AFFA000000FFFF        /* SEL_UCODE64 (DPL 3) */
	.quad 0x00009A000000FFFF        /* SEL_CODE16: base 0, limit 64 KiB */
	.quad 0x000092000000FFFF        /* SEL_DATA16 */
	.quad 0, 0                      /* SEL_TSS, filled in by rt_cpu_tables_init */
	.quad 0x00CF12000000FFFF        /* SEL_TEST_NP: P = 0 */
	.quad 0x00CF92010000FFFF        /* SEL_TEST_BASE: base 0x10000 */
	.quad 0x0040920000000FFF        /* SEL_TEST_LIMIT: byte-granular limit 0xFFF */
	.balign 8
	.word 0
rt_gdt_desc:
	.word GDT_ENTRIES * 8 - 1
	.long rt_gdt, 0

/* One 16-byte stub per vector: push a zero error code when the CPU does not push one, then the
 * vector, then join the common path that saves registers and calls rt_trap(frame). */
	.section .text
	.balign 16
	.globl rt_isr_stubs
rt_isr_stubs:
	.set vec, 0
	.rept 256
	.balign 16
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	push $0
	.endif
	push $vec
	jmp rt_isr_common
	.set vec, vec + 1
	.endr

#ifdef __x86_64__
rt_isr_common:
	push %rax
	push %rcx
	push %rdx
	push %rbx
	push %rbp
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
	push %r12
	push %r13
	push %r14
	push %r15
	cld
	mov %rsp, %rdi
	call rt_trap
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rbp
	pop %rbx
	pop %rdx
	pop %rcx
	pop %rax
	add $16, %rsp
	iretq

/* jmpbuf: rbx rbp r12 r13 r14 r15 rsp rip rflags */
	.globl rt_setjmp, rt_longjmp
rt_setjmp:
	mov %rbx, 0(%rdi)
	mov %rbp, 8(%rdi)
	mov %r12, 16(%rdi)
	mov %r13, 24(%rdi)
	mov %r14, 32(%rdi)
	mov %r15, 40(%rdi)
	lea 8(%rsp), %rdx
	mov %rdx, 48(%rdi)
	mov (%rsp), %rdx
	mov %rdx, 56(%rdi)
	pushf
	pop %rdx
	mov %rdx, 64(%rdi)
	xor %eax, %eax
	ret
rt_longjmp:
	mov %esi, %eax
	mov 0(%rdi), %rbx
	mov 8(%rdi), %rbp
	mov 16(%rdi), %r12
	mov 24(%rdi), %r13
	mov 32(%rdi), %r14
	mov 40(%rdi), %r15
	mov 48(%rdi), %rsp
	push 64(%rdi)
	popf
	jmp *56(%rdi)

/* rt_enter_user(rip, rsp): iretq to ring 3 (64-bit code). */
	.globl rt_enter_user
rt_enter_user:
	push $(SEL_UDATA | 3)
	push %rsi
	push $0x2
	push $(SEL_UCODE64 | 3)
	push %rdi
	iretq
#else
rt_isr_common:
	pusha
	push %ds
	push %es
	mov $SEL_KDATA, %eax
	mov %eax, %ds
	mov %eax, %es
	cld
	push %esp
	call rt_trap
	add $4, %esp
	pop %es
	pop %ds
	popa
	add $8, %esp
	iret

/* jmpbuf: ebx esi edi ebp esp eip eflags */
	.globl rt_setjmp, rt_longjmp
rt_setjmp:
	mov 4(%esp), %ecx
	mov %ebx, 0(%ecx)
	mov %esi, 4(%ecx)
	mov %edi, 8(%ecx)
	mov %ebp, 12(%ecx)
	lea 4(%esp), %edx
	mov %edx, 16(%ecx)
	mov (%esp), %edx
	mov %edx, 20(%ecx)
	pushf
	pop %edx
	mov %edx, 24(%ecx)
	xor %eax, %eax
	ret
rt_longjmp:
	mov 4(%esp), %ecx
	mov 8(%esp), %eax
	mov 0(%ecx), %ebx
	mov 4(%ecx), %esi
	mov 8(%ecx), %edi
	mov 12(%ecx), %ebp
	mov 16(%ecx), %esp
	push 24(%ecx)
	popf
	jmp *20(%ecx)

/* rt_enter_user(eip, esp): iret to ring 3 with user data segments loaded. */
	.globl rt_enter_user
rt_enter_user:
	mov 4(%esp), %ecx
	mov 8(%esp), %edx
	mov $(SEL_UDATA | 3), %eax
	mov %eax, %ds
	mov %eax, %es
	push $(SEL_UDATA | 3)
	push %edx
	push $0x2
	push $(SEL_UCODE32 | 3)
	push %ecx
	iret
#endif

/* Ring-3 code returns here; the DPL-3 gate at RT_USER_EXIT_VECTOR brings it back to ring 0. */
	.globl rt_user_exit_stub
rt_user_exit_stub:
	int $0x80
	ud2
