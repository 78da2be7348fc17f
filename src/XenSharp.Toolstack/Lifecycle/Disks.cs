using System.Globalization;
using System.Text.Json.Nodes;
using XenSharp.Backends.Block.Images;
using XenSharp.Backends.Xenbus;
using XenSharp.Toolstack.Config;
using XenSharp.Public;
using XenSharp.Public.Io;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The domain's disks (xl.cfg's <c>disk=</c>) as libxl adds vbd devices: each image is checked before the
/// domain is built, so a missing or unusable one fails <c>xl create</c> with its name and leaves no domain;
/// then each disk gets its frontend and backend directories, which the block backend picks up.
/// </summary>
public sealed partial class Host
{
    /// <summary>Every disk is usable and no writable image is shared with another domain: checked before
    /// the domain is built, so that <c>xl create</c> fails with the disk named and leaves no domain.</summary>
    private void CheckDisks(DomainConfig c)
    {
        foreach (var disk in c.Disks)
        {
            CheckDisk(disk);
            CheckSharing(disk, c.Name, c.Uuid);
        }
    }

    /// <summary>The disk's vdev, backend and image are usable: what <c>xl create</c>, <c>xl block-attach</c>
    /// and <c>xl cd-insert</c> refuse before touching the domain.</summary>
    private static void CheckDisk(DiskSpec disk)
    {
        VbdNumber.Parse(disk.Vdev);
        if (disk.BackendDomain is { } b && b is not ("0" or "Domain-0"))
            throw new ControlException($"disk {disk.Vdev}: backend domain {b}: only Domain-0 serves disks (no driver domains)");
        if (disk.Specification != "xen" || disk.Backend == DiskBackend.Standalone)
            throw new ControlException($"disk {disk.Vdev}: specification={disk.Specification}, backendtype={BackendName(disk.Backend)}: only Xen's blkif is served (no virtio disks)");
        if (disk.Colo)
            throw new ControlException($"disk {disk.Vdev}: COLO block replication is not supported");
        if (disk.Script is { } script && Path.GetFileName(script) != "block")
            throw new ControlException($"disk {disk.Vdev}: script={script}: hotplug scripts are not run; the target must be an image file or block device");
        // libxl's disk_try_backend: phy serves raw images only.
        if (disk.Backend == DiskBackend.Phy && disk.Format is not (DiskFormat.Raw or DiskFormat.Empty))
            throw new ControlException($"disk {disk.Vdev}: backend phy unsuitable due to format {DiskSpec.FormatName(disk.Format)}");
        if (disk.Target is null) return; // an empty cdrom drive
        BlockImageFormat? format = FormatOf(disk);
        try
        {
            using var _ = BlockImages.Open(disk.Target, new BlockImageOptions { Format = format, ReadOnly = !disk.ReadWrite });
        }
        catch (BlockImageException e) { throw new ControlException($"disk {disk.Vdev}: {e.Message}"); }
    }

    /// <summary>The block hotplug script's check_sharing: an image is attached writable to one domain only,
    /// and not read-only anywhere while another domain writes it. A domain may share with itself, and with another
    /// domain of its uuid (the script's same_vm: the guest migrating to this host).</summary>
    private void CheckSharing(DiskSpec disk, string domainName, Guid? uuid = null)
    {
        if (disk.Target is null) return;
        string image = ImageIdentity(disk.Target);
        List<(uint DomId, DiskSpec Disk)> users;
        lock (_lock)
            users = [.. _domains.Values.Where(d => d.Config.Name != domainName && d.Config.Uuid != uuid && !d.Destroyed)
                .SelectMany(d => d.Config.Disks.Select(x => (d.DomId, x)))];
        foreach (var (domId, other) in users)
        {
            if (other.Target is null || ImageIdentity(other.Target) != image) continue;
            if (disk.ReadWrite)
                throw new ControlException(
                    $"disk {disk.Vdev}: File {disk.Target} is mounted in a guest domain (domain {domId}, {other.Vdev}), and so cannot be mounted now.", Errno.EBUSY);
            if (other.ReadWrite)
                throw new ControlException(
                    $"disk {disk.Vdev}: File {disk.Target} is mounted read-write in a guest domain (domain {domId}, {other.Vdev}), and so cannot be mounted read-only now.", Errno.EBUSY);
        }
    }

