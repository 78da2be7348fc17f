using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86.Io;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// The emulated local APIC of one vCPU (Xen's vlapic): xAPIC registers through MMIO at 0xFEE00000 and
/// x2APIC registers through MSRs 0x800–0x8FF. APIC ID = 2 × vCPU id, as the MADT says. Fixed, NMI, INIT
/// and start-up IPIs are delivered to the domain's other vLAPICs; the timer runs on system time with a
/// 1 ns bus clock.
/// </summary>
internal sealed partial class Vlapic : IIoHandler
{
    public const ulong DefaultBase = 0xFEE00000;
    public const ulong ApicBaseBsp = 1 << 8, ApicBaseExtd = 1 << 10, ApicBaseEnable = 1 << 11;
    public const uint X2ApicMsrBase = 0x800, X2ApicMsrEnd = 0x8FF;
    public const uint MsrApicBase = 0x1B, MsrTscDeadline = 0x6E0;

    // Register offsets (xAPIC MMIO); the x2APIC MSR is 0x800 + offset / 16.
    public const int ID = 0x20, LVR = 0x30, TPR = 0x80, APR = 0x90, PPR = 0xA0, EOI = 0xB0, RRD = 0xC0, LDR = 0xD0,
        DFR = 0xE0, SVR = 0xF0, ISR = 0x100, TMR = 0x180, IRR = 0x200, ESR = 0x280, LVT_CMCI = 0x2F0, ICR = 0x300,
        ICR2 = 0x310, LVT_TIMER = 0x320, LVT_THERMAL = 0x330, LVT_PMC = 0x340, LVT_LINT0 = 0x350, LVT_LINT1 = 0x360,
        LVT_ERROR = 0x370, TMICT = 0x380, TMCCT = 0x390, TDCR = 0x3E0, SELF_IPI = 0x3F0;

    /// <summary>Version 0x14 with 6 LVT entries (max LVT index 5), like Xen's vlapic.</summary>
    public const uint Version = 0x14 | (5u << 16);

    private const uint LvtMasked = 1 << 16;
    private const uint SvrEnabled = 1 << 8;
    /// <summary>ESR bits: an IPI sent with, and an interrupt received with, a vector below 16.</summary>
    public const uint EsrSendIllegal = 1 << 5, EsrReceiveIllegal = 1 << 6;

    private readonly Vcpu _v;
    private readonly object _lock = new();
    private readonly uint[] _irr = new uint[8], _isr = new uint[8], _tmr = new uint[8];
    private uint _tpr, _ldr, _dfr = 0xFFFFFFFF, _svr = 0xFF, _esr, _icrLow, _icrHigh;
    /// <summary>Errors found since the last ESR write; the next write latches them into the
    /// readable ESR (SDM vol. 3 "Error Handling": software writes ESR before reading it).</summary>
    private uint _esrPending;
    private uint _lvtTimer = LvtMasked, _lvtThermal = LvtMasked, _lvtPmc = LvtMasked, _lvtLint0 = LvtMasked,
        _lvtLint1 = LvtMasked, _lvtError = LvtMasked, _lvtCmci = LvtMasked, _tmict, _tdcr;
    private long _timerStart, _timerDeadline = long.MaxValue;
    private ulong _tscDeadline;
    private volatile bool _anyIrr;

    public Vlapic(Vcpu v)
    {
        _v = v;
        ApicBase = DefaultBase | ApicBaseEnable | (v.Id == 0 ? ApicBaseBsp : 0);
    }

    public uint ApicId => (uint)(2 * _v.Id);
    public ulong ApicBase { get; set; }
    public bool X2Apic => (ApicBase & ApicBaseExtd) != 0;
    private bool SoftwareEnabled => (_svr & SvrEnabled) != 0;

    public bool HasPendingInterrupt => _anyIrr && HighestDeliverable() >= 0;

    /// <summary>The 8259's INTR reaches this vCPU: LINT0 unmasked in ExtINT mode, or the APIC disabled in
    /// IA32_APIC_BASE (Xen's vlapic_accept_pic_intr).</summary>
    public bool AcceptsPicInterrupt => (ApicBase & ApicBaseEnable) == 0 || (Volatile.Read(ref _lvtLint0) & (LvtMasked | 0x700)) == 0x700;

