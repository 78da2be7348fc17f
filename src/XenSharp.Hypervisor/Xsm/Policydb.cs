using System.Buffers.Binary;
using System.Text;

namespace XenSharp.Hypervisor.Xsm;

/// <summary>A binary policy Xen refuses: truncated, of another format or version, or inconsistent.</summary>
internal sealed class PolicyFormatException(string message) : Exception(message);

/// <summary>
/// An extensible bitmap as the policy stores it: (start bit, 64-bit map) nodes in rising order. Bit n stands for
/// the symbol of value n + 1. Kept sparse, so a policy claiming a huge high bit costs only the nodes it carries.
/// </summary>
internal sealed class Ebitmap
{
    public static readonly Ebitmap Empty = new([], []);

    private readonly uint[] _starts;
    private readonly ulong[] _maps;

    private Ebitmap(uint[] starts, ulong[] maps)
    {
        _starts = starts;
        _maps = maps;
    }

    public static Ebitmap Of(IEnumerable<int> bits)
    {
        var nodes = new SortedDictionary<uint, ulong>();
        foreach (int b in bits)
        {
            uint start = (uint)b & ~63u;
            nodes.TryGetValue(start, out ulong m);
            nodes[start] = m | 1UL << (b & 63);
        }
        return new Ebitmap([.. nodes.Keys], [.. nodes.Values]);
    }

    public bool Contains(int bit)
    {
        if (bit < 0)
            return false;
        uint start = (uint)bit & ~63u;
        int i = Array.BinarySearch(_starts, start);
        return i >= 0 && (_maps[i] >> (bit & 63) & 1) != 0;
    }

    public IEnumerable<int> Bits()
    {
        for (int i = 0; i < _starts.Length; i++)
            for (ulong m = _maps[i]; m != 0; m &= m - 1)
                yield return (int)(_starts[i] + (uint)System.Numerics.BitOperations.TrailingZeroCount(m));
    }

    public static Ebitmap Read(ref PolicyReader r)
    {
        uint mapunit = r.U32(), highbit = r.U32(), count = r.U32();
        if (mapunit != 64)
            throw new PolicyFormatException($"ebitmap map size {mapunit} is not 64");
        if (highbit % 64 != 0)
            highbit += 64 - highbit % 64;
        r.EnsureItems(count, 12);
        var starts = new uint[count];
        var maps = new ulong[count];
        for (int i = 0; i < count; i++)
        {
            uint start = r.U32();
            if (start % 64 != 0 || highbit == 0 || start > highbit - 64 || (i > 0 && start <= starts[i - 1]))
                throw new PolicyFormatException($"ebitmap node at bit {start} is out of place");
            starts[i] = start;
            maps[i] = r.U64();
        }
        return new Ebitmap(starts, maps);
    }
}

/// <summary>Reads the policy's little-endian fields, failing on truncation rather than reading past the end.</summary>
internal ref struct PolicyReader(ReadOnlySpan<byte> data)
{
    private readonly ReadOnlySpan<byte> _data = data;
    private int _pos;

    public readonly int Remaining => _data.Length - _pos;

    private ReadOnlySpan<byte> Take(int n)
    {
        if (n < 0 || n > Remaining)
            throw new PolicyFormatException("the policy is truncated");
        var s = _data.Slice(_pos, n);
        _pos += n;
        return s;
    }

    public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Take(2));
    public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
    public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8));
    public void Skip(int n) => Take(n);

    public string Str(uint len)
    {
        if (len > Remaining)
            throw new PolicyFormatException("the policy is truncated");
        return Encoding.ASCII.GetString(Take((int)len));
    }

    /// <summary>Refuses a count of items that could not fit in what is left (each at least <paramref name="minSize"/> bytes).</summary>
    public readonly void EnsureItems(uint count, int minSize)
    {
        if ((ulong)count * (ulong)minSize > (ulong)Remaining)
            throw new PolicyFormatException($"a count of {count} exceeds the policy's size");
    }
}

