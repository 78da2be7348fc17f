using XenSharp.Hypervisor;

namespace XenSharp.Daemon.Privcmd;

/// <summary>
/// privcmd: Domain-0's kernel interface for programs outside the daemon (the part Linux's /dev/xen/privcmd,
/// /dev/xen/hypercall, /dev/xen/evtchn and gntdev play), served to XenSharp's drop-in libxencall, libxenevtchn,
/// libxenforeignmemory and libxengnttab over $RUNDIR/privcmd.sock. Each library handle is one connection, served by
/// its own thread (requests are short and the peers are few); what a handle holds lives exactly as long as its
/// connection, so a program that exits or is killed leaves nothing behind.
/// </summary>
internal sealed class PrivcmdServer : IDisposable
{
    /// <summary>Handles served at once; more are refused so a runaway program cannot exhaust threads.</summary>
    public const int MaxConnections = 1024;

    private readonly XenHypervisor _hv;
    private readonly string _path;
    private readonly int _listener;
    private readonly Thread _acceptThread;
    private readonly HashSet<PrivcmdConnection> _connections = [];
    private volatile bool _stopping;

    public PrivcmdServer(string path, XenHypervisor hv)
    {
        _hv = hv;
        _path = path;
        if (File.Exists(path))
            File.Delete(path);
        _listener = UnixNative.ListenSeqpacket(path, 64);
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        _acceptThread = new Thread(AcceptLoop) { IsBackground = true, Name = "privcmd-accept" };
        _acceptThread.Start();
    }

    /// <summary>Connections open now (for tests and the daemon log).</summary>
    public int ConnectionCount
    {
        get { lock (_connections) return _connections.Count; }
    }

    private void AcceptLoop()
    {
        while (!_stopping)
        {
            int fd = UnixNative.Accept(_listener);
            if (fd < 0)
                return;
            var c = new PrivcmdConnection(fd, _hv);
            lock (_connections)
            {
                if (_stopping || _connections.Count >= MaxConnections)
                {
                    c.Dispose();
                    continue;
                }
                _connections.Add(c);
            }
            var t = new Thread(() => Serve(c)) { IsBackground = true, Name = "privcmd" };
            t.Start();
        }
    }

    private void Serve(PrivcmdConnection c)
    {
        try
        {
            c.Serve();
        }
        finally
        {
            lock (_connections)
                _connections.Remove(c);
            c.Dispose();
        }
    }

    public void Dispose()
    {
        _stopping = true;
        UnixNative.Shutdown(_listener);
        _acceptThread.Join(TimeSpan.FromSeconds(5));
        UnixNative.close(_listener);
        PrivcmdConnection[] open;
        lock (_connections)
            open = [.. _connections];
        foreach (var c in open)
            c.Hangup();
        // Let the serving threads release what their handles hold before the hypervisor goes.
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (ConnectionCount > 0 && DateTime.UtcNow < deadline)
            Thread.Sleep(10);
        try { File.Delete(_path); } catch (IOException) { }
    }
}
