using XenSharp.Public;
using static XenSharp.Public.EventChannel;

namespace XenSharp.Hypervisor.Common;

internal enum EvtchnState { Free, Reserved, Unbound, Interdomain, Pirq, Virq, Ipi }

/// <summary>One event channel (Xen's struct evtchn).</summary>
internal sealed class Evtchn
{
    public Evtchn(uint port) => Port = port;
    public uint Port { get; }
    public EvtchnState State;
    public uint NotifyVcpu;
    public ushort RemoteDom;
    public uint RemotePort;
    public uint Virq;
    public byte Priority = (byte)EVTCHN_FIFO_PRIORITY_DEFAULT;
    /// <summary>Raised while the ABI had nowhere to record it (FIFO port beyond the event array).</summary>
    public bool PendingWithoutWord;
    /// <summary>Domain-0 (host) ports deliver to a callback instead of a guest bitmap.</summary>
    public Action? HostCallback;
    /// <summary>FIFO: where the event was last linked, so a later link can find the queue's tail.</summary>
    public int LastVcpu = -1;
    public byte LastPriority;
}

/// <summary>How pending/masked state is kept in guest memory: the 2-level bitmaps or the FIFO queues (Xen's evtchn_port_ops).</summary>
internal interface IEvtchnPortOps
{
    /// <summary>Highest port number this ABI can address, plus one.</summary>
    uint MaxPorts { get; }
    void SetPending(Vcpu v, Evtchn chn);
    void ClearPending(Evtchn chn);
    void Unmask(Vcpu v, Evtchn chn);
    bool IsPending(Evtchn chn);
    bool IsMasked(Evtchn chn);
    /// <summary>Returns -errno, or 0 when the ABI lets priorities be set.</summary>
    long SetPriority(Evtchn chn, uint priority);
    void Destroy();
}

/// <summary>
/// A domain's event channels: port allocation, bindings, and raising events through the domain's
/// current <see cref="IEvtchnPortOps"/> (2-level until the guest calls EVTCHNOP_init_control).
/// </summary>
internal sealed class EventChannels
{
    private readonly Domain _d;
    private Evtchn?[] _ports = new Evtchn?[64];

    public EventChannels(Domain d)
    {
        _d = d;
        Ops = d.IsHost ? new HostPortOps() : new Event2L(d);
    }

    public IEvtchnPortOps Ops { get; private set; }
    public EventFifo? Fifo => Ops as EventFifo;

    /// <summary>The highest port a guest may allocate (xl's max_event_channels default gives 1023).</summary>
    public uint MaxPort { get; set; } = 1023;

    // Created on first use: the domain's vCPUs do not exist yet when its event channels are.
    private uint[,] VirqTable => _virqToPortLazy ??= new uint[Math.Max(1, _d.Vcpus.Length), Xen.NR_VIRQS];
    private uint[,]? _virqToPortLazy;

    /// <summary>The ports in use, lowest first (for the 'e' debug key).</summary>
    public IEnumerable<Evtchn> InUse()
    {
        var ports = _ports;
        foreach (var c in ports)
            if (c is { State: not EvtchnState.Free })
                yield return c;
    }

    public Evtchn? Get(uint port)
    {
        var ports = _ports;
        return port < (uint)ports.Length ? ports[port] is { State: not EvtchnState.Free } c ? c : null : null;
    }

    /// <summary>Finds a free port (lowest first, port 0 is never used) and reserves it; caller holds the domain lock.</summary>
    public Evtchn? Allocate(out long err)
    {
        uint limit = Math.Min(MaxPort, Ops.MaxPorts - 1);
        for (uint p = 1; p <= limit; p++)
        {
            if (p >= _ports.Length)
                Array.Resize(ref _ports, (int)Math.Min(Math.Max(_ports.Length * 2, p + 1), limit + 1));
            var c = _ports[p];
            if (c is null || c.State == EvtchnState.Free)
            {
                c = _ports[p] = new Evtchn(p) { State = EvtchnState.Reserved };
                Ops.ClearPending(c);
                err = 0;
                return c;
            }
        }
        err = -Errno.ENOSPC;
        return null;
    }

    public bool IsPending(uint port) => Get(port) is { } c && Ops.IsPending(c);

    /// <summary>A guest's port whose events the hypervisor takes (Xen's consumer_is_xen).</summary>
    public bool IsXenConsumer(uint port)
    {
        lock (_d.Lock)
            return !_d.IsHost && Get(port)?.HostCallback is not null;
    }

