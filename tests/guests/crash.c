/* Shuts itself down as soon as it runs, with the reason its command line names
 * (`reason=crash|reboot|poweroff`, default crash): the guest that on_crash and on_reboot restart
 * over and over, so the toolstack's restart handling can be checked against a restart loop. */
#include "rt.h"
#include <xen/sched.h>

RT_GUEST("crash");

static int word_is(const char *s, const char *word)
{
    size_t n = strlen(word);
    return strncmp(s, word, n) == 0 && (s[n] == 0 || s[n] == ' ');
}

void guest_main(void)
{
    if (!rt_xen) {
        rt_skip("crash.all", "no Xen");
        return;
    }
    const char *r = rt_cmdline_value("reason");
    unsigned int reason = SHUTDOWN_crash;
    const char *name = "crash";
    if (r && word_is(r, "reboot")) {
        reason = SHUTDOWN_reboot;
        name = "reboot";
    } else if (r && word_is(r, "poweroff")) {
        reason = SHUTDOWN_poweroff;
        name = "poweroff";
    }
    rt_printf("# shutting down: %s\n", name);
    struct sched_shutdown sd = { .reason = reason };
    long rc = HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
    /* Only reached when Xen refused: the runtime then reports and powers off. */
    rt_fail("crash.shutdown", "SCHEDOP_shutdown(%s) returned %ld", name, rc);
}
