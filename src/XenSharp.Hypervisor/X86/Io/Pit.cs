using XenSharp.Hypervisor.Common;
using XenSharp.Public.Hvm;

namespace XenSharp.Hypervisor.X86.Io;

/// <summary>
/// The 8254 programmable interval timer (Xen's i8254.c): three 16-bit counters at 1.193182 MHz on ports 0x40-0x42,
/// the control word at 0x43 (modes 0-5, LSB/MSB/word access, counter latch, read-back of counts and status), and
/// port 0x61 with channel 2's gate, the speaker data bit, its output (bit 5) and the refresh toggle (bit 4). Counters
/// run on system time from the moment they are loaded. Channel 0 interrupts on ISA IRQ 0: periodically in modes 2
/// and 3, once in the others, through a <see cref="Vpt"/> that follows the domain's timer_mode; channel 0 is
/// silenced while the HPET's legacy replacement route owns IRQ 0.
/// </summary>
internal sealed class Pit
{
    public const ushort Port = 0x40, SpeakerPort = 0x61;
    public const long Frequency = 1_193_182;

    private const byte NoMode = 0xFF;
    private const byte RwLsb = 1, RwMsb = 2, RwWord0 = 3, RwWord1 = 4;

    private struct Channel
    {
        public int Count;          // the reload value, 1-65536
        public ushort LatchedCount;
        public byte CountLatched;  // as read_state: which byte of the latched count comes next, 0 when none
        public bool StatusLatched;
        public byte Status, ReadState, WriteState, WriteLatch, RwMode, Mode, Bcd;
        public bool Gate;
        public long LoadTime;      // system time when counting started
    }

    private readonly Domain _domain;
    private readonly object _lock = new();
    private readonly Channel[] _ch = new Channel[3];
    private readonly IrqLine _irq0;
    private readonly Vpt _timer;
    private bool _speakerDataOn;

    public Pit(Domain domain, IrqRouter irq)
    {
        _domain = domain;
        _irq0 = irq.Line(PlatformIrq.IsaIrqToGsi(0));
        _timer = new Vpt(domain, _ => Tick());
        Ports = new CounterPorts(this);
        Speaker = new SpeakerPortHandler(this);
        Reset();
    }

    public IIoHandler Ports { get; }
    public IIoHandler Speaker { get; }

    /// <summary>Set while the HPET's legacy replacement route has IRQ 0: channel 0 then raises nothing.</summary>
    public volatile bool LegacyReplaced;

    private long Now => _domain.Host.Time.NowNs;

    public void Register(IoBus ports)
    {
        ports.Register(Port, 4, Ports);
        ports.Register(SpeakerPort, 1, Speaker);
    }

    public void Reset()
    {
        lock (_lock)
        {
            long now = Now;
            for (int i = 0; i < 3; i++)
            {
                // No mode until the guest programs one (Xen's 0xff): nothing counts or interrupts.
                _ch[i] = new Channel { Mode = NoMode, Gate = i != 2, Count = 0x10000, LoadTime = now };
                _ch[i].RwMode = _ch[i].ReadState = _ch[i].WriteState = RwWord0;
            }
            _timer.Stop();
        }
    }

    private void Tick()
    {
        if (!LegacyReplaced)
            _irq0.Pulse();
    }

    /// <summary>Input clock ticks since channel <paramref name="i"/> started counting.</summary>
    private long Elapsed(int i, long now) =>
        (long)((UInt128)(ulong)Math.Max(now - _ch[i].LoadTime, 0) * (ulong)Frequency / 1_000_000_000UL);

    private int CurrentCount(int i, long now)
    {
        ref var c = ref _ch[i];
        long d = Elapsed(i, now);
        return c.Mode switch
        {
            2 => (int)(c.Count - d % c.Count),
            3 => (int)(c.Count - (2 * d) % c.Count),
            _ => (int)((c.Count - d) & 0xFFFF),
        };
    }

    private bool Output(int i, long now)
    {
        ref var c = ref _ch[i];
        long d = Elapsed(i, now);
        return c.Mode switch
        {
            0 => d >= c.Count,
            1 => d >= c.Count,
            2 => d % c.Count != c.Count - 1 || d == 0,
            3 => d % c.Count < (c.Count + 1) / 2,
            4 or 5 => d != c.Count,
            _ => true,
        };
    }