    // ---- operations (each returns 0 or -errno) ----

    public long AllocUnbound(ushort remoteDom, out uint port, Action? hostCallback = null)
    {
        lock (_d.Lock)
        {
            var c = Allocate(out long err);
            port = c?.Port ?? 0;
            if (c is null)
                return err;
            c.State = EvtchnState.Unbound;
            c.RemoteDom = remoteDom;
            c.HostCallback = hostCallback;
            return 0;
        }
    }

    public long BindInterdomain(Domain remote, uint remotePort, out uint localPort, Action? hostCallback = null)
    {
        localPort = 0;
        // Lock both domains in a fixed order so two binds in opposite directions cannot deadlock.
        var first = _d.DomainId <= remote.DomainId ? _d : remote;
        var second = first == _d ? remote : _d;
        lock (first.Lock)
        lock (second.Lock)
        {
            var rc = remote.Evtchn.Get(remotePort);
            if (rc is null || rc.State != EvtchnState.Unbound || rc.RemoteDom != _d.DomainId)
                return -Errno.EINVAL;
            if (remote == _d && remotePort == 0)
                return -Errno.EINVAL;
            if (Xsm.XsmHooks.EvtchnInterdomain(_d, remote) is < 0 and var denied)
                return denied;
            var c = Allocate(out long err);
            if (c is null)
                return err;
            c.State = EvtchnState.Interdomain;
            c.RemoteDom = remote.DomainId;
            c.RemotePort = remotePort;
            c.HostCallback = hostCallback;
            rc.State = EvtchnState.Interdomain;
            rc.RemotePort = c.Port;
            localPort = c.Port;
        }
        // Xen raises the new local port so the binder notices anything it missed.
        SetPending(localPort);
        return 0;
    }

    private static bool VirqIsGlobal(uint virq) =>
        virq is not (Xen.VIRQ_TIMER or Xen.VIRQ_DEBUG or Xen.VIRQ_XENOPROF or Xen.VIRQ_XENPMU);

    public long BindVirq(uint virq, uint vcpu, out uint port, Action? hostCallback = null)
    {
        port = 0;
        if (virq >= Xen.NR_VIRQS)
            return -Errno.EINVAL;
        if (VirqIsGlobal(virq) && vcpu != 0)
            return -Errno.EINVAL;
        // Domain-0 is the host and has no vCPUs: its global VIRQs go to the host-side callback.
        if (_d.IsHost ? vcpu != 0 || !VirqIsGlobal(virq) : _d.GetVcpu(vcpu) is null)
            return -Errno.ENOENT;
        lock (_d.Lock)
        {
            if (VirqTable[vcpu, virq] != 0)
                return -Errno.EEXIST;
            var c = Allocate(out long err);
            if (c is null)
                return err;
            c.State = EvtchnState.Virq;
            c.Virq = virq;
            c.NotifyVcpu = vcpu;
            c.HostCallback = hostCallback;
            VirqTable[vcpu, virq] = c.Port;
            port = c.Port;
            return 0;
        }
    }

    public long BindIpi(uint vcpu, out uint port)
    {
        port = 0;
        if (_d.GetVcpu(vcpu) is null)
            return -Errno.ENOENT;
        lock (_d.Lock)
        {
            var c = Allocate(out long err);
            if (c is null)
                return err;
            c.State = EvtchnState.Ipi;
            c.NotifyVcpu = vcpu;
            port = c.Port;
            return 0;
        }
    }

    public long Close(uint port)
    {
        Domain? remote = null;
        uint remotePort = 0;
        lock (_d.Lock)
        {
            var c = Get(port);
            if (c is null || c.State == EvtchnState.Reserved)
                return -Errno.EINVAL;
            switch (c.State)
            {
                case EvtchnState.Virq:
                    if (VirqTable[c.NotifyVcpu, c.Virq] == port)
                        VirqTable[c.NotifyVcpu, c.Virq] = 0;
                    // Global VIRQs are bound in vCPU 0's slot but may notify another vCPU.
                    if (VirqTable[0, c.Virq] == port)
                        VirqTable[0, c.Virq] = 0;
                    break;
                case EvtchnState.Interdomain:
                    remote = _d.Host.FindDomain(c.RemoteDom);
                    remotePort = c.RemotePort;
                    break;
            }
            Ops.ClearPending(c);
            c.State = EvtchnState.Free;
            c.HostCallback = null;
            c.PendingWithoutWord = false;
        }
        // The other end goes back to waiting for a new partner (ECS_UNBOUND towards us).
        if (remote is not null)
        {
            lock (remote.Lock)
            {
                var rc = remote.Evtchn.Get(remotePort);
                if (rc is { State: EvtchnState.Interdomain } && rc.RemoteDom == _d.DomainId && rc.RemotePort == port)
                {
                    rc.State = EvtchnState.Unbound;
                    rc.RemotePort = 0;
                }
            }
        }
        return 0;
    }

