using System.Collections.Concurrent;
using XenSharp.Cpu;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// A stand-in for the execution engine: vCPUs with paging off (linear = physical) whose Run() plays back
/// exits a test queues, then halts. It lets the hypervisor's exit handling and pCPU loop run for real.
/// </summary>
internal sealed class TestEngine(IGuestMemory memory) : ICpuEngine
{
    public IGuestMemory Memory { get; } = memory;
    public readonly List<TestVcpu> Vcpus = new();

    public IVcpu CreateVcpu(int id, ICpuidPolicy cpuid)
    {
        var v = new TestVcpu(id, cpuid);
        Vcpus.Add(v);
        return v;
    }

    public void Dispose() { }
}

internal sealed class TestVcpu(int id, ICpuidPolicy cpuid) : IVcpu
{
    private Registers _regs;
    private SpecialRegisters _sregs = LongMode();
    private VcpuExit _exit;
    private volatile bool _exitRequested;
    private readonly ManualResetEventSlim _kick = new();

    public int Id { get; } = id;
    public ICpuidPolicy Cpuid { get; } = cpuid;
    /// <summary>Exits to report; each may first adjust the registers (as guest code would have).</summary>
    public readonly ConcurrentQueue<(VcpuExit Exit, Action<TestVcpu>? Before)> Script = new();
    public readonly ConcurrentQueue<ulong> Completions = new();
    public int NmisInjected;
    /// <summary>Linear addresses at or above this do not translate (a guest pointer to nowhere).</summary>
    public ulong UnmappedFrom = ulong.MaxValue;

    public static SpecialRegisters LongMode() => new()
    {
        Cs = new Segment { Attributes = 0xA09B, Limit = 0xFFFFFFFF, Selector = 0x10 },
        Efer = (1 << 8) | (1 << 10),
        Cr0 = 0x80000011,
    };

    public ref Registers Regs => ref _regs;

    public ref readonly VcpuExit Run()
    {
        while (true)
        {
            if (_exitRequested)
            {
                _exitRequested = false;
                _exit = new VcpuExit { Reason = VcpuExitReason.Preempted };
                return ref _exit;
            }
            if (Script.TryDequeue(out var step))
            {
                step.Before?.Invoke(this);
                _exit = step.Exit;
                return ref _exit;
            }
            if (InterruptSource is { HasPendingInterrupt: true } src)
            {
                int vector = src.Acknowledge();
                if (vector >= 0)
                    Delivered.Enqueue(vector);
                continue;
            }
            // Nothing left to do: halt, as an idle guest would.
            _exit = new VcpuExit { Reason = VcpuExitReason.Hlt };
            return ref _exit;
        }
    }

    public readonly ConcurrentQueue<int> Delivered = new();

    public void RequestExit() => _exitRequested = true;
    public void CompleteExit(ulong value, bool fault = false) => Completions.Enqueue(fault ? ulong.MaxValue - 1 : value);
    public void GetRegisters(out Registers regs) => regs = _regs;
    public void SetRegisters(in Registers regs) => _regs = regs;
    public void GetSpecialRegisters(out SpecialRegisters sregs) => sregs = _sregs;
    public void SetSpecialRegisters(in SpecialRegisters sregs) => _sregs = sregs;
    public bool TryGetMsr(uint index, out ulong value) { value = 0; return false; }
    public bool TrySetMsr(uint index, ulong value) => false;
    public void InjectException(byte vector, uint? errorCode = null) { }
    public void InjectNmi() => Interlocked.Increment(ref NmisInjected);
    public IInterruptSource? InterruptSource { get; set; }
    public bool InterruptWindowOpen => true;
    public ulong InstructionsRetired => 0;

    public bool TryTranslateLinear(ulong linear, bool write, out ulong physical)
    {
        physical = linear;
        return linear < UnmappedFrom;
    }
}
