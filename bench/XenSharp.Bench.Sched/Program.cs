// sched: the cost of a vCPU switch and the wake-up latency of a blocked vCPU, with real guest code on the x86 engine
// and one pCPU: (a) two CPU-bound guests under credit with a 1 ms time slice — a switch is the gap between one
// slice's end and the next one's start (deschedule, pick, context load); (b) a guest halted in HLT woken by an event
// channel notification from another guest, on an otherwise idle pCPU and beside a CPU-bound guest (which the
// woken, boosted vCPU preempts after credit's 1 ms rate limit) — latency is from the wake-up to the vCPU running.
using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using XenSharp.Cpu;
using XenSharp.Hypervisor;
using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.Scheduling;
using XenSharp.Public;
using static XenSharp.Public.EventChannel;

const uint Base = 0x1000, Counter = 0x3000, Scratch = 0x10000;
const byte UpcallVector = 0xF3;

var switchNs = MeasureSwitch();
var (wakeMedian, wakeP99) = MeasureWake(busy: false);
var (busyMedian, busyP99) = MeasureWake(busy: true);
Console.WriteLine($"sched-switch: {switchNs} ns");
Console.WriteLine($"sched-wakeup-latency: {wakeMedian / 1000.0:F1} us (p99 {wakeP99 / 1000.0:F1} us)");
Console.WriteLine($"sched-wakeup-latency-busy-pcpu: {busyMedian / 1000.0:F1} us (p99 {busyP99 / 1000.0:F1} us)");
return 0;

static XenHypervisor Host() => new(new HypervisorOptions { MachineMemoryBytes = 256UL << 20, Pcpus = 1 });

static SpecialRegisters Flat32()
{
    var code = new Segment { Limit = 0xFFFFFFFF, Attributes = 0xC09B, Selector = 0x10 };
    var data = new Segment { Limit = 0xFFFFFFFF, Attributes = 0xC093, Selector = 0x18 };
    return new SpecialRegisters
    {
        Cs = code, Ds = data, Es = data, Fs = data, Gs = data, Ss = data,
        Tr = new Segment { Limit = 0x67, Attributes = 0x8B, Selector = 0x20 },
        Ldt = new Segment { Attributes = 0x82 },
        Cr0 = 0x11,
    };
}

static ushort Guest(XenHypervisor host, byte[] code)
{
    ushort id = host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 1024, 1));
    host.PopulatePhysmap(id, 0, 256);
    host.WriteGuestMemory(id, Base, code);
    host.SetVcpuRegisters(id, 0, new Registers { Rip = Base, Rsp = 0x8000, Rflags = 2 }, Flat32());
    return id;
}

static ushort Spinner(XenHypervisor host) => Guest(host, [0xFF, 0x05, 0x00, 0x30, 0x00, 0x00, 0xEB, 0xF8]);

static ushort Waiter(XenHypervisor host)
{
    const uint Gdtr = 0x2000, Idtr = 0x2008, Gdt = 0x2800, Idt = 0x2100, Handler = 0x1100;
    ushort id = Guest(host,
    [
        0x0F, 0x01, 0x15, .. BitConverter.GetBytes(Gdtr), // lgdt
        0x0F, 0x01, 0x1D, .. BitConverter.GetBytes(Idtr), // lidt
        0xFB, 0xF4, 0xEB, 0xFD,                           // sti; 1: hlt; jmp 1b
    ]);
    host.WriteGuestMemory(id, Handler, [0xFF, 0x05, .. BitConverter.GetBytes(Counter), 0xCF]);
    host.WriteGuestMemory(id, Gdtr, [0x1F, 0x00, .. BitConverter.GetBytes(Gdt)]);
    host.WriteGuestMemory(id, Idtr, [0xFF, 0x07, .. BitConverter.GetBytes(Idt)]);
    host.WriteGuestMemory(id, Gdt, [.. new byte[16], .. BitConverter.GetBytes(0x00CF9B000000FFFFUL), .. BitConverter.GetBytes(0x00CF93000000FFFFUL)]);
    host.WriteGuestMemory(id, Idt + UpcallVector * 8u, [unchecked((byte)Handler), (byte)(Handler >> 8), 0x10, 0, 0, 0x8E, 0, 0]);
    return id;
}

