// xenstore benchmark: operations per second of concurrent socket clients speaking xs_wire the way
// libxenstore does (one request in flight per client), and the latency of a watch event.
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using XenSharp.Store;

int clients = Env("XENSHARP_BENCH_XS_CLIENTS", 4);
double seconds = Env("XENSHARP_BENCH_XS_SECONDS", 2);
string? external = args.Length > 0 ? args[0] : null; // measure a daemon already listening here

string dir = Path.Combine(Path.GetTempPath(), "xs-bench-" + Environment.ProcessId);
Directory.CreateDirectory(dir);
string socketPath = external ?? Path.Combine(dir, "socket");
using var daemon = external is null ? new XenStored() : null;
daemon?.Start(socketPath);

try
{
    // Each client owns /bench/cN with 16 keys.
    using (var setup = new Client(socketPath))
        for (int c = 0; c < clients; c++)
            for (int k = 0; k < 16; k++)
                setup.Write($"/bench/c{c}/k{k}", "initial-value-0123456789abcdef");

    Report("xenstore-read", Run((cl, c, i) => cl.Read($"/bench/c{c}/k{i & 15}")), "ops/s");
    Report("xenstore-write", Run((cl, c, i) => cl.Write($"/bench/c{c}/k{i & 15}", "value-0123456789abcdef-" + i)), "ops/s");
    Report("xenstore-directory", Run((cl, c, i) => cl.Directory($"/bench/c{c}")), "ops/s");
    Report("xenstore-transaction", Run((cl, c, i) =>
    {
        uint tx = cl.Start();
        cl.Read($"/bench/c{c}/k{i & 15}", tx);
        cl.Write($"/bench/c{c}/k{(i + 1) & 15}", "t" + i, tx);
        if (!cl.End(tx)) throw new InvalidOperationException("unexpected EAGAIN without contention");
    }), "tx/s");
    Console.WriteLine($"xenstore-watch-latency: {WatchLatencyMicroseconds():F1} us");
}
finally
{
    daemon?.Stop();
    try { Directory.Delete(dir, true); } catch (IOException) { }
}
return 0;

double Run(Action<Client, int, int> op)
{
    var conns = Enumerable.Range(0, clients).Select(_ => new Client(socketPath)).ToArray();
    // Warm up, then count completed operations over the measuring window.
    for (int c = 0; c < clients; c++) for (int i = 0; i < 200; i++) op(conns[c], c, i);
    long total = 0;
    var stopAt = Stopwatch.GetTimestamp() + (long)(seconds * Stopwatch.Frequency);
    var sw = Stopwatch.StartNew();
    var threads = Enumerable.Range(0, clients).Select(c => new Thread(() =>
    {
        long n = 0;
        while (Stopwatch.GetTimestamp() < stopAt)
        {
            op(conns[c], c, (int)n);
            n++;
        }
        Interlocked.Add(ref total, n);
    })).ToArray();
    foreach (var t in threads) t.Start();
    foreach (var t in threads) t.Join();
    sw.Stop();
    foreach (var cl in conns) cl.Dispose();
    return total / sw.Elapsed.TotalSeconds;
}

double WatchLatencyMicroseconds()
{
    using var watcher = new Client(socketPath);
    using var writer = new Client(socketPath);
    watcher.Watch("/bench/watched", "lat");
    watcher.NextEvent(); // the initial event
    var samples = new List<double>();
    for (int i = 0; i < 2000; i++)
    {
        long t0 = Stopwatch.GetTimestamp();
        writer.Write("/bench/watched/x", i.ToString());
        watcher.NextEvent();
        long t1 = Stopwatch.GetTimestamp();
        if (i >= 200) samples.Add((t1 - t0) * 1e6 / Stopwatch.Frequency);
    }
    samples.Sort();
    return samples[samples.Count / 2];
}

static void Report(string name, double value, string unit) =>
    Console.WriteLine($"{name}: {value:F0} {unit}");

