using XenSharp.Hypervisor.Common;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>
/// The High Precision Event Timer block (Xen's hpet.c) at 0xFED00000: a 64-bit main counter at 62.5 MHz (16 ns a
/// tick, as Xen's) and Xen's three comparators, each one-shot or periodic, 32- or 64-bit, edge or level, routed to
/// GSIs 20-23 or, with the legacy replacement route, timer 0 to ISA IRQ 0 and timer 1 to IRQ 8 (the PIT and RTC are
/// silenced meanwhile). Registers take 32- and 64-bit accesses. Present when HVM_PARAM_HPET_ENABLED is set (xl.cfg
/// hpet, default on).
/// </summary>
internal sealed class Hpet : IIoHandler
{
    public const ulong Base = 0xFED00000;
    public const int Length = 0x400;
    public const int Timers = HvmHwHpet.HPET_TIMER_NUM;
    public const long NsPerTick = 16;

    private const int RegCap = 0x000, RegConfig = 0x010, RegIsr = 0x020, RegCounter = 0x0F0, RegTimer0 = 0x100;
    private const ulong CfgEnable = 1, CfgLegacy = 2;
    private const ulong TnLevel = 1 << 1, TnEnable = 1 << 2, TnPeriodic = 1 << 3, TnPeriodicCap = 1 << 4,
        Tn64BitCap = 1 << 5, TnValSet = 1 << 6, Tn32Bit = 1 << 8, TnRouteMask = 0x1F << 9, TnFsbEnable = 1 << 14;
    /// <summary>The GSIs a comparator may be routed to (INT_ROUTE_CAP): 20-23.</summary>
    private const ulong RouteCap = 0x00F00000UL << 32;
    private const ulong TnWritable = TnLevel | TnEnable | TnPeriodic | TnValSet | Tn32Bit | TnRouteMask;

    /// <summary>Vendor 0x8086, revision 1, three timers, 64-bit counter, legacy route capable, 16 000 000 fs a tick.</summary>
    public const ulong Capability = 0x8086_0001UL | ((ulong)(Timers - 1) << 8) | (1 << 13) | (1 << 15) | ((ulong)(NsPerTick * 1_000_000) << 32);

    private struct Comparator
    {
        public ulong Config, Cmp, Period;
    }

    private readonly Domain _domain;
    private readonly IrqRouter _irqRouter;
    private readonly Pit _pit;
    private readonly Rtc _rtc;
    private readonly object _lock = new();
    private readonly Comparator[] _t = new Comparator[Timers];
    private readonly Vpt[] _vpt = new Vpt[Timers];
    private readonly IrqLine?[] _lines = new IrqLine?[Timers];
    private ulong _config, _isr;
    /// <summary>The counter's value at <see cref="_counterBase"/> (running) or its frozen value (halted).</summary>
    private ulong _counterAt;
    private long _counterBase;

    public Hpet(Domain domain, IrqRouter irq, Pit pit, Rtc rtc)
    {
        _domain = domain;
        _irqRouter = irq;
        _pit = pit;
        _rtc = rtc;
        for (int i = 0; i < Timers; i++)
        {
            int n = i;
            _t[i].Config = Tn64BitCap | TnPeriodicCap | RouteCap;
            _t[i].Cmp = ulong.MaxValue;
            _vpt[i] = new Vpt(domain, _ => Fire(n));
        }
    }

    private long Now => _domain.Host.Time.NowNs;
    private bool Enabled => (_config & CfgEnable) != 0;

    private ulong Counter(long now) => Enabled ? _counterAt + (ulong)(Math.Max(now - _counterBase, 0) / NsPerTick) : _counterAt;

    public ulong Read(Vcpu v, ulong offset, int size)
    {
        if ((size != 4 && size != 8) || (offset & (ulong)(size - 1)) != 0)
            return HvmIo.AllOnes(size);
        ulong value;
        lock (_lock)
            value = Read64(offset & ~7UL, Now);
        return (offset & 4) != 0 ? value >> 32 : value;
    }