    /// <summary>Loads a new count (0 means 65536) and starts counting now; channel 0 arms its interrupt.</summary>
    private void LoadCount(int i, int value)
    {
        ref var c = ref _ch[i];
        c.Count = value == 0 ? 0x10000 : value;
        c.LoadTime = Now;
        if (i == 0)
            ArmChannel0();
    }

    private void ArmChannel0()
    {
        ref var c = ref _ch[0];
        long period = (long)((ulong)c.Count * 1_000_000_000UL / (ulong)Frequency);
        if (c.Mode is 2 or 3)
            _timer.Start(c.LoadTime + period, period);
        else if (c.Mode <= 5)
            _timer.Start(c.LoadTime + period, 0);
        else
            _timer.Stop();
    }

    private void WriteControl(byte value)
    {
        int channel = value >> 6;
        long now = Now;
        if (channel == 3)
        {
            // Read-back: bit 5 clear latches the counts, bit 4 clear the status, of the channels in bits 1-3.
            for (int i = 0; i < 3; i++)
            {
                if ((value & (2 << i)) == 0)
                    continue;
                if ((value & 0x20) == 0)
                    LatchCount(i, now);
                if ((value & 0x10) == 0 && !_ch[i].StatusLatched)
                {
                    ref var c = ref _ch[i];
                    c.Status = (byte)((Output(i, now) ? 0x80 : 0) | (c.RwMode << 4) | ((c.Mode & 7) << 1) | c.Bcd);
                    c.StatusLatched = true;
                }
            }
            return;
        }
        int access = (value >> 4) & 3;
        if (access == 0)
        {
            LatchCount(channel, now);
            return;
        }
        ref var ch = ref _ch[channel];
        ch.RwMode = (byte)access;
        ch.ReadState = ch.WriteState = (byte)access;
        int mode = (value >> 1) & 7;
        ch.Mode = (byte)(mode >= 6 ? mode - 4 : mode);
        ch.Bcd = (byte)(value & 1);
        // Programming a mode stops the counter until a count is written.
        if (channel == 0)
            _timer.Stop();
    }

    private void LatchCount(int i, long now)
    {
        ref var c = ref _ch[i];
        if (c.CountLatched != 0)
            return; // a second latch before the first is read is ignored
        c.LatchedCount = (ushort)CurrentCount(i, now);
        c.CountLatched = c.RwMode;
    }

    private byte ReadCounter(int i)
    {
        ref var c = ref _ch[i];
        if (c.StatusLatched)
        {
            c.StatusLatched = false;
            return c.Status;
        }
        if (c.CountLatched != 0)
        {
            switch (c.CountLatched)
            {
                case RwLsb: c.CountLatched = 0; return (byte)c.LatchedCount;
                case RwMsb: c.CountLatched = 0; return (byte)(c.LatchedCount >> 8);
                case RwWord0: c.CountLatched = RwMsb; return (byte)c.LatchedCount;
            }
        }
        int count = CurrentCount(i, Now);
        switch (c.ReadState)
        {
            case RwLsb: return (byte)count;
            case RwMsb: return (byte)(count >> 8);
            case RwWord0: c.ReadState = RwWord1; return (byte)count;
            default: c.ReadState = RwWord0; return (byte)(count >> 8);
        }
    }

    private void WriteCounter(int i, byte value)
    {
        ref var c = ref _ch[i];
        switch (c.WriteState)
        {
            case RwLsb: LoadCount(i, value); break;
            case RwMsb: LoadCount(i, value << 8); break;
            case RwWord0: c.WriteLatch = value; c.WriteState = RwWord1; break;
            default: c.WriteState = RwWord0; LoadCount(i, c.WriteLatch | (value << 8)); break;
        }
    }

    private void SetGate2(bool gate)
    {
        ref var c = ref _ch[2];
        // A rising gate restarts modes 1, 2, 3 and 5; in modes 0 and 4 counting is only paused by a low gate,
        // which nobody depends on with channel 2 (calibration loops keep the gate up while they count).
        if (!c.Gate && gate && c.Mode is 1 or 2 or 3 or 5)
            c.LoadTime = Now;
        c.Gate = gate;
    }

