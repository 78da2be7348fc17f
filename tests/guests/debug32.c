/* debug built as a 32-bit kernel. */
#define RT_GUEST_NAME "debug32"
#include "debug.c"
