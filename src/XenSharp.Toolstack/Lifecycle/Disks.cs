using System.Globalization;
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
    /// <summary>Opens every disk image once, as the backend will, so that <c>xl create</c> fails before building.</summary>
    private static void CheckDisks(DomainConfig c)
    {
        foreach (var disk in c.Disks)
            CheckDisk(disk);
    }

    /// <summary>The disk's vdev, backend domain and image are usable: what <c>xl create</c> and
    /// <c>xl block-attach</c> refuse before touching the domain.</summary>
    private static void CheckDisk(DiskSpec disk)
    {
        {
            VbdNumber.Parse(disk.Vdev);
            if (disk.BackendDomain is { } b && b is not ("0" or "Domain-0"))
                throw new ControlException($"disk {disk.Vdev}: backend domain {b}: only Domain-0 serves disks");
            if (disk.Target is null) return; // an empty cdrom drive
            BlockImageFormat? format = FormatOf(disk);
            try
            {
                using var _ = BlockImages.Open(disk.Target, new BlockImageOptions { Format = format, ReadOnly = !disk.ReadWrite });
            }
            catch (BlockImageException e) { throw new ControlException($"disk {disk.Vdev}: {e.Message}"); }
        }
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

    /// <summary>libxl__device_disk_add for each disk: the vbd directories, keyed by the vdev's device number.</summary>
    private void AddDisks(Domain dom)
    {
        foreach (var disk in dom.Config.Disks)
            AddDisk(dom, disk);
    }

    private void AddDisk(Domain dom, DiskSpec disk)
    {
        {
            int devId = VbdNumber.Parse(disk.Vdev);
            string deviceType = disk.IsCdrom ? "cdrom" : "disk";
            var backend = new Dictionary<string, string>
            {
                ["removable"] = disk.IsCdrom ? "1" : "0",
                ["bootable"] = "1",
                ["dev"] = disk.Vdev,
                ["type"] = disk.Format is DiskFormat.Raw ? "phy" : "qdisk",
                ["mode"] = disk.ReadWrite ? "w" : "r",
                ["device-type"] = deviceType,
                ["params"] = disk.Target ?? "",
                ["discard-enable"] = disk.Discard == false ? "0" : "1",
            };
            if (FormatOf(disk) is { } f) backend["format"] = f.ToString().ToLowerInvariant();
            if (disk.DirectIoSafe) backend["direct-io-safe"] = "1";
            AddDevice(dom.DomId, DeviceKinds.Vbd, devId, backend, new Dictionary<string, string>
            {
                ["virtual-device"] = devId.ToString(CultureInfo.InvariantCulture),
                ["device-type"] = deviceType,
            });
        }
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
        int devId = VbdNumber.Parse(disk.Vdev);
        if (_xs.Exists($"/local/domain/{d.DomId}/device/{DeviceKinds.Vbd}/{devId}"))
            throw new ControlException($"disk {disk.Vdev} is already attached to domain {d.DomId}", Errno.EEXIST);
        AddDisk(d, disk);
        lock (_lock) d.Config.Disks = [.. d.Config.Disks, disk];
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
        string be = device.BackendPath;
        _xs.Write($"{be}/online", "0");
        _xs.Write($"{be}/state", ((int)XenbusState.Closing).ToString(CultureInfo.InvariantCulture));
        var deadline = _time.GetUtcNow() + DetachTimeout;
        while (_xs.Read($"{be}/state") != ((int)XenbusState.Closed).ToString(CultureInfo.InvariantCulture) && _time.GetUtcNow() < deadline)
            Thread.Sleep(50);
        DeviceLayout.Remove(_xs, device);
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

/// <summary>
/// Xen's virtual block device numbers (docs/misc/vbd-interface.txt): the number a vdev name (xvda, hdc1,
/// sdb, d3p2) stands for, which is the device's id in xenstore and blkfront's <c>virtual-device</c>.
/// </summary>
public static class VbdNumber
{
    private const int XvdMajor = 202, HdMajor0 = 3, HdMajor2 = 22, SdMajor = 8;
    private const int Extended = 1 << 28;

    /// <summary>The device number of <paramref name="vdev"/>; a name Xen's scheme cannot encode is a <see cref="ControlException"/>.</summary>
    public static int Parse(string vdev) => TryParse(vdev, out int n) ? n : throw new ControlException($"invalid vdev `{vdev}'");

    public static bool TryParse(string vdev, out int number)
    {
        number = 0;
        if (vdev.Length > 1 && vdev[0] == 'd' && char.IsAsciiDigit(vdev[1]))
        {
            // dN or dNpM: the extended scheme directly.
            int p = vdev.IndexOf('p');
            string ds = p < 0 ? vdev[1..] : vdev[1..p];
            string ps = p < 0 ? "0" : vdev[(p + 1)..];
            if (!Number(ds, out int d) || !Number(ps, out int part) || d >= 1 << 20 || part > 255) return false;
            number = Extended | d << 8 | part;
            return true;
        }
        foreach (string prefix in new[] { "xvd", "hd", "sd" })
        {
            if (!vdev.StartsWith(prefix, StringComparison.Ordinal)) continue;
            int i = prefix.Length;
            int disk = -1;
            while (i < vdev.Length && vdev[i] is >= 'a' and <= 'z')
            {
                // Letters count bijectively in base 26: a = 0, z = 25, aa = 26.
                disk = (disk + 1) * 26 + (vdev[i] - 'a');
                if (disk >= 1 << 20) return false;
                i++;
            }
            if (disk < 0) return false;
            int part = 0;
            if (i < vdev.Length && !Number(vdev[i..], out part)) return false;
            switch (prefix)
            {
                case "xvd" when disk < 16 && part < 16:
                    number = XvdMajor << 8 | disk << 4 | part;
                    return true;
                case "xvd" when part <= 255:
                    number = Extended | disk << 8 | part;
                    return true;
                case "hd" when disk < 4 && part < 64:
                    number = (disk < 2 ? HdMajor0 : HdMajor2) << 8 | (disk & 1) << 6 | part;
                    return true;
                case "sd" when disk < 16 && part < 16:
                    number = SdMajor << 8 | disk << 4 | part;
                    return true;
                default:
                    return false;
            }
        }
        return false;
    }

    private static bool Number(string s, out int n)
    {
        n = 0;
        // No leading zeros, as the scheme writes partition and disk numbers.
        if (s.Length == 0 || s.Length > 7 || (s.Length > 1 && s[0] == '0')) return false;
        return int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out n);
    }
}
