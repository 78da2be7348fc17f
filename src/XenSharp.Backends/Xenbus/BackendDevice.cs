using System.Globalization;
using XenSharp.Dom0;
using XenSharp.Public;
using XenSharp.Public.Io;
using XenSharp.Store;
using static XenSharp.Public.GrantTable;

namespace XenSharp.Backends.Xenbus;

/// <summary>What every backend device of a kind shares: dom0's services, the store, its I/O thread.</summary>
public sealed class BackendContext(IDom0Services dom0, XenStored store, BackendIoThread io, BackendOptions options)
{
    public IDom0Services Dom0 { get; } = dom0;
    public XenStored Store { get; } = store;
    public BackendIoThread Io { get; } = io;
    public BackendOptions Options { get; } = options;
}

/// <summary>
/// One PV device's backend: the xenbus handshake as Linux's xenbus backends and QEMU's xen-bus run it,
/// driven by a watch on the frontend's state node. The backend publishes InitWait, connects when the
/// frontend is Initialised or Connected (reading its ring-ref and event-channel keys in
/// <see cref="Connect"/>), and disconnects when it closes. A failure ends the device alone: the reason
/// goes to its error node and the backend switches to Closing, as xenbus_dev_fatal does.
/// Every step runs on the kind's I/O thread; the frontend's event-channel notifications only queue it.
/// </summary>
public abstract class BackendDevice : IBackendWork, IDisposable
{
    private readonly Lock _lock = new();
    private readonly List<uint> _grantHandles = [];
    private readonly List<uint> _ports = [];
    private IDisposable? _watch;
    private int _queued, _xenbusPending, _eventPending;
    private bool _initialised, _removed;
    private uint _frontendPort;

    protected BackendDevice(BackendContext context, DeviceAddress address)
    {
        Context = context;
        Address = address;
        FrontendPath = context.Store.Read($"{address.BackendPath}/frontend") ?? address.FrontendPath;
    }

    public DeviceAddress Address { get; }
    public string FrontendPath { get; }
    protected BackendContext Context { get; }
    protected IDom0Services Dom0 => Context.Dom0;
    protected XenStored Store => Context.Store;

    /// <summary>The state this backend published last.</summary>
    public XenbusState State { get; private set; } = XenbusState.Initialising;

    /// <summary>What the error node says after a failure ("errno message"), or null.</summary>
    public string? Error { get; private set; }

    /// <summary>Raised on the I/O thread after each state this backend publishes.</summary>
    public event Action<BackendDevice, XenbusState>? StateChanged;

    // ---- what a backend fills in ----

    /// <summary>Publishes the backend's features before InitWait (feature-* nodes).</summary>
    protected virtual void Initialise() { }

    /// <summary>Reads the frontend's ring details and maps them (<see cref="MapRingRef"/>,
    /// <see cref="BindFrontendEventChannel"/>); throws <see cref="BackendDeviceException"/> when they are unusable.</summary>
    protected abstract void Connect();

    /// <summary>Drops the backend's references to the rings; the base then unmaps and unbinds them.</summary>
    protected abstract void Disconnect();

    /// <summary>The frontend notified (or the device just connected): serve the rings.</summary>
    protected abstract void ProcessEvents();

    /// <summary>The device is gone for good (after the last <see cref="Disconnect"/>): release what lives as long as the device.</summary>
    protected virtual void Removed() { }

    // ---- helpers for backends ----

