namespace XenSharp.Toolstack.Config;

/// <summary>libxl_disk_format.</summary>
public enum DiskFormat { Unknown, Qcow, Qcow2, Vhd, Raw, Empty, Qed }

/// <summary>libxl_disk_backend.</summary>
public enum DiskBackend { Unknown, Phy, Tap, Qdisk }

/// <summary>
/// One disk= entry as libxl_device_disk holds it, parsed from xl's disk specification
/// (xl-disk-configuration(5)): positional <c>target, format, vdev, access</c> or <c>key=value</c> items, the
/// legacy xm form <c>[prefix:]target, vdev, access</c>, and the <c>:cdrom</c> suffix of a vdev.
/// </summary>
public sealed record DiskSpec
{
    public string? Target { get; init; }
    public DiskFormat Format { get; init; } = DiskFormat.Raw;
    public required string Vdev { get; init; }
    public bool ReadWrite { get; init; } = true;
    public bool IsCdrom { get; init; }
    public DiskBackend Backend { get; init; }
    public string? BackendDomain { get; init; }
    public string? Script { get; init; }
    public bool DirectIoSafe { get; init; }
    public bool? Discard { get; init; }

    public static string FormatName(DiskFormat f) => f.ToString().ToLowerInvariant();

    /// <summary>Parses one disk specification; errors are <see cref="FormatException"/>s with libxlu's wording.</summary>
    public static DiskSpec Parse(string spec)
    {
        string? target = null, vdev = null, backendDomain = null, script = null;
        DiskFormat? format = null;
        DiskBackend backend = DiskBackend.Unknown;
        bool? rw = null, discard = null;
        bool cdrom = false, directIo = false;
        var positional = new List<string>();

        var items = SplitItems(spec);
        for (int i = 0; i < items.Count; i++)
        {
            string item = items[i].Trim();
            int eq = item.IndexOf('=');
            string key = eq < 0 ? item : item[..eq].Trim();
            string value = eq < 0 ? "" : item[(eq + 1)..].Trim();
            switch (eq < 0 ? null : key)
            {
                case "target":
                    // target= swallows the rest of the specification, commas included.
                    string rest = string.Join(",", items.Skip(i)).TrimStart();
                    target = rest[(rest.IndexOf('=') + 1)..].Trim();
                    i = items.Count;
                    continue;
                case "format": format = ParseFormat(value, spec); continue;
                case "vdev": vdev = value; continue;
                case "access" or "mode": rw = ParseAccess(value, spec); continue;
                case "devtype":
                    if (value != "cdrom") throw Error($"unknown value for devtype: near `{value}'", spec);
                    cdrom = true;
                    continue;
                case "backend": backendDomain = value; continue;
                case "backendtype": backend = ParseBackend(value, spec); continue;
                case "script": script = value; continue;
                case null:
                    break;
                default:
                    throw Error($"unknown keyword: near `{key}'", spec);
            }
            switch (item)
            {
                case "cdrom": cdrom = true; continue;
                case "direct-io-safe": directIo = true; continue;
                case "discard": discard = true; continue;
                case "no-discard": discard = false; continue;
                case "trusted" or "untrusted": continue;
            }
            positional.Add(item);
        }

        // Positional: target, format, vdev, access; or the xm form target, vdev, access.
        if (positional.Count > 4)
            throw Error($"too many positional parameters: near `{positional[4]}'", spec);
        if (positional.Count >= 2 && positional.Count <= 3 && positional[1].Length > 0 && TryFormat(positional[1]) is null)
            positional.Insert(1, "");
        for (int p = 0; p < positional.Count; p++)
        {
            string v = positional[p];
            if (v.Length == 0)
                continue;
            switch (p)
            {
                case 0 when target is null: target = v; break;
                case 1 when format is null: format = ParseFormat(v, spec); break;
                case 2 when vdev is null: vdev = v; break;
                case 3 when rw is null: rw = ParseAccess(v, spec); break;
                default: throw Error($"parameter given twice: near `{v}'", spec);
            }
        }

        // Deprecated xm prefixes before the target name its backend or format.
        if (target is not null)
            (target, format, backend) = StripPrefix(target, format, backend, spec);

        if (vdev is { } vd && vd.EndsWith(":cdrom"))
        {
            vdev = vd[..^":cdrom".Length];
            cdrom = true;
        }
        if (string.IsNullOrEmpty(vdev))
            throw Error("no vdev specified", spec);
        if (!ValidVdev(vdev))
            throw Error($"invalid vdev: near `{vdev}'", spec);
        if (string.IsNullOrEmpty(target))
        {
            if (!cdrom)
                throw Error("no target specified (only a cdrom may be empty)", spec);
            format = DiskFormat.Empty;
            target = null;
        }
        return new DiskSpec
        {
            Target = target,
            Format = format ?? DiskFormat.Raw,
            Vdev = vdev,
            ReadWrite = cdrom ? false : rw ?? true,
            IsCdrom = cdrom,
            Backend = backend,
            BackendDomain = backendDomain,
            Script = script,
            DirectIoSafe = directIo,
            Discard = discard,
        };
    }

