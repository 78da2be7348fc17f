using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86.Io;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// The domain's I/O APIC (Xen's vioapic.c, an 82093AA of version 0x11) at 0xFEC00000 with Xen's 48 pins: IOREGSEL
/// at offset 0 and IOWIN at 0x10 reach the ID, version, arbitration ID and the redirection table. Each pin follows
/// its GSI: an edge entry delivers on a rising edge, a level entry while the line is up, then holds (remote IRR)
/// until the vLAPIC's EOI of its vector, after which a line still up delivers again. Fixed and lowest-priority
/// interrupts go to the vLAPICs the destination names, NMI to those vCPUs' NMI line; ExtINT means the 8259's output.
/// </summary>
internal sealed class Vioapic : IIoHandler
{
    public const ulong DefaultBase = 0xFEC00000;
    public const int Length = 0x100;
    public const int Pins = HvmHwVioapic.VIOAPIC_NUM_PINS;
    public const uint VersionId = 0x11;
    private const int RegSel = 0x00, RegWin = 0x10;

    // Redirection entry bits.
    private const ulong Masked = 1UL << 16, LevelTrig = 1UL << 15, RemoteIrr = 1UL << 14, DeliveryStatus = 1UL << 12;
    /// <summary>Bits the guest may write: vector, delivery mode, destination mode, polarity, trigger mode, mask, destination.</summary>
    private const ulong Writable = 0xFF00_0000_0001_AFFFUL;

    private readonly Domain _domain;
    private readonly object _lock = new();
    private readonly ulong[] _redir = new ulong[Pins];
    private readonly bool[] _level = new bool[Pins];
    private uint _ioregsel, _id;
    private int _lowestPriorityNext;

    public Vioapic(Domain domain)
    {
        _domain = domain;
        for (int i = 0; i < Pins; i++)
            _redir[i] = Masked;
    }

    public ulong Base { get; private set; } = DefaultBase;

    public ulong Read(Vcpu v, ulong offset, int size)
    {
        lock (_lock)
        {
            switch (offset)
            {
                case RegSel: return _ioregsel;
                case RegWin: return ReadIndirect();
                default: return 0;
            }
        }
    }

    public void Write(Vcpu v, ulong offset, int size, ulong value)
    {
        int deliver = -1;
        lock (_lock)
        {
            switch (offset)
            {
                case RegSel:
                    _ioregsel = (uint)value & 0xFF;
                    return;
                case RegWin:
                    deliver = WriteIndirect((uint)value);
                    break;
                default:
                    return;
            }
        }
        if (deliver >= 0)
            Deliver(deliver);
    }

    private ulong ReadIndirect()
    {
        switch (_ioregsel)
        {
            case 0: return _id << 24;
            case 1: return VersionId | ((uint)(Pins - 1) << 16);
            case 2: return _id << 24;
        }
        int pin = (int)(_ioregsel - 0x10) >> 1;
        if (_ioregsel < 0x10 || pin >= Pins)
            return 0xFFFFFFFF;
        return (_ioregsel & 1) != 0 ? _redir[pin] >> 32 : (uint)_redir[pin];
    }

    /// <summary>Returns a pin to deliver now (an unmasked level entry with its line up and no remote IRR), or -1.</summary>
    private int WriteIndirect(uint value)
    {
        if (_ioregsel == 0)
        {
            _id = (value >> 24) & 0xF;
            return -1;
        }
        int pin = (int)(_ioregsel - 0x10) >> 1;
        if (_ioregsel < 0x10 || pin >= Pins)
            return -1;
        ulong e = _redir[pin];
        ulong next = (_ioregsel & 1) != 0 ? (e & 0xFFFFFFFFUL) | ((ulong)value << 32) : (e & ~0xFFFFFFFFUL) | value;
        next = (next & Writable) | (e & (RemoteIrr | DeliveryStatus));
        if ((next & LevelTrig) == 0)
            next &= ~RemoteIrr; // an edge entry has no remote IRR
        _redir[pin] = next;
        return (next & (Masked | LevelTrig | RemoteIrr)) == LevelTrig && _level[pin] ? pin : -1;
    }