    /// <summary>Enabled both in IA32_APIC_BASE and in the SVR (not Xen's vlapic_disabled).</summary>
    public bool IsEnabled => (ApicBase & ApicBaseEnable) != 0 && SoftwareEnabled;

    // ---------------- register access ----------------

    public uint Read(int offset)
    {
        lock (_lock)
        {
            switch (offset)
            {
                case ID: return X2Apic ? ApicId : ApicId << 24;
                case LVR: return Version;
                case TPR: return _tpr;
                case APR: return 0;
                case PPR: return Ppr();
                case LDR: return X2Apic ? X2ApicLdr() : _ldr;
                case DFR: return X2Apic ? 0 : _dfr;
                case SVR: return _svr;
                case ESR: return _esr;
                case ICR: return _icrLow & ~(1u << 12); // delivery is instantaneous: never "send pending"
                case ICR2: return _icrHigh;
                case LVT_TIMER: return _lvtTimer;
                case LVT_THERMAL: return _lvtThermal;
                case LVT_PMC: return _lvtPmc;
                case LVT_LINT0: return _lvtLint0;
                case LVT_LINT1: return _lvtLint1;
                case LVT_ERROR: return _lvtError;
                case LVT_CMCI: return _lvtCmci;
                case TMICT: return _tmict;
                case TMCCT: return CurrentCount(_v.Domain.Host.Time.NowNs);
                case TDCR: return _tdcr;
            }
            if (offset >= ISR && offset < ISR + 0x80) return _isr[(offset - ISR) >> 4];
            if (offset >= TMR && offset < TMR + 0x80) return _tmr[(offset - TMR) >> 4];
            if (offset >= IRR && offset < IRR + 0x80) return _irr[(offset - IRR) >> 4];
            return 0;
        }
    }

    public void Write(int offset, uint value)
    {
        switch (offset)
        {
            case ICR:
                uint dest;
                lock (_lock)
                {
                    _icrLow = value;
                    dest = X2Apic ? _icrHigh : _icrHigh >> 24;
                }
                SendIpi(value, dest);
                return;
            case EOI:
                int eoied;
                bool levelTriggered;
                lock (_lock)
                    eoied = Eoi(out levelTriggered);
                // Outside the lock: the controller may deliver the vector again at once.
                if (levelTriggered)
                    _v.Domain.Arch.Irq.EndOfInterrupt(_v, (byte)eoied);
                return;
            case SELF_IPI:
                if (X2Apic)
                {
                    if ((byte)value < 16)
                        Error(EsrSendIllegal | EsrReceiveIllegal); // a self IPI is sent and received here
                    else
                        Accept((byte)value, level: false);
                }
                return;
        }
        lock (_lock)
        {
            switch (offset)
            {
                case ID: break; // read-only here: the MADT fixes the ID
                case TPR: _tpr = value & 0xFF; break;
                case LDR: if (!X2Apic) _ldr = value & 0xFF000000; break;
                case DFR: if (!X2Apic) _dfr = value | 0x0FFFFFFF; break;
                case SVR:
                    _svr = value & 0x13FF;
                    if (!SoftwareEnabled)
                    {
                        // Disabling the APIC masks every LVT.
                        _lvtTimer |= LvtMasked; _lvtThermal |= LvtMasked; _lvtPmc |= LvtMasked;
                        _lvtLint0 |= LvtMasked; _lvtLint1 |= LvtMasked; _lvtError |= LvtMasked; _lvtCmci |= LvtMasked;
                    }
                    break;
                case ESR:
                    _esr = _esrPending;
                    _esrPending = 0;
                    break;
                case ICR2: _icrHigh = X2Apic ? value : value & 0xFF000000; break;
                case LVT_TIMER:
                    _lvtTimer = Lvt(value & 0x7_10FF);
                    RearmTimer(_v.Domain.Host.Time.NowNs);
                    break;
                case LVT_THERMAL: _lvtThermal = Lvt(value & 0x1_07FF); break;
                case LVT_PMC: _lvtPmc = Lvt(value & 0x1_07FF); break;
                case LVT_LINT0: _lvtLint0 = Lvt(value & 0x1_A7FF); break;
                case LVT_LINT1: _lvtLint1 = Lvt(value & 0x1_A7FF); break;
                case LVT_ERROR: _lvtError = Lvt(value & 0x1_00FF); break;
                case LVT_CMCI: _lvtCmci = Lvt(value & 0x1_07FF); break;
                case TMICT:
                    _tmict = value;
                    _timerStart = _v.Domain.Host.Time.NowNs;
                    RearmTimer(_timerStart);
                    break;
                case TDCR: _tdcr = value & 0xB; break;
            }
        }
    }

