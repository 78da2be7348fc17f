using XenSharp.Hypervisor.Common;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>
/// The MC146818 real-time clock and its CMOS RAM (Xen's rtc.c) at ports 0x70 (index; bit 7 is the NMI mask) and 0x71
/// (data). Its time is the domain's wall clock (host time plus xl.cfg rtc_timeoffset, which already holds the local
/// time zone with localtime=1) plus what the guest sets. Registers A-D: update-in-progress during the last 244 us
/// of each second, the periodic rate, SET (time frozen while the guest writes it), the periodic, alarm and
/// update-ended interrupt enables, binary or BCD and 12- or 24-hour formats; register C's flags are cleared by
/// reading it. Interrupts go to ISA IRQ 8. The CMOS RAM above register D is plain storage (the century at 0x32) while
/// the domain has no device model; with an IOREQ server it is the device model's, as Xen's vRTC keeps only the clock's
/// RTC_CMOS_SIZE registers and declines the rest: an index write past them, and the data port while such an index is
/// selected, go to QEMU, whose CMOS holds what SeaBIOS reads there (the boot order of <c>-boot</c>, the drives).
/// </summary>
internal sealed class Rtc : IPartialIoHandler, IDeviceTimer
{
    public const ushort Port = 0x70;
    public const int Irq = 8;

    public const int RegSeconds = 0, RegSecondsAlarm = 1, RegMinutes = 2, RegMinutesAlarm = 3, RegHours = 4,
        RegHoursAlarm = 5, RegDayOfWeek = 6, RegDayOfMonth = 7, RegMonth = 8, RegYear = 9, RegA = 10, RegB = 11,
        RegC = 12, RegD = 13, RegCentury = 0x32;

    public const byte AUip = 0x80, BSet = 0x80, BPie = 0x40, BAie = 0x20, BUie = 0x10, BDm = 0x04, B24h = 0x02,
        CIrqf = 0x80, CPf = 0x40, CAf = 0x20, CUf = 0x10, DVrt = 0x80;

    private const long Second = 1_000_000_000, UipWindow = 244_000;

    private readonly object _lock = new();
    private readonly byte[] _cmos = new byte[128];
    private readonly IrqLine _irq;
    private readonly Vpt _periodic;
    private byte _index;
    /// <summary>The guest's offset from the domain's wall clock, in ns.</summary>
    private long _offsetNs;
    /// <summary>The RTC second last seen, for the update-ended and alarm flags.</summary>
    private long _lastSecond;
    private long _secondTimerDeadline = long.MaxValue;

    public Rtc(Domain domain, IrqRouter irq)
    {
        Domain = domain;
        _irq = irq.Line(PlatformIrq.IsaIrqToGsi(Irq));
        _periodic = new Vpt(domain, _ => PeriodicTick());
        _cmos[RegA] = 0x26; // 32.768 kHz divider, 1024 Hz periodic rate
        _cmos[RegB] = B24h;
        _cmos[RegD] = DVrt;
        _lastSecond = RtcNs(Domain.Host.Time.NowNs) / Second;
        var t = DateTimeOffset.FromUnixTimeMilliseconds(_lastSecond * 1000);
        _cmos[RegCentury] = ToBcd(t.Year / 100);
    }

    public Domain Domain { get; }

    /// <summary>Set while the HPET's legacy replacement route has IRQ 8: the RTC then raises nothing.</summary>
    public volatile bool LegacyReplaced;

    /// <summary>RTC time in ns since the Unix epoch.</summary>
    private long RtcNs(long now) => Domain.Host.Time.BootWallclockNs + Domain.WallclockOffsetNs + now + _offsetNs;

    private bool Binary => (_cmos[RegB] & BDm) != 0;
    private bool Running => (_cmos[RegA] & 0x70) == 0x20 && (_cmos[RegB] & BSet) == 0;

    /// <summary>Whether the register at <paramref name="index"/> is the device model's (Xen's handle_rtc_io declining).</summary>
    private bool DeviceModelOwns(int index) => index >= HvmHwRtc.RTC_CMOS_SIZE && Domain.Arch.Ioreq.Any;