    private ulong Read64(ulong reg, long now)
    {
        switch (reg)
        {
            case RegCap: return Capability;
            case RegConfig: return _config;
            case RegIsr: return _isr;
            case RegCounter: return Counter(now);
        }
        if (reg >= RegTimer0 && reg < RegTimer0 + 0x20 * Timers)
        {
            int n = (int)(reg - RegTimer0) >> 5;
            return ((reg - RegTimer0) & 0x1F) switch
            {
                0x00 => _t[n].Config,
                0x08 => (_t[n].Config & Tn32Bit) != 0 ? (uint)_t[n].Cmp : _t[n].Cmp,
                _ => 0, // no FSB delivery
            };
        }
        return 0;
    }

    public void Write(Vcpu v, ulong offset, int size, ulong value)
    {
        if ((size != 4 && size != 8) || (offset & (ulong)(size - 1)) != 0)
            return;
        lock (_lock)
        {
            long now = Now;
            ulong reg = offset & ~7UL;
            if (size == 4)
            {
                // A 32-bit write replaces its half of the 64-bit register.
                ulong old = Read64(reg, now);
                value = (offset & 4) != 0 ? (old & 0xFFFFFFFFUL) | (value << 32) : (old & ~0xFFFFFFFFUL) | (uint)value;
            }
            Write64(reg, value, now);
        }
    }

    private void Write64(ulong reg, ulong value, long now)
    {
        switch (reg)
        {
            case RegConfig:
            {
                ulong old = _config;
                ulong counter = Counter(now);
                _config = value & (CfgEnable | CfgLegacy);
                if ((old ^ _config) != 0)
                {
                    _counterAt = counter;
                    _counterBase = now;
                    bool legacy = (_config & CfgLegacy) != 0 && Enabled;
                    _pit.LegacyReplaced = legacy;
                    _rtc.LegacyReplaced = legacy;
                    for (int n = 0; n < Timers; n++)
                        Arm(n, now);
                }
                return;
            }
            case RegIsr:
                // Writing 1 clears a level-triggered timer's status and lowers its line.
                for (int n = 0; n < Timers; n++)
                    if ((value & (1UL << n)) != 0 && (_isr & (1UL << n)) != 0)
                    {
                        _isr &= ~(1UL << n);
                        _lines[n]?.Lower();
                    }
                return;
            case RegCounter:
                if (Enabled)
                    return; // writable only while halted
                _counterAt = value;
                return;
        }
        if (reg < RegTimer0 || reg >= RegTimer0 + 0x20 * Timers)
            return;
        int t = (int)(reg - RegTimer0) >> 5;
        ref var c = ref _t[t];
        switch ((reg - RegTimer0) & 0x1F)
        {
            case 0x00:
            {
                ulong old = c.Config;
                c.Config = (c.Config & ~TnWritable) | (value & TnWritable);
                if ((old & TnLevel) != 0 && (c.Config & TnLevel) == 0 && (_isr & (1UL << t)) != 0)
                {
                    _isr &= ~(1UL << t);
                    _lines[t]?.Lower();
                }
                if ((c.Config & Tn32Bit) != 0)
                    c.Cmp = (uint)c.Cmp;
                break;
            }
            case 0x08:
            {
                bool periodic = (c.Config & TnPeriodic) != 0;
                if ((c.Config & Tn32Bit) != 0)
                    value = (uint)value;
                // In periodic mode a comparator write sets the period, and with VAL_SET also the next match.
                if (!periodic || (c.Config & TnValSet) != 0)
                    c.Cmp = value;
                if (periodic)
                    c.Period = value;
                c.Config &= ~TnValSet;
                break;
            }
            default:
                return; // FSB route: not offered
        }
        Arm(t, now);
    }