    private uint Lvt(uint v) => SoftwareEnabled ? v : v | LvtMasked;

    // ---------------- MMIO and MSR entry points ----------------

    /// <summary>The xAPIC page is enabled and holds <paramref name="gpa"/>: the I/O bus asks this of the accessing
    /// vCPU's own vLAPIC before the domain's MMIO ranges (Xen's vlapic_range).</summary>
    public bool IsMmio(ulong gpa) => !X2Apic && (ApicBase & ApicBaseEnable) != 0 && (gpa & ~0xFFFUL) == (ApicBase & ~0xFFFUL);

    public ulong MmioRead(ulong gpa, int size)
    {
        int off = (int)(gpa & 0xFFF);
        uint v = Read(off & ~0xF);
        return (v >> ((off & 3) * 8)) & (size >= 4 ? 0xFFFFFFFFu : (1u << (size * 8)) - 1);
    }

    public void MmioWrite(ulong gpa, int size, ulong value)
    {
        int off = (int)(gpa & 0xFFF);
        if ((off & 0xF) != 0)
            return; // only aligned 32-bit register writes mean anything
        Write(off, (uint)value);
    }

    // As a device on the I/O bus: offsets within the page.
    ulong IIoHandler.Read(Vcpu v, ulong offset, int size) => MmioRead(offset, size);
    void IIoHandler.Write(Vcpu v, ulong offset, int size, ulong value) => MmioWrite(offset, size, value);

    /// <summary>x2APIC MSR read; false means #GP.</summary>
    public bool TryReadMsr(uint msr, out ulong value)
    {
        value = 0;
        if (msr == MsrApicBase)
        {
            value = ApicBase;
            return true;
        }
        if (msr == MsrTscDeadline)
        {
            value = _tscDeadline;
            return true;
        }
        if (!X2Apic || msr < X2ApicMsrBase || msr > X2ApicMsrEnd)
            return false;
        int off = (int)(msr - X2ApicMsrBase) << 4;
        if (off is EOI or SELF_IPI or DFR)
            return false;
        if (off == ICR)
        {
            lock (_lock)
                value = ((ulong)_icrHigh << 32) | _icrLow;
            return true;
        }
        value = Read(off);
        return true;
    }

    public bool TryWriteMsr(uint msr, ulong value)
    {
        if (msr == MsrApicBase)
        {
            // Keep the BSP bit; allow enabling x2APIC mode.
            ApicBase = (value & (ApicBaseEnable | ApicBaseExtd | ~0xFFFUL)) | (ApicBase & ApicBaseBsp);
            return true;
        }
        if (msr == MsrTscDeadline)
        {
            lock (_lock)
            {
                _tscDeadline = value;
                RearmTimer(_v.Domain.Host.Time.NowNs);
            }
            return true;
        }
        if (!X2Apic || msr < X2ApicMsrBase || msr > X2ApicMsrEnd)
            return false;
        int off = (int)(msr - X2ApicMsrBase) << 4;
        if (off is ID or LVR or LDR or PPR or TMCCT or DFR || (off >= ISR && off < IRR + 0x80))
            return false; // read-only in x2APIC mode
        if (off == ESR && value != 0)
            return false; // x2APIC mode takes only 0 for ESR
        if (off == ICR)
        {
            lock (_lock)
            {
                _icrHigh = (uint)(value >> 32);
                _icrLow = (uint)value;
            }
            SendIpi((uint)value, (uint)(value >> 32));
            return true;
        }
        Write(off, (uint)value);
        return true;
    }

    private uint X2ApicLdr() => ((ApicId >> 4) << 16) | (1u << (int)(ApicId & 0xF));

    // ---------------- interrupt acceptance ----------------

