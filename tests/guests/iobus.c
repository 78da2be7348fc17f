/* Drives the test-only device the hypervisor's tests register on the domain's I/O buses: its I/O ports and MMIO
 * registers, accesses nobody claims (all ones), and the interrupts it raises on two GSIs, which the test routes to
 * vLAPIC vectors: an edge on each doorbell write and a level line held until the guest lowers it. Then event
 * upcalls through a GSI callback via (HVM_PARAM_CALLBACK_IRQ type 0), which the test routes the same way. Without
 * the device (xl, QEMU) it only reports SKIP. The layout is the test's IoBusTestDevice. */
#include "rt.h"
#include <xen/event_channel.h>
#include <xen/hvm/params.h>

RT_GUEST("iobus");

#define DEV_PORT        0x5a0
#define DEV_PORT_ID     (DEV_PORT + 0)
#define DEV_PORT_SCRATCH (DEV_PORT + 4)
#define DEV_MMIO        0xfeb00000ul
#define DEV_MMIO_ID     0x00
#define DEV_MMIO_SCRATCH 0x08
#define DEV_MMIO_DOORBELL 0x10
#define DEV_MMIO_LEVEL  0x18
#define DEV_MMIO_RINGS  0x20
#define DEV_ID          0x53554249u     /* "IBUS" */
#define EDGE_VECTOR     0x61
#define LEVEL_VECTOR    0x62
#define UNCLAIMED_PORT  0x5b0
#define UNCLAIMED_MMIO  (DEV_MMIO + 0x1000)
#define LAPIC           0xfee00000ul
#define CALLBACK_GSI    10
#define CALLBACK_VECTOR 0x63

static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline volatile uint32_t *reg32(unsigned long a) { return (volatile uint32_t *)a; }
static inline volatile uint64_t *reg64(unsigned long a) { return (volatile uint64_t *)a; }

static volatile int edges, levels;

static void on_edge(struct rt_frame *f)
{
    (void)f;
    edges++;
    rt_lapic_eoi();
}

static void on_level(struct rt_frame *f)
{
    (void)f;
    /* The first time leave the line up: the EOI must bring the interrupt back. The second time lower it. */
    if (++levels >= 2)
        *reg32(DEV_MMIO + DEV_MMIO_LEVEL) = 0;
    rt_lapic_eoi();
}

static volatile int callbacks, ipi_events;
static evtchn_port_t ipi_port;

static void on_port(evtchn_port_t p)
{
    if (p == ipi_port)
        ipi_events++;
}

static void on_callback(struct rt_frame *f)
{
    (void)f;
    callbacks++;
    /* Taking the events lowers the callback GSI; the EOI that follows then finds it down. */
    rt_shared_info->vcpu_info[0].evtchn_upcall_pending = 0;
    rt_evtchn_2l_dispatch(on_port);
    rt_lapic_eoi();
}

static void wait_count(volatile int *count, int n)
{
    uint64_t deadline = rt_deadline(5000);
    while (*count < n && !rt_expired(deadline))
        rt_pause();
}

