/* The 32-bit build of gnttab: the same checks through the 32-bit hypercall ABI (ebx, ecx, edx, esi,
 * edi) and 32-bit structure layouts, i.e. the hypervisor's compat handling. */
#define RT_GUEST_NAME "gnttab32"
#include "gnttab.c"
