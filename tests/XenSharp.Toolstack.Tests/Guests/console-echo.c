/*
 * A 32-bit PVH test kernel for the toolstack's end-to-end tests. It finds its PV console through
 * HVMOP_get_param, writes a greeting to the console ring, echoes what arrives on the input ring
 * until it reads 'q', says goodbye on port 0xE9 too, and powers off through the ACPI PM1a control
 * register (the FADT's port, \_S5's SLP_TYP 7).
 */
#define NOTE(type, size, value)                                                              \
    __asm__(".pushsection .note.Xen, \"a\", @note\n .balign 4\n .long 4, " #size ", " #type "\n" \
            " .asciz \"Xen\"\n .balign 4\n .long " value "\n .balign 4\n .popsection\n")
NOTE(18, 4, "_start");

__asm__(".text\n.globl _start\n_start:\n mov $stack_top, %esp\n call main\n1: hlt\n jmp 1b\n");

char stack[4096] __attribute__((aligned(16), used));
__asm__(".globl stack_top\n.set stack_top, stack + 4096\n");

struct xen_hvm_param { unsigned short domid, pad; unsigned int index; unsigned long long value; };
struct evtchn_send { unsigned int port; };

static long hypercall2(unsigned int nr, unsigned long a1, unsigned long a2)
{
    long r;
    __asm__ volatile("vmcall" : "=a"(r) : "a"(nr), "b"(a1), "c"(a2) : "memory");
    return r;
}

static void outb(unsigned short port, unsigned char v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static void outw(unsigned short port, unsigned short v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }

static unsigned long long get_param(unsigned int index)
{
    struct xen_hvm_param p = { 0x7FF0, 0, index, 0 };
    hypercall2(34, 1, (unsigned long)&p); /* HVMOP_get_param */
    return p.value;
}

static volatile unsigned char *ring;
static unsigned int port;

#define IN_CONS  (*(volatile unsigned int *)(ring + 3072))
#define IN_PROD  (*(volatile unsigned int *)(ring + 3076))
#define OUT_CONS (*(volatile unsigned int *)(ring + 3080))
#define OUT_PROD (*(volatile unsigned int *)(ring + 3084))

static void notify(void)
{
    struct evtchn_send s = { port };
    hypercall2(32, 4, (unsigned long)&s); /* EVTCHNOP_send */
}

static void put(const char *s)
{
    unsigned int prod = OUT_PROD;
    for (; *s; s++) {
        while (prod - OUT_CONS >= 2048)
            hypercall2(29, 0, 0); /* SCHEDOP_yield */
        ring[1024 + (prod++ & 2047)] = *s;
    }
    __asm__ volatile("" ::: "memory");
    OUT_PROD = prod;
    notify();
}

static void debug(const char *s) { for (; *s; s++) outb(0xE9, *s); }

void main(void)
{
    port = (unsigned int)get_param(18);                 /* HVM_PARAM_CONSOLE_EVTCHN */
    ring = (volatile unsigned char *)(unsigned long)(get_param(17) << 12); /* HVM_PARAM_CONSOLE_PFN */
    debug("console-echo: started\n");
    put("hello from the console ring\r\n");
    for (;;) {
        while (IN_CONS == IN_PROD)
            hypercall2(29, 0, 0);
        char c = ring[IN_CONS & 1023];
        __asm__ volatile("" ::: "memory");
        IN_CONS = IN_CONS + 1;
        if (c == 'q')
            break;
        char echo[3] = { '<', c, 0 };
        put(echo);
    }
    put("bye\r\n");
    debug("console-echo: powering off\n");
    outw(0xB004, (7 << 10) | (1 << 13));
}