    public ulong Read(Vcpu v, ulong offset, int size) => TryRead(v, offset, size, out ulong value) ? value : HvmIo.AllOnes(size);

    public void Write(Vcpu v, ulong offset, int size, ulong value) => TryWrite(v, offset, size, value);

    public bool TryRead(Vcpu v, ulong offset, int size, out ulong value)
    {
        value = HvmIo.AllOnes(size);
        if (DeviceModelOwns(_index))
            return false;
        if (offset != 0)
            value = ReadData();
        return true; // the index register is write-only
    }

    private byte ReadData()
    {
        bool lower = false;
        byte value;
        lock (_lock)
        {
            long now = Domain.Host.Time.NowNs;
            UpdateFlags(now);
            int index = _index;
            if (index <= RegYear && (_cmos[RegB] & BSet) == 0 && index is not (RegSecondsAlarm or RegMinutesAlarm or RegHoursAlarm))
                value = TimeRegister(index, RtcNs(now));
            else if (index == RegA)
                value = (byte)(_cmos[RegA] & ~AUip | (InUpdateWindow(now) ? AUip : 0));
            else if (index == RegC)
            {
                value = _cmos[RegC];
                _cmos[RegC] = 0;
                lower = true;
            }
            else
                value = _cmos[index];
        }
        if (lower)
            _irq.Lower();
        return value;
    }

    public bool TryWrite(Vcpu v, ulong offset, int size, ulong value)
    {
        if (offset == 0)
        {
            lock (_lock)
                _index = (byte)(value & 0x7F);
            return !DeviceModelOwns(_index);
        }
        if (DeviceModelOwns(_index))
            return false;
        lock (_lock)
        {
            long now = Domain.Host.Time.NowNs;
            UpdateFlags(now);
            byte b = (byte)value;
            switch (_index)
            {
                case RegA:
                    _cmos[RegA] = (byte)(b & 0x7F);
                    break;
                case RegB:
                {
                    bool wasSet = (_cmos[RegB] & BSet) != 0;
                    if (!wasSet && (b & BSet) != 0)
                        FreezeTime(now); // the guest sets the clock: registers hold still
                    if ((b & BSet) != 0)
                        b = (byte)(b & ~BUie);
                    _cmos[RegB] = b;
                    if (wasSet && (b & BSet) == 0)
                        TakeGuestTime(now);
                    break;
                }
                case RegC:
                case RegD:
                    break; // read-only
                case >= RegSeconds and <= RegYear:
                    if (_index is RegSecondsAlarm or RegMinutesAlarm or RegHoursAlarm || (_cmos[RegB] & BSet) != 0)
                        _cmos[_index] = b;
                    else
                    {
                        // A time register written while the clock runs takes effect at once.
                        FreezeTime(now);
                        _cmos[_index] = b;
                        TakeGuestTime(now);
                    }
                    break;
                default:
                    _cmos[_index] = b;
                    break;
            }
            Rearm(now);
        }
        return true;
    }

    private bool InUpdateWindow(long now) => Running && Mod(RtcNs(now), Second) >= Second - UipWindow;

    private static long Mod(long a, long m) => ((a % m) + m) % m;

    /// <summary>Copies the running time into the time registers.</summary>
    private void FreezeTime(long now)
    {
        long t = RtcNs(now);
        foreach (int r in (ReadOnlySpan<int>)[RegSeconds, RegMinutes, RegHours, RegDayOfWeek, RegDayOfMonth, RegMonth, RegYear])
            _cmos[r] = TimeRegister(r, t);
        _cmos[RegCentury] = ToBcd(DateTimeOffset.FromUnixTimeMilliseconds(Math.Clamp(t / 1_000_000, MinMs, MaxMs)).Year / 100);
    }

    private const long MinMs = 0, MaxMs = 253402300799000; // 1970 to 9999

