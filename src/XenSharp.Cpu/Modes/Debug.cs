using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>Debug registers (SDM vol. 3 ch. 17): DR0-DR3 instruction, data and I/O breakpoints
/// under DR7, DR6 status, general detect, single-step and RF, and the optional Debug exit.</summary>
internal unsafe partial class X86Vcpu
{
    internal const ulong Dr6Bs = 0x4000, Dr6Bd = 0x2000, Dr7Gd = 0x2000;
    private const ulong Dr6Fixed = 0xFFFF0FF0;
    /// <summary>IA32_DEBUGCTL.BTF: with TF, single-step traps only after taken branches.</summary>
    internal const ulong DebugCtlBtf = 2;

    /// <summary>IA32_DEBUGCTL. Only BTF is kept: no last-branch records or branch trace store
    /// exist here, so the MSR refuses their enables (and every reserved bit) with #GP.</summary>
    internal ulong DebugCtl;

    /// <summary>Enabled instruction breakpoints (bit n for DRn), data breakpoints and I/O
    /// breakpoints, recomputed whenever DR7, DR0-3 or CR4.DE change.</summary>
    private int _bpExec, _bpData, _bpIo;
    /// <summary>B0-B3 matched by the instruction now running (data and I/O breakpoints).</summary>
    private ulong _dbHits;
    /// <summary>TF was set when the instruction now running started (its single-step trap is due).</summary>
    private bool _dbStep;
    /// <summary>DR6 bits of a trap that an I/O or MSR exit interrupted; delivered once the exit completes.</summary>
    private ulong _dbAfterExit;

    /// <summary>#DB and #BP leave <see cref="IVcpu.Run"/> with <see cref="VcpuExitReason.Debug"/>
    /// instead of going to the guest's IDT (off by default).</summary>
    public bool InterceptDebug { get; set; }

    /// <summary>The monitor trap flag: after each instruction <see cref="IVcpu.Run"/> returns with
    /// <see cref="VcpuExitReason.MonitorTrap"/> (off by default).</summary>
    public bool MonitorTrap { get; set; }

    /// <summary>Something must be checked around every instruction (a breakpoint is armed, TF or RF
    /// is set, or the monitor trap flag): blocks then run one instruction at a time through the interpreter.</summary>
    internal bool PerInstructionChecks => (Rflags & (TF | RF)) != 0 || (_bpExec | _bpData | _bpIo) != 0 || MonitorTrap;

    /// <summary>Power-up/INIT values: no breakpoints, DR6 and DR7 at their fixed bits.</summary>
    private void ResetDebugRegisters()
    {
        Dr = default;
        Dr[6] = Dr6Fixed;
        Dr[7] = 0x400;
        DebugCtl = 0;
        _dbHits = _dbAfterExit = _dbDeferred = 0;
        UpdateBreakpoints();
    }

    private static int BpLength(ulong dr7, int n) => ((dr7 >> (18 + 4 * n)) & 3) switch { 0 => 1, 1 => 2, 2 => 8, _ => 4 };

    /// <summary>Recomputes which breakpoints are armed; the TLB keeps no page holding a data breakpoint.</summary>
    internal void UpdateBreakpoints()
    {
        ulong dr7 = Dr[7];
        int exec = 0, data = 0, io = 0;
        for (int n = 0; n < 4; n++)
        {
            if (((dr7 >> (2 * n)) & 3) == 0) continue;
            switch ((dr7 >> (16 + 4 * n)) & 3)
            {
                case 0: exec |= 1 << n; break;
                case 2: if ((Cr4 & 8) != 0) io |= 1 << n; break;
                default: data |= 1 << n; break;
            }
        }
        bool dataChanged = data != 0 || _bpData != 0;
        _bpExec = exec; _bpData = data; _bpIo = io;
        if (dataChanged) FlushTlb(true);
        Stop = true;
    }

