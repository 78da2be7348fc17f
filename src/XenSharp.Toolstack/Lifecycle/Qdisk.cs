using System.Diagnostics;
using System.Globalization;
using XenSharp.Backends.Xenbus;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// Disks with an explicit <c>backendtype=qdisk</c> are served by Debian's QEMU, as libxl serves a PV or PVH domain's
/// qdisk disks (libxl__spawn_qemu_xenpv_backend): the backend directories go under backend/qdisk with libxl's keys
/// (<c>params</c> is <c>format:path</c>), then one <c>qemu-system-i386 -xen-domid N -xen-attach -M xenpv</c> per
/// domain is started with XenSharp's drop-in Xen libraries (as <c>./dom0</c> runs programs), and the domain goes on
/// once QEMU has written <c>device-model/N/state = running</c>. QEMU ending ends only its disks: the daemon lets go
/// of its grant maps and ports when its connections close.
/// </summary>
public sealed partial class Host
{
    private readonly Dictionary<uint, Process> _qdiskBackends = [];

    private static bool ServedByQemu(DiskSpec disk) => disk.Backend == DiskBackend.Qdisk;

    /// <summary>libxl__device_disk_string_of_format: how <c>params</c> names the image's format for QEMU.</summary>
    private static string QemuFormat(DiskFormat f) => f switch
    {
        DiskFormat.Raw => "aio",
        DiskFormat.Qcow => "qcow",
        DiskFormat.Qcow2 => "qcow2",
        DiskFormat.Vhd => "vhd",
        DiskFormat.Empty => "",
        _ => "aio",
    };

    /// <summary>The vbd frontend and its backend/qdisk directory, with the keys libxl writes for QEMU.</summary>
    private void AddQdiskDisk(Domain dom, DiskSpec disk, int devId, IReadOnlyDictionary<string, string> frontend)
    {
        string deviceType = disk.IsCdrom ? "cdrom" : "disk";
        var backend = new Dictionary<string, string>
        {
            ["params"] = disk.Target is null ? "" : $"{QemuFormat(disk.Format)}:{disk.Target}",
            ["removable"] = disk.IsCdrom ? "1" : "0",
            ["bootable"] = "1",
            ["dev"] = disk.Vdev,
            ["type"] = "qdisk",
            ["mode"] = disk.ReadWrite ? "w" : "r",
            ["device-type"] = deviceType,
            ["discard-enable"] = disk.Discard == false ? "0" : "1",
        };
        if (disk.DirectIoSafe) backend["direct-io-safe"] = "1";
        var a = new DeviceAddress(DeviceKinds.Vbd, dom.DomId, devId);
        DeviceLayout.Write(_xs, a, backend, frontend, backendKind: DeviceKinds.Qdisk);
    }

    /// <summary>Starts the domain's QEMU if one of its disks is QEMU's and none runs yet, and waits until it is
    /// serving; a QEMU that cannot start fails the operation with its log named.</summary>
    private void EnsureQdiskBackend(Domain dom)
    {
        if (!dom.Config.Disks.Any(ServedByQemu))
            return;
        lock (_qdiskBackends)
            if (_qdiskBackends.TryGetValue(dom.DomId, out var running) && !running.HasExited)
                return;
        uint domId = dom.DomId;
        RemoveQdiskNodes(domId);
        string log = Path.Combine(_paths.RunDir, $"qdisk-{domId}.log");
        // The arguments of libxl__spawn_qemu_xenpv_backend; the log is QEMU's stdout and stderr, as libxl's qdisk-N.log.
        string[] args = ["-xen-domid", domId.ToString(CultureInfo.InvariantCulture), "-xen-attach",
            "-name", $"domain-{domId}", "-nographic", "-M", "xenpv",
            "-monitor", "/dev/null", "-serial", "/dev/null", "-parallel", "/dev/null"];
        var qemu = QemuProcess.Start(QemuProcess.DefaultPath, args, log, _paths, "backendtype=qdisk",
            p => OnQdiskBackendExited(domId, p));
        lock (_qdiskBackends) _qdiskBackends[domId] = qemu;
        _xs.Write($"/local/domain/0/libxl/{domId}/qdisk-backend-pid", qemu.Id.ToString(CultureInfo.InvariantCulture));

        if (!QemuProcess.WaitUntilRunning(qemu, () => _xs.Read($"/local/domain/0/device-model/{domId}/state")))
        {
            StopQdiskBackend(domId);
            throw new ControlException($"domain {domId} Qdisk backend: QEMU did not start (see {log})");
        }
        _hv.ConsoleWrite($"d{domId}: qdisk backend QEMU running, pid {qemu.Id}");
    }

    /// <summary>QEMU ended while its domain lives: its disks stop being served, and nothing else changes.</summary>
    private void OnQdiskBackendExited(uint domId, Process qemu)
    {
        // Under the lock: StopQdiskBackend removes the process before it disposes of it.
        string? status = null;
        lock (_qdiskBackends)
        {
            if (_qdiskBackends.TryGetValue(domId, out var p) && p == qemu)
            {
                try { status = qemu.ExitCode.ToString(CultureInfo.InvariantCulture); }
                catch (InvalidOperationException) { status = "?"; }
            }
        }
        if (status is not null)
            _hv.ConsoleWrite($"d{domId}: qdisk backend QEMU exited ({status}); its disks are no longer served");
    }

    /// <summary>libxl__destroy_qemu_xenpv_backend: QEMU is told to end (SIGHUP, then SIGKILL if it lingers) and its
    /// xenstore nodes go.</summary>
    private void StopQdiskBackend(uint domId)
    {
        Process? qemu;
        lock (_qdiskBackends)
        {
            _qdiskBackends.Remove(domId, out qemu);
        }
        if (qemu is not null)
            QemuProcess.Stop(qemu);
        RemoveQdiskNodes(domId);
    }

    private void RemoveQdiskNodes(uint domId)
    {
        foreach (string path in new[] { $"/local/domain/0/libxl/{domId}", $"/local/domain/0/device-model/{domId}" })
        {
            try { if (_xs.Exists(path)) _xs.Rm(path); }
            catch (XenSharp.Store.XenStoreException) { }
        }
    }
}
