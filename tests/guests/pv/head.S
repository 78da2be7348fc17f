/* Entry of the 64-bit PV test kernel: the domain builder starts us in ring 3 on its page tables, with %rsi
 * pointing at start_info; Xen's ELF notes say where (ENTRY), at which virtual base and where the hypercall
 * page goes. */
#include <xen/elfnote.h>

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

ELFNOTE(XEN_ELFNOTE_GUEST_OS, .asciz "XenSharp-pv-test")
ELFNOTE(XEN_ELFNOTE_GUEST_VERSION, .asciz "1")
ELFNOTE(XEN_ELFNOTE_XEN_VERSION, .asciz "xen-3.0")
ELFNOTE(XEN_ELFNOTE_LOADER, .asciz "generic")
ELFNOTE(XEN_ELFNOTE_VIRT_BASE, .quad 0xffffffff80000000)
ELFNOTE(XEN_ELFNOTE_PADDR_OFFSET, .quad 0)
ELFNOTE(XEN_ELFNOTE_ENTRY, .quad pv_start)
ELFNOTE(XEN_ELFNOTE_HYPERCALL_PAGE, .quad hypercall_page)
ELFNOTE(XEN_ELFNOTE_FEATURES, .asciz "!writable_page_tables")

	.section .text.head, "ax"
	.globl pv_start
pv_start:
	cld
	lea pv_stack_top(%rip), %rsp
	mov %rsi, %rdi
	call pv_main
1:	jmp 1b

/* #PF: record the error code, step over the 3-byte load that faulted, return with HYPERVISOR_iret.
 * The frame: RCX, R11, error code, RIP, CS, RFLAGS, RSP, SS. */
	.globl pf_entry
pf_entry:
	mov 16(%rsp), %rax
	mov %rax, pf_error(%rip)
	addq $3, 24(%rsp)
	pop %rcx
	pop %r11
	add $8, %rsp
	pushq $0
	jmp hypercall_page + 23 * 32

/* #GP: record the error code, step over the 2-byte segment load that faulted (mov %eax, %fs), return with
 * HYPERVISOR_iret. The frame as for #PF. */
	.globl gp_entry
gp_entry:
	mov 16(%rsp), %rax
	mov %rax, gp_error(%rip)
	addq $2, 24(%rsp)
	pop %rcx
	pop %r11
	add $8, %rsp
	pushq $0
	jmp hypercall_page + 23 * 32

/* Event upcall: the C handler takes the pending events, with every register the C ABI lets it clobber saved
 * (the frame has no error code: RCX, R11, RIP, CS, RFLAGS, RSP, SS, leaving the stack 16-byte aligned here after
 * nine pushes); then return with HYPERVISOR_iret. */
	.globl upcall_entry
upcall_entry:
	push %rax
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
	call pv_upcall
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rax
	pop %rcx
	pop %r11
	pushq $0
	jmp hypercall_page + 23 * 32

	.section .text.hypercall, "ax"
	.balign 4096
	.globl hypercall_page
hypercall_page:
	.fill 4096, 1, 0xcc

	.bss
	.balign 16
	.space 16384
pv_stack_top:
