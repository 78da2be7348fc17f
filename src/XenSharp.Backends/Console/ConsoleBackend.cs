using System.Threading;
using XenSharp.Public.Io;

namespace XenSharp.Backends.Console;

/// <summary>
/// The PV console backend and the console daemon's role for one domain (xenconsoled): drains the
/// guest's <c>xencons_interface</c> output ring into the domain's log and the attached client,
/// and feeds the client's keystrokes into the input ring. Output produced while no client is
/// attached is kept (up to <see cref="MaxPending"/> bytes) and given to the next one. The log is
/// bounded and rotated (<see cref="ConsoleLogLimits"/>).
/// </summary>
public sealed class ConsoleBackend : IDisposable
{
    public const int MaxPending = 64 * 1024;

    private readonly ISharedPage _ring;
    private readonly Action _notifyGuest;
    private readonly ConsoleLog? _log;
    private readonly Lock _lock = new();
    private readonly List<byte> _pending = [];
    private Stream? _client;
    private ClientSender? _sender;
    private bool _disposed;

    public string Name { get; private set; }

    /// <param name="logLimits">How large the log at <paramref name="logPath"/> may grow
    /// (<see cref="ConsoleLogLimits.Default"/> when null).</param>
    public ConsoleBackend(string name, ISharedPage ring, Action notifyGuest, string? logPath, ConsoleLogLimits? logLimits = null)
    {
        Name = name;
        _ring = ring;
        _notifyGuest = notifyGuest;
        if (logPath is not null) _log = new ConsoleLog(logPath, logLimits ?? ConsoleLogLimits.Default);
    }

    /// <summary>Total bytes taken from the guest's output ring.</summary>
    public long OutputBytes { get; private set; }

    /// <summary>Runs after each write to the log, on the writing thread (tests see which thread that is).</summary>
    internal Action? LogWritten { get; set; }

    /// <summary>Set when the guest's output producer ran more than the ring ahead (the ring was reset);
    /// cleared by reading it. A xenbus console ends its device on it.</summary>
    public bool TakeOverrun() => Interlocked.Exchange(ref _overrun, 0) != 0;
    private int _overrun;

    /// <summary>True while a client is attached.</summary>
    public bool HasClient { get { lock (_lock) return _client is not null; } }

    /// <summary>The guest signalled the console event channel: take what it wrote.</summary>
    /// <remarks>The output is queued for the client under the lock that drained it. Queued after the lock, a drain on
    /// the I/O thread could lose to the console's end (a short guest that wrote and powered off at once): the final
    /// drain and the end of the client's queue came first, and the earlier output was dropped; or two drains could
    /// reach the client in the wrong order. Queueing never blocks: the client is written on its own task.</remarks>
    public void OnGuestEvent()
    {
        lock (_lock)
        {
            if (_disposed) return;
            byte[] data = DrainOutput();
            if (data.Length == 0) return;
            OutputBytes += data.Length;
            _log?.Write(data);
            LogWritten?.Invoke();
            if (_sender is { } sender)
            {
                sender.Enqueue(data);
                return;
            }
            _pending.AddRange(data);
            if (_pending.Count > MaxPending) _pending.RemoveRange(0, _pending.Count - MaxPending);
        }
    }

    /// <summary>Reads out[out_cons..out_prod) and advances out_cons. A producer index that runs
    /// ahead of the consumer by more than the ring is the guest's garbage: the ring is reset.</summary>
    private byte[] DrainOutput()
    {
        var page = _ring.Page;
        uint cons = Volatile.Read(ref Word(page, XenconsInterface.OffsetOutCons));
        uint prod = Volatile.Read(ref Word(page, XenconsInterface.OffsetOutProd));
        uint len = prod - cons;
        if (len == 0) return [];
        if (len > XenconsInterface.OutSize)
        {
            Volatile.Write(ref _overrun, 1);
            Volatile.Write(ref Word(page, XenconsInterface.OffsetOutCons), prod);
            return [];
        }
        var data = new byte[len];
        for (uint i = 0; i < len; i++)
            data[i] = page[XenconsInterface.OffsetOut + (int)((cons + i) & (XenconsInterface.OutSize - 1))];
        Volatile.Write(ref Word(page, XenconsInterface.OffsetOutCons), prod);
        _notifyGuest();
        return data;
    }

