using XenSharp.Hypervisor.Common;
using XenSharp.Hypervisor.X86.Io;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.X86;

/// <summary>
/// The PC's two cascaded 8259A interrupt controllers (Xen's vpic.c): master at ports 0x20-0x21, slave at 0xA0-0xA1
/// on the master's IR2, the edge/level control registers at 0x4D0-0x4D1. ICW1-4 initialisation, OCW1 masks, OCW2
/// EOIs and priority rotation, OCW3 register select, poll and special mask mode, auto-EOI, special fully nested
/// mode, and spurious IRQ 7/15 when a request goes away before its acknowledge. The master's INT output reaches
/// vCPU 0 when its vLAPIC takes ExtINT through LINT0 or is disabled (<see cref="HvmVcpu"/>).
/// </summary>
internal sealed class Vpic
{
    public const ushort MasterPort = 0x20, SlavePort = 0xA0, ElcrPort = 0x4D0;

    /// <summary>The ELCR bits software may set: IRQ 0, 1, 2, 8 and 13 are always edge-triggered.</summary>
    private static readonly byte[] ElcrMask = [0xF8, 0xDE];

    private struct Chip
    {
        public byte Irr, Imr, Isr, IrqBase, PriorityAdd, Elcr, Input;
        /// <summary>0: running; 2, 3, 4: waiting for ICW2, ICW3, ICW4.</summary>
        public byte InitStep;
        public bool NeedIcw4, Single, ReadIsr, Poll, AutoEoi, RotateOnAutoEoi, SpecialFullyNested, SpecialMask, IntOutput;
    }

    private readonly Domain _domain;
    private readonly object _lock = new();
    private readonly Chip[] _chips = new Chip[2];

    public Vpic(Domain domain)
    {
        _domain = domain;
        Reset();
        Ports = new PortHandler(this, 0);
        SlavePorts = new PortHandler(this, 1);
        ElcrPorts = new ElcrHandler(this);
    }

    public IIoHandler Ports { get; }
    public IIoHandler SlavePorts { get; }
    public IIoHandler ElcrPorts { get; }

    public void Register(IoBus ports)
    {
        ports.Register(MasterPort, 2, Ports);
        ports.Register(SlavePort, 2, SlavePorts);
        ports.Register(ElcrPort, 2, ElcrPorts);
    }

    public void Reset()
    {
        lock (_lock)
        {
            for (int i = 0; i < 2; i++)
            {
                byte input = _chips[i].Input;
                _chips[i] = new Chip { Input = input };
            }
            // Before initialisation the chips are unprogrammed; Xen's reset leaves the bases at 0 and 8.
            _chips[1].IrqBase = 8;
            UpdateOutput();
        }
    }

    /// <summary>The master's INT line: an interrupt is waiting for vCPU 0's acknowledge. Read without the lock, as
    /// vCPU 0 asks at every interrupt window.</summary>
    public bool IntOutput => _intOutput;
    private volatile bool _intOutput;

    /// <summary>The level of ISA IRQ <paramref name="irq"/> (0-15) changed: a rising edge latches into IRR; a
    /// level-triggered (ELCR) input's IRR follows its line.</summary>
    public void SetIrqLevel(int irq, bool level)
    {
        if ((uint)irq >= 16 || irq == 2)
            return; // IR2 of the master is the slave's output
        bool kick;
        lock (_lock)
        {
            ref var c = ref _chips[irq >> 3];
            byte bit = (byte)(1 << (irq & 7));
            bool was = (c.Input & bit) != 0;
            if (level)
            {
                c.Input |= bit;
                if (!was || (c.Elcr & bit) != 0)
                    c.Irr |= bit;
            }
            else
            {
                c.Input = (byte)(c.Input & ~bit);
                if ((c.Elcr & bit) != 0)
                    c.Irr = (byte)(c.Irr & ~bit);
            }
            kick = UpdateOutput();
        }
        if (kick)
            KickBsp();
    }

    /// <summary>INTA from vCPU 0: the vector of the highest-priority request, moved to ISR (or not, with auto-EOI).
    /// -1 when the master's output is down.</summary>
    public int Acknowledge()
    {
        lock (_lock)
        {
            if (!_chips[0].IntOutput)
                return -1;
            int vector = Intack(0, out int irq);
            if (irq == 2)
                vector = Intack(1, out _);
            UpdateOutput();
            return vector;
        }
    }

    /// <summary>Takes the highest request of chip <paramref name="i"/> as INTA or a poll does; a request that
    /// vanished gives IR7 without setting ISR (the spurious interrupt).</summary>
    private int Intack(int i, out int irq)
    {
        ref var c = ref _chips[i];
        irq = HighestRequest(i);
        if (irq < 0)
        {
            irq = 7;
            if (i == 1)
                _chips[0].Isr |= 1 << 2; // the master did take IR2 for the slave's spurious IRQ 15
            return c.IrqBase + 7;
        }
        byte bit = (byte)(1 << irq);
        if ((c.Elcr & bit) == 0)
            c.Irr = (byte)(c.Irr & ~bit);
        if (c.AutoEoi)
        {
            if (c.RotateOnAutoEoi)
                c.PriorityAdd = (byte)((irq + 1) & 7);
        }
        else
            c.Isr |= bit;
        return c.IrqBase + irq;
    }

