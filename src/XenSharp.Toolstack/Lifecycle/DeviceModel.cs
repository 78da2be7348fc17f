using System.Diagnostics;
using System.Globalization;
using XenSharp.Public;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// An HVM domain's device model, started as libxl starts qemu-xen (libxl__spawn_local_dm): Debian's
/// <c>qemu-system-i386 -machine xenfv -xen-domid N</c> (or xl.cfg <c>device_model_override</c>) with XenSharp's drop-in
/// Xen libraries, a QMP socket <c>qmp-libxl-N</c> in the run directory, the guest's UARTs where xl.cfg
/// <c>serial</c> says, and its log as <c>qemu-dm-NAME.log</c>. The domain is unpaused only once QEMU has written
/// <c>device-model/N/state = running</c>. QEMU ending while its domain runs crashes that domain, as a dead device
/// model does under Xen; destroying the domain ends its QEMU. A domain booted from hvmloader always has one; one booted
/// through <c>firmware_override</c> only when <c>device_model_override</c> asks for it.
/// </summary>
public sealed partial class Host
{
    private readonly Dictionary<uint, Process> _deviceModels = [];

    private static bool HasDeviceModel(DomainConfig c) =>
        c.Type == DomainType.Hvm && (c.FirmwareOverride is null || c.DeviceModelOverride is not null);

    /// <summary>The QMP socket libxl gives QEMU.</summary>
    private string QmpSocketPath(uint domId) => Path.Combine(_paths.RunDir, $"qmp-libxl-{domId}");

    /// <summary>QEMU's arguments for the domain, in the order libxl builds them for qemu-xen.</summary>
    private List<string> DeviceModelArgs(Domain dom)
    {
        var c = dom.Config;
        string id = dom.DomId.ToString(CultureInfo.InvariantCulture);
        var args = new List<string>
        {
            "-xen-domid", id,
            "-chardev", $"socket,id=libxl-cmd,path={QmpSocketPath(dom.DomId)},server=on,wait=off",
            "-no-shutdown", "-mon", "chardev=libxl-cmd,mode=control",
            "-nodefaults", "-no-user-config", "-xen-attach", "-name", c.Name,
        };
        args.AddRange(DisplayBackendArgs(c.Display));
        foreach (string serial in c.Serials)
            args.AddRange(["-serial", serial]);
        args.AddRange(GraphicsCardArgs(c.Display));
        // Disks as libxl gives them to qemu-xen: the first four (hda-hdd, or xvda-xvdd) on the IDE buses; the guest also
        // gets each as a PV vbd, for when its PV drivers unplug the emulated ones. A CD-ROM is a read-only drive and an
        // ide-cd device both named ide-DEVID (empty when it has no medium), the name xl cd-insert and cd-eject give QMP.
        foreach (var disk in c.Disks)
        {
            if (EmulatedDiskIndex(disk.Vdev) is not int index || index >= 4)
                continue;
            string? file = disk.Target is { Length: > 0 } target ? target.Replace(",", ",,") : null;
            string format = QemuDriverName(disk.Format);
            if (disk.IsCdrom)
            {
                string cd = EmulatedCdromId(disk.Vdev);
                args.AddRange(["-drive", $"if=none,readonly=on,id={cd}{(file is null ? "" : $",file={file},format={format}")}",
                    "-device", $"ide-cd,id={cd},drive={cd},bus=ide.{index / 2},unit={index % 2}"]);
            }
            else if (file is not null)
                args.AddRange(["-drive", $"file={file},if=ide,index={index},media=disk,format={format},cache=writeback{(disk.ReadWrite ? "" : ",readonly=on")}"]);
        }
        args.AddRange(["-boot", $"order={(c.Boot is { Length: > 0 } b ? b : "cda")}"]);
        args.AddRange(UsbArgs(c.Display));
        args.AddRange(["-smp", $"{c.Vcpus},maxcpus={c.MaxVcpus}"]);
        AddEmulatedNicArgs(dom, args);
        args.AddRange(["-machine", "xenfv", "-m", ((c.TargetMemKb - c.Display.VideoRamKb) / 1024).ToString(CultureInfo.InvariantCulture)]);
        return args;
    }