    private sealed class CounterPorts(Pit pit) : IDirectReadIoHandler
    {
        public ulong Read(Vcpu v, ulong offset, int size)
        {
            if (size != 1 || offset == 3)
                return HvmIo.AllOnes(size); // the control word is write-only
            lock (pit._lock)
                return pit.ReadCounter((int)offset);
        }

        public void Write(Vcpu v, ulong offset, int size, ulong value)
        {
            if (size != 1)
                return;
            lock (pit._lock)
            {
                if (offset == 3)
                    pit.WriteControl((byte)value);
                else
                    pit.WriteCounter((int)offset, (byte)value);
            }
        }
    }

    private sealed class SpeakerPortHandler(Pit pit) : IDirectReadIoHandler
    {
        public ulong Read(Vcpu v, ulong offset, int size)
        {
            lock (pit._lock)
            {
                long now = pit.Now;
                // Bit 4 toggles with the DRAM refresh every 15 us; BIOS delay loops count its edges.
                int refresh = (int)(now / 15_000) & 1;
                return (ulong)((pit.Output(2, now) ? 0x20 : 0) | (refresh << 4) | (pit._speakerDataOn ? 2 : 0) | (pit._ch[2].Gate ? 1 : 0));
            }
        }

        public void Write(Vcpu v, ulong offset, int size, ulong value)
        {
            lock (pit._lock)
            {
                pit._speakerDataOn = (value & 2) != 0;
                pit.SetGate2((value & 1) != 0);
            }
        }
    }

    // ---------------- save/restore (HVM_SAVE_CODE(PIT)) ----------------

    public HvmHwPit Save()
    {
        lock (_lock)
        {
            long now = Now;
            return new HvmHwPit { Channel0 = SaveChannel(0, now), Channel1 = SaveChannel(1, now), Channel2 = SaveChannel(2, now), SpeakerDataOn = _speakerDataOn ? 1u : 0 };
        }
    }

    private HvmHwPitChannel SaveChannel(int i, long now)
    {
        var c = _ch[i];
        return new HvmHwPitChannel
        {
            Count = (uint)c.Count, LatchedCount = c.LatchedCount, CountLatched = c.CountLatched, StatusLatched = (byte)(c.StatusLatched ? 1 : 0),
            Status = c.Status, ReadState = c.ReadState, WriteState = c.WriteState, WriteLatch = c.WriteLatch,
            RwMode = c.RwMode, Mode = c.Mode, Bcd = c.Bcd, Gate = (byte)(c.Gate ? 1 : 0),
        };
    }

    /// <summary>Takes a saved PIT; each channel starts counting its reload value afresh (Xen's pit_load does the same).</summary>
    public void Load(in HvmHwPit s)
    {
        lock (_lock)
        {
            LoadChannel(0, s.Channel0);
            LoadChannel(1, s.Channel1);
            LoadChannel(2, s.Channel2);
            _speakerDataOn = s.SpeakerDataOn != 0;
        }
    }

    private void LoadChannel(int i, in HvmHwPitChannel s)
    {
        static byte Rw(byte b) => b is >= RwLsb and <= RwWord1 ? b : RwWord0;
        _ch[i] = new Channel
        {
            LatchedCount = s.LatchedCount, CountLatched = s.CountLatched is >= RwLsb and <= RwWord0 ? s.CountLatched : (byte)0,
            StatusLatched = s.StatusLatched != 0, Status = s.Status, ReadState = Rw(s.ReadState), WriteState = Rw(s.WriteState),
            WriteLatch = s.WriteLatch, RwMode = (byte)(s.RwMode is >= 1 and <= 3 ? s.RwMode : RwWord0), Mode = s.Mode <= 5 ? s.Mode : NoMode,
            Bcd = (byte)(s.Bcd & 1), Gate = s.Gate != 0,
        };
        LoadCount(i, (int)(s.Count & 0xFFFF) == 0 ? 0 : (int)(s.Count & 0xFFFF));
    }
}
