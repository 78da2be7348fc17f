using System.Text;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Common;

/// <summary>The hypervisor's console ring (what `xl dmesg` reads): the newest bytes, oldest dropped.</summary>
internal sealed class ConsoleRing
{
    private readonly byte[] _ring;
    private long _written;
    // Where reading starts after a clear (Xen's conringc): bytes before it are gone.
    private long _consumed;

    public ConsoleRing(int size = 64 * 1024) => _ring = new byte[size];

    public void Write(ReadOnlySpan<byte> data)
    {
        lock (_ring)
        {
            foreach (byte b in data)
                _ring[_written++ % _ring.Length] = b;
        }
    }

    public void WriteLine(string line) => Write(Encoding.UTF8.GetBytes(line + "\n"));

    /// <summary>The ring's content, oldest first; <paramref name="clear"/> empties it afterwards.</summary>
    public byte[] Read(bool clear = false)
    {
        lock (_ring)
        {
            long start = Math.Max(_consumed, _written - _ring.Length);
            var result = new byte[_written - start];
            for (long i = start; i < _written; i++)
                result[i - start] = _ring[i % _ring.Length];
            if (clear)
                _consumed = _written;
            return result;
        }
    }

    /// <summary>
    /// XEN_SYSCTL_readconsole: copies into <paramref name="destination"/> from the oldest byte kept, or from
    /// <paramref name="index"/> when <paramref name="incremental"/> and it is still in the ring; returns the count and
    /// leaves <paramref name="index"/> where reading stopped (32-bit, wrapping, as Xen's). <paramref name="clear"/>
    /// drops everything written so far.
    /// </summary>
    public int ReadIndexed(ref uint index, bool incremental, bool clear, Span<byte> destination)
    {
        lock (_ring)
        {
            long oldest = Math.Max(_consumed, _written - _ring.Length);
            long from = oldest;
            if (incremental)
            {
                // The index is the low 32 bits of a position: take the position nearest below the producer.
                long candidate = _written - (uint)((uint)_written - index);
                if (candidate > oldest && candidate <= _written)
                    from = candidate;
            }
            int n = (int)Math.Min(destination.Length, _written - from);
            for (int i = 0; i < n; i++)
                destination[i] = _ring[(from + i) % _ring.Length];
            index = (uint)(from + n);
            if (clear)
                _consumed = _written;
            return n;
        }
    }
}

/// <summary>A domain's hypervisor console output (console_io writes and port 0xE9), kept and streamed to subscribers.</summary>
internal sealed class DomainConsole
{
    private readonly List<Action<ReadOnlyMemory<byte>>> _subscribers = new();
    private readonly ConsoleRing _log = new(16 * 1024);

    public void Write(ReadOnlySpan<byte> data)
    {
        _log.Write(data);
        Action<ReadOnlyMemory<byte>>[] subs;
        lock (_subscribers)
            subs = _subscribers.ToArray();
        if (subs.Length == 0)
            return;
        var copy = data.ToArray();
        foreach (var s in subs)
        {
            try { s(copy); }
            catch { /* a broken subscriber must not hurt the guest */ }
        }
    }

    public IDisposable Subscribe(Action<ReadOnlyMemory<byte>> onOutput)
    {
        lock (_subscribers)
            _subscribers.Add(onOutput);
        return new Unsubscriber(this, onOutput);
    }

    public byte[] History() => _log.Read();

    private sealed class Unsubscriber(DomainConsole c, Action<ReadOnlyMemory<byte>> a) : IDisposable
    {
        public void Dispose() { lock (c._subscribers) c._subscribers.Remove(a); }
    }
}

/// <summary>__HYPERVISOR_console_io: guests write to the hypervisor console; only Domain-0 may read it.
/// A write is copied in small pieces and yields with a continuation after <see cref="BytesPerCall"/> bytes, as Xen's
/// guest_console_write does, so a guest passing a huge count neither holds its pCPU nor makes the hypervisor allocate.</summary>
internal static class ConsoleIo
{
    private const int Chunk = 128;
    public const int BytesPerCall = 8 * 1024;

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        int cmd = (int)a.A1;
        // count is an unsigned int in the ABI.
        uint count = (uint)a.A2;
        ulong buffer = a.A3;
        switch (cmd)
        {
            case Xen.CONSOLEIO_write:
            {
                Span<byte> buf = stackalloc byte[Chunk];
                uint done = 0;
                while (done < count)
                {
                    if (done >= BytesPerCall)
                        return Hypercall.CreateContinuation(v, new HypercallArgs(a.A1, count - done, buffer + done));
                    int n = (int)Math.Min(count - done, (uint)Chunk);
                    if (!GuestAccess.CopyFrom(v, buffer + done, buf[..n]))
                        return -Errno.EFAULT;
                    v.Domain.Host.GuestConsoleWrite(v.Domain, buf[..n]);
                    done += (uint)n;
                }
                return 0;
            }
            case Xen.CONSOLEIO_read:
                if (!v.Domain.IsPrivileged)
                    return -Errno.EPERM;
                return 0;
            default:
                return -Errno.ENOSYS;
        }
    }
}
