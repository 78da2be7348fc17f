using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>
/// An emulated device's registers as the I/O bus sees them (Xen's portio_action_t and hvm_mmio_ops): an access of
/// 1, 2, 4 or 8 bytes at an offset from the start of the range the device registered, made by vCPU
/// <paramref name="v"/>. Runs on that vCPU's pCPU thread; concurrent vCPUs may call it at once.
/// </summary>
internal interface IIoHandler
{
    ulong Read(Vcpu v, ulong offset, int size);
    void Write(Vcpu v, ulong offset, int size, ulong value);
}

/// <summary>
/// A device whose port reads raise or lower no interrupt line and involve no other vCPU and no device model: the
/// vCPU makes them itself without an exit (<see cref="DirectPortReads"/>), as they would run on its thread anyway.
/// </summary>
internal interface IDirectReadIoHandler : IIoHandler;

/// <summary>
/// A device that serves only part of what reaches its range, as Xen's handlers that answer X86EMUL_UNHANDLEABLE: an
/// access it declines (false) goes on to the domain's IOREQ servers as if no device claimed it.
/// </summary>
internal interface IPartialIoHandler : IIoHandler
{
    bool TryRead(Vcpu v, ulong offset, int size, out ulong value);
    bool TryWrite(Vcpu v, ulong offset, int size, ulong value);
}

/// <summary>
/// One address space of a domain (its I/O ports or its guest-physical MMIO) cut into ranges owned by handlers:
/// Xen's register_portio_handler / register_mmio_handler, kept as a sorted range map like Firecracker's Bus. An
/// access belongs to the range holding its first byte; the handler sees the offset and size and decides about
/// bytes past its end. Registration is rare and copies the map; lookup reads the current map without a lock and
/// allocates nothing.
/// </summary>
internal sealed class IoBus(string name)
{
    private readonly record struct Range(ulong Start, ulong Length, IIoHandler Handler)
    {
        public ulong Last => Start + (Length - 1);
    }

    private readonly object _lock = new();
    private volatile Range[] _ranges = [];

    public string Name { get; } = name;

    /// <summary>Claims [<paramref name="start"/>, start + <paramref name="length"/>) for <paramref name="handler"/>;
    /// false when that overlaps a range already registered (or is empty or wraps).</summary>
    public bool TryRegister(ulong start, ulong length, IIoHandler handler)
    {
        ArgumentNullException.ThrowIfNull(handler);
        if (length == 0 || start + (length - 1) < start)
            return false;
        lock (_lock)
        {
            var old = _ranges;
            int at = LowerBound(old, start);
            // Sorted and disjoint: only the neighbours can overlap.
            if (at > 0 && old[at - 1].Last >= start)
                return false;
            if (at < old.Length && old[at].Start <= start + (length - 1))
                return false;
            var next = new Range[old.Length + 1];
            Array.Copy(old, next, at);
            next[at] = new Range(start, length, handler);
            Array.Copy(old, at, next, at + 1, old.Length - at);
            _ranges = next;
        }
        Changed?.Invoke();
        return true;
    }

    /// <summary>Registers, or throws when the range is taken: for the hypervisor's own devices, where a clash is a bug.</summary>
    public void Register(ulong start, ulong length, IIoHandler handler)
    {
        if (!TryRegister(start, length, handler))
            throw new InvalidOperationException($"{Name} range 0x{start:x}+0x{length:x} overlaps a registered device");
    }

    /// <summary>Removes the range that starts at <paramref name="start"/> if <paramref name="handler"/> owns it.</summary>
    public bool Unregister(ulong start, IIoHandler handler)
    {
        lock (_lock)
        {
            var old = _ranges;
            int at = LowerBound(old, start);
            if (at >= old.Length || old[at].Start != start || old[at].Handler != handler)
                return false;
            var next = new Range[old.Length - 1];
            Array.Copy(old, next, at);
            Array.Copy(old, at + 1, next, at, old.Length - at - 1);
            _ranges = next;
        }
        Changed?.Invoke();
        return true;
    }

    /// <summary>The handler whose range holds <paramref name="address"/>, and the offset into that range.</summary>
    public bool TryFind(ulong address, out IIoHandler handler, out ulong offset)
    {
        var ranges = _ranges;
        // The last range starting at or below the address is the only candidate.
        int at = UpperBound(ranges, address) - 1;
        if (at >= 0 && address <= ranges[at].Last)
        {
            handler = ranges[at].Handler;
            offset = address - ranges[at].Start;
            return true;
        }
        handler = null!;
        offset = 0;
        return false;
    }

    /// <summary>Raised after a range is registered or removed.</summary>
    public event Action? Changed;

    /// <summary>Clears the bits of every registered address below 65,536 in <paramref name="map"/>.</summary>
    public void ClearClaimed(ulong[] map)
    {
        foreach (var r in _ranges)
            for (ulong a = r.Start; a <= r.Last && a < 0x10000; a++)
                map[a >> 6] &= ~(1UL << (int)(a & 63));
    }

    /// <summary>The number of registered ranges (for tests and debug output).</summary>
    public int Count => _ranges.Length;

    /// <summary>Index of the first range starting at or above <paramref name="address"/>.</summary>
    private static int LowerBound(Range[] ranges, ulong address)
    {
        int lo = 0, hi = ranges.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (ranges[mid].Start < address)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo;
    }

    /// <summary>Index of the first range starting above <paramref name="address"/>.</summary>
    private static int UpperBound(Range[] ranges, ulong address)
    {
        int lo = 0, hi = ranges.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (ranges[mid].Start <= address)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo;
    }
}