    /// <summary>One name per file: the full path with symbolic links followed.</summary>
    private static string ImageIdentity(string path)
    {
        string full = Path.GetFullPath(path);
        try { return new FileInfo(full).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? full; }
        catch (IOException) { return full; }
    }

    private static BlockImageFormat? FormatOf(DiskSpec disk) => disk.Format switch
    {
        DiskFormat.Raw => BlockImageFormat.Raw,
        DiskFormat.Qcow => BlockImageFormat.Qcow,
        DiskFormat.Qcow2 => BlockImageFormat.Qcow2,
        DiskFormat.Vhd => BlockImageFormat.Vhd,
        DiskFormat.Unknown or DiskFormat.Empty => null,
        _ => throw new ControlException($"disk {disk.Vdev}: format {DiskSpec.FormatName(disk.Format)} is not supported (raw, qcow, qcow2, vhd)"),
    };

    private static string BackendName(DiskBackend b) => b.ToString().ToLowerInvariant();

    /// <summary>libxl__device_disk_set_backend: phy for a raw image, qdisk for the formats only QEMU reads,
    /// or what backendtype= asked for. XenSharp's own blkif backend serves it under backend/vbd, except that an explicit
    /// backendtype=qdisk is QEMU's (Qdisk.cs).</summary>
    private static DiskBackend BackendOf(DiskSpec disk) => disk.Backend != DiskBackend.Unknown ? disk.Backend
        : disk.Format is DiskFormat.Raw or DiskFormat.Empty && !disk.IsCdrom ? DiskBackend.Phy : DiskBackend.Qdisk;

    /// <summary>libxl__device_disk_add for each disk: the vbd directories, keyed by the vdev's device number.</summary>
    private void AddDisks(Domain dom)
    {
        foreach (var disk in dom.Config.Disks)
            AddDisk(dom, disk);
        EnsureQdiskBackend(dom);
    }

    /// <summary>The vbd's backend and frontend directories with libxl's keys. Where libxl would write
    /// <c>format:path</c> in <c>params</c> (qdisk, tap), the path stays alone and the format has its own
    /// <c>format</c> node, which the backend reads; the hotplug <c>script</c> is named but not run.</summary>
    private void AddDisk(Domain dom, DiskSpec disk)
    {
        int devId = VbdNumber.Parse(disk.Vdev);
        string deviceType = disk.IsCdrom ? "cdrom" : "disk";
        var type = BackendOf(disk);
        var backend = new Dictionary<string, string>
        {
            ["params"] = disk.Target ?? "",
            ["removable"] = disk.IsCdrom ? "1" : "0",
            ["bootable"] = "1",
            ["dev"] = disk.Vdev,
            ["type"] = BackendName(type),
            ["mode"] = disk.ReadWrite ? "w" : "r",
            ["device-type"] = deviceType,
            ["discard-enable"] = disk.Discard == false ? "0" : "1",
            ["specification"] = disk.Specification,
            ["format"] = DiskSpec.FormatName(disk.Format),
        };
        if (type is DiskBackend.Phy or DiskBackend.Tap)
            backend["script"] = disk.Script is { } s && Path.IsPathRooted(s) ? s
                : Path.Combine("/etc/xen/scripts", disk.Script ?? (type == DiskBackend.Tap ? "block-tap" : "block"));
        if (disk.DirectIoSafe) backend["direct-io-safe"] = "1";
        var frontend = new Dictionary<string, string>
        {
            ["virtual-device"] = devId.ToString(CultureInfo.InvariantCulture),
            ["device-type"] = deviceType,
            ["trusted"] = disk.Trusted ? "1" : "0",
        };
        if (ServedByQemu(disk))
            AddQdiskDisk(dom, disk, devId, frontend);
        else
            AddDevice(dom.DomId, DeviceKinds.Vbd, devId, backend, frontend);
    }
}

