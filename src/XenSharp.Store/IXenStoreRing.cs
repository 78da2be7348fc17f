namespace XenSharp.Store;

/// <summary>
/// A guest's xenstore ring as the host sees it: the guest page holding
/// struct xenstore_domain_interface (xs_wire.h) and a way to raise the guest's event channel.
/// The hypervisor provides it; the daemon calls <see cref="XenStoreDomain.Signal"/> when the guest
/// raises its end of the event channel.
/// </summary>
public interface IXenStoreRing
{
    /// <summary>The interface page (at least 2076 bytes; normally the whole 4 KiB page).
    /// Must stay mapped while the domain is introduced.</summary>
    Span<byte> Page { get; }

    /// <summary>Raises the guest's xenstore event channel.</summary>
    void Notify();
}

/// <summary>An introduced domain, as returned to whoever introduced it.</summary>
public sealed class XenStoreDomain
{
    private readonly RingConnection? _ring;

    internal XenStoreDomain(uint domId, RingConnection? ring)
    {
        DomId = domId;
        _ring = ring;
    }

    public uint DomId { get; }

    /// <summary>Call when the guest signals its xenstore event channel: the daemon then reads the
    /// requests and the free response space on the ring (on a worker thread; this never blocks).</summary>
    public void Signal() => _ring?.Signal();
}

/// <summary>An <see cref="IXenStoreRing"/> over a page the host has mapped at a fixed address.</summary>
public sealed unsafe class MappedXenStoreRing : IXenStoreRing
{
    private readonly byte* _page;
    private readonly Action _notify;

    /// <param name="page">Host address of the guest's 4 KiB xenstore page; must stay mapped while introduced.</param>
    /// <param name="notify">Raises the guest's xenstore event channel.</param>
    public MappedXenStoreRing(nint page, Action notify)
    {
        if (page == 0) throw new ArgumentNullException(nameof(page));
        _page = (byte*)page;
        _notify = notify;
    }

    public Span<byte> Page => new(_page, 4096);

    public void Notify() => _notify();
}
