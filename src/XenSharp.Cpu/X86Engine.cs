using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>
/// The portable x86 execution engine: an interpreter over pre-decoded instruction blocks, with
/// hot blocks compiled to .NET code (<see cref="JitSettings"/>). One instance per domain; its
/// vCPUs share the decoded-code cache (compiled blocks included) and the guest memory.
/// </summary>
public sealed class X86Engine : ICpuEngine
{
    internal readonly IGuestMemory Memory;
    internal readonly BlockCache Blocks;
    private readonly List<X86Vcpu> _vcpus = new();

    /// <summary>TSC frequency of every vCPU of this engine, in kHz.</summary>
    public ulong TscKhz { get; }

    /// <summary>The block compiler's settings (<see cref="JitSettings.FromEnvironment"/> unless given).</summary>
    public JitSettings Jit { get; }

    internal long CompiledCount, JitFailureCount, LinkCount, WarmBranchCount;
    internal readonly Jit.CompileQueue Compiler;
    internal string? LastJitFailure;
    /// <summary>Tests only: blocks the translator gives IL that .NET rejects, as a translator defect would.</summary>
    internal Predicate<Decoding.DecodedBlock>? RejectIlForTests;

    /// <summary>Blocks translated by the block compiler so far.</summary>
    public long CompiledBlocks => Interlocked.Read(ref CompiledCount);

    /// <summary>Direct exits of compiled blocks linked to their compiled successor so far.</summary>
    public long LinkedExits => Interlocked.Read(ref LinkCount);

    /// <summary>Direct exits compiled as branches into another block's body in the same method.</summary>
    public long WarmBranches => Interlocked.Read(ref WarmBranchCount);

    /// <summary>Blocks the block compiler could not translate (they stay interpreted).</summary>
    public long JitFailures => Interlocked.Read(ref JitFailureCount);

    public X86Engine(IGuestMemory memory, ulong tscKhz = DefaultTscKhz, JitSettings? jit = null)
    {
        Jit = jit ?? JitSettings.FromEnvironment();
        Memory = memory ?? throw new ArgumentNullException(nameof(memory));
        TscKhz = tscKhz;
        Blocks = new BlockCache();
        Compiler = new Jit.CompileQueue(this);
        _blocksGeneration = memory.Generation;
    }

    /// <summary>The default guest TSC frequency: 2 GHz.</summary>
    public const ulong DefaultTscKhz = 2_000_000;

    public IVcpu CreateVcpu(int id, ICpuidPolicy cpuid)
    {
        var v = new X86Vcpu(this, id, cpuid ?? new DefaultCpuidPolicy());
        lock (_vcpus) _vcpus.Add(v);
        return v;
    }

    /// <summary>
    /// The guest TSC the engine's vCPUs read: <c>hostNs * TscKhz / 1_000_000 + offset</c>, where hostNs is
    /// <see cref="HostMonotonicNs"/> and offset is the vCPU's TSC offset (IA32_TSC writes adjust it).
    /// The hypervisor uses this for pvclock's tsc_timestamp.
    /// </summary>
    public ulong GuestTsc(long offset = 0) => ComputeTsc(HostMonotonicNs(), TscKhz, offset);

    public static ulong ComputeTsc(ulong hostNs, ulong tscKhz, long offset)
        => (ulong)((long)(ulong)((UInt128)hostNs * tscKhz / 1_000_000) + offset);

    /// <summary>Host monotonic time in nanoseconds (the clock the TSC derives from).</summary>
    public static ulong HostMonotonicNs()
    {
        long t = System.Diagnostics.Stopwatch.GetTimestamp();
        return (ulong)((UInt128)(ulong)t * 1_000_000_000 / (ulong)System.Diagnostics.Stopwatch.Frequency);
    }

    private long _blocksGeneration = long.MinValue;

    /// <summary>A vCPU saw <see cref="IGuestMemory.Generation"/> move: drop decoded code once per change.</summary>
    internal void OnMemoryGeneration(long gen)
    {
        long seen = Interlocked.Read(ref _blocksGeneration);
        if (seen != gen && Interlocked.CompareExchange(ref _blocksGeneration, gen, seen) == seen)
            Blocks.Clear();
    }

    /// <summary>The aging epoch: the run loop stamps each block it enters with it (<see cref="DecodedBlock.LastRun"/>).</summary>
    internal int CodeEpoch = 1;

    /// <summary>Drops the decoded blocks, and their compiled code, that have not run since the previous call (a
    /// guest's boot and init code, run once, is most of what it ever decodes); they are decoded again if they run.</summary>
    public int AgeCode()
    {
        int ended = Interlocked.Increment(ref CodeEpoch) - 1;
        int dropped = Blocks.Trim(ended);
        // Each vCPU then lets go of the dropped blocks its jump caches still name.
        Interlocked.Increment(ref AgingPasses);
        return dropped;
    }

    /// <summary>Aging passes completed; a vCPU that sees it change sweeps its jump caches.</summary>
    internal int AgingPasses;

    /// <summary>Decoded blocks cached now.</summary>
    public int CachedBlocks => Blocks.Count;

    internal void OnNewCodeFrame(ulong gfn)
    {
        lock (_vcpus)
            foreach (var v in _vcpus) v.DropWritableFrame(gfn);
    }

    public void Dispose()
    {
        Compiler.Dispose();
        // Decoded and compiled blocks are most of an engine's memory: let them go even if the engine lingers.
        Blocks.Clear();
        lock (_vcpus)
        {
            foreach (var v in _vcpus) v.Dispose();
            _vcpus.Clear();
        }
    }
}
