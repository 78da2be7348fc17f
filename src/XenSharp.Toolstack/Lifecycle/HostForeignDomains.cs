using XenSharp.Backends.Console;
using XenSharp.Dom0;
using XenSharp.Store;
using XenSharp.Toolstack.Config;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// Domains a Domain-0 program built (Xen's own xl through the dom0 interface): the daemon plays xenstored and
/// xenconsoled for them as Xen's dom0 would. XS_INTRODUCE from that toolstack gets the store ring mapped and its
/// port bound; once a domain it created is introduced the daemon adopts it (xl list, shutdown and destroy see it;
/// its on_* actions are that toolstack's, so here they are all preserve); when that toolstack writes the primary
/// console's nodes (type xenconsoled, ring-ref, port) the console is served, logged, and put on a pty whose path
/// goes to console/tty for xenconsole. A domain destroyed by that toolstack is cleaned up here as one the daemon
/// destroyed, and one the daemon built but Domain-0 destroyed likewise. With <see cref="ExternalXenconsoled"/> the
/// consoles of those domains are left to Xen's own xenconsoled running in Domain-0, as on Xen, where one exists.
/// </summary>
public sealed partial class Host
{
    /// <summary>A xenconsoled of Domain-0's own (Debian's, under ./dom0) serves the consoles of the domains Domain-0
    /// builds; the daemon neither maps their rings nor writes console/tty for them.</summary>
    public bool ExternalXenconsoled { get; init; }

    /// <summary>Store rings introduced over the wire, by domid, until the domain goes.</summary>
    private readonly Dictionary<uint, ForeignStoreRing> _foreignRings = [];
    /// <summary>Domains a Domain-0 program created that are not adopted yet.</summary>
    private readonly HashSet<uint> _outside = [];
    private IDisposable? _introduceWatch;

    private void WatchForeignDomains()
    {
        _xs.RingProvider = MapIntroducedRing;
        _hv.DomainCreatedOutside += OnCreatedOutside;
        _hv.DomainDestroyed += OnDomainDestroyed;
        _introduceWatch = _xs.Watch("@introduceDomain", _ => AdoptIntroduced());
    }

    private void UnwatchForeignDomains()
    {
        _introduceWatch?.Dispose();
        _hv.DomainCreatedOutside -= OnCreatedOutside;
        _hv.DomainDestroyed -= OnDomainDestroyed;
        _xs.RingProvider = null;
        List<ForeignStoreRing> rings;
        lock (_lock)
        {
            rings = [.. _foreignRings.Values];
            _foreignRings.Clear();
        }
        foreach (var r in rings) r.Dispose();
    }

    /// <summary>XS_INTRODUCE from a socket client (under xenstored's lock): the ring is the domain's frame
    /// <paramref name="gfn"/> (an HVM toolstack passes the frame's gfn as its "mfn"), kicked through
    /// <paramref name="port"/>. Null when the frame or port is not the domain's: the introduction fails.</summary>
    private IXenStoreRing? MapIntroducedRing(uint domId, ulong gfn, uint port)
    {
        if (domId == 0 || domId > ushort.MaxValue)
            return null;
        var ring = ForeignStoreRing.Open(_hv.Dom0Services, _xs, (ushort)domId, gfn, port);
        if (ring is null)
            return null;
        ForeignStoreRing? old;
        Domain? adopted;
        lock (_lock)
        {
            _foreignRings.Remove(domId, out old);
            _foreignRings[domId] = ring;
            _domains.TryGetValue(domId, out adopted);
        }
        old?.Dispose();
        // Introduced again while served (libxl's soft reset: its event channels were all closed): the console is
        // bound anew once its nodes name the new port, as xenconsoled does. Not here, under xenstored's lock.
        if (adopted is { BuiltOutside: true } && !ExternalXenconsoled)
        {
            lock (adopted.OutsideParts) adopted.ForeignConsoleStale = true;
            ThreadPool.QueueUserWorkItem(_ => ServeForeignConsole(adopted));
        }
        return ring;
    }