/// <summary>A security class: its value, name, and permissions by name (bit value 1..32).</summary>
internal sealed class ClassDatum(uint value, string name)
{
    public uint Value { get; } = value;
    public string Name { get; } = name;
    public Dictionary<string, int> Perms { get; } = new(StringComparer.Ordinal);
    public string?[] PermNames { get; } = new string?[32];
    public List<Constraint> Constraints { get; } = [];
}

/// <summary>A constraint: the permissions it restricts and its expression in postfix order.</summary>
internal sealed record Constraint(uint Permissions, ConstraintExpr[] Expr);

/// <summary>One term of a constraint expression (CEXPR_*): an operator, an attribute comparison, or a name set.</summary>
internal sealed record ConstraintExpr(uint ExprType, uint Attr, uint Op, Ebitmap? Names);

/// <summary>A conditional rule block: its boolean expression (postfix) and the rules for true and for false.</summary>
internal sealed record CondNode((uint Type, uint Bool)[] Expr, AvRule[] WhenTrue, AvRule[] WhenFalse);

/// <summary>A type-enforcement rule of the avtab: source type, target type, class, which kind, and its data.</summary>
internal readonly record struct AvRule(ushort Source, ushort Target, ushort Class, ushort Specified, uint Data)
{
    public ulong Key => Pack(Source, Target, Class, Specified);
    public static ulong Pack(int source, int target, int tclass, int specified) =>
        (ulong)(ushort)source << 48 | (ulong)(ushort)target << 32 | (ulong)(ushort)tclass << 16 | (ushort)specified;
}

/// <summary>A security context by the policy's values; <see cref="Mls"/> is the MLS range as text, or null.</summary>
internal readonly record struct SecurityContext(int User, int Role, int Type, string? Mls);

/// <summary>
/// A FLASK policy in the binary format that checkpolicy writes for Xen (<c>checkpolicy -t xen</c>, the SELinux
/// policydb with the "XenFlask" identifier, versions 15 to 30): symbol tables, the type-enforcement rules, the
/// conditional rules with their booleans, role rules, the initial SIDs and the type → attribute map. Parsed by
/// <see cref="Read"/>, which refuses what Xen refuses (-EINVAL for the caller).
/// </summary>
internal sealed class Policydb
{
    public const uint Magic = 0xf97cff8c;
    public const string Identifier = "XenFlask", OldIdentifier = "SE Linux";
    public const uint VersionMin = 15, VersionMax = 30;
    private const uint VersionBool = 16, VersionMls = 19, VersionValidatetrans = 19, VersionAvtab = 20, VersionRangetrans = 21,
        VersionPolcap = 22, VersionPermissive = 23, VersionBoundary = 24, VersionFilenameTrans = 25, VersionRoletrans = 26,
        VersionNewObjectDefaults = 27, VersionDefaultType = 28, VersionConstraintNames = 29, VersionXenDevicetree = 30;
    private const uint ConfigMls = 1, ConfigAllowUnknown = 4;
    public const int AvtabAllowed = 1, AvtabAuditAllow = 2, AvtabAuditDeny = 4, AvtabAv = 7,
        AvtabTransition = 16, AvtabMember = 32, AvtabChange = 64, AvtabType = 112;
    private const int SymCommons = 0, SymClasses = 1, SymRoles = 2, SymTypes = 3, SymUsers = 4, SymBools = 5, SymLevels = 6, SymCats = 7;
    public const int ObjectRole = 1;

    public uint Version { get; private set; }
    public bool Mls { get; private set; }
    public bool AllowUnknown { get; private set; }
    public Ebitmap PermissiveTypes { get; private set; } = Ebitmap.Empty;

