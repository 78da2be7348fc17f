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
        new("block-attach", BlockCommands.Attach, false, true,
            "Create a new virtual block device", "<Domain> <disk-spec-component(s)>...", null, [Help], 2),
        new("block-detach", BlockCommands.Detach, false, true,
            "Destroy a domain's virtual block device", "<Domain> <DevId>", null, [Help], 2),
        new("block-list", BlockCommands.List, false, false,
            "List virtual block devices for a domain", "<Domain(s)>", null, [Help], 1),
        new("network-attach", NetworkCommands.Attach, false, true,
            "Create a new virtual network device",
            "<Domain> [type=<type>] [mac=<mac>] [bridge=<bridge>] [ip=<ip>] [script=<script>] [backend=<BackDomain>] [vifname=<name>] [rate=<rate>] [model=<model>] [accel=<accel>]",
            null, [Help], 1),
        new("network-detach", NetworkCommands.Detach, false, true,
            "Destroy a domain's virtual network device", "<Domain> <DevId|mac>", null, [Help], 2),
        new("network-list", NetworkCommands.List, false, false,
            "List virtual network interfaces for a domain", "<Domain(s)>", null, [Help], 1),
        new("cd-insert", BlockCommands.CdInsert, true, true,
            "Insert a cdrom into a guest's cd drive", "<Domain> <VirtualDevice> <path>", null, [Help], 3),
        new("cd-eject", BlockCommands.CdEject, true, true,
            "Eject a cdrom from a guest's cd drive", "<Domain> <VirtualDevice>", null, [Help], 2),
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
        new("sched-credit", SchedCommands.SchedCredit, false, true,
            "Get/set credit scheduler parameters",
            "[-d <Domain> [-w[=WEIGHT]|-c[=CAP]]] [-s [-t TSLICE] [-r RATELIMIT] [-m MIGRDELAY]] [-p CPUPOOL]",
            "-d DOMAIN, --domain=DOMAIN        Domain to modify\n" +
            "-w WEIGHT, --weight=WEIGHT        Weight (int)\n" +
            "-c CAP, --cap=CAP                 Cap (int)\n" +
            "-s         --schedparam           Query / modify scheduler parameters\n" +
            "-t TSLICE, --tslice_ms=TSLICE     Set the timeslice, in milliseconds\n" +
            "-r RLIMIT, --ratelimit_us=RLIMIT  Set the scheduling rate limit, in microseconds\n" +
            "-m DLY, --migration_delay_us=DLY  Set the migration delay, in microseconds\n" +
            "-p CPUPOOL, --cpupool=CPUPOOL     Restrict output to CPUPOOL",
            [Help, new('d', "domain", true), new('w', "weight", true), new('c', "cap", true), new('s', "schedparam"),
             new('t', "tslice_ms", true), new('r', "ratelimit_us", true), new('m', "migration_delay_us", true), new('p', "cpupool", true)]),
        new("sched-credit2", SchedCommands.SchedCredit2, false, true,
            "Get/set credit2 scheduler parameters",
            "[-d <Domain> [-w[=WEIGHT]]|-c[=CAP]] [-p CPUPOOL]",
            "-d DOMAIN, --domain=DOMAIN        Domain to modify\n" +
            "-w WEIGHT, --weight=WEIGHT        Weight (int)\n" +
            "-c CAP, --cap=CAP                 Cap (int)\n" +
            "-s         --schedparam           Query / modify scheduler parameters\n" +
            "-r RLIMIT, --ratelimit_us=RLIMIT  Set the scheduling rate limit, in microseconds\n" +
            "-p CPUPOOL, --cpupool=CPUPOOL     Restrict output to CPUPOOL",
            [Help, new('d', "domain", true), new('w', "weight", true), new('c', "cap", true), new('s', "schedparam"),
             new('r', "ratelimit_us", true), new('p', "cpupool", true)]),
        new("sched-rtds", SchedCommands.SchedRtds, false, true,
            "Get/set rtds scheduler parameters",
            "[-d <Domain> [-v[=VCPUID/all]] [-p[=PERIOD]] [-b[=BUDGET]] [-e[=EXTRATIME]]]",
            "-d DOMAIN, --domain=DOMAIN     Domain to modify\n" +
            "-v VCPUID/all, --vcpuid=VCPUID/all\n" +
            "                               VCPU to modify or output;\n" +
            "                               Using '-v all' to modify/output all vcpus\n" +
            "-p PERIOD, --period=PERIOD     Period (us)\n" +
            "-b BUDGET, --budget=BUDGET     Budget (us)\n" +
            "-e EXTRATIME, --extratime=EXTRATIME EXTRATIME (1=yes, 0=no)",
            [Help, new('d', "domain", true), new('v', "vcpuid", true), new('p', "period", true), new('b', "budget", true),
             new('e', "extratime", true), new('c', "cpupool", true)]),
        new("cpupool-create", SchedCommands.CpupoolCreate, true, true,
            "Create a new CPU pool",
            "[options] [<ConfigFile>] [Variable=value ...]",
            "-h, --help                   Print this help.\n" +
            "-f FILE, --defconfig=FILE    Use the given configuration file.\n" +
            "-n, --dryrun                 Dry run - prints the resulting configuration.",
            [Help, new('f', "defconfig", true), new('n', "dryrun")]),
        new("cpupool-list", SchedCommands.CpupoolList, false, false,
            "List CPU pools on host",
            "[-c|--cpus] [<CPU Pool>]",
            "-c, --cpus                     Output list of CPUs used by a pool",
            [Help, new('c', "cpus")]),
        new("cpupool-destroy", SchedCommands.CpupoolDestroy, false, true,
            "Deactivates a CPU pool", "<CPU Pool>", null, [Help], 1),
        new("cpupool-rename", SchedCommands.CpupoolRename, false, true,
            "Renames a CPU pool", "<CPU Pool> <new name>", null, [Help], 2),
        new("cpupool-cpu-add", SchedCommands.CpupoolCpuAdd, false, true,
            "Adds a CPU to a CPU pool", "<CPU Pool> <CPU nr>|node:<node nr>", null, [Help], 2),
        new("cpupool-cpu-remove", SchedCommands.CpupoolCpuRemove, false, true,
            "Removes a CPU from a CPU pool", "<CPU Pool> <CPU nr>|node:<node nr>", null, [Help], 2),
        new("cpupool-migrate", SchedCommands.CpupoolMigrate, false, true,
            "Moves a domain into a CPU pool", "<Domain> <CPU Pool>", null, [Help], 2),
        new("cpupool-numa-split", SchedCommands.CpupoolNumaSplit, false, true,
            "Splits up the machine into one CPU pool per NUMA node", "", null, [Help]),
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
        new("save", SaveCommands.Save, false, true,
            "Save a domain state to restore later",
            "[options] <Domain> <CheckpointFile> [<ConfigFile>]",
            "-h  Print this help.\n" +
            "-c  Leave domain running after creating the snapshot.\n" +
            "-p  Leave domain paused after creating the snapshot.\n" +
            "-D  Store the domain id in the configration.",
            [Help, new('c'), new('p'), new('D')], 2),
        new("migrate", MigrateCommands.Migrate, false, true,
            "Migrate a domain to another host",
            "[options] <Domain> <host>",
            "-h              Print this help.\n" +
            "-C <config>     Send <config> instead of config file from creation.\n" +
            "-s <sshcommand> Use <sshcommand> instead of ssh.  String will be passed\n" +
            "                to sh. If empty, run <host> instead of ssh <host> xl\n" +
            "                migrate-receive [-d -e]\n" +
            "--debug         Print huge (!) amount of debug during the migration process.",
            [Help, new('C', null, true), new('s', null, true), new(MigrateCommands.DebugOption, "debug")], 2),
        new("migrate-receive", MigrateCommands.MigrateReceive, false, true,
            "Receive a domain migrated from another host (used by xl migrate)",
            "[options]",
            "-h  Print this help.\n" +
            "-d  Enable debug messages.\n" +
            "-e  Do not wait in the background for the death of the domain.\n" +
            "-r  Receive a Remus checkpointed stream (used by xl remus).",
            [Help, new('d'), new('e'), new('r')], 0),
        new("remus", RemusCommand.Remus, false, true,
            "Enable Remus HA for domain",
            "[options] <Domain> [<host>]",
            "-i MS                   Checkpoint domain memory every MS milliseconds (def. 200ms).\n" +
            "-u                      Disable memory checkpoint compression.\n" +
            "-s <sshcommand>         Use <sshcommand> instead of ssh.  String will be passed\n" +
            "                        to sh. If empty, run <host> instead of \n" +
            "                        ssh <host> xl migrate-receive -r [-e]\n" +
            "-e                      Do not wait in the background (on <host>) for the death\n" +
            "                        of the domain.\n" +
            "-N <netbufscript>       Use netbufscript to setup network buffering instead of the\n" +
            "                        default script.\n" +
            "-F                      Enable unsafe configurations [-b|-n|-d flags]. Use this option\n" +
            "                        with caution as failover may not work as intended.\n" +
            "-b                      Replicate memory checkpoints to /dev/null (blackhole).\n" +
            "                        Works only in unsafe mode.\n" +
            "-n                      Disable network output buffering. Works only in unsafe mode.\n" +
            "-d                      Disable disk replication. Works only in unsafe mode.\n" +
            "-c                      Enable COLO HA. It is conflict with -i and -b, and memory\n" +
            "                        checkpoint must be disabled.\n" +
            "-p                      Use COLO userspace proxy.",
            [Help, new('i', null, true), new('u'), new('s', null, true), new('e'), new('N', null, true), new('F'), new('b'),
             new('n'), new('d'), new('c'), new('p')], 2),
        new("restore", SaveCommands.Restore, false, true,
            "Restore a domain from a saved state",
            "[options] [<ConfigFile>] <CheckpointFile>",
            "-h                       Print this help.\n" +
            "-p                       Do not unpause domain after restoring it.\n" +
            "-e                       Do not wait in the background for the death of the domain.\n" +
            "-d                       Enable debug messages.\n" +
            "-V, --vncviewer          Connect to the VNC display after the domain is created.\n" +
            "-A, --vncviewer-autopass Pass VNC password to viewer via stdin.",
            [Help, new('p'), new('e'), new('d'), new('V', "vncviewer"), new('A', "vncviewer-autopass")], 1),
        new("dump-core", DomainCommands.DumpCore, false, true,
            "Core dump a domain", "<Domain> <filename>", null, [Help], 2),
        new("vncviewer", DomainCommands.VncViewer, false, false,
            "Attach to domain's VNC server.", "[options] <Domain>",
            "--autopass               Pass VNC password to viewer via stdin and\n" +
            "                         -autopass",
            [Help, new('a', "autopass")], 1),
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
