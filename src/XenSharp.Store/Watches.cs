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
        c.WatchCount++;
        return XsError.None;
    }

    public XsError Remove(Connection c, string path, string token)
    {
        int i = _watches.FindIndex(w => w.Conn == c && w.Path == path && w.Token == token);
        if (i < 0) return XsError.ENOENT;
        _watches.RemoveAt(i);
        c.WatchCount--;
        return XsError.None;
    }

    public void RemoveAll(Connection c)
    {
        _watches.RemoveAll(w => w.Conn == c);
        c.WatchCount = 0;
    }

    public void Fire(string path, bool removed, Node node)
    {
        // Iterate by index: a send may close a connection, but never adds or removes watches here.
        for (int i = 0; i < _watches.Count; i++)
        {
            Watch w = _watches[i];
            string? eventPath = null;
            if (Paths.IsChildOrSelf(path, w.Path)) eventPath = path;
            else if (removed && Paths.IsChildOrSelf(w.Path, path)) eventPath = w.Path;
            if (eventPath is null) continue;
            if (!w.Conn.Privileged && !NodeStore.CanRead(w.Conn, node)) continue;
            Send(w, eventPath);
        }
    }

    public void FireSpecial(string name)
    {
        for (int i = 0; i < _watches.Count; i++)
            if (_watches[i].Path == name) Send(_watches[i], name);
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