    public Dictionary<string, ClassDatum> ClassesByName { get; } = new(StringComparer.Ordinal);
    public ClassDatum?[] Classes { get; private set; } = [];
    public Dictionary<string, int> RolesByName { get; } = new(StringComparer.Ordinal);
    public string?[] RoleNames { get; private set; } = [];
    public Ebitmap[] RoleTypes { get; private set; } = [];
    public Dictionary<string, int> TypesByName { get; } = new(StringComparer.Ordinal);
    public string?[] TypeNames { get; private set; } = [];
    public bool[] TypeIsAttribute { get; private set; } = [];
    public Dictionary<string, int> UsersByName { get; } = new(StringComparer.Ordinal);
    public string?[] UserNames { get; private set; } = [];
    public Ebitmap[] UserRoles { get; private set; } = [];
    public string?[] BoolNames { get; private set; } = [];
    public bool[] BoolStates { get; private set; } = [];
    public HashSet<string> Sensitivities { get; } = new(StringComparer.Ordinal);
    public HashSet<string> Categories { get; } = new(StringComparer.Ordinal);
    private readonly Dictionary<int, string> _sensNames = [], _catNames = [];

    public Dictionary<ulong, uint> Avtab { get; } = [];
    public CondNode[] Conditionals { get; private set; } = [];
    public List<(int Role, int Type, int NewRole)> RoleTransitions { get; } = [];
    public SortedDictionary<uint, SecurityContext> InitialSids { get; } = [];
    public Ebitmap[] TypeAttrMap { get; private set; } = [];

    public static Policydb Read(ReadOnlySpan<byte> data)
    {
        var p = new Policydb();
        var r = new PolicyReader(data);
        p.ReadAll(ref r);
        return p;
    }

