using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Store;

namespace XenSharp.Store.Tests;

/// <summary>A xenstore_domain_interface page in native memory, as a hypervisor would map it.</summary>
public sealed unsafe class TestRing : IXenStoreRing, IDisposable
{
    private byte* _page = (byte*)NativeMemory.AlignedAlloc(4096, 4096);
    public readonly SemaphoreSlim Notified = new(0);
    public int Notifications;

    public TestRing() => NativeMemory.Clear(_page, 4096);

    public Span<byte> Page => new(_page, 4096);

    public void Notify()
    {
        Interlocked.Increment(ref Notifications);
        Notified.Release();
    }

    public ref uint Field(int offset) => ref Unsafe.AsRef<uint>(_page + offset);

    public void Dispose()
    {
        if (_page != null) NativeMemory.AlignedFree(_page);
        _page = null;
    }
}

/// <summary>Plays the guest's xenbus driver: writes requests into req[]/req_prod, reads rsp[]/rsp_cons,
/// and kicks the daemon as the event channel would.</summary>
public sealed class GuestClient
{
    private const int ReqCons = 2048, ReqProd = 2052, RspCons = 2056, RspProd = 2060;
    private readonly TestRing _ring;
    private readonly XenStoreDomain _dom;
    private readonly List<byte> _rx = new();
    private uint _reqId;
    public readonly Queue<(string Path, string Token)> Events = new();

    public GuestClient(TestRing ring, XenStoreDomain dom)
    {
        _ring = ring;
        _dom = dom;
    }

    public void WriteBytes(ReadOnlySpan<byte> data)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (data.Length > 0)
        {
            uint prod = _ring.Field(ReqProd);
            uint cons = Volatile.Read(ref _ring.Field(ReqCons));
            int free = 1024 - (int)(prod - cons);
            if (free == 0)
            {
                _dom.Signal();
                if (DateTime.UtcNow > deadline) throw new TimeoutException("request ring stayed full");
                _ring.Notified.Wait(50);
                continue;
            }
            int start = (int)(prod & 1023);
            int n = Math.Min(Math.Min(free, data.Length), 1024 - start);
            data[..n].CopyTo(_ring.Page.Slice(start, n));
            Volatile.Write(ref _ring.Field(ReqProd), prod + (uint)n);
            data = data[n..];
        }
        _dom.Signal();
    }

    public (XsType Type, uint ReqId, byte[] Payload)? TryReadMessage(int waitMs)
    {
        var deadline = DateTime.UtcNow.AddMilliseconds(waitMs);
        while (true)
        {
            uint cons = _ring.Field(RspCons);
            uint prod = Volatile.Read(ref _ring.Field(RspProd));
            if (prod != cons)
            {
                for (uint i = cons; i != prod; i++) _rx.Add(_ring.Page[1024 + (int)(i & 1023)]);
                Volatile.Write(ref _ring.Field(RspCons), prod);
                _dom.Signal(); // room for more output
            }
            if (_rx.Count >= 16)
            {
                byte[] h = _rx.GetRange(0, 16).ToArray();
                int len = (int)BitConverter.ToUInt32(h, 12);
                if (_rx.Count >= 16 + len)
                {
                    byte[] payload = _rx.GetRange(16, len).ToArray();
                    _rx.RemoveRange(0, 16 + len);
                    return ((XsType)BitConverter.ToUInt32(h, 0), BitConverter.ToUInt32(h, 4), payload);
                }
            }
            if (DateTime.UtcNow > deadline) return null;
            _ring.Notified.Wait(20);
        }
    }

    public (XsType Type, byte[] Payload) Request(XsType type, byte[] payload, uint txId = 0)
    {
        uint id = ++_reqId;
        WriteBytes(XsTestClient.Msg(type, id, txId, payload));
        while (true)
        {
            var m = TryReadMessage(60_000) ?? throw new TimeoutException("no reply on the ring");
            if (m.Type == XsType.WatchEvent) { QueueEvent(m.Payload); continue; }
            Assert.Equal(id, m.ReqId);
            return (m.Type, m.Payload);
        }
    }

    private void QueueEvent(byte[] p)
    {
        string[] parts = Encoding.ASCII.GetString(p).Split('\0');
        Events.Enqueue((parts[0], parts[1]));
    }

    public (string Path, string Token)? NextEvent(int waitMs = 10_000)
    {
        if (Events.Count > 0) return Events.Dequeue();
        var m = TryReadMessage(waitMs);
        if (m is null) return null;
        Assert.Equal(XsType.WatchEvent, m.Value.Type);
        QueueEvent(m.Value.Payload);
        return Events.Dequeue();
    }

    public string Call(XsType type, params string[] args) => XsTestClient.Text(Request(type, XsTestClient.Args(args)));
    public string CallTx(uint tx, XsType type, params string[] args) => XsTestClient.Text(Request(type, XsTestClient.Args(args), tx));

    public string Write(string path, string value, uint tx = 0) =>
        XsTestClient.Text(Request(XsType.Write, [.. Encoding.ASCII.GetBytes(path + "\0"), .. Encoding.ASCII.GetBytes(value)], tx));
}
