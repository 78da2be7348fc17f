using System.Collections.Concurrent;
using XenSharp.Cpu;
using XenSharp.Hypervisor.Scheduling;

namespace XenSharp.Hypervisor.Tests.Scheduling;

/// <summary>Real guest code on the x86 engine for the scheduler tests: CPU-bound spinners and a halting waiter.</summary>
internal static class SchedGuests
{
    public const uint Base = 0x1000;
    public const uint Counter = 0x3000;

    public static XenHypervisor Host(int pcpus = 1, string scheduler = "credit") => new(new HypervisorOptions
    {
        MachineMemoryBytes = 256UL << 20,
        Pcpus = pcpus,
        Scheduler = scheduler,
    });

    private static ushort Build(XenHypervisor host, byte[] code, ushort? existing = null)
    {
        ushort id = existing ?? host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 1024, 1));
        if (existing is null)
            host.PopulatePhysmap(id, 0, 256);
        host.WriteGuestMemory(id, Base, code);
        host.SetVcpuRegisters(id, 0, new Registers { Rip = Base, Rsp = 0x8000, Rflags = 2 }, PvhEntryState.Flat32());
        return id;
    }

    /// <summary>A CPU-bound guest: <c>1: inc dword [Counter]; jmp 1b</c>.</summary>
    public static ushort Spinner(XenHypervisor host, ushort? existing = null) => Build(host, existing: existing, code: [0xFF, 0x05, 0x00, 0x30, 0x00, 0x00, 0xEB, 0xF8]);

    /// <summary>The event channel upcall vector the waiter takes.</summary>
    public const byte UpcallVector = 0xF3;

    /// <summary>
    /// A guest that waits for events: a GDT and an IDT whose upcall vector counts the interrupt and returns, then
    /// <c>lgdt; lidt; sti; 1: hlt; jmp 1b</c>.
    /// </summary>
    public static ushort Waiter(XenHypervisor host, ushort? existing = null)
    {
        const uint Gdtr = 0x2000, Idtr = 0x2008, Gdt = 0x2800, Idt = 0x2100, Handler = 0x1100;
        ushort id = Build(host, existing: existing, code:
        [
            0x0F, 0x01, 0x15, .. BitConverter.GetBytes(Gdtr),   // lgdt [Gdtr]
            0x0F, 0x01, 0x1D, .. BitConverter.GetBytes(Idtr),   // lidt [Idtr]
            0xFB,                                               // sti
            0xF4,                                               // 1: hlt
            0xEB, 0xFD,                                         // jmp 1b
        ]);
        host.WriteGuestMemory(id, Handler, [0xFF, 0x05, .. BitConverter.GetBytes(Counter), 0xCF]); // inc [Counter]; iret
        host.WriteGuestMemory(id, Gdtr, [0x1F, 0x00, .. BitConverter.GetBytes(Gdt)]);
        host.WriteGuestMemory(id, Idtr, [0xFF, 0x07, .. BitConverter.GetBytes(Idt)]);
        host.WriteGuestMemory(id, Gdt, [.. BitConverter.GetBytes(0UL), .. BitConverter.GetBytes(0UL),
            .. BitConverter.GetBytes(0x00CF9B000000FFFFUL), .. BitConverter.GetBytes(0x00CF93000000FFFFUL)]);
        // A present 32-bit interrupt gate to the handler through selector 0x10.
        host.WriteGuestMemory(id, Idt + UpcallVector * 8u, [unchecked((byte)Handler), (byte)(Handler >> 8), 0x10, 0x00, 0x00, 0x8E, 0x00, 0x00]);
        return id;
    }

    public static uint ReadCounter(XenHypervisor host, ushort id)
    {
        var b = new byte[4];
        host.ReadGuestMemory(id, Counter, b);
        return BitConverter.ToUInt32(b);
    }

    public static long CpuTime(XenHypervisor host, ushort id) => host.GetDomainInfo(id).CpuTimeNs;

    /// <summary>
    /// CPU time of each domain, after a short warm-up, over a window that lasts until together they have had
    /// <paramref name="cpuMs"/> of CPU time as the scheduler accounts it: about that much wall time on an idle host,
    /// stretched by a loaded one (up to ten minutes, which only a host that runs the pCPU thread for less than 1% of the
    /// time would need for ten seconds).
    /// </summary>
    public static long[] MeasureCpu(XenHypervisor host, long cpuMs, params ushort[] ids)
    {
        TestHosts.WaitUntil(() => ids.All(i => CpuTime(host, i) > 0));
        Thread.Sleep(500);
        var before = ids.Select(i => CpuTime(host, i)).ToArray();
        long[] Used() => ids.Select((i, k) => CpuTime(host, i) - before[k]).ToArray();
        TestHosts.WaitUntil(() => Used().Sum() >= cpuMs * 1_000_000, 600_000);
        return Used();
    }

    /// <summary>
    /// Two CPU-bound domains weighted 256 and 512 on one pCPU: the CPU time the scheduler accounted to each (their
    /// runstate time) over <paramref name="cpuMs"/> of CPU time. The lighter one's share of the heavier one's, which
    /// should be 1:2.
    /// </summary>
    public static (double Ratio, long[] Ns) WeightRatio(string scheduler, int cpuMs)
    {
        using var host = Host(pcpus: 1, scheduler: scheduler);
        ushort a = Spinner(host), b = Spinner(host);
        if (scheduler == "credit")
        {
            host.SetCreditParams(a, weight: 256);
            host.SetCreditParams(b, weight: 512);
        }
        else
        {
            host.SetCredit2Params(a, weight: 256);
            host.SetCredit2Params(b, weight: 512);
        }
        host.Unpause(a);
        host.Unpause(b);
        var t = MeasureCpu(host, cpuMs, a, b);
        Assert.True(ReadCounter(host, a) > 0 && ReadCounter(host, b) > 0, "both guests ran their code");
        return ((double)t[0] / t[1], t);
    }

    /// <summary>
    /// A CPU-bound domain capped at <paramref name="cap"/>% alone on a pCPU: the percentage of one pCPU the scheduler
    /// accounted to it over <paramref name="ms"/> of its own clock, and the percentage the host withheld from the
    /// pCPU thread while it was running the domain (its steal).
    /// </summary>
    public static (double Percent, double StolenPercent) CapPercent(string scheduler, int cap, int ms)
    {
        using var host = Host(pcpus: 1, scheduler: scheduler);
        var trace = Decisions(host);
        ushort a = Spinner(host);
        if (scheduler == "credit")
            host.SetCreditParams(a, cap: cap);
        else
            host.SetCredit2Params(a, cap: cap);
        host.Unpause(a);
        TestHosts.WaitUntil(() => CpuTime(host, a) > 0);
        Thread.Sleep(300);
        long t0 = host.SystemTimeNs, c0 = CpuTime(host, a);
        Thread.Sleep(ms);
        long t1 = host.SystemTimeNs, c1 = CpuTime(host, a);
        long stolen = trace.Where(r => r.EndNs > t0 && r.EndNs <= t1).Sum(r => r.EndNs - r.StartNs - r.RanNs);
        return ((c1 - c0) * 100.0 / (t1 - t0), stolen * 100.0 / (t1 - t0));
    }

    /// <summary>Records every slice: (pCPU, domid, vCPU, start, end).</summary>
    public static ConcurrentQueue<(int Cpu, ushort Dom, int Vcpu, long Start, long End)> Trace(XenHypervisor host)
    {
        var q = new ConcurrentQueue<(int, ushort, int, long, long)>();
        host.Scheduler.Trace = r => q.Enqueue((r.Cpu, r.Vcpu.Domain.DomainId, r.Vcpu.Id, r.StartNs, r.EndNs));
        return q;
    }

    /// <summary>Records every slice with the scheduler's decision behind it.</summary>
    public static ConcurrentQueue<SliceRecord> Decisions(XenHypervisor host)
    {
        var q = new ConcurrentQueue<SliceRecord>();
        host.Scheduler.Trace = q.Enqueue;
        return q;
    }
}