    /// <summary>Schedules comparator <paramref name="n"/>'s next match from the counter now.</summary>
    private void Arm(int n, long now)
    {
        ref var c = ref _t[n];
        if (!Enabled || (c.Config & TnEnable) == 0)
        {
            _vpt[n].Stop();
            return;
        }
        ulong counter = Counter(now);
        bool wide = (c.Config & Tn32Bit) == 0;
        // The distance to the match, wrapping at 2^64 or (a 32-bit comparator) 2^32 ticks.
        ulong diff = wide ? c.Cmp - counter : (uint)((uint)c.Cmp - (uint)counter);
        long delay = (long)Math.Min(diff, (ulong)(long.MaxValue / NsPerTick / 2)) * NsPerTick;
        bool periodic = (c.Config & TnPeriodic) != 0 && c.Period != 0;
        long period = periodic ? (long)Math.Min(c.Period, (ulong)(long.MaxValue / NsPerTick / 2)) * NsPerTick : 0;
        _vpt[n].Start(now + delay, period);
    }

    private void Fire(int n)
    {
        IrqLine? line;
        bool level;
        lock (_lock)
        {
            ref var c = ref _t[n];
            if (!Enabled || (c.Config & TnEnable) == 0)
                return;
            if ((c.Config & TnPeriodic) != 0 && c.Period != 0)
                c.Cmp = (c.Config & Tn32Bit) != 0 ? (uint)(c.Cmp + c.Period) : c.Cmp + c.Period;
            line = Line(n);
            level = (c.Config & TnLevel) != 0;
            if (level && line is not null)
                _isr |= 1UL << n;
        }
        if (line is null)
            return;
        if (level)
            line.Raise();
        else
            line.Pulse();
    }

    /// <summary>Comparator <paramref name="n"/>'s interrupt line as routed now, or null when its route is not one
    /// it may take.</summary>
    private IrqLine? Line(int n)
    {
        uint gsi;
        if ((_config & CfgLegacy) != 0 && n < 2)
            gsi = PlatformIrq.IsaIrqToGsi(n == 0 ? 0 : Rtc.Irq);
        else
        {
            gsi = (uint)((_t[n].Config & TnRouteMask) >> 9);
            if ((RouteCap & (1UL << (int)(gsi + 32))) == 0)
                return null;
        }
        var line = _lines[n];
        if (line is null || line.Gsi != gsi)
        {
            line?.Lower();
            line = _lines[n] = _irqRouter.Line(gsi);
        }
        return line;
    }

    // ---------------- save/restore (HVM_SAVE_CODE(HPET)) ----------------

    public unsafe HvmHwHpet Save()
    {
        var s = new HvmHwHpet { Capability = Capability };
        lock (_lock)
        {
            s.Config = _config;
            s.Isr = _isr;
            s.Mc64 = Counter(Now);
            for (int n = 0; n < Timers; n++)
            {
                s.Timers[n * 4] = _t[n].Config;
                s.Timers[n * 4 + 1] = _t[n].Cmp;
                s.Period[n] = _t[n].Period;
            }
        }
        return s;
    }

    public unsafe void Load(HvmHwHpet s)
    {
        lock (_lock)
        {
            long now = Now;
            _config = s.Config & (CfgEnable | CfgLegacy);
            _isr = s.Isr & ((1UL << Timers) - 1);
            _counterAt = s.Mc64;
            _counterBase = now;
            for (int n = 0; n < Timers; n++)
            {
                _t[n].Config = (_t[n].Config & ~TnWritable) | (s.Timers[n * 4] & TnWritable);
                _t[n].Cmp = s.Timers[n * 4 + 1];
                _t[n].Period = s.Period[n];
            }
            bool legacy = (_config & CfgLegacy) != 0 && Enabled;
            _pit.LegacyReplaced = legacy;
            _rtc.LegacyReplaced = legacy;
            for (int n = 0; n < Timers; n++)
                Arm(n, now);
        }
    }
}
