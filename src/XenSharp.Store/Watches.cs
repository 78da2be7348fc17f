using System.Text;

namespace XenSharp.Store;

internal sealed class Watch
{
    public readonly Connection Conn;
    /// <summary>Canonical absolute path, or a special name (@introduceDomain, @releaseDomain).</summary>
    public readonly string Path;
    public readonly string Token;
    public readonly byte[] TokenBytes;
    /// <summary>Characters to cut from event paths when the watch was set with a relative path.</summary>
    public readonly int Strip;

    public Watch(Connection conn, string path, string token, byte[] tokenBytes, int strip)
    {
        Conn = conn;
        Path = path;
        Token = token;
        TokenBytes = tokenBytes;
        Strip = strip;
    }
}

/// <summary>
/// Registered watches. A watch on P fires for changes to P and anything below it, and, when a
/// subtree is removed, for a watch set anywhere inside it. Unprivileged watchers only hear about
/// nodes they may read. Events go out as XS_WATCH_EVENT "path\0token\0".
/// </summary>
internal sealed class WatchTable
{
    public const string IntroduceDomain = "@introduceDomain";
    public const string ReleaseDomain = "@releaseDomain";

    private readonly List<Watch> _watches = new();
    // Watches by path: a change looks up its path and each ancestor instead of scanning them all.
    private readonly Dictionary<string, List<Watch>> _byPath = new(StringComparer.Ordinal);
    private readonly Dictionary<string, List<Watch>>.AlternateLookup<ReadOnlySpan<char>> _bySpan;

    public WatchTable() => _bySpan = _byPath.GetAlternateLookup<ReadOnlySpan<char>>();
    private readonly byte[] _event = new byte[XsWire.PayloadMax * 2 + 8];

    public int Count => _watches.Count;

    public XsError Add(Connection c, string path, string token, byte[] tokenBytes, int strip, int quota, out Watch? watch)
    {
        watch = null;
        foreach (Watch w in _watches)
            if (w.Conn == c && w.Path == path && w.Token == token)
                return XsError.EEXIST;
        if (!c.Privileged && c.WatchCount >= quota) return XsError.E2BIG;
        watch = new Watch(c, path, token, tokenBytes, strip);
        _watches.Add(watch);
        if (!_byPath.TryGetValue(path, out List<Watch>? list)) _byPath[path] = list = new List<Watch>(1);
        list.Add(watch);
        c.WatchCount++;
        return XsError.None;
    }

    public XsError Remove(Connection c, string path, string token)
    {
        int i = _watches.FindIndex(w => w.Conn == c && w.Path == path && w.Token == token);
        if (i < 0) return XsError.ENOENT;
        Unindex(_watches[i]);
        _watches.RemoveAt(i);
        c.WatchCount--;
        return XsError.None;
    }

    public void RemoveAll(Connection c)
    {
        _watches.RemoveAll(w =>
        {
            if (w.Conn != c) return false;
            Unindex(w);
            return true;
        });
        c.WatchCount = 0;
    }

    private void Unindex(Watch w)
    {
        List<Watch> list = _byPath[w.Path];
        list.Remove(w);
        if (list.Count == 0) _byPath.Remove(w.Path);
    }

    public void Fire(string path, bool removed, Node node)
    {
        if (_watches.Count == 0) return;
        // Watches on the path itself and on each ancestor report the changed path.
        ReadOnlySpan<char> p = path;
        while (true)
        {
            if (_bySpan.TryGetValue(p, out List<Watch>? list))
                for (int i = 0; i < list.Count; i++) Deliver(list[i], path, node);
            if (p.Length == 1) break;
            int slash = p.LastIndexOf('/');
            p = slash == 0 ? "/" : p[..slash];
        }
        // A removed subtree also fires the watches set inside it, each with its own path.
        if (removed)
            for (int i = 0; i < _watches.Count; i++)
            {
                Watch w = _watches[i];
                if (w.Path.Length > path.Length && Paths.IsChildOrSelf(w.Path, path)) Deliver(w, w.Path, node);
            }
    }

    private void Deliver(Watch w, string eventPath, Node node)
    {
        if (!w.Conn.Privileged && !NodeStore.CanRead(w.Conn, node)) return;
        Send(w, eventPath);
    }

    public void FireSpecial(string name)
    {
        if (_byPath.TryGetValue(name, out List<Watch>? list))
            for (int i = 0; i < list.Count; i++) Send(list[i], name);
    }
    /// <summary>Sends the event that follows every successful XS_WATCH, naming the watched path.</summary>
    public void Send(Watch w, string path)
    {
        if (w.Conn.Closed) return;
        int start = w.Strip > 0 && path.Length > w.Strip && path.StartsWith(w.Conn.DomainPath, StringComparison.Ordinal) ? w.Strip : 0;
        int n = Encoding.ASCII.GetBytes(path.AsSpan(start), _event);
        _event[n++] = 0;
        w.TokenBytes.CopyTo(_event.AsSpan(n));
        n += w.TokenBytes.Length;
        _event[n++] = 0;
        w.Conn.Send(XsType.WatchEvent, 0, 0, _event.AsSpan(0, n));
    }
}
