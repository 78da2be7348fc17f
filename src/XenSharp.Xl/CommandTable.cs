using XenSharp.Xl.Commands;

namespace XenSharp.Xl;

/// <summary>One xl subcommand: its name, handler, whether it honours dry-run (-N) and modifies
/// state (-f), the one-line description, the usage line and the options text (xl_cmdtable.c).</summary>
internal sealed record XlCommand(
    string Name,
    Func<XlContext, ParsedArgs, int> Handler,
    bool CanDryRun,
    bool Modifies,
    string Description,
    string Usage,
    string? OptionsHelp,
    OptionSpec[] Options,
    int MinOperands = 0);

internal static class CommandTable
{
    private static readonly OptionSpec Help = new('h', "help");

    public static readonly XlCommand[] Commands =
    [
        new("create", DomainCommands.Create, true, true,
            "Create a domain from config file <filename>",
            "<ConfigFile> [options] [vars]",
            "-h                      Print this help.\n" +
            "-p                      Leave the domain paused after it is created.\n" +
            "-c                      Connect to the console after the domain is created.\n" +
            "-f FILE, --defconfig=FILE\n" +
            "                        Use the given configuration file.\n" +
            "-q, --quiet             Quiet.\n" +
            "-n, --dryrun            Dry run - prints the resulting configuration.\n" +
            "-d                      Enable debug messages.\n" +
            "-F                      Run in foreground until death of the domain.\n" +
            "-e                      Do not wait in the background for the death of the domain.",
            [Help, new('p'), new('c'), new('f', "defconfig", true), new('q', "quiet"), new('n', "dryrun"),
             new('d'), new('F'), new('e'), new('V', "vncviewer"), new('A', "vncviewer-autopass")]),
        new("list", DomainCommands.List, false, false,
            "List information about all/some domains",
            "[options] [Domain]",
            "-l, --long              Output all VM details\n" +
            "-v, --verbose           Prints out UUIDs and security context\n" +
            "-Z, --context           Prints out security context\n" +
            "-c, --cpupool           Prints the cpupool the domain is in\n" +
            "-n, --numa              Prints out NUMA node affinity",
            [Help, new('l', "long"), new('v', "verbose"), new('Z', "context"), new('c', "cpupool"), new('n', "numa")]),
        new("destroy", DomainCommands.Destroy, false, true,
            "Terminate a domain immediately",
            "[options] <Domain>",
            "-f                      Permit destroying domain 0, which will only succeed\n" +
            "                        when run from a disaggregated toolstack domain.",
            [Help, new('f')], 1),
        new("shutdown", DomainCommands.Shutdown, false, true,
            "Issue a shutdown signal to a domain",
            "[options] <-a|Domain>",
            "-a, --all               Shutdown all guest domains.\n" +
            "-h                      Print this help.\n" +
            "-F                      Fallback to ACPI power event for HVM guests with\n" +
            "                        no PV drivers.\n" +
            "-w, --wait              Wait for guest(s) to shutdown.",
            [Help, new('a', "all"), new('w', "wait"), new('F')]),
        new("reboot", DomainCommands.Reboot, false, true,
            "Issue a reboot signal to a domain",
            "[options] <-a|Domain>",
            "-a, --all               Reboot all guest domains.\n" +
            "-h                      Print this help.\n" +
            "-F                      Fallback to ACPI reset event for HVM guests with\n" +
            "                        no PV drivers.\n" +
            "-w, --wait              Wait for guest(s) to reboot.",
            [Help, new('a', "all"), new('w', "wait"), new('F')]),
        new("pause", DomainCommands.Pause, false, true,
            "Pause execution of a domain", "<Domain>", null, [Help], 1),
        new("unpause", DomainCommands.Unpause, false, true,
            "Unpause a paused domain", "<Domain>", null, [Help], 1),
        new("console", ConsoleCommand.Run, false, false,
            "Attach to domain's console",
            "[options] <Domain>",
            "-t <type>       console type, pv , serial or vuart\n" +
            "-n <number>     console number",
            [Help, new('t', null, true), new('n', null, true)], 1),
        new("mem-max", DomainCommands.MemMax, false, true,
            "Set the maximum amount reservation for a domain",
            "<Domain> <MemMB['b'[bytes]|'k'[KB]|'m'[MB]|'g'[GB]|'t'[TB]]>", null, [Help], 2),
        new("mem-set", DomainCommands.MemSet, false, true,
            "Set the current memory usage for a domain",
            "<Domain> <MemMB['b'[bytes]|'k'[KB]|'m'[MB]|'g'[GB]|'t'[TB]]>", null, [Help], 2),
        new("vcpu-list", VcpuCommands.List, false, false,
            "List the VCPUs for all/some domains", "[Domain, ...]", null, [Help]),
        new("vcpu-pin", VcpuCommands.Pin, true, true,
            "Set which CPUs a VCPU can use",
            "[option] <Domain> <VCPU|all> <Hard affinity|-|all> <Soft affinity|-|all>",
            "-f, --force        undo an override pinning done by the kernel",
            [Help, new('f', "force")], 3),
        new("vcpu-set", VcpuCommands.Set, false, true,
            "Set the number of active VCPUs allowed for the domain",
            "[option] <Domain> <vCPUs>",
            "-i, --ignore-host  Don't limit the vCPU based on the host CPU count",
            [Help, new('i', "ignore-host")], 2),
        new("info", HostCommands.Info, false, false,
            "Get information about Xen host",
            "-n, --numa         List host NUMA topology information", null,
            [Help, new('n', "numa")]),
        new("domid", DomainCommands.DomId, false, false,
            "Convert a domain name to domain id", "<DomainName>", null, [Help], 1),
        new("domname", DomainCommands.DomName, false, false,
            "Convert a domain id to domain name", "<DomainId>", null, [Help], 1),
        new("rename", DomainCommands.Rename, false, true,
            "Rename a domain", "<Domain> <NewDomainName>", null, [Help], 2),
        new("trigger", DomainCommands.Trigger, false, true,
            "Send a trigger to a domain", "<Domain> <nmi|reset|init|power|sleep|s3resume> [<VCPU>]", null, [Help], 2),
        new("sysrq", DomainCommands.Sysrq, false, true,
            "Send a sysrq to a domain", "<Domain> <letter>", null, [Help], 2),
        new("debug-keys", HostCommands.DebugKeys, false, true,
            "Send debug keys to Xen", "<Keys>", null, [Help], 1),
        new("dmesg", HostCommands.Dmesg, false, false,
            "Read and/or clear dmesg buffer", "[-c]",
            "  -c                        Clear dmesg buffer as well as printing it",
            [Help, new('c')]),
        new("top", HostCommands.Top, false, false,
            "Monitor a host and the domains in real time", "",
            "-b, --batch             Print one screen per delay and no terminal control\n" +
            "-i N, --iterations=N    Stop after N screens\n" +
            "-d S, --delay=S         Seconds between screens (default 3)",
            [Help, new('b', "batch"), new('i', "iterations", true), new('d', "delay", true)]),
        new("uptime", DomainCommands.Uptime, false, false,
            "Print uptime for all/some domains", "[-s] [Domain]", null, [Help, new('s')]),
        new("daemon-stop", HostCommands.DaemonStop, false, true,
            "Stop xensharpd, destroying every guest domain", "", null, [Help]),
        new("help", HostCommands.HelpCommand, false, false,
            "Print this help", "[command]", null, [Help]),
    ];

    public static XlCommand? Lookup(string name) => Commands.FirstOrDefault(c => c.Name == name);
}