    private void OnCreatedOutside(uint domId)
    {
        lock (_lock)
        {
            if (_disposed || _domains.ContainsKey(domId)) return;
            _outside.Add(domId);
        }
        AdoptIntroduced();
    }

    /// <summary>Adopts every domain created outside that xenstored has been introduced to.</summary>
    private void AdoptIntroduced()
    {
        List<uint> ready;
        lock (_lock) ready = [.. _outside];
        foreach (uint id in ready)
        {
            if (!_xs.IsIntroduced(id)) continue;
            try { Adopt(id); }
            catch (Exception e) when (e is XenStoreException or IOException or InvalidOperationException)
            {
                _hv.ConsoleWrite($"d{id}: cannot serve the domain Domain-0 built: {e.Message}");
            }
        }
    }

    private void Adopt(uint domId)
    {
        lock (_lock)
        {
            if (_disposed || !_outside.Remove(domId) || _domains.ContainsKey(domId)) return;
        }
        var f = _hv.AdoptDomain(domId);
        if (f is null) return; // destroyed meanwhile
        string dir = XenStored.GetDomainPath(domId);
        string name = _xs.Read($"{dir}/name") is { Length: > 0 } n ? n : $"Domain-{domId}";
        long Kb(string node) => long.TryParse(_xs.Read($"{dir}/memory/{node}"), out long kb) ? kb : 0;
        var config = new DomainConfig
        {
            Name = name,
            Uuid = f.Uuid,
            Type = _xs.Read($"/libxl/{domId}/type") switch
            {
                "pv" => DomainType.Pv,
                "hvm" => DomainType.Hvm,
                _ => f.Kind == XenSharp.Hypervisor.DomainKind.Hvm ? DomainType.Hvm : DomainType.Pvh,
            },
            TargetMemKb = Kb("target"),
            MaxMemKb = Kb("static-max"),
            Vcpus = f.MaxVcpus,
            MaxVcpus = f.MaxVcpus,
            // Its toolstack acts on its shutdown (xl's domain death handling); the daemon only keeps its view.
            OnPoweroff = ShutdownAction.Preserve,
            OnReboot = ShutdownAction.Preserve,
            OnCrash = ShutdownAction.Preserve,
            OnWatchdog = ShutdownAction.Preserve,
            OnSoftReset = ShutdownAction.Preserve,
        };
        var dom = new Domain
        {
            DomId = domId, Config = config, Hv = f.Domain, Started = DateTimeOffset.UtcNow, Lineage = new Lineage(),
            BuiltOutside = true, Ready = true,
        };
        lock (_lock)
        {
            if (_disposed || _domains.ContainsKey(domId))
            {
                f.Domain.Dispose();
                return;
            }
            _domains[domId] = dom;
        }
        if (!ExternalXenconsoled)
            dom.OutsideParts.Add(_xs.Watch($"{dir}/console", _ => ServeForeignConsole(dom)));
        _hv.ConsoleWrite($"d{domId}: {name} built by Domain-0: serving its store{(ExternalXenconsoled ? "; Domain-0's xenconsoled serves its console" : " and console")}");
    }

    /// <summary>Once the primary console's nodes are written (as xenconsoled waits for them), maps its ring, logs it
    /// and serves it on a pty named in console/tty.</summary>
    private void ServeForeignConsole(Domain dom)
    {
        string dir = $"{XenStored.GetDomainPath(dom.DomId)}/console";
        lock (dom.OutsideParts)
        {
            if ((dom.PrimaryConsole is not null && !dom.ForeignConsoleStale) || dom.Destroyed) return;
            if (_xs.Read($"{dir}/type") is not ("xenconsoled" or null)
                || !ulong.TryParse(_xs.Read($"{dir}/ring-ref"), out ulong gfn)
                || !uint.TryParse(_xs.Read($"{dir}/port"), out uint port))
                return;
            if (dom.ForeignConsolePty is { } oldPty)
            {
                dom.OutsideParts.Remove(oldPty);
                oldPty.Dispose();
                dom.ForeignConsolePty = null;
            }
            dom.PrimaryConsole?.Dispose();
            dom.PrimaryConsole = null;
            try
            {
                ConnectPrimaryConsole(dom, gfn, port);
                var pty = ConsolePty.Open(dom.Console!);
                dom.OutsideParts.Add(pty);
                dom.ForeignConsolePty = pty;
                dom.ForeignConsoleStale = false;
                _xs.Write($"{dir}/tty", pty.Path);
            }
            catch (Exception e) when (e is InvalidOperationException or IOException or XenStoreException)
            {
                _hv.ConsoleWrite($"d{dom.DomId}: cannot serve its console: {e.Message}");
            }
        }
    }

    /// <summary>A domain went, whoever destroyed it: whatever the daemon held for it goes too.</summary>
    private void OnDomainDestroyed(uint domId)
    {
        Domain? d;
        ForeignStoreRing? ring;
        lock (_lock)
        {
            _outside.Remove(domId);
            _domains.TryGetValue(domId, out d);
            _foreignRings.Remove(domId, out ring);
        }
        try
        {
            if (d is not null) Destroy(d);
            else if (ring is not null) _xs.Release(domId);
        }
        catch (Exception e) { _hv.ConsoleWrite($"d{domId}: cleanup after its destruction failed: {e.Message}"); }
        ring?.Dispose();
    }

    /// <summary>Under the domain's teardown: what serving a domain built outside took, before its console goes.</summary>
    private void ReleaseOutsideParts(Domain d)
    {
        List<IDisposable> parts;
        lock (d.OutsideParts)
        {
            parts = [.. d.OutsideParts];
            d.OutsideParts.Clear();
        }
        for (int i = parts.Count - 1; i >= 0; i--) parts[i].Dispose();
    }

    private void ReleaseForeignRing(uint domId)
    {
        ForeignStoreRing? ring;
        lock (_lock) _foreignRings.Remove(domId, out ring);
        ring?.Dispose();
    }

    /// <summary>A store ring introduced over the wire: the guest's frame, mapped, and its port bound in Domain-0.</summary>
    private sealed class ForeignStoreRing : IXenStoreRing, IDisposable
    {
        private readonly IDom0Services _dom0;
        private readonly XenStored _xs;
        private readonly ushort _domId;
        private readonly IForeignMapping _page;
        private uint _port;
        private XenStoreDomain? _domain;
        private int _disposed;

        private ForeignStoreRing(IDom0Services dom0, XenStored xs, ushort domId, IForeignMapping page)
        {
            _dom0 = dom0;
            _xs = xs;
            _domId = domId;
            _page = page;
        }

        public static ForeignStoreRing? Open(IDom0Services dom0, XenStored xs, ushort domId, ulong gfn, uint port)
        {
            if (dom0.MapForeign(domId, gfn, writable: true, out var page) != 0 || page is null)
                return null;
            var ring = new ForeignStoreRing(dom0, xs, domId, page);
            if (dom0.BindInterdomain(domId, port, ring.OnEvent, out uint local) != 0)
            {
                page.Dispose();
                return null;
            }
            ring._port = local;
            return ring;
        }

        /// <summary>The guest kicked its store port (on its pCPU): wake the ring's worker.</summary>
        private void OnEvent()
        {
            var d = Volatile.Read(ref _domain);
            if (d is null)
            {
                d = _xs.GetDomain(_domId);
                Volatile.Write(ref _domain, d);
            }
            d?.Signal();
        }

        public Span<byte> Page => _page.Span;

        public void Notify()
        {
            if (Volatile.Read(ref _disposed) == 0) _dom0.Notify(_port);
        }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
            _dom0.Unbind(_port);
            _page.Dispose();
        }
    }
}
