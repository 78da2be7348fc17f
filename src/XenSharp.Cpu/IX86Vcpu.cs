namespace XenSharp.Cpu;

/// <summary>
/// What an x86 vCPU offers beyond <see cref="IVcpu"/>: the LAPIC's INIT and STARTUP IPIs and the
/// guest TSC. Every vCPU created by <see cref="X86Engine"/> implements it.
/// </summary>
public interface IX86Vcpu : IVcpu
{
    /// <summary>INIT: architectural reset state (real mode), then wait-for-SIPI; <see cref="IVcpu.Run"/>
    /// returns <see cref="VcpuExitReason.Hlt"/> until <see cref="StartupIpi"/>.</summary>
    void Init();

    /// <summary>STARTUP IPI: leaves wait-for-SIPI and starts in real mode at vector &lt;&lt; 12
    /// (CS = vector &lt;&lt; 8, IP = 0).</summary>
    void StartupIpi(byte vector);

    bool WaitingForSipi { get; }

    /// <summary>The guest TSC now (the value RDTSC would return).</summary>
    ulong Tsc { get; }

    /// <summary>Guest TSC = host ns * TscKhz / 1e6 + this offset (see <see cref="X86Engine.ComputeTsc"/>).</summary>
    long TscOffsetValue { get; set; }

    /// <summary>IA32_TSC_ADJUST as kept, without moving the counter (Xen's TSC_ADJUST save record); a guest's
    /// WRMSR to it moves the counter too.</summary>
    long TscAdjustValue { get; set; }

    /// <summary>When set, #DB (breakpoints, single-step, general detect, INT1) and INT3 leave
    /// <see cref="IVcpu.Run"/> with <see cref="VcpuExitReason.Debug"/> instead of entering the
    /// guest's handler: <see cref="VcpuExit.Port"/> = vector (1 or 3), <see cref="VcpuExit.Data"/> =
    /// the DR6 status bits of the event (B0-B3, BD, BS), <see cref="VcpuExit.Address"/> = RIP, which is
    /// the faulting instruction for instruction breakpoints and general detect (set RF to step over
    /// it) and the next instruction for traps. Off by default: guests handle their own #DB and #BP.</summary>
    bool InterceptDebug { get; set; }

    /// <summary>When set, every exception and software interrupt (not external interrupts or NMIs) and every SYSCALL
    /// leaves <see cref="IVcpu.Run"/> instead of going through the guest's IDT or MSRs:
    /// <see cref="VcpuExitReason.Exception"/> and <see cref="VcpuExitReason.Syscall"/>. A PV guest's kernel runs in
    /// ring 3 and the hypervisor bounces these to the handlers it registered, as Xen does.</summary>
    bool InterceptTraps { get; set; }

    /// <summary>The monitor trap flag (Intel's MTF, as Xen's single-step of an HVM vCPU uses it): while set, each
    /// instruction that completes ends <see cref="IVcpu.Run"/> with <see cref="VcpuExitReason.MonitorTrap"/>, unseen
    /// by the guest (no TF, no #DB). Off by default.</summary>
    bool MonitorTrap { get => false; set { } }

    /// <summary>When set, a REP INS or OUTS whose buffer is RAM, and a REP MOVS between RAM and MMIO or a REP STOS to
    /// MMIO, leave <see cref="IVcpu.Run"/> as one Io or Mmio exit covering as many iterations as stay in the buffer's
    /// and the MMIO's 4 KiB pages (<see cref="VcpuExit.Count"/>), as Xen's emulator sends one ioreq for them. Off by
    /// default: every iteration is an exit of its own.</summary>
    bool BatchStringIo { get => false; set { } }

    /// <summary>The ports no device claims, one bit per port (1,024 words), as a VMX I/O bitmap leaves ports to the
    /// CPU: an IN whose every byte is marked reads all ones and an OUT to them is dropped, without leaving
    /// <see cref="IVcpu.Run"/>. Null (the default): every IN and OUT is an exit. The hypervisor clears it before a
    /// device can claim a port.</summary>
    ulong[]? UnclaimedPorts { get => null; set { } }

    /// <summary>Port reads the hypervisor answers on the vCPU's own thread, as it would the exit, but without leaving
    /// <see cref="IVcpu.Run"/>: an IN first asks this, and exits when it declines. For timers a guest polls (the PIT,
    /// the ACPI PM timer), whose every read would otherwise be a round trip through the run loop. Null (the
    /// default): every IN a device may claim is an exit.</summary>
    IDirectPortReads? DirectPortReads { get => null; set { } }
}

/// <summary>See <see cref="IX86Vcpu.DirectPortReads"/>.</summary>
public interface IDirectPortReads
{
    /// <summary>The value of an IN of <paramref name="size"/> bytes from <paramref name="port"/> (the low
    /// <paramref name="size"/> bytes are used), or false for the IN to exit as usual.</summary>
    bool TryRead(uint port, int size, out ulong value);
}
