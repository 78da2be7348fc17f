/* The 32-bit build of evtchn2l: the same checks through the 32-bit hypercall ABI (ebx, ecx, edx, esi,
 * edi) and 32-bit structure layouts, i.e. the hypervisor's compat handling. */
#define RT_GUEST_NAME "evtchn2l32"
#include "evtchn2l.c"
