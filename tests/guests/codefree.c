/* Code in a page the guest gives back: once decrease_reservation has taken the frame out of the p2m, the
 * next fetch from it finds no RAM, and Xen crashes the domain (an EPT violation nobody handles), however
 * often the code ran before and whatever an engine kept of it. */
#include "rt.h"
#include <xen/memory.h>

RT_GUEST("codefree");

static uint8_t page[4096] __attribute__((aligned(4096)));

void guest_main(void)
{
    /* lea eax, [rdi + rdi*2 + 1]; ret */
    static const uint8_t code[] = { 0x8d, 0x44, 0x7f, 0x01, 0xc3 };
    for (unsigned i = 0; i < sizeof code; i++) page[i] = code[i];
    int (*fn)(int) = (int (*)(int))(uintptr_t)page;
    uint64_t sum = 0;
    for (int i = 0; i < 20000; i++) sum += (uint64_t)fn(i);
    rt_check_eq("codefree.ran", sum, 3ull * 19999 * 20000 / 2 + 20000);
    xen_pfn_t gfn = (uintptr_t)page >> 12;
    struct xen_memory_reservation r = { .nr_extents = 1, .extent_order = 0, .domid = DOMID_SELF };
    set_xen_guest_handle(r.extent_start, &gfn);
    rt_check_eq("codefree.decrease_reservation", (uint64_t)HYPERVISOR_memory_op(XENMEM_decrease_reservation, &r), 1);
    rt_printf("# calling the code in the given-back frame\n");
    int v = fn(7);
    rt_fail("codefree.fetch", "code in a frame no longer in the p2m ran and returned %d", v);
}