    private static int Highest(uint[] bits)
    {
        for (int i = 7; i >= 0; i--)
            if (bits[i] != 0)
                return i * 32 + 31 - System.Numerics.BitOperations.LeadingZeroCount(bits[i]);
        return -1;
    }

    private uint Ppr()
    {
        int isr = Highest(_isr);
        uint isrClass = isr < 0 ? 0 : (uint)isr & 0xF0;
        return (_tpr & 0xF0) >= isrClass ? _tpr : isrClass;
    }

    /// <summary>The vector the APIC would deliver now, or -1.</summary>
    public int HighestDeliverable()
    {
        lock (_lock)
        {
            int irr = Highest(_irr);
            if (irr < 0 || !SoftwareEnabled)
                return -1;
            return (irr & 0xF0) > (Ppr() & 0xF0) ? irr : -1;
        }
    }

    /// <summary>INTA: moves the highest deliverable vector from IRR to ISR.</summary>
    public int Acknowledge()
    {
        lock (_lock)
        {
            int v = HighestDeliverable();
            if (v < 0)
                return -1;
            _irr[v >> 5] &= ~(1u << (v & 31));
            _isr[v >> 5] |= 1u << (v & 31);
            _anyIrr = Highest(_irr) >= 0;
            return v;
        }
    }

    /// <summary>Retires the highest in-service vector; returns it (or -1), and whether it was level-triggered
    /// (its TMR bit), for the controller that must hear of its EOI.</summary>
    private int Eoi(out bool levelTriggered)
    {
        int v = Highest(_isr);
        levelTriggered = false;
        if (v >= 0)
        {
            _isr[v >> 5] &= ~(1u << (v & 31));
            levelTriggered = (_tmr[v >> 5] & (1u << (v & 31))) != 0;
        }
        return v;
    }

    /// <summary>Sets a vector in IRR and wakes the vCPU.</summary>
    public void Accept(byte vector, bool level)
    {
        if (vector < 16)
        {
            Error(EsrReceiveIllegal); // never reaches IRR
            return;
        }
        lock (_lock)
        {
            _irr[vector >> 5] |= 1u << (vector & 31);
            if (level)
                _tmr[vector >> 5] |= 1u << (vector & 31);
            else
                _tmr[vector >> 5] &= ~(1u << (vector & 31));
            _anyIrr = true;
        }
        _v.Kick();
    }

    /// <summary>Logs APIC errors; a newly logged error raises the LVT Error interrupt unless it
    /// is masked (an illegal vector there only logs a receive error once more, then stops).</summary>
    private void Error(uint bits)
    {
        byte vector;
        lock (_lock)
        {
            if ((_esrPending & bits) == bits)
                return;
            _esrPending |= bits;
            if ((_lvtError & LvtMasked) != 0)
                return;
            vector = (byte)_lvtError;
        }
        Accept(vector, level: false);
    }

    // ---------------- IPIs ----------------

    private const int DmFixed = 0, DmLowest = 1, DmSmi = 2, DmNmi = 4, DmInit = 5, DmStartup = 6;

    private void SendIpi(uint icr, uint dest)
    {
        int mode = (int)(icr >> 8) & 7;
        bool logical = (icr & (1 << 11)) != 0;
        bool assert = (icr & (1 << 14)) != 0;
        bool levelTrigger = (icr & (1 << 15)) != 0;
        int shorthand = (int)(icr >> 18) & 3;
        byte vector = (byte)icr;
        if (mode is DmFixed or DmLowest && vector < 16)
        {
            // The sender refuses the message: no destination sees it (a self IPI counts as received).
            Error(shorthand == 1 ? EsrSendIllegal | EsrReceiveIllegal : EsrSendIllegal);
            return;
        }

        foreach (var target in _v.Domain.Vcpus)
        {
            bool hit = shorthand switch
            {
                1 => target == _v,
                2 => true,
                3 => target != _v,
                _ => target.Arch.Vlapic.Matches(dest, logical, X2Apic),
            };
            if (!hit)
                continue;
            switch (mode)
            {
                case DmFixed:
                case DmLowest:
                    target.Arch.Vlapic.Accept(vector, levelTrigger);
                    break;
                case DmNmi:
                    target.PendingNmi = true;
                    target.Kick();
                    break;
                case DmInit:
                    // INIT level de-assert is a no-op on modern APICs.
                    if (assert || !levelTrigger)
                        _v.Domain.Host.InitVcpu(target);
                    break;
                case DmStartup:
                    _v.Domain.Host.StartupVcpu(target, vector);
                    break;
                case DmSmi:
                    break;
            }
        }
    }