public sealed partial class Host
{
    /// <summary>`xl block-attach`: the disk is checked as <c>xl create</c> checks it, then added while the guest runs;
    /// its blkfront sees the new device directory and connects.</summary>
    private void BlockAttach(BlockAttachRequest r)
    {
        var d = Resolve(r.Domain);
        DiskSpec disk;
        try { disk = DiskSpec.Parse(r.Spec); }
        catch (FormatException e) { throw new ControlException(e.Message, Errno.EINVAL); }
        if (disk.Target is { } t && !Path.IsPathRooted(t))
            disk = disk with { Target = Path.GetFullPath(Path.Combine(r.Directory, t)) };
        CheckDisk(disk);
        CheckSharing(disk, d.Config.Name);
        int devId = VbdNumber.Parse(disk.Vdev);
        if (_xs.Exists($"/local/domain/{d.DomId}/device/{DeviceKinds.Vbd}/{devId}"))
            throw new ControlException($"disk {disk.Vdev} is already attached to domain {d.DomId}", Errno.EEXIST);
        AddDisk(d, disk);
        lock (_lock) d.Config.Disks = [.. d.Config.Disks, disk];
        EnsureQdiskBackend(d);
    }

    /// <summary>How long a frontend has to close a disk being detached before it is taken away regardless, as
    /// libxl gives up waiting and removes the device.</summary>
    private static readonly TimeSpan DetachTimeout = TimeSpan.FromSeconds(10);