    private void ReadAll(ref PolicyReader r)
    {
        if (r.U32() != Magic)
            throw new PolicyFormatException("not a FLASK policy (bad magic)");
        uint idLen = r.U32();
        if (idLen != Identifier.Length)
            throw new PolicyFormatException("policy identifier of the wrong length");
        string id = r.Str(idLen);
        bool xen = id == Identifier;
        if (!xen && id != OldIdentifier)
            throw new PolicyFormatException($"\"{id}\" is not a Xen policy");
        Version = r.U32();
        uint config = r.U32(), symNum = r.U32(), oconNum = r.U32();
        if (Version < VersionMin || Version > VersionMax)
            throw new PolicyFormatException($"policy version {Version} is outside {VersionMin}-{VersionMax}");
        Mls = (config & ConfigMls) != 0;
        if (Mls && Version < VersionMls)
            throw new PolicyFormatException("an MLS policy needs version 19 or later");
        AllowUnknown = (config & ConfigAllowUnknown) != 0;
        if (Version >= VersionPolcap)
            Ebitmap.Read(ref r);
        if (Version >= VersionPermissive)
            PermissiveTypes = Ebitmap.Read(ref r);

        // The table counts Xen expects for this version and target (policydb_compat).
        uint wantSym = Version >= VersionMls ? 8u : Version >= VersionBool ? 6u : 5u;
        uint wantOcon = xen switch
        {
            true when Version >= VersionXenDevicetree => 6,
            true when Version >= VersionBoundary => 5,
            true => throw new PolicyFormatException($"a Xen policy needs version {VersionBoundary} or later"),
            false when Version == VersionBoundary => 7,
            false when Version >= VersionIpv6 => 5,
            false when Version < VersionBoundary => 4,
            _ => throw new PolicyFormatException($"an old-style policy of version {Version} is not supported"),
        };
        if (symNum != wantSym || oconNum != wantOcon)
            throw new PolicyFormatException($"policy table sizes ({symNum},{oconNum}) do not match ({wantSym},{wantOcon})");

        for (int sym = 0; sym < symNum; sym++)
        {
            uint nprim = r.U32(), nel = r.U32();
            r.EnsureItems(nel, 8);
            if (nprim > 0xffff || nel > nprim && sym is not (SymLevels or SymCats))
                throw new PolicyFormatException($"symbol table {sym} has {nel} entries for {nprim} values");
            Size(sym, nprim);
            for (int j = 0; j < nel; j++)
                ReadSymbol(ref r, sym);
        }
        foreach (var c in ClassesByName.Values)
            if (c.Value == 0 || c.Value > Classes.Length || Classes[c.Value - 1] is not null)
                throw new PolicyFormatException($"class {c.Name} has a bad value");
            else
                Classes[c.Value - 1] = c;

        foreach (var rule in ReadAvtab(ref r))
            Avtab[rule.Key] = Avtab.TryGetValue(rule.Key, out uint old) && (rule.Specified & AvtabAv) != 0
                ? ((rule.Specified & AvtabAuditDeny) != 0 ? old & rule.Data : old | rule.Data)
                : rule.Data;

        if (Version >= VersionBool)
            Conditionals = ReadConditionals(ref r);

        uint nel2 = r.U32();
        r.EnsureItems(nel2, 12);
        for (int i = 0; i < nel2; i++)
        {
            int role = (int)r.U32(), type = (int)r.U32(), newRole = (int)r.U32();
            if (Version >= VersionRoletrans)
                r.U32(); // the class: Xen applies role transitions to domains only
            if (!ValidRole(role) || !ValidType(type) || !ValidRole(newRole))
                throw new PolicyFormatException("role transition names an unknown role or type");
            RoleTransitions.Add((role, type, newRole));
        }
        nel2 = r.U32();
        r.EnsureItems(nel2, 8);
        for (int i = 0; i < nel2; i++)
        {
            int role = (int)r.U32(), newRole = (int)r.U32();
            if (!ValidRole(role) || !ValidRole(newRole))
                throw new PolicyFormatException("role allow names an unknown role");
        }
        if (Version >= VersionFilenameTrans && r.U32() != 0)
            throw new PolicyFormatException("file name transitions have no meaning in Xen");

        for (int ocon = 0; ocon < oconNum; ocon++)
        {
            uint n = r.U32();
            r.EnsureItems(n, 16);
            for (int j = 0; j < n; j++)
            {
                switch (ocon)
                {
                    case 0: // OCON_ISID
                        uint sid = r.U32();
                        var ctx = ReadContext(ref r);
                        if (sid == 0 || !InitialSids.TryAdd(sid, ctx))
                            throw new PolicyFormatException($"initial SID {sid} is declared twice");
                        break;
                    case 1: // OCON_PIRQ
                    case 4: // OCON_DEVICE
                        r.U32();
                        ReadContext(ref r);
                        break;
                    case 2: // OCON_IOPORT
                        r.U32(); r.U32();
                        ReadContext(ref r);
                        break;
                    case 3: // OCON_IOMEM
                        if (Version >= VersionXenDevicetree) { r.U64(); r.U64(); } else { r.U32(); r.U32(); }
                        ReadContext(ref r);
                        break;
                    case 5: // OCON_DTREE
                        r.Str(r.U32());
                        ReadContext(ref r);
                        break;
                }
            }
        }
        if (r.U32() != 0)
            throw new PolicyFormatException("genfs contexts have no meaning in Xen");
        if (Version >= VersionMls)
        {
            uint n = r.U32();
            r.EnsureItems(n, 8);
            for (int i = 0; i < n; i++)
            {
                r.U32(); r.U32();
                if (Version >= VersionRangetrans)
                    r.U32();
                ReadMlsRange(ref r);
            }
        }
        var map = new Ebitmap[TypeNames.Length];
        for (int i = 0; i < map.Length; i++)
        {
            var read = Version >= VersionAvtab ? Ebitmap.Read(ref r) : Ebitmap.Empty;
            map[i] = read.Contains(i) ? read : Ebitmap.Of(read.Bits().Append(i)); // a type is its own attribute
        }
        TypeAttrMap = map;
        if (!InitialSids.ContainsKey(Flask.SecinitsidUnlabeled))
            throw new PolicyFormatException("the policy has no context for the unlabeled initial SID");
    }

