using XenSharp.Hypervisor.Common;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>
/// The ACPI power-management timer and the PM1a event block around it (Xen's pmtimer.c) at the ports of Xen's FADT:
/// PM1a_STS at 0xB000 and PM1a_EN at 0xB002 (16 bits each), PM_TMR at 0xB008, a free-running 32-bit counter at
/// 3.579545 MHz (TMR_VAL_EXT). TMR_STS is set each time bit 31 of the counter changes; a status bit whose enable is
/// set holds the SCI (GSI 9, level) up until the guest writes the status bit back as 1.
/// </summary>
internal sealed class PmTimer : IDeviceTimer
{
    public const ushort EventBlockPort = 0xB000, TimerPort = 0xB008;
    public const long Frequency = 3_579_545;
    public const int SciIrq = 9;
    public const ushort TmrSts = 1 << 0, GblSts = 1 << 5, PwrbtnSts = 1 << 8, SlpbtnSts = 1 << 9;
    private const ushort SciMask = TmrSts | GblSts | PwrbtnSts | SlpbtnSts;

    private readonly object _lock = new();
    private readonly IrqLine _sci;
    private ushort _sts, _en;
    /// <summary>Added to the counter computed from system time (for restore).</summary>
    private uint _offset;
    /// <summary>Bit 31 of the counter when last looked at, and when it flips next.</summary>
    private bool _msb;
    private long _nextFlip = long.MaxValue;

    public PmTimer(Domain domain, IrqRouter irq)
    {
        Domain = domain;
        _sci = irq.Line(SciIrq);
        Events = new EventBlock(this);
        Timer = new TimerRegister(this);
        _msb = (Counter(Now) & 0x8000_0000) != 0;
    }

    public Domain Domain { get; }
    public IIoHandler Events { get; }
    public IIoHandler Timer { get; }

    private long Now => Domain.Host.Time.NowNs;

    public void Register(IoBus ports)
    {
        ports.Register(EventBlockPort, 4, Events);
        ports.Register(TimerPort, 4, Timer);
    }

    private uint Counter(long now) => (uint)((ulong)((UInt128)(ulong)Math.Max(now, 0) * Frequency / 1_000_000_000UL)) + _offset;

    /// <summary>Sets TMR_STS when bit 31 changed since the last look, then the SCI to status AND enable.</summary>
    private void Update(long now)
    {
        bool msb = (Counter(now) & 0x8000_0000) != 0;
        if (msb != _msb)
        {
            _msb = msb;
            _sts |= TmrSts;
        }
        _sci.Set((_sts & _en & SciMask) != 0);
        if ((_en & TmrSts) != 0)
        {
            // The next flip of bit 31: 2^31 ticks after the last one.
            uint counter = Counter(now);
            ulong ticksToFlip = 0x8000_0000UL - (counter & 0x7FFF_FFFF);
            long next = now + (long)((UInt128)ticksToFlip * 1_000_000_000UL / (ulong)Frequency) + 1;
            if (next != _nextFlip)
            {
                _nextFlip = next;
                Domain.Host.Timers.Schedule(next, this, TimerKind.Device);
            }
        }
        else
            _nextFlip = long.MaxValue;
    }

    public void OnTimer(long now)
    {
        lock (_lock)
        {
            if (_nextFlip > now)
                return;
            _nextFlip = long.MaxValue;
            Update(now);
        }
    }

    /// <summary>A press of the ACPI power or sleep button (Xen's hvm_acpi_power_button/sleep_button): its status bit is
    /// set and the SCI follows its enable.</summary>
    public void PressButton(bool power)
    {
        lock (_lock)
        {
            _sts |= power ? PwrbtnSts : SlpbtnSts;
            Update(Now);
        }
    }

    private sealed class EventBlock(PmTimer pm) : IIoHandler
    {
        public ulong Read(Vcpu v, ulong offset, int size)
        {
            lock (pm._lock)
            {
                pm.Update(pm.Now);
                uint block = pm._sts | ((uint)pm._en << 16);
                return (block >> (int)(offset * 8)) & (uint)HvmIo.AllOnes(Math.Min(size, 4));
            }
        }

        public void Write(Vcpu v, ulong offset, int size, ulong value)
        {
            lock (pm._lock)
            {
                pm.Update(pm.Now);
                // Byte lanes of the 4-byte block: status bits are cleared by writing 1, enables are plain.
                for (int i = 0; i < size && offset + (ulong)i < 4; i++)
                {
                    int lane = (int)offset + i;
                    byte b = (byte)(value >> (i * 8));
                    if (lane < 2)
                        pm._sts &= (ushort)~(b << (lane * 8));
                    else
                        pm._en = (ushort)((pm._en & ~(0xFF << ((lane - 2) * 8))) | (b << ((lane - 2) * 8)));
                }
                pm.Update(pm.Now);
            }
        }
    }

    private sealed class TimerRegister(PmTimer pm) : IDirectReadIoHandler
    {
        public ulong Read(Vcpu v, ulong offset, int size)
        {
            lock (pm._lock)
                return pm.Counter(pm.Now) >> (int)(offset * 8);
        }

        public void Write(Vcpu v, ulong offset, int size, ulong value) { } // read-only
    }

    // ---------------- save/restore (HVM_SAVE_CODE(PMTIMER)) ----------------

    public HvmHwPmtimer Save()
    {
        lock (_lock)
        {
            Update(Now);
            return new HvmHwPmtimer { TmrVal = Counter(Now), Pm1aSts = _sts, Pm1aEn = _en };
        }
    }

    public void Load(in HvmHwPmtimer s)
    {
        lock (_lock)
        {
            long now = Now;
            _offset = 0;
            _offset = s.TmrVal - Counter(now);
            _msb = (s.TmrVal & 0x8000_0000) != 0;
            _sts = s.Pm1aSts;
            _en = s.Pm1aEn;
            Update(now);
        }
    }
}
