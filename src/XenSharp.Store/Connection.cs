namespace XenSharp.Store;

/// <summary>
/// A client of the store as the protocol engine sees it: who it is (domain, privilege, target), its
/// transactions and watches, and where its replies go. Socket, ring and in-process clients differ
/// only in how <see cref="Send"/> delivers bytes.
/// </summary>
internal abstract class Connection
{
    protected Connection(uint domId, bool privileged)
    {
        DomId = domId;
        Privileged = privileged;
        DomainPath = DomainPathOf(domId);
    }

    public uint DomId { get; }
    /// <summary>Dom0 and host socket clients: all access, no quotas.</summary>
    public bool Privileged { get; }
    /// <summary>Domain this one acts for (XS_SET_TARGET, e.g. a device model stub domain).</summary>
    public uint? Target { get; set; }
    public string DomainPath { get; }

    public readonly Dictionary<uint, Transaction> Transactions = new();
    public uint NextTransactionId = 1;
    public int WatchCount;
    private volatile bool _closed;

    /// <summary>Set once; read by transport threads without the store lock.</summary>
    public bool Closed { get => _closed; protected set => _closed = value; }

    public static string DomainPathOf(uint domId) => "/local/domain/" + domId.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Queues one message (reply or watch event). Called with the store lock held; must not block.</summary>
    public abstract void Send(XsType type, uint reqId, uint txId, ReadOnlySpan<byte> payload);

    /// <summary>Closes the transport; the engine forgets the connection's watches and transactions.</summary>
    public virtual void Close() => Closed = true;
}
