using System.Runtime.InteropServices;
using XenSharp.Backends.Console;
using XenSharp.Daemon;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Platform;

// xensharpd [--rundir DIR] [--machine-memory SIZE] [--console-log-size BYTES] [--console-log-files N] [--xenstore-max-clients N]
//           [--xenconsoled internal|external] [--kernel-cache DIR|off]:
// the host process holding the hypervisor, xenstored, the console daemon and the toolstack, driven
// by xl over $RUNDIR/xl.sock. SIGTERM, SIGINT or `xl daemon-stop` stop it: every domain is destroyed
// and its sockets and pid file removed. SIGHUP reopens the console logs, as xenconsoled does.
const string Usage = """
    usage: xensharpd [--rundir DIR] [--machine-memory SIZE] [--console-log-size BYTES] [--console-log-files N]
                     [--xenstore-max-clients N] [--xenconsoled internal|external] [--kernel-cache DIR|off]
      --rundir DIR               sockets, logs and console logs (default $XENSHARP_RUNDIR or /run/xensharp)
      --machine-memory SIZE      memory the hypervisor gives guests, `xl info` total_memory: MiB, or with a
                                 K/M/G/T suffix (default $XENSHARP_MACHINE_MEMORY, else the host's RAM less
                                 an eighth of it kept for the host, at least 512 MiB and at most 4 GiB)
      --console-log-size BYTES   rotate a domain's console log at this size; K, M or G suffix (default 4M)
      --console-log-files N      rotated console logs kept per domain, NAME.log.1 to .N (default 3)
      --xenstore-max-clients N   xenstored socket clients served at once; more are closed (default 4096)
      --xenconsoled MODE         who serves the consoles of domains Domain-0's toolstack (Debian's xl under
                                 ./dom0) builds: internal, the daemon, or external, Xen's own xenconsoled run
                                 under ./dom0 (default $XENSHARP_XENCONSOLED, else internal)
      --kernel-cache DIR|off     where kernels unpacked from a bzImage or a compressed ELF are kept for the next
                                 build of the same kernel, at most 512 MiB, or off (default $XENSHARP_KERNEL_CACHE,
                                 else /var/cache/xensharp/kernels for /run/xensharp, else ~/.cache/xensharp/kernels)
    SIGHUP reopens the console logs (after an external logrotate).
    """;
string? runDir = null, machineMemory = null;
string? kernelCache = Environment.GetEnvironmentVariable(XenSharp.Toolstack.Builder.UnpackedKernelCache.EnvironmentVariable);
string xenconsoled = Environment.GetEnvironmentVariable("XENSHARP_XENCONSOLED") is { Length: > 0 } xc ? xc : "internal";
long logSize = ConsoleLogLimits.Default.MaxBytes;
int logFiles = ConsoleLogLimits.Default.Files;
var quotas = new XenStoreQuotas();
for (int i = 0; i < args.Length; i++)
{
    string a = args[i];
    string? value = i + 1 < args.Length ? args[i + 1] : null;
    if (a is "-h" or "--help")
    {
        Console.WriteLine(Usage);
        return 0;
    }
    if (a is not ("--rundir" or "--machine-memory" or "--console-log-size" or "--console-log-files" or "--xenstore-max-clients" or "--xenconsoled" or "--kernel-cache"))
    {
        Console.Error.WriteLine($"xensharpd: unknown argument {a}");
        return 2;
    }
    if (value is null)
    {
        Console.Error.WriteLine($"xensharpd: {a} needs a value");
        return 2;
    }
    i++;
    bool ok = true;
    switch (a)
    {
        case "--rundir": runDir = value; break;
        case "--machine-memory": machineMemory = value; break;
        case "--console-log-size": ok = Options.TryParseSize(value, 0, out logSize) && logSize > 0; break;
        case "--console-log-files": ok = int.TryParse(value, out logFiles) && logFiles >= 0; break;
        case "--xenconsoled": xenconsoled = value; break;
        case "--kernel-cache": kernelCache = value; break;
        default:
            ok = int.TryParse(value, out int clients) && clients > 0;
            if (ok) quotas.MaxSocketClients = clients;
            break;
    }
    if (!ok)
    {
        Console.Error.WriteLine($"xensharpd: invalid value for {a}: {value}");
        return 2;
    }
}
ulong machineBytes;
try { machineBytes = MachineMemory.Choose(machineMemory); }
catch (FormatException e)
{
    Console.Error.WriteLine($"xensharpd: {e.Message}");
    return 2;
}
if (xenconsoled is not ("internal" or "external"))
{
    Console.Error.WriteLine($"xensharpd: invalid value for --xenconsoled: {xenconsoled}");
    return 2;
}
var paths = new RunPaths(runDir);
var unpackedKernels = XenSharp.Toolstack.Builder.UnpackedKernelCache.For(kernelCache, paths.IsSystem);
return Daemon.Run(paths, machineBytes, new ConsoleLogLimits(logSize, logFiles), quotas, externalXenconsoled: xenconsoled == "external",
    unpackedKernels);

