using XenSharp.Public;
using System.Runtime.InteropServices;
using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// A domain built through the public API, with RAM at 0..RamMiB, and helpers that place hypercall
/// argument structures in its memory and invoke the hypercall table as its vCPU would.
/// </summary>
internal sealed unsafe class Guest
{
    public const ulong Scratch = 0x10000;      // argument structures go here
    public const ulong Bad = 0x7FF0_0000_000;  // a guest address with no RAM behind it

    public Guest(XenHypervisor host, int vcpus = 2, ulong ramMiB = 4, ulong maxMiB = 16, DomainKind type = DomainKind.Pvh,
        bool privileged = false, TscMode tscMode = TscMode.Default)
    {
        Host = host;
        Id = host.CreateDomain(new DomainCreateConfig(type, maxMiB * 1024, vcpus) { Privileged = privileged, TscMode = tscMode });
        host.PopulatePhysmap(Id, 0, ramMiB * 256);
    }

    public XenHypervisor Host { get; }
    public ushort Id { get; }
    public Domain Domain => Host.FindDomain(Id)!;
    public Vcpu Vcpu(int i = 0) => Domain.Vcpus[i];
    public TestVcpu Cpu(int i = 0) => (TestVcpu)Domain.Vcpus[i].Engine!;

    public long Call(int nr, ulong a1 = 0, ulong a2 = 0, ulong a3 = 0, ulong a4 = 0, ulong a5 = 0, int vcpu = 0) =>
        Hypercall.Dispatch(Vcpu(vcpu), (ulong)nr, new HypercallArgs(a1, a2, a3, a4, a5));

    public void Write<T>(ulong gpa, T value) where T : unmanaged =>
        Host.WriteGuestMemory(Id, gpa, MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)));

    public T Read<T>(ulong gpa) where T : unmanaged
    {
        T value = default;
        Host.ReadGuestMemory(Id, gpa, MemoryMarshal.AsBytes(new Span<T>(ref value)));
        return value;
    }

    public byte[] ReadBytes(ulong gpa, int n)
    {
        var b = new byte[n];
        Host.ReadGuestMemory(Id, gpa, b);
        return b;
    }

    /// <summary>Runs a hypercall as the guest would: re-issuing it while the handler leaves a continuation.
    /// <paramref name="pieces"/> counts the invocations.</summary>
    public long CallToCompletion(int nr, ulong a1, ulong a2, ulong a3, out int pieces, int vcpu = 0)
    {
        var v = Vcpu(vcpu);
        var args = new HypercallArgs(a1, a2, a3);
        pieces = 0;
        while (true)
        {
            v.Continuation = null;
            long rc = Hypercall.Dispatch(v, (ulong)nr, args);
            pieces++;
            if (v.Continuation is not { } next)
                return rc;
            v.Continuation = null;
            args = next;
        }
    }

    /// <summary>Writes <paramref name="arg"/> at the scratch address, runs the hypercall, reads it back.</summary>
    public long Call<T>(int nr, ulong cmd, ref T arg, int vcpu = 0) where T : unmanaged
    {
        Write(Scratch, arg);
        long rc = Call(nr, cmd, Scratch, vcpu: vcpu);
        arg = Read<T>(Scratch);
        return rc;
    }
}

internal static class TestHosts
{
    public static XenHypervisor Create(int pcpus = 1) => new(new HypervisorOptions
    {
        MachineMemoryBytes = 256UL << 20,
        Pcpus = pcpus,
        EngineFactory = m => new TestEngine(m),
    });

    /// <summary>Waits (without asserting any timing) until <paramref name="condition"/> holds.</summary>
    public static bool WaitUntil(Func<bool> condition, int timeoutMs = 60_000)
    {
        var until = DateTime.UtcNow.AddMilliseconds(timeoutMs);
        while (!condition())
        {
            if (DateTime.UtcNow > until)
                return false;
            Thread.Sleep(1);
        }
        return true;
    }
}
