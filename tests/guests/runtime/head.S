/* Entry point: Xen's PVH boot protocol starts us in 32-bit flat protected mode, paging off,
 * with %ebx holding the physical address of struct hvm_start_info. */
#include <xen/elfnote.h>
#include "layout.h"

#define ELFNOTE(type, body)                  \
	.pushsection .note.Xen, "a", @note;  \
	.balign 4;                           \
	.long 2f - 1f;                       \
	.long 4f - 3f;                       \
	.long type;                          \
1:	.asciz "Xen";                        \
2:	.balign 4;                           \
3:	body;                                \
4:	.balign 4;                           \
	.popsection

ELFNOTE(XEN_ELFNOTE_GUEST_OS, .asciz "XenSharp-test")
ELFNOTE(XEN_ELFNOTE_GUEST_VERSION, .asciz "1")
ELFNOTE(XEN_ELFNOTE_XEN_VERSION, .asciz "xen-3.0")
ELFNOTE(XEN_ELFNOTE_LOADER, .asciz "generic")
/* A 64-bit ELF carries the entry as an 8-byte value (as Linux does), a 32-bit ELF as 4 bytes. */
#ifdef __x86_64__
ELFNOTE(XEN_ELFNOTE_PHYS32_ENTRY, .quad rt_start32)
#else
ELFNOTE(XEN_ELFNOTE_PHYS32_ENTRY, .long rt_start32)
#endif

	.section .text.head, "ax"
	.code32
	.globl rt_start32
rt_start32:
	cli
	cld
	mov %ebx, %esi
	lgdt rt_gdt_desc
	ljmp $SEL_KCODE32, $1f
1:	mov $SEL_KDATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs
	mov $(rt_stacks + RT_STACK_SIZE), %esp
	/* Clear .bss (the loader zeroes it too, but do not rely on it). */
	mov $__bss_start, %edi
	mov $__bss_end, %ecx
	sub %edi, %ecx
	xor %eax, %eax
	rep stosb

#ifdef __x86_64__
	/* Identity-map the first 4 GiB with 2 MiB pages (user-accessible, so ring-3 tests can run
	 * anywhere). */
	mov $rt_pd, %edi
	xor %ecx, %ecx
2:	mov %ecx, %eax
	shl $21, %eax
	or $0x87, %eax                  /* P | RW | US | PS */
	mov %eax, (%edi,%ecx,8)
	movl $0, 4(%edi,%ecx,8)
	inc %ecx
	cmp $2048, %ecx
	jb 2b
	mov $rt_pdpt, %edi
	xor %ecx, %ecx
3:	mov %ecx, %eax
	shl $12, %eax
	add $(rt_pd + 7), %eax
	mov %eax, (%edi,%ecx,8)
	inc %ecx
	cmp $4, %ecx
	jb 3b
	movl $(rt_pdpt + 7), rt_pml4
	mov $rt_pml4, %eax
	mov %eax, %cr3
	mov %cr4, %eax
	or $0x20, %eax                  /* PAE */
	mov %eax, %cr4
	/* EFER.LME, and NXE when the CPU has NX. */
	mov $0x80000000, %eax
	cpuid
	xor %edi, %edi
	cmp $0x80000001, %eax
	jb 4f
	mov $0x80000001, %eax
	cpuid
	bt $20, %edx
	jnc 4f
	mov $EFER_NXE, %edi
4:	mov $MSR_EFER, %ecx
	rdmsr
	or $EFER_LME, %eax
	or %edi, %eax
	wrmsr
	mov %cr0, %eax
	or $0x80000001, %eax            /* PG | PE */
	mov %eax, %cr0
	ljmp $SEL_KCODE64, $rt_start64

	.code64
rt_start64:
	mov $SEL_KDATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov $(rt_stacks + RT_STACK_SIZE), %rsp
	mov %esi, %edi
	call rt_main
5:	cli
	hlt
	jmp 5b
#else
	push %esi
	call rt_main
5:	cli
	hlt
	jmp 5b
#endif

	.section .bss
	.balign 4096
	.globl rt_stacks
rt_stacks:
	.space RT_STACK_SIZE * RT_MAX_CPUS
#ifdef __x86_64__
	.globl rt_pml4, rt_pdpt, rt_pd
rt_pml4:
	.space 4096
rt_pdpt:
	.space 4096
rt_pd:
	.space 4096 * 4
#endif
