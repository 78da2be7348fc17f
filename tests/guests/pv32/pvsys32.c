/* pvsys32: what a 32-bit PAE PV guest has of Xen's at the top of its address space and from its user space.
 * The compat M2P: XENMEM_machphys_mapping's compat values, the 4-byte table read at 0xF5800000 against the p2m
 * and after an MMU_MACHPHYS_UPDATE, Xen's read-only superpage slots in the L2 under L3 slot 3 as the guest reads
 * them (matching XENMEM_machphys_mfn_list), and the refusals: an L2 update there (-EPERM), a write (#PF), an
 * update_va_mapping over it or a mapping of its frames (-EINVAL). System calls from ring 3: INT $0x80 as a direct
 * trap of the trap table (and #GP when its DPL is 1), SYSENTER and SYSCALL through CALLBACKTYPE_sysenter and
 * CALLBACKTYPE_syscall32 with the frames Xen builds, and #GP(0) for both before they are registered.
 * It reports on its PV console ring and powers off. */
#include "pvrt.h"
#include <xen/memory.h>
#include <xen/callback.h>

/* 64 MiB into the kernel's gigabyte, past the initial mapping: an L1 of ours goes in its L2 slot, user pages there. */
#define USER_VA 0xc4000000UL
#define M2P ((volatile uint32_t *)0xF5800000UL)
#define PTE_USER 4ULL
#define FIRST_XEN_SLOT ((0xF5800000UL >> 21) & 511)
/* Xen's numbers (callback.h gives CALLBACKTYPE_sysenter the deprecated value for old interface versions). */
#define CB_SYSENTER 5
#define CB_SYSCALL32 7

extern char user_code[], user_int80_done[], user_sysenter_ret[], user_syscall_done[], user_sysenter_only[],
    user_syscall_only[], user_syscall_only_insn[], user_int80_only[];
extern void pf_entry(void), gp_entry(void), int80_entry(void), back_entry(void), sysenter_entry(void), syscall_entry(void);
extern unsigned long run_user(unsigned long eip);
volatile uint32_t pf_error;
/* What the ring-1 handlers saw: the frame words from the kernel stack, and EAX, ECX, EDX at entry. */
volatile uint32_t int80_frame[5], int80_regs[3], sysenter_frame[5], sysenter_regs[3], syscall_frame[5], syscall_regs[3];
volatile uint32_t gp_frame[6], gp_count;
unsigned long saved_esp;
static char trap_stack[4096] __attribute__((aligned(16)));

/* Ring-3 code, position independent, mapped a second time at USER_VA with USER rights. Each entry runs to an INT $0x81
 * (or a fault) that takes the kernel back to run_user's caller. */
