using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.X86;

/// <summary>The vLAPIC's part of an HVM context: the LAPIC record (base MSR, enable state, timer divisor,
/// TSC deadline) and LAPIC_REGS (the 1 KiB register page as the guest reads it over MMIO).</summary>
internal sealed partial class Vlapic
{
    public HvmHwLapic Save(Span<byte> regs)
    {
        regs.Clear();
        lock (_lock)
        {
            for (int offset = 0; offset < 0x400; offset += 16)
            {
                uint value = offset == ID ? ApicId << 24 : offset == LDR ? (X2Apic ? X2ApicLdr() : _ldr) : ReadLocked(offset);
                System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(regs[offset..], value);
            }
            return new HvmHwLapic
            {
                ApicBaseMsr = ApicBase,
                Disabled = ((ApicBase & ApicBaseEnable) == 0 ? HvmSave.VLAPIC_HW_DISABLED : 0) | (SoftwareEnabled ? 0 : HvmSave.VLAPIC_SW_DISABLED),
                TimerDivisor = (uint)Divisor(),
                TdtMsr = _tscDeadline,
            };
        }
    }

    /// <summary>Loads a saved vLAPIC; its timer restarts from the saved current count (or TSC deadline) now.</summary>
    public void Load(in HvmHwLapic hw, ReadOnlySpan<byte> regs)
    {
        var saved = regs.ToArray();
        uint R(int offset) => System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(saved.AsSpan(offset));
        long now = _v.Domain.Host.Time.NowNs;
        lock (_lock)
        {
            ApicBase = hw.ApicBaseMsr;
            _tpr = R(TPR) & 0xFF;
            _ldr = R(LDR);
            _dfr = R(DFR);
            _svr = R(SVR);
            _esr = R(ESR);
            _esrPending = 0;
            _icrLow = R(ICR);
            _icrHigh = R(ICR2);
            _lvtTimer = R(LVT_TIMER);
            _lvtThermal = R(LVT_THERMAL);
            _lvtPmc = R(LVT_PMC);
            _lvtLint0 = R(LVT_LINT0);
            _lvtLint1 = R(LVT_LINT1);
            _lvtError = R(LVT_ERROR);
            _lvtCmci = R(LVT_CMCI);
            _tdcr = R(TDCR);
            _tmict = R(TMICT);
            bool any = false;
            for (int i = 0; i < 8; i++)
            {
                _isr[i] = R(ISR + i * 16);
                _tmr[i] = R(TMR + i * 16);
                _irr[i] = R(IRR + i * 16);
                any |= _irr[i] != 0;
            }
            _anyIrr = any;
            _tscDeadline = hw.TdtMsr;
            // The count runs on from where it stood when saved.
            uint current = R(TMCCT);
            _timerStart = now - (long)(_tmict - Math.Min(current, _tmict)) * Divisor();
            _timerDeadline = long.MaxValue;
            if (TimerMode == 2 ? _tscDeadline != 0 : _tmict != 0 && (TimerMode == 1 || current != 0))
                RearmTimer(now);
        }
    }

    private uint ReadLocked(int offset) => offset switch
    {
        TMCCT => CurrentCount(_v.Domain.Host.Time.NowNs),
        PPR => Ppr(),
        LVR => Version,
        TPR => _tpr,
        DFR => X2Apic ? 0 : _dfr,
        SVR => _svr,
        ESR => _esr,
        ICR => _icrLow & ~(1u << 12),
        ICR2 => _icrHigh,
        LVT_TIMER => _lvtTimer,
        LVT_THERMAL => _lvtThermal,
        LVT_PMC => _lvtPmc,
        LVT_LINT0 => _lvtLint0,
        LVT_LINT1 => _lvtLint1,
        LVT_ERROR => _lvtError,
        LVT_CMCI => _lvtCmci,
        TMICT => _tmict,
        TDCR => _tdcr,
        >= ISR and < ISR + 0x80 => _isr[(offset - ISR) >> 4],
        >= TMR and < TMR + 0x80 => _tmr[(offset - TMR) >> 4],
        >= IRR and < IRR + 0x80 => _irr[(offset - IRR) >> 4],
        _ => 0,
    };
}
