namespace XenSharp.Store;

/// <summary>Xenstore path syntax: absolute ("/a/b") or relative to the caller's /local/domain/N,
/// names of letters, digits and "-/_@", no empty components; "@..." names only for watches.</summary>
internal static class Paths
{
    public static string Parent(string path)
    {
        int i = path.LastIndexOf('/');
        return i <= 0 ? "/" : path[..i];
    }

    public static string Name(string path) => path[(path.LastIndexOf('/') + 1)..];

    public static string Child(string parent, string name) => parent == "/" ? "/" + name : parent + "/" + name;

    public static bool IsChildOrSelf(string path, string ancestor) =>
        path.StartsWith(ancestor, StringComparison.Ordinal) &&
        (path.Length == ancestor.Length || ancestor == "/" || path[ancestor.Length] == '/');

    private static bool ValidChar(byte b) =>
        (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9') || b == '-' || b == '/' || b == '_' || b == '@';

    /// <summary>Turns a client's path (without its terminating nul) into a canonical absolute path.</summary>
    public static XsError Canonicalize(Connection c, ReadOnlySpan<byte> raw, int maxRelative, out string path)
    {
        path = "";
        if (raw.Length == 0 || raw.Length > XsWire.AbsPathMax) return XsError.EINVAL;
        byte prev = 0;
        foreach (byte b in raw)
        {
            if (!ValidChar(b) || (b == '/' && prev == '/')) return XsError.EINVAL;
            prev = b;
        }
        if (raw.Length > 1 && raw[^1] == '/') return XsError.EINVAL;
        if (raw[0] == '/')
        {
            path = System.Text.Encoding.ASCII.GetString(raw);
            if (!c.Privileged && path.Length > c.DomainPath.Length + 1 + maxRelative) return XsError.EINVAL;
            return XsError.None;
        }
        if (!c.Privileged && raw.Length > maxRelative) return XsError.EINVAL;
        int total = c.DomainPath.Length + 1 + raw.Length;
        if (total > XsWire.AbsPathMax) return XsError.EINVAL;
        path = string.Create(total, (c.DomainPath, raw.ToArray()), static (dst, st) =>
        {
            st.DomainPath.AsSpan().CopyTo(dst);
            dst[st.DomainPath.Length] = '/';
            for (int i = 0; i < st.Item2.Length; i++) dst[st.DomainPath.Length + 1 + i] = (char)st.Item2[i];
        });
        return XsError.None;
    }

    /// <summary>Canonical form of a string path given in-process (toolstack API).</summary>
    public static XsError Canonicalize(Connection c, string path, int maxRelative, out string canonical)
    {
        canonical = "";
        if (path.Length > XsWire.AbsPathMax) return XsError.EINVAL;
        Span<byte> buf = path.Length <= 512 ? stackalloc byte[path.Length] : new byte[path.Length];
        for (int i = 0; i < path.Length; i++)
        {
            if (path[i] > 127) return XsError.EINVAL;
            buf[i] = (byte)path[i];
        }
        return Canonicalize(c, buf, maxRelative, out canonical);
    }
}