    /// <summary>GSI <paramref name="pin"/>'s line changed level.</summary>
    public void SetIrqLevel(uint pin, bool level)
    {
        if (pin >= Pins)
            return;
        bool deliver;
        lock (_lock)
        {
            bool was = _level[pin];
            _level[pin] = level;
            ulong e = _redir[pin];
            if (!level || (e & Masked) != 0)
                return;
            deliver = (e & LevelTrig) != 0 ? (e & RemoteIrr) == 0 : !was;
        }
        if (deliver)
            Deliver((int)pin);
    }

    /// <summary>vCPU <paramref name="v"/> EOIed level-triggered <paramref name="vector"/>: the entries waiting for it
    /// lose their remote IRR, and those whose line is still up deliver again.</summary>
    public void EndOfInterrupt(Vcpu v, byte vector)
    {
        for (int pin = 0; pin < Pins; pin++)
        {
            lock (_lock)
            {
                ulong e = _redir[pin];
                if ((byte)e != vector || (e & RemoteIrr) == 0)
                    continue;
                _redir[pin] = e & ~RemoteIrr;
                if ((e & Masked) != 0 || !_level[pin])
                    continue;
            }
            Deliver(pin);
        }
    }

    /// <summary>Pin 0 unmasked in ExtINT mode towards <paramref name="apicId"/>: the 8259's output reaches that local
    /// APIC through the IOAPIC (virtual wire mode, as hvmloader sets it up).</summary>
    public bool RoutesExtIntTo(uint apicId)
    {
        ulong e = Volatile.Read(ref _redir[0]);
        return (e & Masked) == 0 && ((int)(e >> 8) & 7) == DmExtInt && (uint)(e >> 56) == apicId;
    }

    private const int DmFixed = 0, DmLowest = 1, DmSmi = 2, DmNmi = 4, DmInit = 5, DmExtInt = 7;

    private void Deliver(int pin)
    {
        ulong e;
        lock (_lock)
        {
            e = _redir[pin];
            if ((e & Masked) != 0)
                return;
            if ((e & LevelTrig) != 0)
            {
                if ((e & RemoteIrr) != 0)
                    return;
                _redir[pin] = e | RemoteIrr;
            }
        }
        byte vector = (byte)e;
        int mode = (int)(e >> 8) & 7;
        bool logical = (e & (1 << 11)) != 0, level = (e & LevelTrig) != 0;
        uint dest = (uint)(e >> 56);
        var vcpus = _domain.Vcpus;
        switch (mode)
        {
            case DmFixed:
                foreach (var t in vcpus)
                    if (t.Arch.Vlapic.Matches(dest, logical, x2apic: false))
                        t.Arch.Vlapic.Accept(vector, level);
                break;
            case DmLowest:
            {
                // Every vLAPIC has the same priority here: take the matching vCPUs in turn.
                int n = vcpus.Length;
                for (int k = 0; k < n; k++)
                {
                    var t = vcpus[(_lowestPriorityNext + k) % n];
                    if (!t.Arch.Vlapic.Matches(dest, logical, x2apic: false))
                        continue;
                    _lowestPriorityNext = (t.Id + 1) % n;
                    t.Arch.Vlapic.Accept(vector, level);
                    break;
                }
                break;
            }
            case DmNmi:
                foreach (var t in vcpus)
                    if (t.Arch.Vlapic.Matches(dest, logical, x2apic: false))
                    {
                        t.PendingNmi = true;
                        t.Kick();
                    }
                break;
            case DmExtInt:
                // The 8259 presents the vector; it reaches vCPU 0 through its own INT line.
                if (vcpus.Length > 0)
                    vcpus[0].Kick();
                break;
            case DmSmi:
            case DmInit:
            default:
                break; // no SMM; INIT through an IOAPIC is not something a guest relies on
        }
    }

    public HvmHwVioapic Save()
    {
        var s = new HvmHwVioapic { BaseAddress = Base };
        lock (_lock)
        {
            s.Ioregsel = _ioregsel;
            s.Id = _id;
            unsafe
            {
                for (int i = 0; i < Pins; i++)
                    s.Redirtbl[i] = _redir[i];
            }
        }
        return s;
    }

    public void Load(in HvmHwVioapic s)
    {
        lock (_lock)
        {
            _ioregsel = s.Ioregsel & 0xFF;
            _id = s.Id & 0xF;
            unsafe
            {
                for (int i = 0; i < Pins; i++)
                    _redir[i] = s.Redirtbl[i] & (Writable | RemoteIrr);
            }
        }
    }
}