__asm__(
    "  .section .text.user, \"ax\"\n"
    "  .balign 4096\n"
    "user_code:\n"
    "  mov $0x80, %eax\n"
    "  int $0x80\n"
    "user_int80_done:\n"
    "  call 1f\n"
    "1: pop %edx\n"
    "  add $(user_sysenter_ret - 1b), %edx\n"
    "  mov %esp, %ecx\n"
    "  mov $0x5e, %eax\n"
    "  sysenter\n"
    "user_sysenter_ret:\n"
    "  mov $0x5c, %eax\n"
    "  syscall\n"
    "user_syscall_done:\n"
    "  int $0x81\n"
    "user_sysenter_only:\n"
    "  sysenter\n"
    "user_syscall_only:\n"
    "  nop\n"
    "user_syscall_only_insn:\n"
    "  syscall\n"
    "  int $0x81\n"
    "user_int80_only:\n"
    "  int $0x80\n"
    "  int $0x81\n"
    "  .balign 4096\n"
    "  .text\n"
    /* run_user(eip): callee-saved registers and the stack kept, then HYPERVISOR_iret to ring 3 at eip on the user
     * stack with events masked; returns when back_entry or gp_entry brings the kernel back. */
    "  .globl run_user\n"
    "run_user:\n"
    "  mov 4(%esp), %eax\n"
    "  push %ebp\n push %ebx\n push %esi\n push %edi\n"
    "  mov %esp, saved_esp\n"
    "  push $0xe033\n"
    "  push $" "0xc4002000" "\n"
    "  push $2\n"
    "  push $0xe02b\n"
    "  push %eax\n"
    "  jmp hypercall_page + 23 * 32\n"
    "back_entry:\n"
    "  mov saved_esp, %esp\n"
    "  pop %edi\n pop %esi\n pop %ebx\n pop %ebp\n"
    "  ret\n"
    /* #GP: the error code and frame recorded, then back to the kernel (a user fault is not resumed here). */
    "gp_entry:\n"
    "  push %eax\n"
    "  mov 4(%esp), %eax\n mov %eax, gp_frame\n"
    "  mov 8(%esp), %eax\n mov %eax, gp_frame+4\n"
    "  mov 12(%esp), %eax\n mov %eax, gp_frame+8\n"
    "  mov 16(%esp), %eax\n mov %eax, gp_frame+12\n"
    "  mov 20(%esp), %eax\n mov %eax, gp_frame+16\n"
    "  mov 24(%esp), %eax\n mov %eax, gp_frame+20\n"
    "  incl gp_count\n"
    "  jmp back_entry\n"
    /* The frame of a trap from ring 3 without error code: EIP, CS, EFLAGS, ESP, SS. */
    ".macro record frame, regs\n"
    "  mov %eax, \\regs\n mov %ecx, \\regs+4\n mov %edx, \\regs+8\n"
    "  mov 0(%esp), %eax\n mov %eax, \\frame\n"
    "  mov 4(%esp), %eax\n mov %eax, \\frame+4\n"
    "  mov 8(%esp), %eax\n mov %eax, \\frame+8\n"
    "  mov 12(%esp), %eax\n mov %eax, \\frame+12\n"
    "  mov 16(%esp), %eax\n mov %eax, \\frame+16\n"
    ".endm\n"
    "int80_entry:\n"
    "  record int80_frame, int80_regs\n"
    "  jmp hypercall_page + 23 * 32\n"
    /* SYSENTER's frame has no return address: it is EDX, the stack ECX, as Linux's user space passes them. */
    "sysenter_entry:\n"
    "  record sysenter_frame, sysenter_regs\n"
    "  mov %edx, 0(%esp)\n"
    "  movl $0xe02b, 4(%esp)\n"
    "  mov %ecx, 12(%esp)\n"
    "  movl $0xe033, 16(%esp)\n"
    "  jmp hypercall_page + 23 * 32\n"
    "syscall_entry:\n"
    "  record syscall_frame, syscall_regs\n"
    "  jmp hypercall_page + 23 * 32\n");

static unsigned long uva(const char *sym) { return USER_VA + (unsigned long)(sym - user_code); }

static long callback_register(unsigned type, unsigned flags, void (*entry)(void))
{
    struct callback_register cb = { .type = type, .flags = flags, .address = { .cs = FLAT_KERNEL_CS, .eip = (unsigned long)entry } };
    return hc(__HYPERVISOR_callback_op, CALLBACKOP_register, (unsigned long)&cb, 0, 0);
}

static long callback_unregister(unsigned type)
{
    struct callback_unregister cb = { .type = type };
    return hc(__HYPERVISOR_callback_op, CALLBACKOP_unregister, (unsigned long)&cb, 0, 0);
}

static void set_traps(unsigned int80_dpl)
{
    trap_info_t traps[] = {
        { .vector = 13, .cs = FLAT_KERNEL_CS, .address = (unsigned long)gp_entry },
        { .vector = 14, .cs = FLAT_KERNEL_CS, .address = (unsigned long)pf_entry },
        { .vector = 0x80, .flags = int80_dpl, .cs = FLAT_KERNEL_CS, .address = (unsigned long)int80_entry },
        { .vector = 0x81, .flags = 3, .cs = FLAT_KERNEL_CS, .address = (unsigned long)back_entry },
        { 0 },
    };
    hc(__HYPERVISOR_set_trap_table, (unsigned long)traps, 0, 0, 0);
}

