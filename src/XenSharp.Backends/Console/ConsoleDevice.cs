using XenSharp.Backends.Xenbus;
using XenSharp.Public;

namespace XenSharp.Backends.Console;

/// <summary>
/// A secondary PV console (device/console/N, as hvc_xen connects one): the frontend grants its
/// <c>xencons_interface</c> page (ring-ref) and offers a port; the backend maps the grant, binds the port
/// and serves it with a <see cref="ConsoleBackend"/> on the console I/O thread. A producer index that runs
/// beyond the ring ends the device with an error.
/// </summary>
internal sealed class ConsoleDevice(BackendContext context, DeviceAddress address) : BackendDevice(context, address)
{
    private ConsoleBackend? _backend;

    /// <summary>The console while connected.</summary>
    public ConsoleBackend? Backend => Volatile.Read(ref _backend);

    protected override void Connect()
    {
        uint gref = ReadFrontendUInt("ring-ref");
        uint port = ReadFrontendUInt("port");
        var page = MapRingRef(gref);
        BindFrontendEventChannel(port);
        string name = ReadBackend("name") ?? $"console{Address.DevId}";
        Volatile.Write(ref _backend, new ConsoleBackend(name, new HostPage(page), NotifyFrontend,
            Context.Options.ConsoleLogPath(Address.FrontendId, Address.DevId), Context.Options.ConsoleLogLimits));
    }

    protected override void ProcessEvents()
    {
        var b = _backend;
        if (b is null) return;
        b.OnGuestEvent();
        if (b.TakeOverrun())
            throw new BackendDeviceException(Errno.EBADMSG, "the frontend's output producer ran beyond the ring");
    }

    protected override void Disconnect()
    {
        var b = Interlocked.Exchange(ref _backend, null);
        if (b is null) return;
        b.OnGuestEvent(); // the last output, written before the frontend closed
        b.Dispose();
    }
}

/// <summary>A page the host maps while a device is connected (a mapped grant).</summary>
internal sealed unsafe class HostPage(nint address) : ISharedPage
{
    public Span<byte> Page => new((void*)address, 4096);
}