    /// <summary>libxl__qemu_disk_format_string: QEMU's block driver for an image format (vhd is QEMU's vpc).</summary>
    private static string QemuDriverName(DiskFormat f) => f switch
    {
        DiskFormat.Vhd => "vpc",
        DiskFormat.Unknown or DiskFormat.Empty => "raw",
        _ => DiskSpec.FormatName(f),
    };

    /// <summary>libxl's name for an emulated CD-ROM's drive and device: ide- and the vdev's device number.</summary>
    private static string EmulatedCdromId(string vdev) =>
        string.Create(CultureInfo.InvariantCulture, $"ide-{VbdNumber.Parse(vdev)}");

    /// <summary>The disk's index among the emulated ones (libxl__device_disk_dev_number's disk): hda/sda/xvda 0,
    /// hdb 1, and so on; null for a name that is not one of these.</summary>
    private static int? EmulatedDiskIndex(string vdev)
    {
        string letters = vdev.StartsWith("xvd", StringComparison.Ordinal) ? vdev[3..]
            : vdev.StartsWith("hd", StringComparison.Ordinal) || vdev.StartsWith("sd", StringComparison.Ordinal) ? vdev[2..] : "";
        return letters.Length == 1 && letters[0] is >= 'a' and <= 'z' ? letters[0] - 'a' : null;
    }

    /// <summary>Starts the domain's QEMU and waits until it serves the domain; a QEMU that cannot start fails the
    /// creation with its log named. A restored domain's QEMU takes the saved device state from
    /// <paramref name="incoming"/> (libxl's -incoming fd:N) and runs once it has loaded it.</summary>
    private void StartDeviceModel(Domain dom, string? incoming = null)
    {
        string qemu = dom.Config.DeviceModelOverride ?? QemuProcess.DefaultPath;
        uint domId = dom.DomId;
        string log = Path.Combine(_paths.RunDir, $"qemu-dm-{dom.Config.Name}.log");
        var args = DeviceModelArgs(dom);
        if (incoming is not null)
            args.AddRange(["-incoming", "fd:3"]);
        var p = QemuProcess.Start(qemu, args, log, _paths, "device model", q => OnDeviceModelExited(domId, q), incoming);
        lock (_deviceModels) _deviceModels[domId] = p;
        _xs.Write($"/local/domain/0/libxl/{domId}/dm-pid", p.Id.ToString(CultureInfo.InvariantCulture));

        if (!QemuProcess.WaitUntilRunning(p, () => _xs.Read($"/local/domain/0/device-model/{domId}/state")))
        {
            string exit = p.HasExited ? $": QEMU exited: {LastLine(log)}" : "";
            StopDeviceModel(domId);
            throw new ControlException($"domain {domId}: the device model did not start{exit} (see {log})");
        }
        try { ConfigureDisplay(dom); }
        catch (ControlException e)
        {
            // A QMP failure may be QEMU on its way out (its socket closes before the process is gone): its own
            // last word says more than the closed socket.
            bool exited = p.WaitForExit(TimeSpan.FromSeconds(2));
            StopDeviceModel(domId);
            // QEMU refuses some display options only once it runs (Debian's has no DES for VNC passwords).
            string why = exited ? $"QEMU exited: {LastLine(log)}" : e.Message;
            throw new ControlException($"domain {domId}: the device model's display: {why} (see {log})");
        }
        _hv.ConsoleWrite($"d{domId}: device model QEMU running, pid {p.Id}");
        AttachEmulatedNics(dom);
    }

    /// <summary>Where the device model's state goes while a save writes its stream (libxl's qemu-save.N, here in the
    /// run directory), and where a restore puts it for the new QEMU (qemu-resume.N).</summary>
    private string DeviceModelSaveFile(uint domId) => Path.Combine(_paths.RunDir, $"qemu-save.{domId}");
    private string DeviceModelRestoreFile(uint domId) => Path.Combine(_paths.RunDir, $"qemu-resume.{domId}");

    /// <summary>The device model's xenstore directory (libxl's DEVICE_MODEL_XS_PATH for a QEMU in dom0).</summary>
    private static string DeviceModelXsPath(uint domId) => $"/local/domain/0/device-model/{domId}";