    /// <summary>`xl block-detach` (libxl__initiate_device_generic_remove): the backend goes offline and Closing,
    /// the frontend closes its end, and once the backend is Closed both directories go.</summary>
    private void BlockDetach(BlockDetachRequest r)
    {
        var d = Resolve(r.Domain);
        int devId = int.TryParse(r.Device, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n
            : VbdNumber.TryParse(r.Device, out n) ? n : -1;
        var device = new DeviceAddress(DeviceKinds.Vbd, d.DomId, devId);
        if (devId < 0 || !_xs.Exists(device.FrontendPath))
            throw new ControlException($"Error: Device {r.Device} not connected.", Errno.ENODEV);
        // The frontend names its backend: backend/vbd for XenSharp's, backend/qdisk for QEMU's.
        string be = _xs.Read($"{device.FrontendPath}/backend") is { } named && named == device.BackendPath.Replace($"/{DeviceKinds.Vbd}/", $"/{DeviceKinds.Qdisk}/")
            ? named : device.BackendPath;
        _xs.Write($"{be}/online", "0");
        _xs.Write($"{be}/state", ((int)XenbusState.Closing).ToString(CultureInfo.InvariantCulture));
        var deadline = _time.GetUtcNow() + DetachTimeout;
        while (_xs.Read($"{be}/state") != ((int)XenbusState.Closed).ToString(CultureInfo.InvariantCulture) && _time.GetUtcNow() < deadline)
            Thread.Sleep(50);
        DeviceLayout.Remove(_xs, device);
        if (be != device.BackendPath)
            DeviceLayout.Remove(_xs, device with { Kind = DeviceKinds.Qdisk });
        lock (_lock) d.Config.Disks = [.. d.Config.Disks.Where(x => !(VbdNumber.TryParse(x.Vdev, out int id) && id == devId))];
    }

    /// <summary>`xl block-list`: each vbd under the domain's device/vbd, as libxl_device_disk_getinfo reads it
    /// from the frontend's directory.</summary>
    private IReadOnlyList<DiskInfoEntry> BlockList(BlockListRequest r)
    {
        var d = Resolve(r.Domain, allowDom0: true);
        string dir = $"/local/domain/{d.DomId}/device/{DeviceKinds.Vbd}";
        var result = new List<DiskInfoEntry>();
        foreach (string id in _xs.Directory(dir) ?? [])
        {
            if (!int.TryParse(id, NumberStyles.None, CultureInfo.InvariantCulture, out int devid)) continue;
            string fe = $"{dir}/{id}";
            int Number(string key) =>
                int.TryParse(_xs.Read($"{fe}/{key}"), NumberStyles.None, CultureInfo.InvariantCulture, out int v) ? v : -1;
            uint backendId = (uint)Math.Max(0, Number("backend-id"));
            result.Add(new DiskInfoEntry(devid, backendId, d.DomId, Number("state"), Number("event-channel"),
                Number("ring-ref"), _xs.Read($"{fe}/backend") ?? ""));
        }
        return result.OrderBy(e => e.Vdev).ToList();
    }
}

public sealed partial class Host
{
    /// <summary>`xl cd-insert` and `xl cd-eject` (libxl_cdrom_insert): the drive is emptied first (backend
    /// <c>params</c> ""), then the new medium is named; the backend follows <c>params</c>, closes or opens the
    /// image and tells the frontend the new <c>sectors</c>. Unlike libxl, which leaves this to QEMU and so to
    /// HVM guests, a PV cdrom of any guest takes it. A CD-ROM of the domain's QEMU changes there too, in libxl's
    /// order: QMP <c>eject</c> before <c>params</c> is emptied (a tray the guest locked refuses it, and the drive stays
    /// as it was), <c>blockdev-change-medium</c> before the new one is named.</summary>
    private void CdInsert(CdInsertRequest r)
    {
        var d = Resolve(r.Domain);
        DiskSpec current;
        lock (_lock)
            current = d.Config.Disks.FirstOrDefault(x => x.Vdev == r.Vdev && x.IsCdrom)
                ?? throw new ControlException("Virtual device not found", Errno.ENODEV);
        DiskSpec empty = current with { Target = null, Format = DiskFormat.Empty }, medium = empty;
        if (!string.IsNullOrEmpty(r.Target))
        {
            // xl cd-insert builds "vdev=V,access=r,devtype=cdrom,target=T": a prefix such as qcow2: stays in the target.
            string target = Path.IsPathRooted(r.Target) ? r.Target : Path.GetFullPath(Path.Combine(r.Directory, r.Target));
            medium = current with { Target = target, Format = r.Format is { } f ? ParseCdFormat(f) : DiskFormat.Raw };
            CheckDisk(medium);
            CheckSharing(medium, d.Config.Name);
        }
        var device = new DeviceAddress(DeviceKinds.Vbd, d.DomId, VbdNumber.Parse(r.Vdev));
        if (!_xs.Exists(device.BackendPath))
            throw new ControlException("Virtual device not found", Errno.ENODEV);
        string be = device.BackendPath;
        using var qmp = EmulatedCdrom(d, current);
        qmp?.Execute("eject", new JsonObject { ["id"] = EmulatedCdromId(r.Vdev) });
        // Empty first, as libxl does, so that the backend closes the old medium even if the new one is the same file.
        _xs.Write($"{be}/params", "");
        _xs.Write($"{be}/format", DiskSpec.FormatName(DiskFormat.Empty));
        lock (_lock) d.Config.Disks = [.. d.Config.Disks.Select(x => ReferenceEquals(x, current) ? empty : x)];
        if (medium.Target is { } t)
        {
            // A medium QEMU refuses leaves the drive empty, as libxl leaves it.
            qmp?.Execute("blockdev-change-medium", new JsonObject
            {
                ["id"] = EmulatedCdromId(r.Vdev),
                ["filename"] = t,
                ["format"] = QemuDriverName(medium.Format),
            });
            _xs.Write($"{be}/format", DiskSpec.FormatName(medium.Format));
            _xs.Write($"{be}/params", t);
        }
        lock (_lock) d.Config.Disks = [.. d.Config.Disks.Select(x => ReferenceEquals(x, empty) ? medium : x)];
    }

    /// <summary>A QMP connection to the domain's QEMU when <paramref name="disk"/> is one of its IDE CD-ROMs, else null.</summary>
    private Qmp? EmulatedCdrom(Domain d, DiskSpec disk)
    {
        if (!HasDeviceModel(d.Config) || EmulatedDiskIndex(disk.Vdev) is not (>= 0 and < 4))
            return null;
        lock (_deviceModels)
            if (!_deviceModels.ContainsKey(d.DomId))
                return null;
        return Qmp.Connect(QmpSocketPath(d.DomId), TimeSpan.FromSeconds(10));
    }

    private static DiskFormat ParseCdFormat(string f) => f switch
    {
        "raw" => DiskFormat.Raw,
        "qcow" => DiskFormat.Qcow,
        "qcow2" => DiskFormat.Qcow2,
        "vhd" => DiskFormat.Vhd,
        _ => throw new ControlException($"unknown value for format: near `{f}'", Errno.EINVAL),
    };
}
