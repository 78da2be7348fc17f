/* Code that runs in real mode. Both blobs are copied to fixed pages below 64 KiB before use and
 * address themselves through MS()/TR(): their copy's absolute addresses. */
#include "layout.h"

#define MS(x) (RT_MODESWITCH_BASE + ((x) - rt_ms_start))
#define TR(x) (RT_TRAMPOLINE_BASE + ((x) - rt_tramp_start))
#define RM_INT_VECTOR 0x60

	.section .text
/* ------------------------------------------------------------------------------------------
 * uint32_t rt_ms_start(uint32_t in), called at its copy: [long mode →] protected mode →
 * real mode → and back. Result: bits 0-15 = (in + 0x1234) computed with 16-bit registers;
 * bit 16: a word read through DS = base >> 4 matched; bit 17: INT 0x60 went through the
 * real-mode IVT; bit 18: CR0.PE read 0 in real mode.
 * ---------------------------------------------------------------------------------------- */
	.globl rt_ms_start, rt_ms_end
#ifdef __x86_64__
	.code64
rt_ms_start:
	pushf
	cli
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	mov %edi, MS(ms_value)
	mov %rsp, MS(ms_saved_sp)
	sgdt MS(ms_saved_gdt)
	sidt MS(ms_saved_idt)
	pushq $SEL_KCODE32
	pushq $MS(ms_pm32)
	lretq
	.code32
ms_pm32:
	mov $SEL_KDATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	/* Leave long mode: paging off (we run identity-mapped), then EFER.LME off. */
	mov %cr0, %eax
	mov %eax, MS(ms_saved_cr0)
	and $0x7FFFFFFF, %eax
	mov %eax, %cr0
	mov $MSR_EFER, %ecx
	rdmsr
	mov %eax, MS(ms_saved_efer)
	and $~EFER_LME, %eax
	wrmsr
	jmp ms_to_real
#else
	.code32
rt_ms_start:
	pushf
	cli
	push %ebx
	push %esi
	push %edi
	push %ebp
	mov 24(%esp), %eax
	mov %eax, MS(ms_value)
	mov %esp, MS(ms_saved_sp)
	sgdt MS(ms_saved_gdt)
	sidt MS(ms_saved_idt)
	mov %cr0, %eax
	mov %eax, MS(ms_saved_cr0)
	and $0x7FFFFFFF, %eax
	mov %eax, %cr0
	jmp ms_to_real
#endif
ms_to_real:
	ljmp $SEL_CODE16, $MS(ms_pm16)
	.code16
ms_pm16:
	mov $SEL_DATA16, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov %ax, %fs
	mov %ax, %gs
	mov %cr0, %eax
	and $~1, %eax
	mov %eax, %cr0
	ljmp $0, $MS(ms_rm)
ms_rm:
	xor %ax, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov $MS(ms_stack_top), %sp
	lidt MS(ms_rm_idt)
	/* 16-bit arithmetic wraps at 64 KiB */
	mov MS(ms_value), %ax
	add $0x1234, %ax
	mov %ax, MS(ms_result)
	/* segmented addressing: DS base = segment * 16 */
	mov $(RT_MODESWITCH_BASE >> 4), %bx
	mov %bx, %ds
	mov (ms_probe - rt_ms_start), %ax
	xor %bx, %bx
	mov %bx, %ds
	cmp $0xBEEF, %ax
	jne 1f
	orw $1, MS(ms_result) + 2
1:	/* software interrupt through the real-mode IVT (the old vector is restored afterwards) */
	mov (RM_INT_VECTOR * 4), %eax
	push %eax
	movw $MS(ms_rm_handler), (RM_INT_VECTOR * 4)
	movw $0, (RM_INT_VECTOR * 4 + 2)
	int $RM_INT_VECTOR
	pop %eax
	mov %eax, (RM_INT_VECTOR * 4)
	cmpw $1, MS(ms_int_count)
	jne 2f
	orw $2, MS(ms_result) + 2
2:	mov %cr0, %eax
	test $1, %al
	jnz 3f
	orw $4, MS(ms_result) + 2
