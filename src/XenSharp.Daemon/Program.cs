using System.Runtime.InteropServices;
using XenSharp.Daemon;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Platform;

// xensharpd [--rundir DIR] [--machine-memory SIZE]: the host process holding the hypervisor, xenstored,
// the console daemon and the toolstack, driven by xl over $RUNDIR/xl.sock. SIGTERM, SIGINT or
// `xl daemon-stop` stop it: every domain is destroyed and its sockets and pid file removed.
string? runDir = null, machineMemory = null;
for (int i = 0; i < args.Length; i++)
{
    if (args[i] == "--rundir" && i + 1 < args.Length) runDir = args[++i];
    else if (args[i] == "--machine-memory" && i + 1 < args.Length) machineMemory = args[++i];
    else if (args[i] is "-h" or "--help")
    {
        Console.WriteLine("""
            usage: xensharpd [--rundir DIR] [--machine-memory SIZE]
              --rundir DIR           sockets, logs and pid file (default $XENSHARP_RUNDIR or /run/xensharp)
              --machine-memory SIZE  memory the hypervisor gives guests, `xl info` total_memory: MiB, or with a
                                     K/M/G/T suffix (default $XENSHARP_MACHINE_MEMORY, else the host's RAM less
                                     an eighth of it kept for the host, at least 512 MiB and at most 4 GiB)
            """);
        return 0;
    }
    else
    {
        Console.Error.WriteLine($"xensharpd: unknown argument {args[i]}");
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
var paths = new RunPaths(runDir);
return Daemon.Run(paths, machineBytes);

namespace XenSharp.Daemon
{
    internal static class Daemon
    {
        public static int Run(RunPaths paths, ulong machineMemoryBytes)
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
            using var xs = new XenStored();
            xs.Start(paths.XenstoredSocket);
            using var hv = new XenHypervisorPlatform(new XenSharp.Hypervisor.XenHypervisor(
                new XenSharp.Hypervisor.HypervisorOptions { MachineMemoryBytes = machineMemoryBytes, TrimHostHeap = true }));
            using var host = new Host(hv, xs, paths);
            host.StopRequested += stop.Set;
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Set(); });
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Set(); });
            using (var server = new ControlServer(paths.XlSocket, host))
            {
                Console.Error.WriteLine($"xensharpd: pid {Environment.ProcessId} listening on {paths.XlSocket}, xenstored on {paths.XenstoredSocket}");
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