    public long Send(uint port)
    {
        Domain? remote;
        uint remotePort;
        lock (_d.Lock)
        {
            var c = Get(port);
            if (c is null)
                return -Errno.EINVAL;
            switch (c.State)
            {
                case EvtchnState.Interdomain:
                    remote = _d.Host.FindDomain(c.RemoteDom);
                    remotePort = c.RemotePort;
                    if (remote is not null && Xsm.XsmHooks.EvtchnSend(_d, remote) is < 0 and var denied)
                        return denied;
                    break;
                case EvtchnState.Ipi:
                    remote = _d;
                    remotePort = port;
                    break;
                case EvtchnState.Unbound:
                    return 0; // nobody listens yet: silently dropped
                default:
                    return -Errno.EINVAL;
            }
        }
        remote?.Evtchn.SetPending(remotePort);
        return 0;
    }

    /// <summary>Raises <paramref name="port"/> (evtchn_port_set_pending), waking pollers and kicking the target vCPU.</summary>
    public void SetPending(uint port)
    {
        Evtchn? c;
        Vcpu? v;
        Action? cb;
        lock (_d.Lock)
        {
            c = Get(port);
            if (c is null)
                return;
            cb = c.HostCallback;
            // A port with a host callback in a guest is the hypervisor's own (Xen's xen_consumer): the guest never sees it pending.
            v = _d.IsHost || cb is not null ? null : _d.GetVcpu(c.NotifyVcpu);
            if (v is not null)
                Ops.SetPending(v, c);
        }
        if (cb is not null)
        {
            try { cb(); }
            catch (Exception e) { _d.Host.Log($"event channel callback on port {port} failed: {e.Message}"); }
            return;
        }
        if (_d.IsHost)
            return;
        // SCHEDOP_poll waiters wake on the polled port even when it is masked. Pairs with the barrier in Vcpu.Block:
        // either the poller sees this port pending, or this sees its PollPorts and Kick waits for it to finish blocking.
        Interlocked.MemoryBarrier();
        foreach (var w in _d.Vcpus)
            if (w.PollPorts is not null)
                w.Kick();
    }

    public void SendVirq(Vcpu? v, uint virq)
    {
        uint port = VirqIsGlobal(virq) ? VirqTable[0, virq] : (v is null ? 0 : VirqTable[v.Id, virq]);
        if (port != 0)
            SetPending(port);
    }

    public uint VirqPort(int vcpu, uint virq) => VirqTable[VirqIsGlobal(virq) ? 0 : vcpu, virq];

    public bool HasVirqBound(int vcpu, uint virq) => VirqTable[vcpu, virq] != 0;

    public long Status(uint port, ref EvtchnStatus st)
    {
        lock (_d.Lock)
        {
            var c = port < (uint)_ports.Length ? _ports[port] : null;
            if (port >= Ops.MaxPorts)
                return -Errno.EINVAL;
            st.Status = EVTCHNSTAT_closed;
            st.Vcpu = 0;
            if (c is null)
                return 0;
            st.Vcpu = c.NotifyVcpu;
            switch (c.State)
            {
                case EvtchnState.Free or EvtchnState.Reserved:
                    st.Status = EVTCHNSTAT_closed;
                    break;
                case EvtchnState.Unbound:
                    st.Status = EVTCHNSTAT_unbound;
                    st.UnboundDom = c.RemoteDom;
                    break;
                case EvtchnState.Interdomain:
                    st.Status = EVTCHNSTAT_interdomain;
                    st.InterdomainDom = c.RemoteDom;
                    st.InterdomainPort = c.RemotePort;
                    break;
                case EvtchnState.Virq:
                    st.Status = EVTCHNSTAT_virq;
                    st.Virq = c.Virq;
                    break;
                case EvtchnState.Ipi:
                    st.Status = EVTCHNSTAT_ipi;
                    break;
                case EvtchnState.Pirq:
                    st.Status = EVTCHNSTAT_pirq;
                    break;
            }
            return 0;
        }
    }