void guest_main(void)
{
    uint32_t id = inl(DEV_PORT_ID);
    if (id != DEV_ID) {
        rt_skip("iobus.all", "no test device (port %#x reads %#x)", DEV_PORT_ID, id);
        return;
    }
    rt_pass("iobus.port_id");

    outl(DEV_PORT_SCRATCH, 0x12345678);
    rt_check_eq("iobus.port_scratch_32", inl(DEV_PORT_SCRATCH), 0x12345678);
    rt_outb(DEV_PORT_SCRATCH, 0xab);
    rt_check_eq("iobus.port_scratch_8", inl(DEV_PORT_SCRATCH), 0xab);
    rt_outw(DEV_PORT_SCRATCH, 0xbeef);
    rt_check_eq("iobus.port_scratch_16_read_8", rt_inb(DEV_PORT_SCRATCH), 0xef);

    rt_check_eq("iobus.unclaimed_port_8", rt_inb(UNCLAIMED_PORT), 0xff);
    rt_check_eq("iobus.unclaimed_port_16", inw(UNCLAIMED_PORT), 0xffff);
    rt_check_eq("iobus.unclaimed_port_32", inl(UNCLAIMED_PORT), 0xffffffff);
    outl(UNCLAIMED_PORT, 0);
    rt_pass("iobus.unclaimed_port_write");

    rt_check_eq("iobus.mmio_id", *reg32(DEV_MMIO + DEV_MMIO_ID), DEV_ID);
    *reg64(DEV_MMIO + DEV_MMIO_SCRATCH) = 0x0123456789abcdefull;
    rt_check_eq("iobus.mmio_scratch_64", *reg64(DEV_MMIO + DEV_MMIO_SCRATCH), 0x0123456789abcdefull);
    rt_check_eq("iobus.unclaimed_mmio_32", *reg32(UNCLAIMED_MMIO), 0xffffffff);
    rt_check_eq("iobus.unclaimed_mmio_8", *(volatile uint8_t *)(UNCLAIMED_MMIO + 3), 0xff);
    *reg32(UNCLAIMED_MMIO) = 0;
    rt_pass("iobus.unclaimed_mmio_write");

    /* Interrupts: the local APIC software-enabled, then the device's lines. */
    *reg32(LAPIC + 0xf0) |= 0x100;
    rt_set_handler(EDGE_VECTOR, on_edge);
    rt_set_handler(LEVEL_VECTOR, on_level);
    rt_sti();
    for (int i = 1; i <= 3; i++) {
        *reg32(DEV_MMIO + DEV_MMIO_DOORBELL) = (uint32_t)i;
        wait_count(&edges, i);
    }
    rt_check_eq("iobus.edge_interrupts", (uint64_t)edges, 3);
    rt_check_eq("iobus.doorbells_seen", *reg32(DEV_MMIO + DEV_MMIO_RINGS), 3);

    *reg32(DEV_MMIO + DEV_MMIO_LEVEL) = 1;
    wait_count(&levels, 2);
    rt_check("iobus.level_redelivered_after_eoi", levels >= 2, "%d deliveries, want 2", levels);
    /* Lowered in the second handler: nothing more may arrive. */
    uint64_t settle = rt_deadline(50);
    while (!rt_expired(settle))
        rt_pause();
    rt_check_eq("iobus.level_stops_when_lowered", (uint64_t)levels, 2);

    /* Event upcalls through GSI CALLBACK_GSI: an IPI event channel sent to ourselves, twice. */
    long rc = rt_map_shared_info();
    if (!rt_check("iobus.callback_shared_info", rc == 0, "rc %ld", rc))
        return;
    rt_shared_info->vcpu_info[0].evtchn_upcall_mask = 0;
    rt_set_handler(CALLBACK_VECTOR, on_callback);
    rc = rt_hvm_set_param(HVM_PARAM_CALLBACK_IRQ, ((uint64_t)HVM_PARAM_CALLBACK_TYPE_GSI << 56) | CALLBACK_GSI);
    if (!rt_check("iobus.callback_via_gsi", rc == 0, "rc %ld", rc))
        return;
    struct evtchn_bind_ipi bi = { .vcpu = 0 };
    rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_ipi, &bi);
    if (!rt_check("iobus.callback_bind_ipi", rc == 0, "rc %ld", rc))
        return;
    ipi_port = bi.port;
    for (int i = 1; i <= 2; i++) {
        struct evtchn_send send = { .port = ipi_port };
        HYPERVISOR_event_channel_op(EVTCHNOP_send, &send);
        wait_count(&ipi_events, i);
    }
    rt_check_eq("iobus.callback_gsi_events", (uint64_t)ipi_events, 2);
    settle = rt_deadline(50);
    while (!rt_expired(settle))
        rt_pause();
    rt_check_eq("iobus.callback_gsi_once_per_upcall", (uint64_t)callbacks, 2);
    rt_hvm_set_param(HVM_PARAM_CALLBACK_IRQ, 0);
    rt_cli();
}
