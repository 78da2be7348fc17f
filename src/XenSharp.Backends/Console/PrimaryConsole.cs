using XenSharp.Backends.Xenbus;
using XenSharp.Dom0;

namespace XenSharp.Backends.Console;

/// <summary>
/// A domain's primary console: set up from the start info and HVM params (its ring is a guest frame the
/// toolstack allocated and its port the toolstack offered), not through xenbus, as in Xen. It uses the
/// same dom0 services and the console kind's I/O thread as every console: the guest's notification only
/// queues the console, and the ring is drained and logged on the I/O thread.
/// </summary>
public sealed class PrimaryConsole : IBackendWork, IDisposable
{
    private readonly IDom0Services _dom0;
    private readonly BackendIoThread _io;
    private readonly IForeignMapping _page;
    private readonly uint _port;
    private int _queued;
    private int _disposed;

    private PrimaryConsole(IDom0Services dom0, BackendIoThread io, IForeignMapping page, uint port, ConsoleBackend backend)
    {
        _dom0 = dom0;
        _io = io;
        _page = page;
        _port = port;
        Backend = backend;
    }

    public ConsoleBackend Backend { get; }

    /// <summary>Maps the console frame <paramref name="ringGfn"/> of domain <paramref name="domid"/> and binds
    /// the port it offered to Domain-0.</summary>
    public static PrimaryConsole Connect(BackendRegistry backends, uint domid, ulong ringGfn, uint guestPort, string name, string? logPath)
    {
        var dom0 = backends.Dom0;
        long rc = dom0.MapForeign((ushort)domid, ringGfn, writable: true, out var page);
        if (rc != 0)
            throw new InvalidOperationException($"cannot map the console page {ringGfn:x} of domain {domid} ({rc})");
        var ring = new MappedPage(page!);
        PrimaryConsole? console = null;
        rc = dom0.BindInterdomain((ushort)domid, guestPort, () => console?.Kick(), out uint port);
        if (rc != 0)
        {
            page!.Dispose();
            throw new InvalidOperationException($"cannot bind the console port {guestPort} of domain {domid} ({rc})");
        }
        var backend = new ConsoleBackend(name, ring, () => dom0.Notify(port), logPath, backends.Options.ConsoleLogLimits);
        console = new PrimaryConsole(dom0, backends.IoThread(DeviceKinds.Console), page!, port, backend);
        // Output written before the port was bound was not signalled.
        console.Kick();
        return console;
    }

    /// <summary>The guest notified (on its pCPU): queue the drain on the I/O thread.</summary>
    private void Kick()
    {
        if (Interlocked.Exchange(ref _queued, 1) == 0)
            _io.Schedule(this);
    }

    void IBackendWork.RunQueued()
    {
        Volatile.Write(ref _queued, 0);
        Backend.OnGuestEvent();
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        // What the guest wrote just before it went (its last lines, then poweroff) may still be queued
        // for the I/O thread: take it now, before the console ends.
        Backend.OnGuestEvent();
        _dom0.Unbind(_port);
        Backend.Dispose();
        _page.Dispose();
    }

    private sealed class MappedPage(IForeignMapping m) : ISharedPage
    {
        public Span<byte> Page => m.Span;
    }
}