static void check_m2p(void)
{
    unsigned long n = si->nr_pages;
    struct xen_machphys_mapping mm;
    check_eq("sys32.machphys_mapping", hc(__HYPERVISOR_memory_op, XENMEM_machphys_mapping, (unsigned long)&mm, 0, 0), 0);
    check_eq("sys32.machphys_mapping_v_start", mm.v_start, 0xF5800000UL);
    check_eq("sys32.machphys_mapping_v_end", mm.v_end, 0xFFE00000UL);
    check_eq("sys32.machphys_mapping_max_mfn", mm.max_mfn, (0xFFE00000UL - 0xF5800000UL) / 4 - 1);

    /* The table itself: every frame of ours names its PFN. */
    unsigned bad = 0;
    for (unsigned long pfn = 0; pfn < n; pfn++)
        bad += M2P[p2m(pfn)] != pfn;
    check_eq("sys32.m2p_matches_p2m", bad, 0);

    /* MMU_MACHPHYS_UPDATE shows at once in the compat table, and goes back. */
    unsigned long mfn = p2m(n - 5);
    check_eq("sys32.machphys_update", mmu_update1(((uint64_t)mfn << 12) | MMU_MACHPHYS_UPDATE, 0x12345), 0);
    check_eq("sys32.m2p_shows_update", M2P[mfn], 0x12345);
    check_eq("sys32.machphys_update_back", mmu_update1(((uint64_t)mfn << 12) | MMU_MACHPHYS_UPDATE, n - 5), 0);
    check_eq("sys32.m2p_back", M2P[mfn], n - 5);

    /* Xen's slots of the L2 under L3 slot 3, read through the kernel's read-only mapping of that L2: the compat
     * M2P's superpages, present, read-only, not for user mode, one per MFN machphys_mfn_list gives. */
    const uint64_t *l3t = (const uint64_t *)si->pt_base;
    uint64_t l2mfn = (l3t[3] & ADDR_MASK) >> 12;
    const volatile uint64_t *l2 = (const volatile uint64_t *)(VIRT_BASE + (pfn_of(l2mfn) << 12));
    static xen_pfn_t chunks[84];
    struct xen_machphys_mfn_list ml = { .max_extents = 84 };
    set_xen_guest_handle(ml.extent_start, chunks);
    check_eq("sys32.machphys_mfn_list", hc(__HYPERVISOR_memory_op, XENMEM_machphys_mfn_list, (unsigned long)&ml, 0, 0), 0);
    check_eq("sys32.machphys_mfn_list_covers_us", ml.nr_extents >= 1 && ml.nr_extents <= 83, 1);
    unsigned mismatched = 0;
    for (unsigned i = 0; i < ml.nr_extents; i++) {
        uint64_t e = l2[FIRST_XEN_SLOT + i];
        mismatched += (e & (PTE_P | PTE_RW | PTE_USER | PTE_PSE)) != (PTE_P | PTE_PSE) || ((e & ADDR_MASK) >> 12) != chunks[i];
    }
    check_eq("sys32.xen_l2_slots_are_the_m2p", mismatched, 0);
    check_eq("sys32.xen_l2_slot_past_m2p_empty", l2[FIRST_XEN_SLOT + ml.nr_extents] & PTE_P, 0);
    ml.max_extents = 1;
    check_eq("sys32.machphys_mfn_list_max", hc(__HYPERVISOR_memory_op, XENMEM_machphys_mfn_list, (unsigned long)&ml, 0, 0) == 0
                                            && ml.nr_extents == 1, 1);

    /* Refusals: the slots are not the guest's, nor are the table's frames, and a write faults. */
    check_eq("sys32.xen_l2_slot_update_refused", mmu_update1((l2mfn << 12) + FIRST_XEN_SLOT * 8, 0), -XEN_EPERM);
    check_eq("sys32.xen_l2_slot_unchanged", (l2[FIRST_XEN_SLOT] & ADDR_MASK) >> 12, chunks[0]);
    check_eq("sys32.update_va_over_m2p_refused", update_va(0xF5800000UL, ((uint64_t)p2m(n - 2) << 12) | PTE_P), -XEN_EINVAL);
    unsigned long l1 = p2m(n - 1);
    check_eq("sys32.l1_pinned", mmuext1(MMUEXT_CLEAR_PAGE, l1) | mmuext1(MMUEXT_PIN_L1_TABLE, l1), 0);
    check_eq("sys32.l1_linked", mmu_update1((l2mfn << 12) + ((USER_VA >> 21) & 511) * 8, ((uint64_t)l1 << 12) | PTE_P | PTE_RW | PTE_USER), 0);
    check_eq("sys32.map_m2p_frame_writable_refused", update_va(USER_VA + 0x3000, ((uint64_t)chunks[0] << 12) | PTE_P | PTE_RW), -XEN_EINVAL);
    check_eq("sys32.map_m2p_frame_refused", update_va(USER_VA + 0x3000, ((uint64_t)chunks[0] << 12) | PTE_P), -XEN_EINVAL);
    volatile uint32_t *target = &M2P[p2m(0)];
    uint32_t before = *target;
    pf_error = 0xdead;
    __asm__ volatile("mov %%eax, (%%ecx)" : : "a"(0x5a5a5a5a), "c"(target) : "memory");
    check_eq("sys32.m2p_write_faults", pf_error, 3); /* present, write, from the kernel */
    check_eq("sys32.m2p_unchanged", *target, before);
}

