namespace XenSharp.Store;

/// <summary>
/// Limits applied to unprivileged domains (dom0 and host socket clients are exempt), with Xen's
/// C xenstored defaults. Exceeding one gets the error a Xen client expects. The last two bound
/// every socket client: its unsent output and how many are connected.
/// </summary>
public sealed class XenStoreQuotas
{
    /// <summary>Nodes a domain may own (ENOSPC beyond).</summary>
    public int NodesPerDomain { get; set; } = 1000;
    /// <summary>Bytes of value a node may hold (ENOSPC beyond).</summary>
    public int MaxEntrySize { get; set; } = 2048;
    /// <summary>Entries in a node's permission list an unprivileged domain may set (ENOSPC beyond).</summary>
    public int PermissionsPerNode { get; set; } = 5;
    /// <summary>Watches per connection (E2BIG beyond).</summary>
    public int WatchesPerDomain { get; set; } = 128;
    /// <summary>Open transactions per connection (ENOSPC beyond).</summary>
    public int TransactionsPerDomain { get; set; } = 10;
    /// <summary>Replies and events waiting for the client to take them; beyond it no new request is read.</summary>
    public int OutstandingRequests { get; set; } = 20;
    /// <summary>Length of a path relative to the domain's home, /local/domain/N (EINVAL beyond).</summary>
    public int MaxRelativePathLength { get; set; } = XsWire.RelPathMax;
    /// <summary>Bytes queued for a client that does not read; beyond it the client is dropped.</summary>
    public int MaxPendingOutputBytes { get; set; } = 4 << 20;
    /// <summary>
    /// Host clients served on the Unix socket at once; one more is closed as soon as it connects.
    /// Xen's xenstored is bounded only by its descriptor limit (launch-xenstore raises it); here the
    /// daemon's descriptors are shared with the hypervisor and its backends, so the socket gets a
    /// share of its own: far more than a host's tools ever hold open together.
    /// </summary>
    public int MaxSocketClients { get; set; } = 4096;
}
