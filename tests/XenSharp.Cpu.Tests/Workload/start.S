    .globl _start
    .text
_start:
    mov $0x200000, %rdi
    call run
    hlt