    /// <summary>The request chip <paramref name="i"/> would present: the highest-priority unmasked IRR bit above the
    /// highest in-service priority (special mask mode lets masked in-service levels through), or -1.</summary>
    private int HighestRequest(int i)
    {
        ref var c = ref _chips[i];
        int pending = c.Irr & ~c.Imr;
        if (i == 0 && _chips[1].IntOutput && (c.Imr & 4) == 0)
            pending |= 4;
        int req = HighestPriority(pending, c.PriorityAdd);
        if (req < 0)
            return -1;
        int inService = c.Isr;
        if (c.SpecialMask)
            inService &= ~c.Imr;
        if (i == 0 && c.SpecialFullyNested)
            inService &= ~4; // a further slave request may nest inside the slave's in-service one
        int isr = HighestPriority(inService, c.PriorityAdd);
        if (isr >= 0 && Priority(isr, c.PriorityAdd) <= Priority(req, c.PriorityAdd))
            return -1;
        return req;
    }

    private static int Priority(int irq, byte priorityAdd) => (irq - priorityAdd) & 7;

    private static int HighestPriority(int mask, byte priorityAdd)
    {
        if ((mask & 0xFF) == 0)
            return -1;
        for (int p = 0; p < 8; p++)
        {
            int irq = (p + priorityAdd) & 7;
            if ((mask & (1 << irq)) != 0)
                return irq;
        }
        return -1;
    }

    /// <summary>Recomputes both INT outputs (the slave's feeds the master's IR2); true when the master's rose.</summary>
    private bool UpdateOutput()
    {
        _chips[1].IntOutput = HighestRequest(1) >= 0;
        bool was = _chips[0].IntOutput;
        _chips[0].IntOutput = HighestRequest(0) >= 0;
        _intOutput = _chips[0].IntOutput;
        return !was && _chips[0].IntOutput;
    }

    private void KickBsp()
    {
        if (_domain.Vcpus.Length > 0)
            _domain.Vcpus[0].Kick();
    }

    private void Write(int i, int port, byte value)
    {
        bool kick;
        lock (_lock)
        {
            ref var c = ref _chips[i];
            if (port == 0)
            {
                if ((value & 0x10) != 0)
                {
                    // ICW1: start initialisation; masks, in-service and requests are cleared.
                    byte elcr = c.Elcr, input = c.Input, irqBase = c.IrqBase;
                    c = new Chip { Elcr = elcr, Input = input, IrqBase = irqBase, InitStep = 2, NeedIcw4 = (value & 1) != 0, Single = (value & 2) != 0 };
                }
                else if ((value & 0x08) != 0)
                {
                    // OCW3
                    if ((value & 0x04) != 0)
                        c.Poll = true;
                    if ((value & 0x02) != 0)
                        c.ReadIsr = (value & 1) != 0;
                    if ((value & 0x40) != 0)
                        c.SpecialMask = (value & 0x20) != 0;
                }
                else
                    Ocw2(ref c, value);
            }
            else
            {
                switch (c.InitStep)
                {
                    case 2:
                        c.IrqBase = (byte)(value & 0xF8);
                        c.InitStep = c.Single ? (byte)(c.NeedIcw4 ? 4 : 0) : (byte)3;
                        break;
                    case 3:
                        c.InitStep = c.NeedIcw4 ? (byte)4 : (byte)0; // ICW3: the cascade wiring is fixed
                        break;
                    case 4:
                        c.AutoEoi = (value & 0x02) != 0;
                        c.SpecialFullyNested = (value & 0x10) != 0;
                        c.InitStep = 0;
                        break;
                    default:
                        c.Imr = value; // OCW1
                        break;
                }
            }
            kick = UpdateOutput();
        }
        if (kick)
            KickBsp();
    }

    private static void Ocw2(ref Chip c, byte value)
    {
        int cmd = value >> 5;
        switch (cmd)
        {
            case 0: // rotate in auto-EOI mode: clear
            case 4: // set
                c.RotateOnAutoEoi = cmd == 4;
                break;
            case 1: // non-specific EOI
            case 5: // with rotation
            {
                int irq = HighestPriority(c.Isr, c.PriorityAdd);
                if (irq < 0)
                    break;
                c.Isr = (byte)(c.Isr & ~(1 << irq));
                if (cmd == 5)
                    c.PriorityAdd = (byte)((irq + 1) & 7);
                break;
            }
            case 3: // specific EOI
            case 7: // with rotation
                c.Isr = (byte)(c.Isr & ~(1 << (value & 7)));
                if (cmd == 7)
                    c.PriorityAdd = (byte)(((value & 7) + 1) & 7);
                break;
            case 6: // set priority: the named level becomes the lowest
                c.PriorityAdd = (byte)(((value & 7) + 1) & 7);
                break;
        }
    }