static uint ReadCounter(XenHypervisor host, ushort id)
{
    var b = new byte[4];
    host.ReadGuestMemory(id, Counter, b);
    return BitConverter.ToUInt32(b);
}

static bool WaitUntil(Func<bool> cond, int ms = 10_000)
{
    var until = DateTime.UtcNow.AddMilliseconds(ms);
    while (!cond())
    {
        if (DateTime.UtcNow > until)
            return false;
        Thread.Sleep(1); // polling must not take a host core from the pCPU and timer threads
    }
    return true;
}

static long Median(List<long> xs)
{
    xs.Sort();
    return xs.Count == 0 ? 0 : xs[xs.Count / 2];
}

static long MeasureSwitch()
{
    using var host = Host();
    host.SetCreditPoolParams(0, tsliceMs: 1, ratelimitUs: 100);
    var slices = new ConcurrentQueue<(long Start, long End)>();
    ushort a = Spinner(host), b = Spinner(host);
    host.Unpause(a);
    host.Unpause(b);
    Thread.Sleep(500);
    host.Scheduler.Trace = r => slices.Enqueue((r.StartNs, r.EndNs));
    Thread.Sleep(2000);
    host.Scheduler.Trace = null;
    var all = slices.ToArray();
    var gaps = new List<long>();
    for (int i = 1; i < all.Length; i++)
        gaps.Add(all[i].Start - all[i - 1].End);
    return Median(gaps);
}

static unsafe long Op<T>(XenHypervisor host, ushort domid, int cmd, ref T arg) where T : unmanaged
{
    var d = host.FindDomain(domid)!;
    host.WriteGuestMemory(domid, Scratch, MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in arg)));
    long rc = Hypercall.Dispatch(d.Vcpus[0], (ulong)Xen.__HYPERVISOR_event_channel_op, new HypercallArgs((ulong)cmd, Scratch, 0, 0, 0));
    host.ReadGuestMemory(domid, Scratch, MemoryMarshal.AsBytes(new Span<T>(ref arg)));
    return rc;
}

static unsafe (long Median, long P99) MeasureWake(bool busy)
{
    using var host = Host();
    ushort sender = Spinner(host), w = Waiter(host);
    host.SetHvmParam(w, XenSharp.Public.Hvm.Params.HVM_PARAM_CALLBACK_IRQ, (2UL << 56) | UpcallVector);
    var alloc = new EvtchnAllocUnbound { Dom = Xen.DOMID_SELF, RemoteDom = sender };
    if (Op(host, w, EVTCHNOP_alloc_unbound, ref alloc) != 0)
        throw new InvalidOperationException("alloc_unbound failed");
    var bind = new EvtchnBindInterdomain { RemoteDom = w, RemotePort = alloc.Port };
    if (Op(host, sender, EVTCHNOP_bind_interdomain, ref bind) != 0)
        throw new InvalidOperationException("bind_interdomain failed");
    uint pa = alloc.Port;
    var waiter = host.FindDomain(w)!;
    var v = waiter.Vcpus[0];
    // The sender's notifications are issued from here; it runs (CPU-bound, on the same pCPU) only in the busy case.
    if (busy)
        host.Unpause(sender);
    host.Unpause(w);
    var lat = new List<long>();
    for (int i = 0; i < 300; i++)
    {
        if (!WaitUntil(() => v.Blocked && !v.IsRunning))
            throw new InvalidOperationException("the waiter did not halt");
        Thread.Sleep(1);
        uint before = ReadCounter(host, w);
        var send = new EvtchnSend { Port = bind.LocalPort };
        Op(host, sender, EVTCHNOP_send, ref send);
        if (!WaitUntil(() => ReadCounter(host, w) != before))
            throw new InvalidOperationException("the waiter did not wake");
        if (i >= 20)
            lat.Add(SchedUnit.Of(v).LastWakeLatencyNs);
        waiter.SharedInfo->EvtchnPending[(int)(pa / 64)] &= ~(1UL << (int)(pa % 64));
        v.VcpuInfo->EvtchnPendingSel = 0;
        v.VcpuInfo->EvtchnUpcallPending = 0;
    }
    lat.Sort();
    return (lat[lat.Count / 2], lat[(int)(lat.Count * 0.99)]);
}