    /// <summary>libxl__qmp_suspend_save: QEMU stops emulating (QMP stop) and writes its devices' state, not for a live
    /// migration (live=false), to <see cref="DeviceModelSaveFile"/>; returns the file.</summary>
    private string SaveDeviceModel(Domain dom)
    {
        string file = DeviceModelSaveFile(dom.DomId);
        TryDelete(file);
        using var qmp = Qmp.Connect(QmpSocketPath(dom.DomId), TimeSpan.FromSeconds(30));
        qmp.Execute("stop");
        qmp.Execute("xen-save-devices-state", new System.Text.Json.Nodes.JsonObject { ["filename"] = file, ["live"] = false });
        if (!File.Exists(file))
            throw new ControlException($"domain {dom.DomId}: QEMU saved no device state to {file}");
        return file;
    }

    /// <summary>The libxl records of the device model's state (libxl__save_emulator_xenstore_data, then the
    /// context): the physmap keys QEMU wrote for the memory it placed (VRAM), when there are any, and its saved file.</summary>
    private IReadOnlyList<XenSharp.Toolstack.Save.EmulatorRecord> DeviceModelRecords(Domain dom, string stateFile)
    {
        const uint qemuXen = XenSharp.Public.Migration.LibxlStream.EMULATOR_QEMU_UPSTREAM;
        var records = new List<XenSharp.Toolstack.Save.EmulatorRecord>();
        string root = DeviceModelXsPath(dom.DomId);
        var keys = new List<(string, string)>();
        if (_xs.Exists($"{root}/physmap"))
            foreach (string entry in _xs.Directory($"{root}/physmap") ?? [])
                foreach (string sub in new[] { "start_addr", "size", "name" })
                {
                    string key = $"physmap/{entry}/{sub}";
                    keys.Add((key, _xs.Read($"{root}/{key}")
                        ?? throw new ControlException($"domain {dom.DomId}: the device model's {key} is missing")));
                }
        if (keys.Count > 0)
            records.Add(new(XenSharp.Public.Migration.LibxlStream.REC_TYPE_EMULATOR_XENSTORE_DATA, qemuXen, 0, XenSharp.Toolstack.Save.EmulatorRecord.XenstoreData(keys)));
        records.Add(new(XenSharp.Public.Migration.LibxlStream.REC_TYPE_EMULATOR_CONTEXT, qemuXen, 0, File.ReadAllBytes(stateFile)));
        return records;
    }

    /// <summary>libxl__dm_resume: QEMU emulates again (QMP cont) after a save that did not end the domain.</summary>
    private void ResumeDeviceModel(Domain dom)
    {
        using var qmp = Qmp.Connect(QmpSocketPath(dom.DomId), TimeSpan.FromSeconds(30));
        qmp.Execute("cont");
    }

    private static string LastLine(string file)
    {
        try { return File.ReadLines(file).LastOrDefault(l => l.Trim().Length > 0)?.Trim() ?? ""; }
        catch (IOException) { return ""; }
    }

    /// <summary>QEMU ended by itself: its domain cannot do I/O any more and is crashed, as Xen's toolstack sees it.</summary>
    private void OnDeviceModelExited(uint domId, Process qemu)
    {
        bool ours;
        lock (_deviceModels)
            ours = _deviceModels.TryGetValue(domId, out var p) && p == qemu && _deviceModels.Remove(domId);
        if (!ours)
            return;
        _hv.ConsoleWrite($"d{domId}: device model QEMU exited; crashing the domain");
        Domain? dom;
        lock (_lock) _domains.TryGetValue(domId, out dom);
        try { dom?.Hv.Shutdown(ShutdownReason.Crash); }
        catch (Exception e) when (e is ControlException or InvalidOperationException or ArgumentException) { }
    }

    /// <summary>libxl__destroy_device_model: QEMU is told to end (SIGHUP, then SIGKILL if it lingers) and its nodes go.</summary>
    private void StopDeviceModel(uint domId)
    {
        Process? qemu;
        lock (_deviceModels) _deviceModels.Remove(domId, out qemu);
        if (qemu is not null)
            QemuProcess.Stop(qemu);
        foreach (string path in new[] { $"/local/domain/0/libxl/{domId}/dm-pid", $"/local/domain/0/device-model/{domId}" })
        {
            try { if (_xs.Exists(path)) _xs.Rm(path); }
            catch (XenSharp.Store.XenStoreException) { }
        }
        try { File.Delete(QmpSocketPath(domId)); }
        catch (IOException) { }
    }
}