static int Env(string name, int fallback) =>
    int.TryParse(Environment.GetEnvironmentVariable(name), out int v) && v > 0 ? v : fallback;

/// <summary>A minimal synchronous xs_wire client.</summary>
sealed class Client : IDisposable
{
    private readonly Socket _s = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly byte[] _buf = new byte[16 + 4096];
    private uint _req;

    public Client(string path) => _s.Connect(new UnixDomainSocketEndPoint(path));

    private ReadOnlySpan<byte> Call(XsType type, uint tx, string a, string? value = null)
    {
        int len = Encoding.ASCII.GetBytes(a, _buf.AsSpan(16));
        _buf[16 + len++] = 0;
        if (value is not null) len += Encoding.ASCII.GetBytes(value, _buf.AsSpan(16 + len));
        uint id = ++_req;
        BinaryPrimitives.WriteUInt32LittleEndian(_buf, (uint)type);
        BinaryPrimitives.WriteUInt32LittleEndian(_buf.AsSpan(4), id);
        BinaryPrimitives.WriteUInt32LittleEndian(_buf.AsSpan(8), tx);
        BinaryPrimitives.WriteUInt32LittleEndian(_buf.AsSpan(12), (uint)len);
        _s.Send(_buf, 0, 16 + len, SocketFlags.None);
        while (true)
        {
            var (t, rid, n) = ReadMessage();
            if (t == XsType.WatchEvent) continue;
            if (t == XsType.Error)
            {
                string err = Encoding.ASCII.GetString(_buf, 16, n).TrimEnd('\0');
                if (err == "EAGAIN") return default;
                throw new InvalidOperationException($"{type} {a}: {err}");
            }
            if (rid != id) throw new InvalidOperationException("reply out of order");
            return _buf.AsSpan(16, n);
        }
    }

    private (XsType, uint, int) ReadMessage()
    {
        ReadExactly(0, 16);
        int n = (int)BinaryPrimitives.ReadUInt32LittleEndian(_buf.AsSpan(12));
        ReadExactly(16, n);
        return ((XsType)BinaryPrimitives.ReadUInt32LittleEndian(_buf), BinaryPrimitives.ReadUInt32LittleEndian(_buf.AsSpan(4)), n);
    }

    private void ReadExactly(int at, int n)
    {
        while (n > 0)
        {
            int r = _s.Receive(_buf, at, n, SocketFlags.None);
            if (r == 0) throw new EndOfStreamException("xenstored closed the connection");
            at += r;
            n -= r;
        }
    }

    public void Read(string path, uint tx = 0) => Call(XsType.Read, tx, path);
    public void Write(string path, string value, uint tx = 0) => Call(XsType.Write, tx, path, value);
    public void Directory(string path) => Call(XsType.Directory, 0, path);
    public uint Start() => uint.Parse(Encoding.ASCII.GetString(Call(XsType.TransactionStart, 0, "")).TrimEnd('\0'));
    public bool End(uint tx) => Call(XsType.TransactionEnd, tx, "T").Length > 0;

    public void Watch(string path, string token)
    {
        int len = Encoding.ASCII.GetBytes(path + "\0" + token + "\0", _buf.AsSpan(16));
        BinaryPrimitives.WriteUInt32LittleEndian(_buf, (uint)XsType.Watch);
        BinaryPrimitives.WriteUInt32LittleEndian(_buf.AsSpan(4), ++_req);
        BinaryPrimitives.WriteUInt32LittleEndian(_buf.AsSpan(8), 0);
        BinaryPrimitives.WriteUInt32LittleEndian(_buf.AsSpan(12), (uint)len);
        _s.Send(_buf, 0, 16 + len, SocketFlags.None);
        while (ReadMessage().Item1 != XsType.Watch) { }
    }

    public void NextEvent()
    {
        while (ReadMessage().Item1 != XsType.WatchEvent) { }
    }

    public void Dispose() => _s.Dispose();
}