    /// <summary>True when the page of <paramref name="lin"/> holds an armed data breakpoint (such
    /// pages stay out of the TLB so that every access reaches <see cref="CheckDataBreakpoints"/>).</summary>
    private bool DataBreakpointPage(ulong lin)
    {
        for (int n = 0; n < 4; n++)
            if ((_bpData & (1 << n)) != 0 && (Dr[n] >> 12) == (lin >> 12)) return true;
        return false;
    }

    /// <summary>Notes the data breakpoints an access of <paramref name="size"/> bytes at
    /// <paramref name="lin"/> matches; the #DB trap follows the instruction.</summary>
    private void CheckDataBreakpoints(ulong lin, int size, bool write)
    {
        ulong dr7 = Dr[7];
        for (int n = 0; n < 4; n++)
        {
            if ((_bpData & (1 << n)) == 0) continue;
            if (!write && ((dr7 >> (16 + 4 * n)) & 3) == 1) continue; // write-only
            ulong len = (ulong)BpLength(dr7, n);
            ulong start = Dr[n] & ~(len - 1);
            if (lin < start + len && start < lin + (ulong)size) _dbHits |= 1UL << n;
        }
    }

    /// <summary>I/O breakpoints (CR4.DE, R/W = 10) on a port access.</summary>
    private void CheckIoBreakpoints(uint port, int size)
    {
        if (_bpIo == 0) return;
        ulong dr7 = Dr[7];
        for (int n = 0; n < 4; n++)
        {
            if ((_bpIo & (1 << n)) == 0) continue;
            ulong len = (ulong)BpLength(dr7, n);
            ulong start = (Dr[n] & 0xFFFF) & ~(len - 1);
            if (port < start + len && start < port + (ulong)size) _dbHits |= 1UL << n;
        }
    }

    /// <summary>The interpreter's per-instruction path: one instruction, with instruction breakpoints
    /// checked before it is fetched and RF, data/I-O breakpoints and single-step handled after it.</summary>
    private void RunOneChecked()
    {
        Shadow = false;
        _dbStep = (Rflags & TF) != 0;
        bool rf = (Rflags & RF) != 0;
        CurIp = Rip;
        DebugBeforeInstruction(Rip);
        DecodedBlock? b = GetBlock();
        if (b == null) return;
        InstructionsWithinCsLimit(b, 1);
        ref DecodedInsn d = ref b.Insns[0];
        CurIp = d.I.IP;
        Rip = d.I.NextIP;
        if (d.Form != FastForm.None) ExecFast(ref d); else Execute(ref d);
        if (Abort != 0) return;
        _retired++;
        // The instruction that consumed MMIO results has completed.
        _replayCount = 0; _replayIdx = 0;
        DebugAfterInstruction(ref d, rf);
        Stop = false;
        if (MonitorTrap)
        {
            _exit = default;
            _exit.Address = Rip;
            ExitAfterInstruction(VcpuExitReason.MonitorTrap);
        }
    }

    /// <summary>Before one instruction on the per-instruction path (before it is even fetched):
    /// instruction breakpoints fault unless RF is set.</summary>
    private void DebugBeforeInstruction(ulong ip)
    {
        _dbHits = 0;
        if (_bpExec == 0 || (Rflags & RF) != 0) return;
        ulong lin = CodeLinear(ip);
        ulong hits = 0;
        for (int n = 0; n < 4; n++)
            if ((_bpExec & (1 << n)) != 0 && Dr[n] == lin) hits |= 1UL << n;
        if (hits == 0) return;
        Rip = CurIp;
        RaiseDebug(1, hits, fault: true);
    }

