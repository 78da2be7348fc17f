/* Xen's virtual machine-check architecture (vMCE) from inside a PVH guest: CPUID's MCE and MCA, the MCG and bank
 * MSRs as Xen presents them (two banks, MCi_CTL all ones, only zero writable to status/address/misc), then, with
 * CR4.MCE set and an #MC handler, prints "# ready page=ADDR" and waits (up to 120 s) for the machine check that
 * xen-mceinj injects at that guest-physical page. The handler reads MCG_STATUS and bank 1 and clears them as an OS
 * does; the guest prints what it read ("# mce ...") and checks it names its page. Run by the integration tests. */
#include "rt.h"

RT_GUEST("vmce");

#define MSR_MCG_CAP 0x179
#define MSR_MCG_STATUS 0x17a
#define MSR_MC_CTL(i) (0x400 + 4 * (i))
#define MSR_MC_STATUS(i) (0x401 + 4 * (i))
#define MSR_MC_ADDR(i) (0x402 + 4 * (i))
#define MSR_MC_MISC(i) (0x403 + 4 * (i))
#define MCG_STATUS_RIPV 1ul
#define MCG_STATUS_MCIP 4ul
#define MCI_STATUS_VAL (1ul << 63)
#define MCI_STATUS_ADDRV (1ul << 58)

static uint8_t target[4096] __attribute__((aligned(4096)));
static volatile int machine_checks;
static volatile uint64_t mcg_status, mc1_status, mc1_addr, mc1_misc, mc0_status, mc_ip, mcg_status_after;

static void on_mc(struct rt_frame *f)
{
    mcg_status = rt_rdmsr(MSR_MCG_STATUS);
    mc0_status = rt_rdmsr(MSR_MC_STATUS(0));
    mc1_status = rt_rdmsr(MSR_MC_STATUS(1));
    mc1_addr = rt_rdmsr(MSR_MC_ADDR(1));
    mc1_misc = rt_rdmsr(MSR_MC_MISC(1));
    mc_ip = f->ip;
    /* Done with it: clear the bank, then MCIP, so that the next machine check can be reported. */
    rt_wrmsr(MSR_MC_STATUS(1), 0);
    rt_wrmsr(MSR_MC_ADDR(1), 0);
    rt_wrmsr(MSR_MC_MISC(1), 0);
    rt_wrmsr(MSR_MCG_STATUS, 0);
    mcg_status_after = rt_rdmsr(MSR_MCG_STATUS);
    machine_checks++;
}

static uint32_t msr_index;
static uint64_t msr_value;
static void read_msr(void *arg) { (void)arg; msr_value = rt_rdmsr(msr_index); }
static void write_msr(void *arg) { (void)arg; rt_wrmsr(msr_index, msr_value); }

static unsigned int rdmsr_vector(uint32_t msr)
{
    struct rt_trap t;
    msr_index = msr;
    return rt_try(read_msr, 0, &t) ? t.vector : 0xff;
}

static unsigned int wrmsr_vector(uint32_t msr, uint64_t v)
{
    struct rt_trap t;
    msr_index = msr;
    msr_value = v;
    return rt_try(write_msr, 0, &t) ? t.vector : 0xff;
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("vmce.all", "no Xen");
        return;
    }
    uint32_t a, b, c, d;
    rt_cpuid(1, 0, &a, &b, &c, &d);
    rt_check("vmce.cpuid_mce_mca", (d & (1u << 7)) && (d & (1u << 14)), "leaf 1 edx %#x", d);

    uint64_t cap = rt_rdmsr(MSR_MCG_CAP);
    rt_printf("# MCG_CAP %#lx\n", (unsigned long)cap);
    rt_check("vmce.mcg_cap_banks", (cap & 0xff) == 2, "MCG_CAP %#lx", (unsigned long)cap);
    rt_check("vmce.mcg_cap_ser", (cap & (1ul << 24)) != 0, "MCG_CAP %#lx", (unsigned long)cap);
    rt_check_eq("vmce.mcg_status_idle", rt_rdmsr(MSR_MCG_STATUS), 0);
    rt_check_eq("vmce.mc1_ctl_all_ones", rt_rdmsr(MSR_MC_CTL(1)), ~0ul);
    rt_wrmsr(MSR_MC_CTL(1), 0);
    rt_check_eq("vmce.mc1_ctl_stays_all_ones", rt_rdmsr(MSR_MC_CTL(1)), ~0ul);
    rt_check_eq("vmce.mc1_status_clear", rt_rdmsr(MSR_MC_STATUS(1)), 0);
    rt_check_eq("vmce.mc1_status_nonzero_write_gp", wrmsr_vector(MSR_MC_STATUS(1), 1), 13);
    rt_check_eq("vmce.mc1_status_zero_write", wrmsr_vector(MSR_MC_STATUS(1), 0), 0xff);
    rt_check_eq("vmce.bank2_gp", rdmsr_vector(MSR_MC_STATUS(2)), 13);

    long rc = rt_map_shared_info();
    if (!rt_check("vmce.shared_info", rc == 0, "rc %ld", rc))
        return;
    rt_set_handler(18, on_mc);
    rt_write_cr4(rt_read_cr4() | (1ul << 6)); /* CR4.MCE */
    target[0] = 1;
    rt_printf("# ready page=%#lx\n", (unsigned long)(uintptr_t)target);
    if (!rt_check("vmce.machine_check", rt_wait_for(&machine_checks, 120000000000ull), "no #MC arrived"))
        return;
    rt_printf("# mce mcg_status=%#lx mc1_status=%#lx mc1_addr=%#lx mc1_misc=%#lx mc0_status=%#lx\n",
              (unsigned long)mcg_status, (unsigned long)mc1_status, (unsigned long)mc1_addr, (unsigned long)mc1_misc,
              (unsigned long)mc0_status);
    rt_check("vmce.mcip", (mcg_status & (MCG_STATUS_MCIP | MCG_STATUS_RIPV)) == (MCG_STATUS_MCIP | MCG_STATUS_RIPV),
             "MCG_STATUS %#lx", (unsigned long)mcg_status);
    rt_check("vmce.bank1_valid", (mc1_status & (MCI_STATUS_VAL | MCI_STATUS_ADDRV)) == (MCI_STATUS_VAL | MCI_STATUS_ADDRV),
             "MC1_STATUS %#lx", (unsigned long)mc1_status);
    rt_check("vmce.bank1_names_the_page", (mc1_addr >> 12) == ((uintptr_t)target >> 12), "MC1_ADDR %#lx, page %#lx",
             (unsigned long)mc1_addr, (unsigned long)(uintptr_t)target);
    rt_check_eq("vmce.bank0_empty", mc0_status, 0);
    rt_check_eq("vmce.mcip_cleared", mcg_status_after, 0);
    rt_check_eq("vmce.bank1_cleared", rt_rdmsr(MSR_MC_STATUS(1)), 0);
    rt_check_eq("vmce.one_machine_check", machine_checks, 1);
}
