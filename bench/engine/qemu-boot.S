/* PVH entry for running the workloads under QEMU TCG (the benchmark's second peer):
   QEMU starts a PVH kernel in 32-bit protected mode without paging; this sets up identity
   page tables (1 GiB of 2 MiB pages), enters long mode and calls qemu_main with the start info QEMU passed in %ebx. */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

    .section .note.Xen, "a"
    .p2align 2
    .long 4, 4, XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_start

    .section .text.boot, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    movl $pdpt + 3, pml4
    movl $pd + 3, pdpt
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, pd(, %ecx, 8)
    incl %ecx
    cmpl $512, %ecx
    jne 1b
    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x620, %eax            /* PAE, OSFXSR, OSXMMEXCPT */
    movl %eax, %cr4
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax            /* LME */
    wrmsr
    movl %cr0, %eax
    andl $~4, %eax              /* EM off */
    orl $0x80000022, %eax       /* PG, NE, MP */
    movl %eax, %cr0
    lgdt gdt_desc
    ljmp $8, $long_start

    .code64
long_start:
    movl $16, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movq $stack_top, %rsp
    movl %ebx, %edi
    call qemu_main
    movw $0xf4, %dx
    xorl %eax, %eax
    outl %eax, %dx              /* isa-debug-exit */
2:  hlt
    jmp 2b

    .section .rodata
    .p2align 3
gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
gdt_desc:
    .word 23
    .long gdt

    .section .bss
    .p2align 12
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4096
    .skip 65536
stack_top:

    .section .note.GNU-stack, "", @progbits