    /// <summary>The time the guest wrote becomes the clock, starting a new second now.</summary>
    private void TakeGuestTime(long now)
    {
        int sec = FromReg(_cmos[RegSeconds]), min = FromReg(_cmos[RegMinutes]), hour = DecodeHour(_cmos[RegHours]);
        int day = FromReg(_cmos[RegDayOfMonth]), month = FromReg(_cmos[RegMonth]), year = FromReg(_cmos[RegYear]);
        int century = FromBcd(_cmos[RegCentury]);
        if (century < 19 || century > 99)
            century = 20;
        // Out-of-range values are what a real part would count from anyway; clamp them into a date.
        try
        {
            var dt = new DateTime(century * 100 + Math.Clamp(year, 0, 99), Math.Clamp(month, 1, 12), 1, 0, 0, 0, DateTimeKind.Utc);
            dt = dt.AddDays(Math.Clamp(day, 1, DateTime.DaysInMonth(dt.Year, dt.Month)) - 1)
                .AddHours(Math.Clamp(hour, 0, 23)).AddMinutes(Math.Clamp(min, 0, 59)).AddSeconds(Math.Clamp(sec, 0, 59));
            long wanted = (dt - DateTime.UnixEpoch).Ticks * 100;
            _offsetNs += wanted - RtcNs(now);
            _lastSecond = RtcNs(now) / Second;
        }
        catch (ArgumentOutOfRangeException)
        {
            // A year the calendar cannot hold: keep the old time.
        }
    }

    private int FromReg(byte b) => Binary ? b : FromBcd(b);
    private static int FromBcd(byte b) => (b >> 4) * 10 + (b & 0xF);
    private static byte ToBcd(int v) => (byte)(((v / 10 % 10) << 4) | (v % 10));
    private byte ToReg(int v) => Binary ? (byte)v : ToBcd(v);

    private int DecodeHour(byte b)
    {
        if ((_cmos[RegB] & B24h) != 0)
            return FromReg((byte)(b & 0x7F));
        int h = FromReg((byte)(b & 0x7F)) % 12;
        return (b & 0x80) != 0 ? h + 12 : h;
    }

    private byte TimeRegister(int index, long rtcNs)
    {
        var t = DateTimeOffset.FromUnixTimeMilliseconds(Math.Clamp(rtcNs / 1_000_000, MinMs, MaxMs)).UtcDateTime;
        switch (index)
        {
            case RegSeconds: return ToReg(t.Second);
            case RegMinutes: return ToReg(t.Minute);
            case RegHours:
                if ((_cmos[RegB] & B24h) != 0)
                    return ToReg(t.Hour);
                int h12 = t.Hour % 12 == 0 ? 12 : t.Hour % 12;
                return (byte)(ToReg(h12) | (t.Hour >= 12 ? 0x80 : 0));
            case RegDayOfWeek: return ToReg((int)t.DayOfWeek + 1);
            case RegDayOfMonth: return ToReg(t.Day);
            case RegMonth: return ToReg(t.Month);
            case RegYear: return ToReg(t.Year % 100);
            default: return _cmos[index];
        }
    }

    /// <summary>The periodic rate of register A in ns, or 0 when off (rates 1 and 2 are 3.90625 and 7.8125 ms).</summary>
    private long PeriodNs()
    {
        int rs = _cmos[RegA] & 0xF;
        if (rs == 0 || (_cmos[RegA] & 0x70) != 0x20)
            return 0;
        if (rs <= 2)
            rs += 7;
        return (1L << (rs - 1)) * Second / 32768;
    }

    /// <summary>Sets UF and AF for every second boundary passed since the last look.</summary>
    private void UpdateFlags(long now)
    {
        if (!Running)
        {
            _lastSecond = RtcNs(now) / Second;
            return;
        }
        long sec = RtcNs(now) / Second;
        if (sec == _lastSecond)
            return;
        _lastSecond = sec;
        byte flags = CUf;
        if (AlarmMatches(sec * Second))
            flags |= CAf;
        RaiseFlags(flags);
        if (PeriodNs() != 0 && (_cmos[RegB] & BPie) == 0)
            _cmos[RegC] |= CPf; // the periodic flag runs whether or not it interrupts
    }

