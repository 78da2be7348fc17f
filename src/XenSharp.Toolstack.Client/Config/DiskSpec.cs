namespace XenSharp.Toolstack.Config;

/// <summary>libxl_disk_format.</summary>
public enum DiskFormat { Unknown, Qcow, Qcow2, Vhd, Raw, Empty, Qed }

/// <summary>libxl_disk_backend (what xl.cfg's backendtype= asks for).</summary>
public enum DiskBackend { Unknown, Phy, Tap, Qdisk, Standalone }

/// <summary>
/// One disk= entry as libxl_device_disk holds it, parsed as libxlu's disk lexer reads xl's disk
/// specification (xl-disk-configuration(5)): <c>key=value</c> items and flags in any order, positional
/// <c>target, format, vdev, access</c> (a <c>vdev:cdrom</c> positional names the device type too),
/// <c>target=</c> last and taking the rest of the string (commas, '=' and trailing blanks included),
/// and the deprecated xm prefixes before any item (<c>raw: qcow: qcow2: vhd:</c> set the format,
/// <c>iscsi: nbd: enbd: drbd:</c> the script, <c>phy: file: aio: tap: tap2: tapdisk: ioemu:</c> are dropped).
/// An empty value is the default; each parameter may be given once.
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
    /// <summary>trusted/untrusted: advice to the frontend, written to its <c>trusted</c> node.</summary>
    public bool Trusted { get; init; } = true;
    /// <summary>specification=: "xen" (blkif) or "virtio".</summary>
    public string Specification { get; init; } = "xen";
    /// <summary>colo: COLO block replication was asked for.</summary>
    public bool Colo { get; init; }

    public static string FormatName(DiskFormat f) => f.ToString().ToLowerInvariant();

    /// <summary>Parses one disk specification; errors are <see cref="FormatException"/>s in libxlu's words.</summary>
    public static DiskSpec Parse(string spec) => new Parser(spec).Run();

    private static readonly string[] Flags = ["cdrom", "direct-io-safe", "discard", "no-discard", "colo", "no-colo", "trusted", "untrusted"];
    private static readonly string[] Keys =
        ["format", "devtype", "access", "backend", "backendtype", "specification", "vdev", "script",
         "colo-host", "colo-port", "colo-export", "active-disk", "hidden-disk", "grant_usage"];

    /// <summary>The lexer's state (libxlu's DiskParseContext) over one specification.</summary>
    private sealed class Parser(string spec)
    {
        private string? _target, _vdev, _backendDomain, _script, _specification;
        private DiskFormat? _format;
        private DiskBackend _backend;
        private bool? _rw, _discard, _trusted, _colo;
        private bool _cdrom, _directIo, _hadPrefix;
        private int _pos;

        public DiskSpec Run()
        {
            while (_pos < spec.Length)
            {
                if (spec[_pos] is ' ' or '\t' or '\n') { _pos++; continue; }
                if (Prefix()) continue;
                int comma = spec.IndexOf(',', _pos);
                string item = comma < 0 ? spec[_pos..] : spec[_pos..comma];
                if (item.StartsWith("target=", StringComparison.Ordinal))
                {
                    // Eats the rest of the string; only a final comma goes.
                    string rest = spec[(_pos + "target=".Length)..];
                    if (rest.EndsWith(',')) rest = rest[..^1];
                    Save(ref _target, rest, "target respecified");
                    break;
                }
                _pos = comma < 0 ? spec.Length : comma + 1;
                int eq = item.IndexOf('=');
                if (eq >= 0) Keyword(item[..eq], item[(eq + 1)..], item);
                else if (Array.IndexOf(Flags, item) >= 0) Flag(item);
                else Positional(item);
            }

            if (string.IsNullOrEmpty(_vdev))
                throw Error("no vdev specified", null);
            if (!VbdNumber.TryParse(_vdev, out _))
                throw Error("invalid or unsupported virtual disk identifier", _vdev);
            var format = _format ?? DiskFormat.Raw;
            string? target = _target;
            // A C string ends at a NUL; no path holds one.
            if (target is not null && target.Contains('\0'))
                throw Error("target contains a NUL character", null);
            if (string.IsNullOrEmpty(target))
            {
                if (!_cdrom)
                    throw Error("no target specified (only a cdrom may be empty)", null);
                format = DiskFormat.Empty;
                target = null;
            }
            return new DiskSpec
            {
                Target = target,
                Format = format,
                Vdev = _vdev,
                ReadWrite = !_cdrom && (_rw ?? true),
                IsCdrom = _cdrom,
                Backend = _backend,
                BackendDomain = string.IsNullOrEmpty(_backendDomain) ? null : _backendDomain,
                Script = string.IsNullOrEmpty(_script) ? null : _script,
                DirectIoSafe = _directIo,
                Discard = _discard,
                Trusted = _trusted ?? true,
                Specification = _specification ?? "xen",
                Colo = _colo ?? false,
            };
        }

        /// <summary>A deprecated xm prefix ("raw:", "tap:aio:", "nbd:") at the start of an item.</summary>
        private bool Prefix()
        {
            int colon = spec.IndexOf(':', _pos);
            if (colon <= _pos) return false;
            string word = spec[_pos..colon];
            if (!(word[0] is >= 'a' and <= 'z') || !word.All(c => c is >= 'a' and <= 'z' or >= '0' and <= '9'))
                return false;
            switch (word)
            {
                case "raw" or "qcow" or "qcow2" or "vhd":
                    _hadPrefix = true;
                    SetFormat(word);
                    break;
                case "iscsi" or "nbd" or "enbd" or "drbd":
                    _hadPrefix = true;
                    Save(ref _script, "block-" + word, "script respecified");
                    break;
                case "tapdisk" or "tap" or "tap2" or "aio" or "ioemu" or "file" or "phy":
                    _hadPrefix = true;
                    break;
                default:
                    // "name:" before the end or a non-alphanumeric is a prefix nobody knows; "hdc:cdrom" is an item.
                    if (colon + 1 < spec.Length && char.IsAsciiLetterOrDigit(spec[colon + 1]))
                        return false;
                    throw Error("unknown deprecated disk prefix", word + ":");
            }
            _pos = colon + 1;
            return true;
        }

        private void Keyword(string key, string value, string item)
        {
            if (Array.IndexOf(Keys, key) < 0)
                throw Error("unknown parameter", item);
            switch (key)
            {
                case "format": SetFormat(value); break;
                case "devtype":
                    _cdrom = value switch
                    {
                        "cdrom" => true,
                        "disk" => false,
                        _ => throw Error("unknown value for type", item),
                    };
                    break;
                case "access": SetAccess(value); break;
                case "backend": Save(ref _backendDomain, value, "backend respecified"); break;
                case "backendtype":
                    var b = value switch
                    {
                        "phy" => DiskBackend.Phy,
                        "tap" => DiskBackend.Tap,
                        "qdisk" => DiskBackend.Qdisk,
                        "standalone" => DiskBackend.Standalone,
                        _ => throw Error("unknown value for backendtype", value),
                    };
                    if (_backend != DiskBackend.Unknown && _backend != b) throw Error("backend respecified", value);
                    _backend = b;
                    break;
                case "specification":
                    if (value is not ("xen" or "virtio")) throw Error("unknown value for specification", value);
                    if (_specification is { } sp && sp != value) throw Error("specification respecified", value);
                    _specification = value;
                    break;
                case "vdev": Save(ref _vdev, value, "vdev respecified"); break;
                case "script": Save(ref _script, value, "script respecified"); break;
                case "colo-port":
                    if (!int.TryParse(value, out int port) || port == 0) throw Error("unknown value for colo_port", value);
                    break;
                case "grant_usage":
                    if (value is not ("0" or "1")) throw Error("unknown parameter", item);
                    break;
                    // colo-host, colo-export, active-disk, hidden-disk: only meaningful with colo.
            }
        }

        private void Flag(string flag)
        {
            switch (flag)
            {
                case "cdrom": _cdrom = true; break;
                case "direct-io-safe": _directIo = true; break;
                case "discard": _discard = true; break;
                case "no-discard": _discard = false; break;
                case "colo": _colo = true; break;
                case "no-colo": _colo = false; break;
                case "trusted": _trusted = true; break;
                case "untrusted": _trusted = false; break;
            }
        }

        /// <summary>The next unset of target, format, vdev, access; after a deprecated prefix the format is
        /// skipped (the xm form target,vdev,access), and ",hdc:cdrom" after an empty target is an empty drive.</summary>
        private void Positional(string item)
        {
            if (_target is null)
                _target = item;
            else if (!_hadPrefix && _format is null)
            {
                if (_target.Length == 0 && VdevAndDevtype(item)) _format = DiskFormat.Empty;
                else SetFormat(item);
            }
            else if (_vdev is null)
            {
                if (!VdevAndDevtype(item)) _vdev = item;
            }
            else if (_rw is null)
                SetAccess(item);
            else
                throw Error("too many positional parameters", item);
        }

        /// <summary>A deprecated "vdev:devtype" item.</summary>
        private bool VdevAndDevtype(string item)
        {
            int colon = item.LastIndexOf(':');
            if (colon < 0) return false;
            Save(ref _vdev, item[..colon], "vdev respecified");
            _cdrom = item[(colon + 1)..] switch
            {
                "cdrom" => true,
                "disk" => false,
                var t => throw Error("unknown deprecated type", t),
            };
            return true;
        }

        private void SetFormat(string value)
        {
            DiskFormat f = value switch
            {
                "" or "raw" => DiskFormat.Raw,
                "qcow" => DiskFormat.Qcow,
                "qcow2" => DiskFormat.Qcow2,
                "vhd" => DiskFormat.Vhd,
                "empty" => DiskFormat.Empty,
                "qed" => DiskFormat.Qed,
                _ => throw Error("unknown value for format", value),
            };
            if (_format is { } old && old != f) throw Error("format respecified", value);
            _format = f;
        }

        private void SetAccess(string value) => _rw = value switch
        {
            "r" or "ro" => false,
            "w" or "rw" or "" => true,
            _ => throw Error("unknown value for access", value),
        };

        /// <summary>libxlu's savestring: a parameter given twice is an error, unless its first value was empty.</summary>
        private void Save(ref string? field, string value, string respecified)
        {
            if (!string.IsNullOrEmpty(field)) throw Error(respecified, value);
            field = value;
        }

        private FormatException Error(string message, string? near) =>
            new($"config parsing error in disk specification: {message}{(near is null ? "" : $": near `{near}'")} in `{spec}'");
    }
}