    private const uint VersionIpv6 = 17;

    private bool ValidRole(int v) => v >= 1 && v <= RoleNames.Length && RoleNames[v - 1] is not null;
    private bool ValidType(int v) => v >= 1 && v <= TypeNames.Length && TypeNames[v - 1] is not null;
    private bool ValidUser(int v) => v >= 1 && v <= UserNames.Length && UserNames[v - 1] is not null;
    public bool ValidClass(int v) => v >= 1 && v <= Classes.Length && Classes[v - 1] is not null;

    private void Size(int sym, uint nprim)
    {
        int n = (int)nprim;
        switch (sym)
        {
            case SymClasses: Classes = new ClassDatum?[n]; break;
            case SymRoles: RoleNames = new string?[n]; RoleTypes = new Ebitmap[n]; break;
            case SymTypes: TypeNames = new string?[n]; TypeIsAttribute = new bool[n]; break;
            case SymUsers: UserNames = new string?[n]; UserRoles = new Ebitmap[n]; break;
            case SymBools: BoolNames = new string?[n]; BoolStates = new bool[n]; break;
        }
    }

    private static int Slot(uint value, int length, string what)
    {
        if (value == 0 || value > length)
            throw new PolicyFormatException($"{what} value {value} is out of range");
        return (int)value - 1;
    }

    private void ReadSymbol(ref PolicyReader r, int sym)
    {
        switch (sym)
        {
            case SymCommons:
            {
                uint len = r.U32();
                r.U32(); r.U32();
                uint nel = r.U32();
                r.Str(len);
                r.EnsureItems(nel, 8);
                for (int i = 0; i < nel; i++) { r.Str(r.U32() is var l ? l : 0); }
                break;
            }
            case SymClasses:
            {
                uint len = r.U32(), len2 = r.U32(), value = r.U32(), nprim = r.U32(), nel = r.U32(), ncons = r.U32();
                var c = new ClassDatum(value, r.Str(len));
                if (len2 != 0)
                    throw new PolicyFormatException("classes with common prefixes are not supported");
                if (nprim > 32 || nel > 32)
                    throw new PolicyFormatException($"class {c.Name} has more than 32 permissions");
                for (int i = 0; i < nel; i++)
                {
                    uint plen = r.U32(), pval = r.U32();
                    string pname = r.Str(plen);
                    if (pval == 0 || pval > 32)
                        throw new PolicyFormatException($"permission {pname} of {c.Name} has value {pval}");
                    c.Perms[pname] = (int)pval;
                    c.PermNames[pval - 1] = pname;
                }
                c.Constraints.AddRange(ReadConstraints(ref r, ncons, false));
                if (Version >= VersionValidatetrans)
                    ReadConstraints(ref r, r.U32(), true);
                if (Version >= VersionNewObjectDefaults)
                    r.Skip(12);
                if (Version >= VersionDefaultType)
                    r.Skip(4);
                if (!ClassesByName.TryAdd(c.Name, c))
                    throw new PolicyFormatException($"class {c.Name} is declared twice");
                break;
            }
            case SymRoles:
            {
                uint len = r.U32(), value = r.U32();
                if (Version >= VersionBoundary)
                    r.U32();
                string name = r.Str(len);
                Ebitmap.Read(ref r);
                var types = Ebitmap.Read(ref r);
                int i = Slot(value, RoleNames.Length, "role");
                if ((name == "object_r") != (value == ObjectRole))
                    throw new PolicyFormatException("object_r must be role 1");
                RoleNames[i] = name;
                RoleTypes[i] = types;
                RolesByName[name] = (int)value;
                break;
            }
            case SymTypes:
            {
                uint len = r.U32(), value = r.U32(), props = r.U32();
                if (Version >= VersionBoundary)
                    r.U32();
                string name = r.Str(len);
                // Before version 24 the third word says whether the name is primary (not an alias).
                bool primary = (props & 1) != 0, attribute = Version >= VersionBoundary && (props & 2) != 0;
                int i = Slot(value, TypeNames.Length, "type");
                if (primary)
                {
                    TypeNames[i] = name;
                    TypeIsAttribute[i] = attribute;
                }
                TypesByName[name] = (int)value;
                break;
            }
            case SymUsers:
            {
                uint len = r.U32(), value = r.U32();
                if (Version >= VersionBoundary)
                    r.U32();
                string name = r.Str(len);
                var roles = Ebitmap.Read(ref r);
                if (Version >= VersionMls)
                {
                    ReadMlsRange(ref r);
                    r.U32();
                    Ebitmap.Read(ref r);
                }
                int i = Slot(value, UserNames.Length, "user");
                UserNames[i] = name;
                UserRoles[i] = roles;
                UsersByName[name] = (int)value;
                break;
            }
            case SymBools:
            {
                uint value = r.U32(), state = r.U32(), len = r.U32();
                string name = r.Str(len);
                if (state > 1)
                    throw new PolicyFormatException($"boolean {name} has state {state}");
                int i = Slot(value, BoolNames.Length, "boolean");
                BoolNames[i] = name;
                BoolStates[i] = state == 1;
                break;
            }
            case SymLevels:
            {
                uint len = r.U32(), isAlias = r.U32();
                string name = r.Str(len);
                uint sens = r.U32();
                Ebitmap.Read(ref r);
                Sensitivities.Add(name);
                if (isAlias == 0 && sens is > 0 and <= 0xffff)
                    _sensNames[(int)sens] = name;
                break;
            }
            case SymCats:
            {
                uint len = r.U32(), value = r.U32(), isAlias = r.U32();
                string name = r.Str(len);
                Categories.Add(name);
                if (isAlias == 0 && value is > 0 and <= 0xffff)
                    _catNames[(int)value] = name;
                break;
            }
        }
    }