    public long BindVcpu(uint port, uint vcpu)
    {
        var v = _d.GetVcpu(vcpu);
        if (v is null)
            return -Errno.ENOENT;
        lock (_d.Lock)
        {
            var c = Get(port);
            if (c is null)
                return -Errno.EINVAL;
            switch (c.State)
            {
                case EvtchnState.Virq when VirqIsGlobal(c.Virq):
                case EvtchnState.Unbound:
                case EvtchnState.Interdomain:
                case EvtchnState.Pirq:
                    c.NotifyVcpu = vcpu;
                    break;
                default:
                    return -Errno.EINVAL;
            }
        }
        // A pending, unmasked event follows the channel to its new vCPU.
        Unmask(port);
        return 0;
    }

    public long Unmask(uint port)
    {
        lock (_d.Lock)
        {
            var c = Get(port);
            if (c is null)
                return -Errno.EINVAL;
            var v = _d.GetVcpu(c.NotifyVcpu);
            if (v is not null)
                Ops.Unmask(v, c);
            return 0;
        }
    }

    public long SetPriority(uint port, uint priority)
    {
        lock (_d.Lock)
        {
            var c = Get(port);
            if (c is null)
                return -Errno.EINVAL;
            return Ops.SetPriority(c, priority);
        }
    }

    /// <summary>EVTCHNOP_init_control: switches the domain to the FIFO ABI on first use.</summary>
    public long InitControl(in EvtchnInitControl ic)
    {
        var v = _d.GetVcpu(ic.Vcpu);
        if (v is null)
            return -Errno.ENOENT;
        lock (_d.Lock)
        {
            var fifo = Ops as EventFifo;
            bool switching = fifo is null;
            fifo ??= new EventFifo(_d);
            long rc = fifo.InitControl(v, ic.ControlGfn, ic.Offset);
            if (rc != 0)
            {
                if (switching)
                    fifo.Destroy();
                return rc;
            }
            if (switching)
            {
                // Events pending under the 2-level ABI are carried over and delivered once their words exist.
                var old = Ops;
                foreach (var c in _ports)
                    if (c is { State: not EvtchnState.Free } && old.IsPending(c))
                        c.PendingWithoutWord = true;
                old.Destroy();
                Ops = fifo;
            }
            return 0;
        }
    }

    public long ExpandArray(ulong gfn)
    {
        lock (_d.Lock)
        {
            if (Ops is not EventFifo fifo)
                return -Errno.EOPNOTSUPP;
            long rc = fifo.ExpandArray(gfn, out uint firstNew, out uint endNew);
            if (rc != 0)
                return rc;
            for (uint p = firstNew; p < endNew && p < _ports.Length; p++)
            {
                var c = _ports[p];
                if (c is { State: not EvtchnState.Free, PendingWithoutWord: true } && _d.GetVcpu(c.NotifyVcpu) is { } v)
                {
                    c.PendingWithoutWord = false;
                    fifo.SetPending(v, c);
                }
            }
            return 0;
        }
    }

    /// <summary>EVTCHNOP_reset: closes every port and returns to the 2-level ABI.</summary>
    public long Reset()
    {
        CloseAll();
        lock (_d.Lock)
        {
            if (Ops is EventFifo f)
            {
                f.Destroy();
                Ops = new Event2L(_d);
            }
        }
        return 0;
    }

    public void CloseAll()
    {
        for (uint p = 1; p < _ports.Length; p++)
            if (_ports[p] is { State: not EvtchnState.Free })
            {
                if (_ports[p]!.State == EvtchnState.Reserved)
                    _ports[p]!.State = EvtchnState.Free;
                else
                    Close(p);
            }
    }

    /// <summary>Host ports (Domain-0) keep no guest-visible state: delivery is the callback.</summary>
    private sealed class HostPortOps : IEvtchnPortOps
    {
        public uint MaxPorts => EVTCHN_FIFO_NR_CHANNELS;
        public void SetPending(Vcpu v, Evtchn chn) { }
        public void ClearPending(Evtchn chn) { }
        public void Unmask(Vcpu v, Evtchn chn) { }
        public bool IsPending(Evtchn chn) => false;
        public bool IsMasked(Evtchn chn) => false;
        public long SetPriority(Evtchn chn, uint priority) => -Errno.ENOSYS;
        public void Destroy() { }
    }
}
