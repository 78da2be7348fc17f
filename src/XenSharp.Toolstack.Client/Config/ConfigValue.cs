namespace XenSharp.Toolstack.Config;

/// <summary>
/// One value of an xl.cfg setting. As in libxlu, numbers and strings are both atoms kept as text
/// (so <c>memory="512"</c> and <c>memory=512</c> read the same); a list holds further values.
/// </summary>
public sealed class ConfigValue
{
    public string? Atom { get; }
    public IReadOnlyList<ConfigValue>? Items { get; }
    /// <summary>True when the atom was written in quotes.</summary>
    public bool Quoted { get; }
    public int Line { get; }

    private ConfigValue(string? atom, IReadOnlyList<ConfigValue>? items, bool quoted, int line)
    {
        Atom = atom; Items = items; Quoted = quoted; Line = line;
    }

    public static ConfigValue String(string s, int line, bool quoted = true) => new(s, null, quoted, line);
    public static ConfigValue List(IReadOnlyList<ConfigValue> items, int line) => new(null, items, false, line);

    public bool IsList => Items is not null;

    public override string ToString() => IsList
        ? "[ " + string.Join(", ", Items!.Select(i => i.ToString())) + " ]"
        : Quoted ? "\"" + Atom!.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\"" : Atom!;
}

/// <summary>A <c>KEY=VALUE</c> setting with the place it was written.</summary>
public sealed record ConfigSetting(string Key, ConfigValue Value, string File, int Line);
