using System.Globalization;

namespace XenSharp.Toolstack.Config;

/// <summary>
/// A parsed xl.cfg: the settings by key, with typed getters whose errors name the file and the line
/// of the setting, as libxlu's do.
/// </summary>
public sealed class XlConfig(string file)
{
    private readonly Dictionary<string, ConfigSetting> _settings = new(StringComparer.Ordinal);
    private readonly List<string> _order = [];
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    /// <summary>The name used in messages (the path as given on the command line).</summary>
    public string File { get; } = file;

    /// <summary>Directory of the file, against which relative paths in it resolve (null for text).</summary>
    public string? Directory { get; set; }

    public IEnumerable<ConfigSetting> Settings => _order.Select(k => _settings[k]);

    public bool Contains(string key) => _settings.ContainsKey(key);

    public ConfigSetting? Find(string key)
    {
        if (!_settings.TryGetValue(key, out var s)) return null;
        _used.Add(key);
        return s;
    }

    /// <summary>Keys set but never asked for by the reader of this configuration.</summary>
    public IEnumerable<ConfigSetting> Unused => Settings.Where(s => !_used.Contains(s.Key));

    internal void Set(ConfigSetting s)
    {
        if (!_settings.ContainsKey(s.Key)) _order.Add(s.Key);
        _settings[s.Key] = s;
    }

    internal void Append(ConfigSetting s)
    {
        if (!_settings.TryGetValue(s.Key, out var old)) { Set(s); return; }
        ConfigValue merged;
        if (old.Value.IsList && s.Value.IsList)
            merged = ConfigValue.List([.. old.Value.Items!, .. s.Value.Items!], old.Value.Line);
        else if (!old.Value.IsList && !s.Value.IsList)
            merged = ConfigValue.String(old.Value.Atom + s.Value.Atom, old.Value.Line, old.Value.Quoted || s.Value.Quoted);
        else
            throw XlConfigException.At(s.File, s.Line,
                $"config parsing error near `+=': cannot add a {(s.Value.IsList ? "list" : "string")} to a {(old.Value.IsList ? "list" : "string")} (`{s.Key}')");
        _settings[s.Key] = s with { Value = merged };
    }

    private static XlConfigException Bad(ConfigSetting s, string what) => XlConfigException.At(s.File, s.Line, what);

    public string? GetString(string key)
    {
        var s = Find(key);
        if (s is null) return null;
        if (s.Value.IsList) throw Bad(s, $"parameter `{key}' is a list but should be a single value");
        return s.Value.Atom;
    }

    public long? GetLong(string key)
    {
        var s = Find(key);
        if (s is null) return null;
        if (s.Value.IsList) throw Bad(s, $"parameter `{key}' is a list but should be a single value");
        if (!TryParseNumber(s.Value.Atom!, out long v))
            throw Bad(s, $"parameter `{key}' is not a valid number: `{s.Value.Atom}'");
        return v;
    }

    public bool? GetBool(string key) => GetLong(key) is { } v ? v != 0 : null;

    /// <summary>The items of a list setting; a single string counts as a list of one, as xl allows
    /// for the keys where that makes sense.</summary>
    public IReadOnlyList<ConfigValue>? GetList(string key, bool allowSingle = true)
    {
        var s = Find(key);
        if (s is null) return null;
        if (s.Value.IsList) return s.Value.Items;
        if (!allowSingle) throw Bad(s, $"parameter `{key}' is a single value but should be a list");
        return [s.Value];
    }

    public IReadOnlyList<string>? GetStringList(string key)
    {
        var items = GetList(key);
        if (items is null) return null;
        var s = _settings[key];
        return items.Select(i => i.IsList
            ? throw Bad(s, $"parameter `{key}' has a list where a string should be")
            : i.Atom!).ToList();
    }

    /// <summary>C's strtol with base 0: decimal, 0-prefixed octal, 0x-prefixed hexadecimal.</summary>
    public static bool TryParseNumber(string text, out long value)
    {
        value = 0;
        string t = text.Trim();
        bool neg = false;
        if (t.StartsWith('-')) { neg = true; t = t[1..]; }
        else if (t.StartsWith('+')) t = t[1..];
        if (t.Length == 0) return false;
        bool ok;
        if (t.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            ok = t.Length > 2 && long.TryParse(t.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value);
        else if (t.Length > 1 && t[0] == '0')
        {
            ok = true;
            foreach (char c in t)
            {
                if (c is < '0' or > '7') { ok = false; break; }
                value = checked(value * 8 + (c - '0'));
            }
        }
        else
            ok = t.All(char.IsAsciiDigit) && long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out value);
        if (ok && neg) value = -value;
        return ok;
    }
}
