namespace XenSharp.Store;

/// <summary>A domain introduced to the store: its ring (if the host could map one) and its target.</summary>
internal sealed class DomainEntry
{
    public required uint DomId { get; init; }
    public ulong Mfn { get; init; }
    public uint Port { get; init; }
    public RingConnection? Ring { get; set; }
    public uint? Target { get; set; }
}

/// <summary>The introduced domains, keyed by domid. Dom0 counts as always introduced.</summary>
internal sealed class Domains
{
    private readonly Dictionary<uint, DomainEntry> _domains = new();

    public bool IsIntroduced(uint domId) => domId == 0 || _domains.ContainsKey(domId);

    public DomainEntry? Get(uint domId) => _domains.GetValueOrDefault(domId);

    public void Add(DomainEntry d) => _domains[d.DomId] = d;

    public bool Remove(uint domId, out DomainEntry? d) => _domains.Remove(domId, out d);

    public IEnumerable<DomainEntry> All => _domains.Values;
}