namespace XenSharp.Daemon
{
    internal static class Daemon
    {
        public static int Run(RunPaths paths, ulong machineMemoryBytes, ConsoleLogLimits consoleLogs, XenStoreQuotas quotas,
            bool externalXenconsoled, XenSharp.Toolstack.Builder.UnpackedKernelCache? unpackedKernels)
        {
            Directory.CreateDirectory(paths.RunDir);
            Directory.CreateDirectory(paths.ConsoleLogDir);
            using var pidLock = PidFile.Acquire(paths.PidFile);
            if (pidLock is null)
            {
                Console.Error.WriteLine($"xensharpd: another xensharpd runs in {paths.RunDir}");
                return 1;
            }
            Directory.CreateDirectory(Path.GetDirectoryName(paths.XenstoredSocket)!);

            using var stop = new ManualResetEventSlim();
            using var xs = new XenStored(quotas);
            xs.Start(paths.XenstoredSocket);
            // XENSHARP_ARGO takes Xen's argo= boot option (e.g. "1,mac-permissive=1"); Argo is off without it, as in Xen.
            XenSharp.Hypervisor.ArgoOptions? argo;
            try { argo = XenSharp.Hypervisor.ArgoOptions.Parse(Environment.GetEnvironmentVariable("XENSHARP_ARGO")); }
            catch (FormatException e)
            {
                Console.Error.WriteLine($"xensharpd: XENSHARP_ARGO: {e.Message}");
                return 2;
            }
            // XENSHARP_FLASK takes Xen's flask= boot option (disabled, permissive, enforcing or late); FLASK is off without
            // it, and starts with the built-in default policy loaded unless late.
            if (!XenSharp.Hypervisor.Xsm.FlaskModes.TryParse(Environment.GetEnvironmentVariable("XENSHARP_FLASK"), out var flask))
            {
                Console.Error.WriteLine($"xensharpd: XENSHARP_FLASK: expected disabled, permissive, enforcing or late");
                return 2;
            }
            var xen = new XenSharp.Hypervisor.XenHypervisor(
                new XenSharp.Hypervisor.HypervisorOptions
                {
                    MachineMemoryBytes = machineMemoryBytes, TrimHostHeap = true, Argo = argo, Flask = flask,
                    FlaskPolicy = flask == XenSharp.Hypervisor.Xsm.FlaskMode.Disabled ? null : XenSharp.Hypervisor.Xsm.DefaultPolicy.Binary,
                });
            using var hv = new XenHypervisorPlatform(xen);
            using var host = new Host(hv, xs, paths, consoleLogs: consoleLogs) { ExternalXenconsoled = externalXenconsoled, KernelCache = unpackedKernels };
            host.StopRequested += stop.Set;
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Set(); });
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Set(); });
            using var sighup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, c => { c.Cancel = true; ConsoleLog.ReopenAll(); });
            using (var privcmd = new XenSharp.Daemon.Privcmd.PrivcmdServer(paths.PrivcmdSocket, xen))
            using (var server = new ControlServer(paths.XlSocket, host))
            {
                Console.Error.WriteLine($"xensharpd: pid {Environment.ProcessId} listening on {paths.XlSocket}, xenstored on {paths.XenstoredSocket}, privcmd on {paths.PrivcmdSocket}");
                stop.Wait();
                Console.Error.WriteLine($"xensharpd: stopping, destroying {host.DomainIds.Count} domain(s)");
            }
            host.Dispose();
            xs.Stop();
            try { File.Delete(paths.XenstoredSocket); } catch (IOException) { }
            Console.Error.WriteLine("xensharpd: stopped");
            return 0;
        }
    }

    internal static class Options
    {
        /// <summary>A size with an optional K, M, G or T suffix (powers of 1024); a bare number is in units of
        /// 2^<paramref name="bareShift"/> bytes (bytes for 0, MiB for 20, as xl.cfg's memory).</summary>
        public static bool TryParseSize(string text, int bareShift, out long bytes)
        {
            bytes = 0;
            text = text.Trim();
            int suffix = text.Length == 0 ? -1 : char.ToUpperInvariant(text[^1]) switch { 'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, _ => -1 };
            int shift = suffix < 0 ? bareShift : suffix;
            string digits = suffix < 0 ? text : text[..^1];
            if (!long.TryParse(digits, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long n)
                || n > long.MaxValue >> shift) return false;
            bytes = n << shift;
            return true;
        }
    }

    /// <summary>$RUNDIR/xensharpd.pid for anyone to read, and $RUNDIR/xensharpd.lock held
    /// exclusively while the daemon runs so that a second daemon on the same directory refuses to start.</summary>
    internal sealed class PidFile : IDisposable
    {
        private readonly FileStream _lock;
        private readonly string _path, _lockPath;

        private PidFile(FileStream l, string path, string lockPath) { _lock = l; _path = path; _lockPath = lockPath; }

        public static PidFile? Acquire(string path)
        {
            string lockPath = Path.ChangeExtension(path, ".lock");
            FileStream l;
            // FileShare.None takes an exclusive flock: a second daemon cannot open it.
            try { l = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
            catch (IOException) { return null; }
            File.WriteAllText(path, $"{Environment.ProcessId}\n");
            return new PidFile(l, path, lockPath);
        }

        public void Dispose()
        {
            try { File.Delete(_path); } catch (IOException) { }
            try { File.Delete(_lockPath); } catch (IOException) { }
            _lock.Dispose();
        }
    }
}
