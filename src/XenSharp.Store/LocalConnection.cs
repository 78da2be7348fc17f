using System.Text;

namespace XenSharp.Store;

/// <summary>
/// The toolstack's in-process client (dom0, privileged). Operations are direct calls; watch events
/// are handed to callbacks in order on a thread-pool thread, never under the store lock.
/// </summary>
internal sealed class LocalConnection : Connection
{
    private readonly XenStoreEngine _engine;
    private readonly Dictionary<string, Action<string>> _callbacks = new(StringComparer.Ordinal);
    private readonly Queue<(Action<string> Callback, string Path)> _events = new();
    private bool _draining;
    private int _nextToken;

    public LocalConnection(XenStoreEngine engine, uint domId) : base(domId, privileged: true) => _engine = engine;

    /// <summary>Registers a callback; returns the token its watch uses. Store lock held.</summary>
    public string AddCallback(Action<string> callback)
    {
        string token = "local-" + (++_nextToken).ToString(System.Globalization.CultureInfo.InvariantCulture);
        _callbacks[token] = callback;
        return token;
    }

    public void RemoveCallback(string token) => _callbacks.Remove(token);

    public override void Send(XsType type, uint reqId, uint txId, ReadOnlySpan<byte> payload)
    {
        if (type != XsType.WatchEvent) return;
        int nul = payload.IndexOf((byte)0);
        if (nul < 0) return;
        string path = Encoding.ASCII.GetString(payload[..nul]);
        string token = Encoding.Latin1.GetString(payload[(nul + 1)..^1]);
        if (!_callbacks.TryGetValue(token, out Action<string>? cb)) return;
        lock (_events)
        {
            _events.Enqueue((cb, path));
            if (_draining) return;
            _draining = true;
        }
        ThreadPool.UnsafeQueueUserWorkItem(static self => self.Drain(), this, preferLocal: false);
    }

    private void Drain()
    {
        while (true)
        {
            (Action<string> Callback, string Path) ev;
            lock (_events)
            {
                if (!_events.TryDequeue(out ev)) { _draining = false; return; }
            }
            try { ev.Callback(ev.Path); }
            catch (Exception ex) { Console.Error.WriteLine($"xenstored: watch callback for {ev.Path} failed: {ex.Message}"); }
        }
    }
}
