namespace XenSharp.Toolstack.Config;

/// <summary>
/// One vif= entry as libxl_device_nic holds it, parsed from xl's network specification
/// (xl-network-configuration(5)): comma-separated <c>key=value</c> items. A missing mac gets one in Xen's
/// 00:16:3e OUI, as libxl assigns.
/// </summary>
public sealed record NicSpec
{
    public int Devid { get; init; }
    public required string Mac { get; init; }
    public string? Bridge { get; init; }
    /// <summary>xl's <c>type=</c>: "vif" (PV only) or "ioemu" (an emulated NIC beside the PV one); null for libxl's
    /// default, ioemu in an HVM guest and vif otherwise.</summary>
    public string? Type { get; init; }
    public string? Model { get; init; }
    public string? VifName { get; init; }
    public string Script { get; init; } = "vif-bridge";
    public string? Ip { get; init; }
    public string? BackendDomain { get; init; }
    public string? Rate { get; init; }
    public string? GatewayDev { get; init; }
    public int? Mtu { get; init; }
    /// <summary>Whether <c>script=</c> was given (rather than libxl's default vif-bridge).</summary>
    public bool ScriptGiven { get; init; }
    /// <summary>XenSharp's <c>forward=PROTO:HOSTPORT[:GUESTPORT]</c> items (repeatable): host ports a user-mode
    /// vif forwards to the guest, as passt's -t/-u take them.</summary>
    public IReadOnlyList<string> Forwards { get; init; } = [];

    public static NicSpec Parse(string spec, int devid, Random? random = null)
    {
        string? mac = null, bridge = null, model = null, vifname = null, script = null, ip = null, backend = null, rate = null, gateway = null;
        string? type = null;
        int? mtu = null;
        var forwards = new List<string>();
        foreach (string raw in spec.Split(','))
        {
            string item = raw.Trim();
            if (item.Length == 0)
                continue;
            int eq = item.IndexOf('=');
            if (eq < 0)
                throw new FormatException($"unrecognized argument `{item}' in vif specification `{spec}'");
            string key = item[..eq].Trim(), value = item[(eq + 1)..].Trim();
            switch (key)
            {
                case "mac": mac = ParseMac(value, spec); break;
                case "bridge": bridge = value; break;
                case "netdev": bridge = value; break;
                case "type":
                    if (value is not ("vif" or "ioemu"))
                        throw new FormatException($"Invalid parameter `type={value}' in vif specification `{spec}'");
                    type = value;
                    break;
                case "model": model = value; break;
                case "vifname": vifname = value; break;
                case "script": script = value; break;
                case "ip": ip = value; break;
                case "backend": backend = value; break;
                case "rate":
                    _ = ParseRate(value);
                    rate = value;
                    break;
                case "gatewaydev": gateway = value; break;
                case "devid":
                    if (!int.TryParse(value, out devid) || devid < 0)
                        throw new FormatException($"invalid devid `{value}' in vif specification `{spec}'");
                    break;
                case "mtu":
                    if (!int.TryParse(value, out int m) || m < 68)
                        throw new FormatException($"invalid mtu `{value}' in vif specification `{spec}'");
                    mtu = m;
                    break;
                case "forward":
                    if (!IsForward(value))
                        throw new FormatException($"invalid forward `{value}' in vif specification `{spec}' (tcp|udp:HOSTPORT[:GUESTPORT])");
                    forwards.Add(value);
                    break;
                case "accel":
                    break; // xl: "the accel parameter for vifs is currently not supported"
                default:
                    throw new FormatException($"unrecognized argument `{item}' in vif specification `{spec}'");
            }
        }
        if (mac is null)
        {
            var b = new byte[3];
            (random ?? Random.Shared).NextBytes(b);
            mac = $"00:16:3e:{b[0] & 0x7f:x2}:{b[1]:x2}:{b[2]:x2}";
        }
        return new NicSpec
        {
            Devid = devid, Mac = mac, Bridge = bridge, Type = type, Model = model, VifName = vifname,
            Script = script ?? "vif-bridge", Ip = ip, BackendDomain = backend, Rate = rate, GatewayDev = gateway, Mtu = mtu,
            ScriptGiven = script is not null, Forwards = forwards,
        };
    }

    /// <summary>xl-network-configuration(5)'s <c>rate=RATE[@INTERVAL]</c> as libxlutil reads it: RATE is a number with an
    /// optional K, M or G (powers of 1000) and B/s or b/s (bytes or bits); INTERVAL a number with s, ms or us
    /// (seconds without a unit), 50 ms by default. The result is what libxl writes to the backend's <c>rate</c> node:
    /// the bytes the vif may send per interval, and the interval in microseconds.</summary>
    public static (ulong BytesPerInterval, uint IntervalUsecs) ParseRate(string rate)
    {
        int at = rate.IndexOf('@');
        string amount = at < 0 ? rate : rate[..at];
        if (amount.Length == 0) throw RateError("no rate specified", rate);
        if (!System.Text.RegularExpressions.Regex.IsMatch(amount, "^[0-9]+[GMK]?[Bb]/s$")) throw RateError("invalid rate", amount);
        int digits = amount.TakeWhile(char.IsAsciiDigit).Count();
        if (!ulong.TryParse(amount.AsSpan(0, digits), out ulong bytesPerSec) || bytesPerSec is 0 or > uint.MaxValue)
            throw RateError("rate overflow", amount);
        bytesPerSec *= amount[digits] switch { 'G' => 1_000_000_000UL, 'M' => 1_000_000UL, 'K' => 1_000UL, _ => 1UL };
        if (amount[^3] == 'b') bytesPerSec /= 8;
        ulong interval = 50_000;
        if (at >= 0)
        {
            string i = rate[(at + 1)..];
            if (!System.Text.RegularExpressions.Regex.IsMatch(i, "^[0-9]+[mu]?s?$")) throw RateError("invalid replenishment interval", i);
            int n = i.TakeWhile(char.IsAsciiDigit).Count();
            if (!ulong.TryParse(i.AsSpan(0, n), out interval) || interval is 0 or > uint.MaxValue)
                throw RateError("replenishment interval overflow", i);
            string unit = i[n..];
            interval *= unit is "" or "s" ? 1_000_000UL : unit.StartsWith('m') ? 1_000UL : 1UL;
            if (interval > uint.MaxValue) throw RateError("replenishment interval overflow", i);
        }
        if (bytesPerSec > ulong.MaxValue / interval) throw RateError("rate overflow", rate);
        return (bytesPerSec * interval / 1_000_000UL, (uint)interval);
    }

    private static FormatException RateError(string what, string text) => new($"config parsing error in vif: {what} in `{text}'");

    /// <summary>tcp:P or udp:P, optionally :G, each a port 1-65535.</summary>
    private static bool IsForward(string v)
    {
        var parts = v.Split(':');
        return parts.Length is 2 or 3 && parts[0] is "tcp" or "udp"
            && parts.Skip(1).All(p => p.Length is > 0 and <= 5 && p.All(char.IsAsciiDigit) && int.Parse(p) is > 0 and <= 65535);
    }

    /// <summary>Six hex octets separated by colons (or dashes), normalised to lower case.</summary>
    private static string ParseMac(string v, string spec)
    {
        var parts = v.Split(':', '-');
        if (parts.Length != 6 || parts.Any(p => p.Length is < 1 or > 2 || !p.All(Uri.IsHexDigit)))
            throw new FormatException($"invalid mac address `{v}' in vif specification `{spec}'");
        return string.Join(':', parts.Select(p => Convert.ToByte(p, 16).ToString("x2")));
    }
}