    private List<Constraint> ReadConstraints(ref PolicyReader r, uint ncons, bool allowXtarget)
    {
        var list = new List<Constraint>();
        r.EnsureItems(ncons, 8);
        for (int i = 0; i < ncons; i++)
        {
            uint perms = r.U32(), nexpr = r.U32();
            r.EnsureItems(nexpr, 12);
            var expr = new ConstraintExpr[nexpr];
            int depth = -1;
            for (int j = 0; j < nexpr; j++)
            {
                uint type = r.U32(), attr = r.U32(), op = r.U32();
                Ebitmap? names = null;
                switch (type)
                {
                    case Flask.CexprNot:
                        if (depth < 0) throw new PolicyFormatException("bad constraint expression");
                        break;
                    case Flask.CexprAnd or Flask.CexprOr:
                        if (depth < 1) throw new PolicyFormatException("bad constraint expression");
                        depth--;
                        break;
                    case Flask.CexprAttr:
                        if (++depth >= Flask.CexprMaxDepth) throw new PolicyFormatException("constraint too deep");
                        break;
                    case Flask.CexprNames:
                        if (!allowXtarget && (attr & Flask.CexprXtarget) != 0) throw new PolicyFormatException("bad constraint expression");
                        if (++depth >= Flask.CexprMaxDepth) throw new PolicyFormatException("constraint too deep");
                        names = Ebitmap.Read(ref r);
                        if (Version >= VersionConstraintNames)
                        {
                            // The type set the names came from (types and negated types), and its flags.
                            Ebitmap.Read(ref r);
                            Ebitmap.Read(ref r);
                            r.U32();
                        }
                        break;
                    default:
                        throw new PolicyFormatException($"constraint expression type {type}");
                }
                expr[j] = new ConstraintExpr(type, attr, op, names);
            }
            if (depth != 0)
                throw new PolicyFormatException("unbalanced constraint expression");
            list.Add(new Constraint(perms, expr));
        }
        return list;
    }