    /// <summary>Splits on commas; a target= item keeps the commas after it (handled by the caller).</summary>
    private static List<string> SplitItems(string spec) => spec.Split(',').ToList();

    private static FormatException Error(string what, string spec) =>
        new($"config parsing error in disk specification: {what} in `{spec}'");

    private static DiskFormat? TryFormat(string v) => v switch
    {
        "raw" => DiskFormat.Raw,
        "qcow" => DiskFormat.Qcow,
        "qcow2" => DiskFormat.Qcow2,
        "vhd" => DiskFormat.Vhd,
        "qed" => DiskFormat.Qed,
        "empty" => DiskFormat.Empty,
        _ => null,
    };

    private static DiskFormat ParseFormat(string v, string spec) =>
        TryFormat(v) ?? throw Error($"unknown value for format: near `{v}'", spec);

    private static bool ParseAccess(string v, string spec) => v switch
    {
        "r" or "ro" => false,
        "w" or "rw" => true,
        _ => throw Error($"unknown value for access: near `{v}'", spec),
    };

    private static DiskBackend ParseBackend(string v, string spec) => v switch
    {
        "phy" => DiskBackend.Phy,
        "tap" => DiskBackend.Tap,
        "qdisk" => DiskBackend.Qdisk,
        _ => throw Error($"unknown value for backendtype: near `{v}'", spec),
    };

    private static (string, DiskFormat?, DiskBackend) StripPrefix(string target, DiskFormat? format, DiskBackend backend, string spec)
    {
        while (true)
        {
            int colon = target.IndexOf(':');
            if (colon <= 0 || target.StartsWith('/'))
                return (target, format, backend);
            string prefix = target[..colon];
            switch (prefix)
            {
                case "phy": backend = DiskBackend.Phy; break;
                case "file" or "aio": break;
                case "tap" or "tap2": backend = DiskBackend.Tap; break;
                case "raw" or "qcow" or "qcow2" or "vhd" or "qed": format = TryFormat(prefix); break;
                default:
                    // Not a prefix we know: a path that happens to hold a colon is an error in xl too.
                    throw Error($"unknown deprecated disk prefix before pathname: near `{prefix}:'", spec);
            }
            target = target[(colon + 1)..];
        }
    }

    /// <summary>xvd*, hd*, sd* with a letter suffix (and optional partition number), or d&lt;N&gt;[p&lt;N&gt;].</summary>
    private static bool ValidVdev(string v)
    {
        if (v.Length > 1 && v[0] == 'd' && char.IsDigit(v[1]))
            return true;
        foreach (string p in new[] { "xvd", "hd", "sd" })
        {
            if (!v.StartsWith(p) || v.Length == p.Length)
                continue;
            int i = p.Length;
            while (i < v.Length && v[i] is >= 'a' and <= 'z')
                i++;
            if (i == p.Length)
                return false;
            while (i < v.Length && char.IsDigit(v[i]))
                i++;
            return i == v.Length;
        }
        return false;
    }
}