    private byte Read(int i, int port)
    {
        bool kick = false;
        byte result;
        lock (_lock)
        {
            ref var c = ref _chips[i];
            if (c.Poll)
            {
                // A poll is an INTA by software: the IRQ number with bit 7 set, or 0 when nothing is waiting.
                c.Poll = false;
                int irq = HighestRequest(i);
                if (irq < 0)
                    result = 0;
                else
                {
                    Intack(i, out irq);
                    if (i == 1)
                        _chips[0].Isr |= 1 << 2;
                    result = (byte)(0x80 | irq);
                }
                kick = UpdateOutput();
            }
            else if (port == 0)
                result = c.ReadIsr ? c.Isr : c.Irr;
            else
                result = c.Imr;
        }
        if (kick)
            KickBsp();
        return result;
    }

    private sealed class PortHandler(Vpic pic, int chip) : IIoHandler
    {
        public ulong Read(Vcpu v, ulong offset, int size) => size == 1 ? pic.Read(chip, (int)offset) : HvmIo.AllOnes(size);

        public void Write(Vcpu v, ulong offset, int size, ulong value)
        {
            if (size == 1)
                pic.Write(chip, (int)offset, (byte)value);
        }
    }

    private sealed class ElcrHandler(Vpic pic) : IIoHandler
    {
        public ulong Read(Vcpu v, ulong offset, int size)
        {
            if (size != 1)
                return HvmIo.AllOnes(size);
            lock (pic._lock)
                return pic._chips[offset].Elcr;
        }

        public void Write(Vcpu v, ulong offset, int size, ulong value)
        {
            if (size != 1)
                return;
            bool kick;
            lock (pic._lock)
            {
                ref var c = ref pic._chips[offset];
                c.Elcr = (byte)(value & ElcrMask[offset]);
                // A level input's request is its line; an edge input keeps what it latched.
                c.Irr = (byte)((c.Irr & ~c.Elcr) | (c.Input & c.Elcr));
                kick = pic.UpdateOutput();
            }
            if (kick)
                pic.KickBsp();
        }
    }

    // ---------------- save/restore (HVM_SAVE_CODE(PIC), one record per chip) ----------------

    public HvmHwVpic Save(int chip)
    {
        lock (_lock)
        {
            var c = _chips[chip];
            byte initState = c.InitStep switch { 2 => 1, 3 => 2, 4 => 3, _ => 0 };
            return new HvmHwVpic
            {
                Irr = c.Irr, Imr = c.Imr, Isr = c.Isr, IrqBase = c.IrqBase,
                // init_state: the step in bits 0-1, ICW4 needed in bit 2, single in bit 3; priority_add in bits 4-7.
                InitStatePriority = (byte)(initState | (c.NeedIcw4 ? 4 : 0) | (c.Single ? 8 : 0) | (c.PriorityAdd << 4)),
                Flags = (byte)((c.ReadIsr ? 1 : 0) | (c.Poll ? 2 : 0) | (c.AutoEoi ? 4 : 0) | (c.RotateOnAutoEoi ? 8 : 0)
                    | (c.SpecialFullyNested ? 16 : 0) | (c.SpecialMask ? 32 : 0) | (chip == 0 ? 64 : 0)),
                Elcr = c.Elcr, IntOutput = (byte)(c.IntOutput ? 1 : 0),
            };
        }
    }

    public void Load(int chip, in HvmHwVpic s)
    {
        bool kick;
        lock (_lock)
        {
            ref var c = ref _chips[chip];
            byte input = c.Input;
            int step = s.InitStatePriority & 3;
            c = new Chip
            {
                Irr = s.Irr, Imr = s.Imr, Isr = s.Isr, IrqBase = (byte)(s.IrqBase & 0xF8), Input = input,
                InitStep = step switch { 1 => 2, 2 => 3, 3 => 4, _ => 0 },
                NeedIcw4 = (s.InitStatePriority & 4) != 0, Single = (s.InitStatePriority & 8) != 0,
                PriorityAdd = (byte)(s.InitStatePriority >> 4 & 7),
                ReadIsr = (s.Flags & 1) != 0, Poll = (s.Flags & 2) != 0, AutoEoi = (s.Flags & 4) != 0,
                RotateOnAutoEoi = (s.Flags & 8) != 0, SpecialFullyNested = (s.Flags & 16) != 0, SpecialMask = (s.Flags & 32) != 0,
                Elcr = (byte)(s.Elcr & ElcrMask[chip]),
            };
            kick = UpdateOutput();
        }
        if (kick)
            KickBsp();
    }
}