    /// <summary>Puts keystrokes into the input ring; returns how many fitted.</summary>
    public int WriteInput(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            if (_disposed) return 0;
            var page = _ring.Page;
            uint cons = Volatile.Read(ref Word(page, XenconsInterface.OffsetInCons));
            uint prod = Volatile.Read(ref Word(page, XenconsInterface.OffsetInProd));
            uint used = prod - cons;
            if (used > XenconsInterface.InSize) used = XenconsInterface.InSize;
            int n = Math.Min(data.Length, (int)(XenconsInterface.InSize - used));
            for (int i = 0; i < n; i++)
                page[XenconsInterface.OffsetIn + (int)((prod + (uint)i) & (XenconsInterface.InSize - 1))] = data[i];
            Volatile.Write(ref Word(page, XenconsInterface.OffsetInProd), prod + (uint)n);
            if (n > 0) _notifyGuest();
            return n;
        }
    }

    /// <summary>Attaches a client (xl console): it gets the pending output and everything after.
    /// One client at a time, as xenconsoled allows; a second attach is refused.</summary>
    public bool Attach(Stream client)
    {
        lock (_lock)
        {
            if (_disposed || _client is not null) return false;
            _client = client;
            _sender = new ClientSender(client, () => Detach(client));
            if (_pending.Count > 0) _sender.Enqueue([.. _pending]);
            _pending.Clear();
        }
        return true;
    }

    public void Detach(Stream client)
    {
        ClientSender? sender = null;
        lock (_lock)
        {
            if (ReferenceEquals(_client, client))
            {
                _client = null;
                sender = _sender;
                _sender = null;
            }
        }
        sender?.Stop();
    }

    public void Rename(string name) => Name = name;

    private static ref uint Word(Span<byte> page, int offset) =>
        ref System.Runtime.InteropServices.MemoryMarshal.Cast<byte, uint>(page.Slice(offset, 4))[0];

    public void Dispose()
    {
        Stream? client;
        ClientSender? sender;
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            client = _client;
            sender = _sender;
            _client = null;
            _sender = null;
            _log?.Dispose();
        }
        // The client sees the rest of the output, then the end of the console.
        if (sender is not null) sender.Complete();
        else client?.Dispose();
    }

    /// <summary>Writes output to an attached client on its own task, so that a slow client never
    /// holds up the guest's vCPU that signalled the event.</summary>
    private sealed class ClientSender
    {
        /// <summary>Output queued for a client that reads slower than the guest writes is bounded by
        /// bytes, not by chunks: a booting kernel writes thousands of small chunks in a burst, and a
        /// bound by count dropped its first lines whenever the client was briefly descheduled.</summary>
        private const int MaxQueuedBytes = 4 << 20;

        private readonly System.Threading.Channels.Channel<byte[]> _queue =
            System.Threading.Channels.Channel.CreateUnbounded<byte[]>(new System.Threading.Channels.UnboundedChannelOptions { SingleReader = false });
        private long _queuedBytes;
        private readonly Stream _client;
        private readonly CancellationTokenSource _stop = new();

        public ClientSender(Stream client, Action onFailure)
        {
            _client = client;
            _ = Task.Run(async () =>
            {
                try
                {
                    await foreach (var data in _queue.Reader.ReadAllAsync(_stop.Token))
                    {
                        Interlocked.Add(ref _queuedBytes, -data.Length);
                        await _client.WriteAsync(data, _stop.Token);
                        await _client.FlushAsync(_stop.Token);
                    }
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException or NotSupportedException)
                {
                    onFailure();
                }
                finally
                {
                    if (_completing) _client.Dispose();
                }
            });
        }

        private volatile bool _completing;

        public void Enqueue(byte[] data)
        {
            if (!_queue.Writer.TryWrite(data)) return;
            // Beyond the bound the oldest output goes, as a console log that wraps.
            if (Interlocked.Add(ref _queuedBytes, data.Length) > MaxQueuedBytes)
                while (Interlocked.Read(ref _queuedBytes) > MaxQueuedBytes && _queue.Reader.TryRead(out var old))
                    Interlocked.Add(ref _queuedBytes, -old.Length);
        }

        /// <summary>Detached: stop sending; the connection stays with its owner.</summary>
        public void Stop()
        {
            _queue.Writer.TryComplete();
            _stop.Cancel();
        }

        /// <summary>The console is going away: send what is queued, then close the connection.</summary>
        public void Complete()
        {
            _completing = true;
            _queue.Writer.TryComplete();
        }
    }
}
