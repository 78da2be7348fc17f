namespace XenSharp.Store;

/// <summary>Access a permission entry grants (XS_PERM_*).</summary>
[Flags]
public enum XsPerm : byte
{
    None = 0,
    Read = 1,
    Write = 2,
    Both = Read | Write,
}

/// <summary>
/// One entry of a node's permission list. The first entry names the owner and the access everyone
/// else gets by default; later entries grant a specific domain its own access.
/// Text form as on the wire and in xenstore-chmod: n (none), r, w or b (both) followed by the domid.
/// </summary>
public readonly record struct XsPermission(uint DomId, XsPerm Perm)
{
    public override string ToString() => $"{Letter(Perm)}{DomId}";

    public static char Letter(XsPerm p) => p switch
    {
        XsPerm.Read => 'r',
        XsPerm.Write => 'w',
        XsPerm.Both => 'b',
        _ => 'n',
    };

    public static bool TryParse(ReadOnlySpan<char> s, out XsPermission perm)
    {
        perm = default;
        if (s.Length < 2) return false;
        XsPerm p;
        switch (s[0])
        {
            case 'n': p = XsPerm.None; break;
            case 'r': p = XsPerm.Read; break;
            case 'w': p = XsPerm.Write; break;
            case 'b': p = XsPerm.Both; break;
            default: return false;
        }
        if (!uint.TryParse(s[1..], System.Globalization.NumberStyles.None, null, out uint dom) || dom > 0xffff)
            return false;
        perm = new XsPermission(dom, p);
        return true;
    }

    public static XsPermission Parse(string s) =>
        TryParse(s, out var p) ? p : throw new FormatException($"not a xenstore permission: '{s}'");
}
