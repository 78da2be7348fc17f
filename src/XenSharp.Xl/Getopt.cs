namespace XenSharp.Xl;

/// <summary>One option of a command: a short letter, an optional long name, whether it takes a value.</summary>
internal sealed record OptionSpec(char Short, string? Long = null, bool HasArg = false);

/// <summary>A command-line usage error; xl prints the message and the command's help.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>
/// The options and operands of one command line, parsed the way GNU getopt_long does for xl:
/// options may come before or after operands, short options cluster (-cp), a short option's value
/// may be attached (-fFILE) or separate, long options take --name=value or --name value, and "--"
/// ends the options.
/// </summary>
internal sealed class ParsedArgs
{
    private readonly List<(char Opt, string? Value)> _options = [];
    public List<string> Operands { get; } = [];

    public bool Has(char opt) => _options.Any(o => o.Opt == opt);
    public string? Value(char opt) => _options.LastOrDefault(o => o.Opt == opt).Value;
    public IEnumerable<string> Values(char opt) => _options.Where(o => o.Opt == opt).Select(o => o.Value!);

    public static ParsedArgs Parse(string command, IReadOnlyList<string> args, IReadOnlyList<OptionSpec> specs)
    {
        var result = new ParsedArgs();
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            if (a == "--") { result.Operands.AddRange(args.Skip(i + 1)); break; }
            if (a.StartsWith("--") && a.Length > 2)
            {
                string name = a[2..];
                string? value = null;
                int eq = name.IndexOf('=');
                if (eq >= 0) { value = name[(eq + 1)..]; name = name[..eq]; }
                var matches = specs.Where(s => s.Long is not null && s.Long.StartsWith(name, StringComparison.Ordinal)).ToList();
                var spec = matches.FirstOrDefault(s => s.Long == name) ?? (matches.Count == 1 ? matches[0] : null);
                if (spec is null)
                    throw new UsageException(matches.Count > 1
                        ? $"option '--{name}' is ambiguous"
                        : $"unrecognized option '--{name}'");
                if (spec.HasArg)
                {
                    if (value is null)
                    {
                        if (i + 1 >= args.Count) throw new UsageException($"option '--{spec.Long}' requires an argument");
                        value = args[++i];
                    }
                }
                else if (value is not null)
                    throw new UsageException($"option '--{spec.Long}' doesn't allow an argument");
                result._options.Add((spec.Short, value));
                continue;
            }
            if (a.StartsWith('-') && a.Length > 1)
            {
                for (int j = 1; j < a.Length; j++)
                {
                    char c = a[j];
                    var spec = specs.FirstOrDefault(s => s.Short == c)
                        ?? throw new UsageException($"invalid option -- '{c}'");
                    if (!spec.HasArg) { result._options.Add((c, null)); continue; }
                    string value;
                    if (j + 1 < a.Length) value = a[(j + 1)..];
                    else if (i + 1 < args.Count) value = args[++i];
                    else throw new UsageException($"option requires an argument -- '{c}'");
                    result._options.Add((c, value));
                    break;
                }
                continue;
            }
            result.Operands.Add(a);
        }
        return result;
    }
}