3:	/* back to protected mode */
	cli
	lgdtl MS(ms_saved_gdt)
	mov %cr0, %eax
	or $1, %eax
	mov %eax, %cr0
	ljmpl $SEL_KCODE32, $MS(ms_back32)
ms_rm_handler:
	incw %cs:MS(ms_int_count)
	iret
	.code32
ms_back32:
	mov $SEL_KDATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs
#ifdef __x86_64__
	mov $MSR_EFER, %ecx
	mov MS(ms_saved_efer), %eax
	xor %edx, %edx
	wrmsr
	mov MS(ms_saved_cr0), %eax
	mov %eax, %cr0
	ljmp $SEL_KCODE64, $MS(ms_back64)
	.code64
ms_back64:
	lgdt MS(ms_saved_gdt)
	lidt MS(ms_saved_idt)
	mov MS(ms_saved_sp), %rsp
	mov MS(ms_result), %eax
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	popf
	ret
#else
	mov MS(ms_saved_cr0), %eax
	mov %eax, %cr0
	lidt MS(ms_saved_idt)
	mov MS(ms_saved_sp), %esp
	mov MS(ms_result), %eax
	pop %ebp
	pop %edi
	pop %esi
	pop %ebx
	popf
	ret
#endif
	.balign 8
ms_value:	.long 0
ms_result:	.long 0
ms_int_count:	.long 0
ms_probe:	.word 0xBEEF
	.balign 8
ms_saved_sp:	.quad 0
ms_saved_cr0:	.long 0
ms_saved_efer:	.long 0
	.word 0
ms_saved_gdt:	.word 0
	.quad 0
	.word 0
ms_saved_idt:	.word 0
	.quad 0
	.word 0
ms_rm_idt:	.word 0x3FF
	.long 0
	.balign 16
	.space 512
ms_stack_top:
rt_ms_end:

/* ------------------------------------------------------------------------------------------
 * AP start-up trampoline: the SIPI starts the AP in real mode at RT_TRAMPOLINE_BASE. It enters
 * protected mode on the kernel's GDT, long mode in the 64-bit build with the BSP's CR3 and EFER,
 * and calls rt_tramp_entry(rt_tramp_arg) on rt_tramp_stack.
 * ---------------------------------------------------------------------------------------- */
	.globl rt_tramp_start, rt_tramp_end, rt_tramp_stack, rt_tramp_cr3, rt_tramp_efer
	.globl rt_tramp_entry, rt_tramp_arg
	.code16
rt_tramp_start:
	cli
	cld
	xor %ax, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	lgdtl TR(tr_gdt_desc)
	mov %cr0, %eax
	or $1, %eax
	mov %eax, %cr0
	ljmpl $SEL_KCODE32, $TR(tr_pm32)
	.code32
tr_pm32:
	mov $SEL_KDATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs
	mov TR(rt_tramp_stack), %esp
#ifdef __x86_64__
	mov %cr4, %eax
	or $0x20, %eax
	mov %eax, %cr4
	mov TR(rt_tramp_cr3), %eax
	mov %eax, %cr3
	mov $MSR_EFER, %ecx
	mov TR(rt_tramp_efer), %eax
	xor %edx, %edx
	wrmsr
	mov %cr0, %eax
	or $0x80000001, %eax
	mov %eax, %cr0
	ljmp $SEL_KCODE64, $TR(tr_lm64)
	.code64
tr_lm64:
	mov $SEL_KDATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov TR(rt_tramp_stack), %rsp
	mov TR(rt_tramp_arg), %edi
	mov TR(rt_tramp_entry), %rax
	call *%rax
#else
	pushl TR(rt_tramp_arg)
	call *TR(rt_tramp_entry)
#endif
1:	cli
	hlt
	jmp 1b
	.balign 8
tr_gdt_desc:	.word GDT_ENTRIES * 8 - 1
	.long rt_gdt
	.balign 8
rt_tramp_stack:	.quad 0
rt_tramp_cr3:	.long 0
rt_tramp_efer:	.long 0
rt_tramp_entry:	.quad 0
rt_tramp_arg:	.quad 0
rt_tramp_end:
