using System.Globalization;
using XenSharp.Backends.Xenbus;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The statistics Linux's blkback keeps in sysfs (/sys/bus/xen-backend/devices/vbd-DOMID-DEVID/statistics), which
/// Xen's libxenstat reads for xentop: refreshed every second under the run directory, where ./dom0 lays it over
/// /sys/bus for the programs it runs. A device that is gone loses its directory at the next refresh. With no PV disk
/// left the refreshes stop until a disk's backend starts (<see cref="Wake"/>): an idle daemon has no timer to serve.
/// </summary>
internal sealed class BackendSysfs : IDisposable
{
    public static readonly TimeSpan Period = TimeSpan.FromSeconds(1);

    private readonly Func<BackendRegistry?> _backends;
    private readonly string _devices;
    private readonly Timer _timer;
    private readonly Lock _lock = new();
    private int _busy;
    // Wake calls so far; a refresh that found nothing to show stops the timer only if none came meanwhile.
    private long _wakes;
    private bool _running = true;

    /// <summary>Refreshes on the host's own clock, not the toolstack's (which tests drive by hand): the figures are
    /// what xentop samples in real time.</summary>
    public BackendSysfs(Func<BackendRegistry?> backends, string root)
    {
        _backends = backends;
        _devices = Path.Combine(root, "devices");
        _timer = new Timer(_ => Refresh(), null, TimeSpan.Zero, Period);
    }

    /// <summary>A disk's backend started: refresh every second again.</summary>
    public void Wake()
    {
        lock (_lock)
        {
            _wakes++;
            if (_running)
                return;
            _running = true;
            _timer.Change(TimeSpan.Zero, Period);
        }
    }

    public void Refresh()
    {
        if (Interlocked.Exchange(ref _busy, 1) != 0)
            return;
        long wakes;
        lock (_lock) wakes = _wakes;
        bool shown = false;
        try
        {
            Directory.CreateDirectory(_devices);
            var live = new HashSet<string>();
            foreach (var (address, s) in _backends()?.VbdStatistics() ?? [])
            {
                string name = $"vbd-{address.FrontendId}-{address.DevId}";
                live.Add(name);
                shown = true;
                Write(name, ("oo_req", s.OutOfRequestEvents), ("rd_req", s.ReadRequests), ("wr_req", s.WriteRequests),
                    ("f_req", s.FlushRequests + s.BarrierRequests), ("ds_req", s.DiscardRequests),
                    ("rd_sect", s.ReadSectors), ("wr_sect", s.WrittenSectors));
            }
            foreach (var dir in Directory.EnumerateDirectories(_devices, "vbd-*"))
                if (!live.Contains(Path.GetFileName(dir)))
                    Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
            // The run directory is the daemon's; a failed refresh is retried at the next period.
            shown = true;
        }
        catch (UnauthorizedAccessException)
        {
        }
        finally
        {
            Volatile.Write(ref _busy, 0);
        }
        if (!shown)
            lock (_lock)
                if (_wakes == wakes && _running)
                {
                    _running = false;
                    try { _timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan); }
                    catch (ObjectDisposedException) { }
                }
    }

    private void Write(string device, params (string Name, long Value)[] counters)
    {
        string dir = Path.Combine(_devices, device, "statistics");
        Directory.CreateDirectory(dir);
        foreach (var (name, value) in counters)
        {
            // Written aside and renamed, so a reader never sees a half-written number.
            string path = Path.Combine(dir, name), temp = path + ".new";
            File.WriteAllText(temp, value.ToString(CultureInfo.InvariantCulture) + "\n");
            File.Move(temp, path, overwrite: true);
        }
    }

    public void Dispose()
    {
        // A refresh under way would write the directory again after it is removed: wait it out.
        using (var stopped = new ManualResetEvent(false))
            if (_timer.Dispose(stopped))
                stopped.WaitOne();
        try { Directory.Delete(Path.GetDirectoryName(_devices)!, recursive: true); } catch (IOException) { }
    }
}
