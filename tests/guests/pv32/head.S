/* Entry of the 32-bit PAE PV test kernel (the compat ABI): the domain builder starts us in ring 1 on its PAE page
 * tables, with %esi pointing at start_info; hypercalls go through the page Xen fills (INT $0x82). */
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

ELFNOTE(XEN_ELFNOTE_GUEST_OS, .asciz "XenSharp-pv32-test")
ELFNOTE(XEN_ELFNOTE_GUEST_VERSION, .asciz "1")
ELFNOTE(XEN_ELFNOTE_XEN_VERSION, .asciz "xen-3.0")
ELFNOTE(XEN_ELFNOTE_LOADER, .asciz "generic")
ELFNOTE(XEN_ELFNOTE_VIRT_BASE, .long 0xc0000000)
ELFNOTE(XEN_ELFNOTE_PADDR_OFFSET, .long 0)
ELFNOTE(XEN_ELFNOTE_ENTRY, .long pv_start)
ELFNOTE(XEN_ELFNOTE_HYPERCALL_PAGE, .long hypercall_page)
ELFNOTE(XEN_ELFNOTE_PAE_MODE, .asciz "yes")
ELFNOTE(XEN_ELFNOTE_FEATURES, .asciz "!writable_page_tables")

	.section .text.head, "ax"
	.globl pv_start
pv_start:
	cld
	mov $pv_stack_top, %esp
	push %esi
	call pv_main
1:	jmp 1b

/* The trap and upcall entries below serve kernels that define these; the others never register the entries. */
	.weak pf_error, pv_upcall

/* #PF from ring 1: the frame is error code, EIP, CS, EFLAGS. Record the error code, step over the 2-byte load
 * that faulted, return with HYPERVISOR_iret (its stub pushes EAX to complete the compat iret frame). */
	.globl pf_entry
pf_entry:
	mov (%esp), %eax
	mov %eax, pf_error
	add $4, %esp
	addl $2, (%esp)
	jmp hypercall_page + 23 * 32

/* Event upcall: EIP, CS, EFLAGS on the stack; the C handler runs with the registers the C ABI lets it clobber
 * saved. */
	.globl upcall_entry
upcall_entry:
	push %eax
	push %ecx
	push %edx
	call pv_upcall
	pop %edx
	pop %ecx
	pop %eax
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