    private AvRule[] ReadAvtab(ref PolicyReader r)
    {
        uint n = r.U32();
        if (Version < VersionAvtab)
            throw new PolicyFormatException($"policy version {Version} predates the avtab format XenSharp reads (20)");
        r.EnsureItems(n, 12);
        var rules = new AvRule[n];
        for (int i = 0; i < n; i++)
        {
            ushort s = r.U16(), t = r.U16(), c = r.U16(), spec = r.U16();
            uint data = r.U32();
            int kind = spec & (AvtabAv | AvtabType);
            if (!ValidType(s) || !ValidType(t) || !ValidClass(c) || System.Numerics.BitOperations.PopCount((uint)kind) != 1)
                throw new PolicyFormatException("a type-enforcement rule names an unknown type or class");
            if ((kind & AvtabType) != 0 && !ValidType((int)data))
                throw new PolicyFormatException("a type transition names an unknown type");
            rules[i] = new AvRule(s, t, c, (ushort)kind, data);
        }
        return rules;
    }

    private CondNode[] ReadConditionals(ref PolicyReader r)
    {
        uint n = r.U32();
        r.EnsureItems(n, 16);
        var nodes = new CondNode[n];
        for (int i = 0; i < n; i++)
        {
            r.U32(); // the state it was compiled with; recomputed from the booleans
            uint len = r.U32();
            r.EnsureItems(len, 8);
            var expr = new (uint, uint)[len];
            for (int j = 0; j < len; j++)
            {
                uint type = r.U32(), b = r.U32();
                if (type is < Flask.CondBool or > Flask.CondNeq || (type == Flask.CondBool && (b == 0 || b > BoolNames.Length)))
                    throw new PolicyFormatException("bad conditional expression");
                expr[j] = (type, b);
            }
            nodes[i] = new CondNode(expr, ReadAvtab(ref r), ReadAvtab(ref r));
        }
        return nodes;
    }

    private SecurityContext ReadContext(ref PolicyReader r)
    {
        int user = (int)r.U32(), role = (int)r.U32(), type = (int)r.U32();
        string? mls = Version >= VersionMls && Mls ? ReadMlsRange(ref r) : null;
        if (Version >= VersionMls && !Mls)
            ReadMlsRange(ref r);
        if (!ValidUser(user) || !ValidRole(role) || !ValidType(type))
            throw new PolicyFormatException("an initial context names an unknown user, role or type");
        return new SecurityContext(user, role, type, mls);
    }

    /// <summary>Reads an MLS range as the text a context shows (s0-s0:c0.c3); XenSharp keeps it as a label and
    /// checks no MLS rules.</summary>
    private string ReadMlsRange(ref PolicyReader r)
    {
        uint items = r.U32();
        if (items is 0 or > 2)
            throw new PolicyFormatException("MLS range overflow");
        uint low = r.U32(), high = items > 1 ? r.U32() : low;
        string lowText = Level(low, Ebitmap.Read(ref r));
        string highText = items > 1 ? Level(high, Ebitmap.Read(ref r)) : lowText;
        return lowText == highText ? lowText : lowText + "-" + highText;
    }

    private string Level(uint sens, Ebitmap cats)
    {
        var sb = new StringBuilder(_sensNames.GetValueOrDefault((int)sens, $"s{sens - 1}"));
        var bits = cats.Bits().ToArray();
        for (int i = 0; i < bits.Length;)
        {
            int j = i;
            while (j + 1 < bits.Length && bits[j + 1] == bits[j] + 1)
                j++;
            sb.Append(i == 0 ? ':' : ',').Append(Cat(bits[i]));
            if (j > i)
                sb.Append(j == i + 1 ? ',' : '.').Append(Cat(bits[j]));
            i = j + 1;
        }
        return sb.ToString();
    }

    private string Cat(int bit) => _catNames.GetValueOrDefault(bit + 1, $"c{bit}");
}