    public bool Matches(uint dest, bool logical, bool x2apic)
    {
        uint broadcast = x2apic ? 0xFFFFFFFF : 0xFF;
        if (dest == broadcast)
            return true;
        if (!logical)
            return dest == ApicId;
        if (x2apic)
        {
            uint ldr = X2ApicLdr();
            return (dest >> 16) == (ldr >> 16) && (dest & ldr & 0xFFFF) != 0;
        }
        uint id = _ldr >> 24;
        if ((_dfr >> 28) == 0xF) // flat
            return (id & dest) != 0;
        return (dest >> 4) == (id >> 4) && (dest & id & 0xF) != 0; // cluster
    }

    /// <summary>INIT: back to the power-on register state.</summary>
    public void Reset()
    {
        lock (_lock)
        {
            Array.Clear(_irr); Array.Clear(_isr); Array.Clear(_tmr);
            _tpr = _ldr = _esr = _esrPending = _icrLow = _icrHigh = _tmict = _tdcr = 0;
            _dfr = 0xFFFFFFFF;
            _svr = 0xFF;
            _lvtTimer = _lvtThermal = _lvtPmc = _lvtLint0 = _lvtLint1 = _lvtError = _lvtCmci = LvtMasked;
            _timerDeadline = long.MaxValue;
            _tscDeadline = 0;
            _anyIrr = false;
        }
    }

    // ---------------- timer ----------------

    private int Divisor()
    {
        uint v = ((_tdcr >> 1) & 4) | (_tdcr & 3);
        return v == 7 ? 1 : 2 << (int)v;
    }

    private int TimerMode => (int)(_lvtTimer >> 17) & 3;

    private uint CurrentCount(long now)
    {
        if (_tmict == 0 || TimerMode == 2)
            return 0;
        long period = (long)_tmict * Divisor();
        long elapsed = now - _timerStart;
        if (TimerMode == 1)
            elapsed %= period;
        else if (elapsed >= period)
            return 0;
        return (uint)((period - elapsed) / Divisor());
    }

    private void RearmTimer(long now)
    {
        if (TimerMode == 2)
        {
            if (_tscDeadline == 0)
            {
                _timerDeadline = long.MaxValue;
                return;
            }
            var time = _v.Domain.Host.Time;
            ulong tscNow = time.ReadTsc(now);
            _timerDeadline = _tscDeadline <= tscNow ? now : now + (long)time.ScaleDelta(_tscDeadline - tscNow);
        }
        else if (_tmict == 0)
        {
            _timerDeadline = long.MaxValue;
            return;
        }
        else
        {
            long period = (long)_tmict * Divisor();
            long elapsed = now - _timerStart;
            _timerDeadline = TimerMode == 1 ? now + (period - elapsed % period) : _timerStart + period;
            if (TimerMode == 0 && elapsed >= period)
            {
                _timerDeadline = long.MaxValue;
                return;
            }
        }
        _v.Domain.Host.Timers.Schedule(_timerDeadline, _v, TimerKind.Lapic);
    }

    public void OnTimer(long now)
    {
        byte vector;
        lock (_lock)
        {
            if (_timerDeadline > now)
                return;
            vector = (byte)_lvtTimer;
            bool masked = (_lvtTimer & LvtMasked) != 0;
            switch (TimerMode)
            {
                case 1:
                    long period = (long)_tmict * Divisor();
                    _timerDeadline += period;
                    if (_timerDeadline <= now)
                        _timerDeadline = now + period;
                    _v.Domain.Host.Timers.Schedule(_timerDeadline, _v, TimerKind.Lapic);
                    break;
                case 2:
                    _tscDeadline = 0;
                    _timerDeadline = long.MaxValue;
                    break;
                default:
                    _timerDeadline = long.MaxValue;
                    break;
            }
            if (masked)
                return;
        }
        Accept(vector, level: false);
    }
}