    /// <summary>A frontend key as an unsigned number; a missing or garbage value ends the device.</summary>
    protected uint ReadFrontendUInt(string key)
    {
        string? s = Store.Read($"{FrontendPath}/{key}");
        if (s is null)
            throw new BackendDeviceException(Errno.ENOENT, $"reading {FrontendPath}/{key}");
        if (!uint.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out uint v))
            throw new BackendDeviceException(Errno.EINVAL, $"parsing {FrontendPath}/{key}");
        return v;
    }

    protected string? ReadFrontend(string key) => Store.Read($"{FrontendPath}/{key}");
    protected string? ReadBackend(string key) => Store.Read($"{Address.BackendPath}/{key}");
    protected void WriteBackend(string key, string value) => Store.Write($"{Address.BackendPath}/{key}", value);

    /// <summary>Maps the frontend's granted ring page; released on disconnect.</summary>
    protected nint MapRingRef(uint gref, bool readOnly = false)
    {
        short st = Dom0.MapGrantRef((ushort)Address.FrontendId, gref, readOnly, out var op);
        if (st != GNTST_okay)
            throw new BackendDeviceException(-st, $"mapping in shared page {gref} from domain {Address.FrontendId}");
        lock (_lock) _grantHandles.Add(op.Handle);
        return op.Address;
    }

    /// <summary>Binds the frontend's port; its notifications queue <see cref="ProcessEvents"/>. Unbound on disconnect.
    /// Returns the local port (for a device with more than one, see <see cref="NotifyFrontend(uint)"/>).</summary>
    protected uint BindFrontendEventChannel(uint remotePort)
    {
        long rc = Dom0.BindInterdomain((ushort)Address.FrontendId, remotePort, Kick, out uint local);
        if (rc != 0)
            throw new BackendDeviceException((int)-rc, $"binding event channel {remotePort} of domain {Address.FrontendId}");
        lock (_lock) _ports.Add(local);
        _frontendPort = local;
        return local;
    }

    /// <summary>EVTCHNOP_send to the frontend on the bound port.</summary>
    protected void NotifyFrontend()
    {
        if (_frontendPort != 0) Dom0.Notify(_frontendPort);
    }

    /// <summary>EVTCHNOP_send on one of the device's bound ports (split event channels).</summary>
    protected void NotifyFrontend(uint localPort)
    {
        if (localPort != 0) Dom0.Notify(localPort);
    }

    /// <summary>The frontend's event arrived (on its pCPU): only queue the device.</summary>
    protected void Kick()
    {
        Volatile.Write(ref _eventPending, 1);
        Queue();
    }

    // ---- the state machine ----

    /// <summary>Starts watching the frontend; the first pass publishes InitWait.</summary>
    internal void Start()
    {
        _watch = Store.Watch($"{FrontendPath}/state", _ =>
        {
            Volatile.Write(ref _xenbusPending, 1);
            Queue();
        });
    }

    private void Queue()
    {
        if (Interlocked.Exchange(ref _queued, 1) == 0)
            Context.Io.Schedule(this);
    }

    void IBackendWork.RunQueued()
    {
        Volatile.Write(ref _queued, 0);
        if (_removed) return;
        try
        {
            if (Interlocked.Exchange(ref _xenbusPending, 0) != 0)
                OnFrontendChanged();
            if (Interlocked.Exchange(ref _eventPending, 0) != 0 && State == XenbusState.Connected)
                ProcessEvents();
        }
        catch (BackendDeviceException e) { Fail(e.Errno, e.Message); }
        catch (XenStoreException e) { Fail(Errno.EIO, e.Message); }
        catch (Exception e) when (e is not OutOfMemoryException) { Fail(Errno.EIO, $"{e.GetType().Name}: {e.Message}"); }
    }

    private XenbusState FrontendState()
    {
        string? s = Store.Read($"{FrontendPath}/state");
        return s is not null && int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v is >= 1 and <= 8
            ? (XenbusState)v : XenbusState.Unknown;
    }

    private void OnFrontendChanged()
    {
        if (!_initialised)
        {
            _initialised = true;
            Initialise();
            Switch(XenbusState.InitWait);
        }
        switch (FrontendState())
        {
            case XenbusState.Initialising:
                // A frontend that starts again after a close (a guest's driver reloaded).
                if (State == XenbusState.Closed)
                    Switch(XenbusState.InitWait);
                break;
            case XenbusState.Initialised or XenbusState.Connected:
                if (State != XenbusState.InitWait)
                    break;
                Connect();
                Switch(XenbusState.Connected);
                // Requests produced before the backend bound the port were not signalled.
                ProcessEvents();
                break;
            case XenbusState.Closing:
                TearDown();
                Switch(XenbusState.Closing);
                break;
            case XenbusState.Closed or XenbusState.Unknown:
                TearDown();
                Switch(XenbusState.Closed);
                break;
        }
    }

    /// <summary>xenbus_dev_fatal: reports "errno message" in the error node, disconnects and switches to
    /// Closing. The frontend sees the state and closes its end.</summary>
    protected void Fail(int errno, string message)
    {
        Error = $"{errno} {message}";
        try
        {
            Store.Write($"{Address.ErrorPath}/error", Error);
            TearDown();
            Switch(XenbusState.Closing);
        }
        catch (XenStoreException) { }
        System.Console.Error.WriteLine($"xensharpd: backend {Address}: {Error}");
    }

    private void TearDown()
    {
        Disconnect();
        uint[] handles, ports;
        lock (_lock)
        {
            handles = [.. _grantHandles];
            ports = [.. _ports];
            _grantHandles.Clear();
            _ports.Clear();
            _frontendPort = 0;
        }
        foreach (uint p in ports) Dom0.Unbind(p);
        Span<GrantUnmapOp> one = stackalloc GrantUnmapOp[1];
        foreach (uint h in handles)
        {
            one[0] = new GrantUnmapOp(h);
            Dom0.UnmapGrantRefs(one);
        }
    }

    private void Switch(XenbusState s)
    {
        if (State == s) return;
        State = s;
        if (!_removed)
        {
            try { Store.Write($"{Address.BackendPath}/state", ((int)s).ToString(CultureInfo.InvariantCulture)); }
            catch (XenStoreException) { }
        }
        StateChanged?.Invoke(this, s);
    }

    /// <summary>The device's backend directory went away (the toolstack removed it): stop, release
    /// what is mapped and bound, on the I/O thread. The handle is set once that is done.</summary>
    internal WaitHandle Remove()
    {
        _watch?.Dispose();
        var r = new Removal(this);
        if (Context.Io.IsCurrent) r.RunQueued();
        else Context.Io.Schedule(r);
        return r.Done.WaitHandle;
    }

    private sealed class Removal(BackendDevice d) : IBackendWork
    {
        public readonly ManualResetEventSlim Done = new();

        public void RunQueued()
        {
            d._removed = true;
            try
            {
                d.TearDown();
                d.Removed();
            }
            catch (Exception e) when (e is not OutOfMemoryException) { System.Console.Error.WriteLine($"xensharpd: backend {d.Address}: {e.Message}"); }
            finally { Done.Set(); }
        }
    }

    public void Dispose()
    {
        Remove();
        GC.SuppressFinalize(this);
    }
}