    /// <summary>After one instruction on the per-instruction path: RF clears (unless IRET just
    /// loaded it), then data/I-O breakpoint hits and the single-step trap raise one #DB.</summary>
    private void DebugAfterInstruction(ref DecodedInsn d, bool rfBefore)
    {
        if (rfBefore && d.Op is not (Iced.Intel.Mnemonic.Iret or Iced.Intel.Mnemonic.Iretd or Iced.Intel.Mnemonic.Iretq))
            Rflags &= ~RF;
        bool step = _dbStep;
        // INT n, INT3, INTO and INT1 that entered a handler (clearing TF) are not followed by a single-step trap.
        if (step && (Rflags & TF) == 0 && d.Op is Iced.Intel.Mnemonic.Int or Iced.Intel.Mnemonic.Int3 or Iced.Intel.Mnemonic.Into or Iced.Intel.Mnemonic.Int1)
            step = false;
        if (step && (DebugCtl & DebugCtlBtf) != 0 && !BranchTaken(ref d)) step = false;
        ulong bits = _dbHits | (step ? Dr6Bs : 0);
        _dbHits = 0;
        if (LoadsSs(ref d))
        {
            // MOV SS / POP SS hold their debug traps back until the next instruction has run.
            _dbDeferred |= bits;
            return;
        }
        bits |= _dbDeferred;
        _dbDeferred = 0;
        if (bits != 0) RaiseDebug(1, bits, fault: false);
    }

    private ulong _dbDeferred;

    /// <summary>The instruction just run transferred control (for BTF). A conditional branch
    /// counts when it left the fall-through path, so one whose target is the next instruction is
    /// not seen as taken.</summary>
    private bool BranchTaken(ref DecodedInsn d) => d.I.FlowControl switch
    {
        Iced.Intel.FlowControl.Next or Iced.Intel.FlowControl.Exception => false,
        Iced.Intel.FlowControl.ConditionalBranch => Rip != d.I.NextIP,
        _ => true,
    };

    private static bool LoadsSs(ref DecodedInsn d)
        => d.Op is Iced.Intel.Mnemonic.Mov or Iced.Intel.Mnemonic.Pop
           && d.I.Op0Kind == Iced.Intel.OpKind.Register && d.I.Op0Register == Iced.Intel.Register.SS;

    /// <summary>An I/O or MSR instruction is about to leave Run: its debug trap is delivered when
    /// the exit completes (see <see cref="DeliverDebugAfterExit"/>).</summary>
    private void CarryDebugAcrossExit()
    {
        _dbAfterExit = _dbHits | (_dbStep ? Dr6Bs : 0);
        _dbHits = 0;
    }

    private void DeliverDebugAfterExit()
    {
        ulong bits = _dbAfterExit;
        if (bits == 0) return;
        _dbAfterExit = 0;
        RaiseDebug(1, bits, fault: false);
    }

    /// <summary>Raises #DB (vector 1) or reports #BP/#DB to the hypervisor when it intercepts them.
    /// <paramref name="bits"/> are the DR6 status bits of the event.</summary>
    internal void RaiseDebug(int vector, ulong bits, bool fault)
    {
        Stop = true;
        if (InterceptDebug)
        {
            _exit = default;
            _exit.Reason = VcpuExitReason.Debug;
            _exit.Port = (uint)vector;
            _exit.Data = bits;
            _exit.Address = Rip;
            throw _exitSignal;
        }
        if (vector == 1)
        {
            // B0-B3 report this event only; BS and BD stay until the handler clears them.
            Dr[6] = (Dr[6] & ~0xFUL) | bits | Dr6Fixed;
            Dr[7] &= ~Dr7Gd;
            // The debugger re-arms branch stepping after each #DB.
            DebugCtl &= ~DebugCtlBtf;
        }
        if (fault) throw Fault(vector);
        if (!DeliverFault(vector, false, 0)) throw Exit(VcpuExitReason.Shutdown, "triple fault");
    }

    /// <summary>MOV to or from a debug register: #UD for DR4/5 under CR4.DE, then general detect.</summary>
    private int DebugRegisterIndex(int n)
    {
        if (n is 4 or 5)
        {
            if ((Cr4 & 8) != 0) throw UD();
            n += 2;
        }
        if ((Dr[7] & Dr7Gd) != 0)
        {
            Rip = CurIp;
            RaiseDebug(1, Dr6Bd, fault: true);
        }
        return n;
    }
}