static void check_user_entries(void)
{
    unsigned long n = si->nr_pages;
    /* The user pages: the code page again with USER (read-only), a stack page of ours. */
    unsigned long code_mfn = p2m(((unsigned long)user_code - VIRT_BASE) >> 12);
    check_eq("sys32.user_code_mapped", update_va(USER_VA, ((uint64_t)code_mfn << 12) | PTE_P | PTE_USER), 0);
    check_eq("sys32.user_stack_mapped", update_va(USER_VA + 0x1000, ((uint64_t)p2m(n - 2) << 12) | PTE_P | PTE_RW | PTE_USER), 0);
    check_eq("sys32.stack_switch", hc(__HYPERVISOR_stack_switch, FLAT_KERNEL_SS, (unsigned long)(trap_stack + sizeof(trap_stack)), 0, 0), 0);

    /* Neither entry registered: SYSENTER and SYSCALL are #GP(0); INT $0x80 with DPL 1 is #GP on its gate. */
    set_traps(1);
    gp_count = 0;
    run_user(uva(user_sysenter_only));
    check_eq("sys32.sysenter_unregistered_gp", gp_count, 1);
    check_eq("sys32.sysenter_unregistered_error", gp_frame[0], 0);
    check_eq("sys32.sysenter_unregistered_eip", gp_frame[1], 0);
    check_eq("sys32.sysenter_unregistered_cs", gp_frame[2] & 0xffff, 3);
    run_user(uva(user_syscall_only));
    check_eq("sys32.syscall_unregistered_gp", gp_count, 2);
    check_eq("sys32.syscall_unregistered_error", gp_frame[0], 0);
    check_eq("sys32.syscall_unregistered_at_insn", gp_frame[1], uva(user_syscall_only_insn));
    run_user(uva(user_int80_only));
    check_eq("sys32.int80_dpl1_gp", gp_count, 3);
    check_eq("sys32.int80_dpl1_error", gp_frame[0], (0x80 << 3) | 2);
    check_eq("sys32.int80_dpl1_at_insn", gp_frame[1], uva(user_int80_only));

    /* Registered: the compat callback_op takes selector:EIP pairs; they cannot be unregistered. */
    check_eq("sys32.register_sysenter", callback_register(CB_SYSENTER, CALLBACKF_mask_events, sysenter_entry), 0);
    check_eq("sys32.register_syscall32", callback_register(CB_SYSCALL32, 0, syscall_entry), 0);
    check_eq("sys32.register_syscall_64_refused", callback_register(CALLBACKTYPE_syscall, 0, syscall_entry), -XEN_ENOSYS);
    check_eq("sys32.unregister_sysenter_refused", callback_unregister(CB_SYSENTER), -XEN_EINVAL);
    check_eq("sys32.unregister_unknown", callback_unregister(9), -XEN_ENOSYS);
    check_eq("sys32.callback_op_bad_cmd", hc(__HYPERVISOR_callback_op, 7, 0, 0, 0), -XEN_EINVAL);
    set_traps(3);
    gp_count = 0;
    unsigned long user_sp = USER_VA + 0x2000;
    run_user(uva(user_code));
    check_eq("sys32.user_run_no_gp", gp_count, 0);

    check_eq("sys32.int80_eax", int80_regs[0], 0x80);
    check_eq("sys32.int80_eip", int80_frame[0], uva(user_int80_done));
    check_eq("sys32.int80_cs", int80_frame[1] & 0xffff, 0xe02b);
    check_eq("sys32.int80_esp", int80_frame[3], user_sp);
    check_eq("sys32.int80_ss", int80_frame[4], 0xe033);

    check_eq("sys32.sysenter_eax", sysenter_regs[0], 0x5e);
    check_eq("sys32.sysenter_edx_return", sysenter_regs[2], uva(user_sysenter_ret));
    check_eq("sys32.sysenter_ecx_stack", sysenter_regs[1], user_sp);
    check_eq("sys32.sysenter_frame_eip_null", sysenter_frame[0], 0);
    check_eq("sys32.sysenter_frame_cs", sysenter_frame[1] & 0xffff, 3);
    check_eq("sys32.sysenter_frame_esp_null", sysenter_frame[3], 0);
    check_eq("sys32.sysenter_frame_ss", sysenter_frame[4], 0xe033);

    check_eq("sys32.syscall_eax", syscall_regs[0], 0x5c);
    check_eq("sys32.syscall_ecx_return", syscall_regs[1], uva(user_syscall_done));
    check_eq("sys32.syscall_frame_eip", syscall_frame[0], uva(user_syscall_done));
    check_eq("sys32.syscall_frame_cs", syscall_frame[1] & 0xffff, 0xe02b);
    check_eq("sys32.syscall_frame_esp", syscall_frame[3], user_sp);
    check_eq("sys32.syscall_frame_ss", syscall_frame[4], 0xe033);
}

void pv_main(start_info_t *start);
void pv_main(start_info_t *start)
{
    console_init(start);
    print("# guest pvsys32 (32-bit PV) xen=yes\n");
    set_traps(1);
    check_m2p();
    check_user_entries();
    finish();
}
