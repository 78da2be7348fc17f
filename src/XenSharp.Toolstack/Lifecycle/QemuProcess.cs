using System.Diagnostics;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// Debian's QEMU as libxl runs it, in both of its parts here (a PV or PVH domain's qdisk backend, an HVM domain's
/// device model): started in its own session with XenSharp's drop-in Xen libraries and the daemon's xenstored, its
/// output appended to its log; ready once it writes <c>device-model/N/state = running</c>; ended with SIGHUP, then
/// SIGKILL if it lingers (libxl__kill's order).
/// </summary>
internal static class QemuProcess
{
    /// <summary>libxl's LIBXL_DEVICE_MODEL_START_TIMEOUT.</summary>
    public static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(60);

    /// <summary>Debian's qemu-system-xen (or $XENSHARP_QEMU).</summary>
    public static string DefaultPath =>
        Environment.GetEnvironmentVariable("XENSHARP_QEMU") is { Length: > 0 } q ? q : "/usr/libexec/xen-qemu-system-i386";

    /// <summary>Where <c>make -C src/dom0</c> puts the drop-in libraries: artifacts/dom0/lib beside the daemon's
    /// artifacts/bin (or $XENSHARP_DOM0_LIB).</summary>
    public static string LibraryDir =>
        Environment.GetEnvironmentVariable("XENSHARP_DOM0_LIB") is { Length: > 0 } d ? d
            : Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "dom0", "lib"));

    /// <summary>Starts <paramref name="qemu"/> with <paramref name="args"/>; <paramref name="role"/> prefixes the
    /// errors (a missing QEMU or missing libraries), as xl names the device it was setting up.
    /// <paramref name="incoming"/>, when given, is a file of saved device state the shell opens as QEMU's fd 3,
    /// which <c>-incoming fd:3</c> in the arguments names (libxl passes an open descriptor likewise).</summary>
    public static Process Start(string qemu, IEnumerable<string> args, string log, RunPaths paths, string role,
        Action<Process> onExit, string? incoming = null)
    {
        string libs = LibraryDir;
        if (!File.Exists(Path.Combine(libs, "libxencall.so.1")))
            throw new ControlException($"{role}: XenSharp's Xen libraries are not built in {libs} (make -C src/dom0)");
        if (!File.Exists(qemu))
            throw new ControlException($"{role}: {qemu} is missing (Debian's qemu-system-xen)");
        var psi = new ProcessStartInfo("/usr/bin/setsid") { RedirectStandardInput = true, UseShellExecute = false };
        // setsid execs the shell, which execs QEMU: the process is QEMU itself, and its output goes to the log.
        string redirect = incoming is null ? "" : " 3<\"$XENSHARP_QEMU_INCOMING\"";
        foreach (string arg in new[] { "sh", "-c", "exec \"$0\" \"$@\" >>\"$XENSHARP_QEMU_LOG\" 2>&1" + redirect, qemu })
            psi.ArgumentList.Add(arg);
        foreach (string arg in args)
            psi.ArgumentList.Add(arg);
        psi.Environment["XENSHARP_QEMU_LOG"] = log;
        if (incoming is not null) psi.Environment["XENSHARP_QEMU_INCOMING"] = incoming;
        psi.Environment["LD_LIBRARY_PATH"] = libs;
        psi.Environment["XENSHARP_RUNDIR"] = paths.RunDir;
        psi.Environment["XENSTORED_PATH"] = paths.XenstoredSocket;
        psi.Environment.Remove("XENSHARP_PRIVCMD");
        var p = Process.Start(psi) ?? throw new ControlException($"{role}: cannot start {qemu}");
        p.StandardInput.Close();
        p.EnableRaisingEvents = true;
        p.Exited += (_, _) => onExit(p);
        return p;
    }

    /// <summary>Waits until <paramref name="state"/> reads "running"; false if QEMU ended or the timeout passed first.</summary>
    public static bool WaitUntilRunning(Process qemu, Func<string?> state)
    {
        var deadline = Stopwatch.StartNew();
        while (state() != "running")
        {
            if (qemu.HasExited || deadline.Elapsed > StartTimeout)
                return false;
            Thread.Sleep(50);
        }
        return true;
    }

    /// <summary>Ends QEMU (SIGHUP, SIGKILL after 10 s) and waits for it.</summary>
    public static void Stop(Process qemu)
    {
        try
        {
            if (!qemu.HasExited)
            {
                _ = Kill(qemu.Id, 1);
                if (!qemu.WaitForExit(TimeSpan.FromSeconds(10)))
                    qemu.Kill();
                qemu.WaitForExit();
            }
        }
        catch (InvalidOperationException) { }
        qemu.Dispose();
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}