    private bool AlarmMatches(long rtcNs)
    {
        // An alarm byte with its top two bits set matches any value.
        static bool Match(byte alarm, byte now) => (alarm & 0xC0) == 0xC0 || alarm == now;
        return Match(_cmos[RegSecondsAlarm], TimeRegister(RegSeconds, rtcNs))
            && Match(_cmos[RegMinutesAlarm], TimeRegister(RegMinutes, rtcNs))
            && Match(_cmos[RegHoursAlarm], TimeRegister(RegHours, rtcNs));
    }

    /// <summary>Sets flags in register C; when that newly makes IRQF, the IRQ line gives an edge.</summary>
    private void RaiseFlags(byte flags)
    {
        byte enabled = (byte)(_cmos[RegB] & (BPie | BAie | BUie));
        bool was = (_cmos[RegC] & CIrqf) != 0;
        _cmos[RegC] |= flags;
        if ((_cmos[RegC] & enabled & (CPf | CAf | CUf)) != 0)
            _cmos[RegC] |= CIrqf;
        if (!was && (_cmos[RegC] & CIrqf) != 0 && !LegacyReplaced)
        {
            _irq.Lower();
            _irq.Raise();
        }
    }

    private void PeriodicTick()
    {
        lock (_lock)
            RaiseFlags(CPf);
    }

    /// <summary>Arms the periodic timer for PIE and a timer at the next second for UIE and AIE.</summary>
    private void Rearm(long now)
    {
        long period = PeriodNs();
        if ((_cmos[RegB] & BPie) != 0 && period != 0)
        {
            if (!_periodic.Running || _periodic.Period != period)
                _periodic.Start(now + period, period);
        }
        else
            _periodic.Stop();
        if ((_cmos[RegB] & (BUie | BAie)) != 0 && Running)
        {
            long next = now + (Second - Mod(RtcNs(now), Second));
            if (next != _secondTimerDeadline)
            {
                _secondTimerDeadline = next;
                Domain.Host.Timers.Schedule(next, this, TimerKind.Device);
            }
        }
        else
            _secondTimerDeadline = long.MaxValue;
    }

    public void OnTimer(long now)
    {
        lock (_lock)
        {
            if (_secondTimerDeadline > now)
                return;
            _secondTimerDeadline = long.MaxValue;
            UpdateFlags(now);
            Rearm(now);
        }
    }

    // ---------------- save/restore (HVM_SAVE_CODE(RTC)) ----------------

    public HvmHwRtc Save()
    {
        var s = new HvmHwRtc();
        lock (_lock)
        {
            long now = Domain.Host.Time.NowNs;
            unsafe
            {
                for (int i = 0; i < HvmHwRtc.RTC_CMOS_SIZE; i++)
                    s.CmosData[i] = i <= RegYear && i is not (RegSecondsAlarm or RegMinutesAlarm or RegHoursAlarm) && (_cmos[RegB] & BSet) == 0
                        ? TimeRegister(i, RtcNs(now)) : _cmos[i];
            }
            s.CmosIndex = _index;
            s.RtcOffset = _offsetNs / Second;
        }
        return s;
    }

    public void Load(in HvmHwRtc s)
    {
        lock (_lock)
        {
            unsafe
            {
                for (int i = 0; i < HvmHwRtc.RTC_CMOS_SIZE; i++)
                    _cmos[i] = s.CmosData[i];
            }
            _cmos[RegA] &= 0x7F;
            _cmos[RegD] = DVrt;
            _index = (byte)(s.CmosIndex & 0x7F);
            _offsetNs = Math.Clamp(s.RtcOffset, -(1L << 33), 1L << 33) * Second;
            long now = Domain.Host.Time.NowNs;
            _lastSecond = RtcNs(now) / Second;
            Rearm(now);
        }
    }
}
