using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>System instructions: control and debug registers, descriptor tables, MSRs,
/// CPUID, TSC, SYSCALL/SYSENTER, SWAPGS, FS/GS base, XCR0.</summary>
internal unsafe partial class X86Vcpu
{
    private void RequireCpl0()
    {
        if (Protected && Cpl != 0) throw GP();
    }

    private void ExecSystemOrFloat(ref DecodedInsn d)
    {
        switch (d.Op)
        {
            case Mnemonic.Cpuid: ExecCpuid(); return;
            case Mnemonic.Rdtsc:
                if ((Cr4 & 4) != 0 && Cpl != 0 && Protected) throw GP();
                { ulong t = ReadTsc(); R[0] = (uint)t; R[2] = t >> 32; }
                return;
            case Mnemonic.Rdtscp:
                if ((Cr4 & 4) != 0 && Cpl != 0 && Protected) throw GP();
                { ulong t = ReadTsc(); R[0] = (uint)t; R[2] = t >> 32; R[1] = (uint)TscAux; }
                return;
            case Mnemonic.Rdpid: WriteReg(d.I.Op0Register, TscAux); return;
            case Mnemonic.Rdmsr: ExecRdmsr(); return;
            case Mnemonic.Wrmsr: ExecWrmsr(); return;
            case Mnemonic.Lgdt:
            case Mnemonic.Lidt:
            {
                RequireCpl0();
                ulong lin = MemAddr(ref d);
                ushort limit = (ushort)ReadLin(lin, 2);
                ulong b = Bitness == 64 ? ReadLin(lin + 2, 8) : ReadLin(lin + 2, 4);
                if (d.I.Code is Code.Lgdt_m1632_16 or Code.Lidt_m1632_16) b &= 0xFF_FFFF;
                if (d.Op == Mnemonic.Lgdt) { GdtBase = b; GdtLimit = limit; } else { IdtBase = b; IdtLimit = limit; }
                return;
            }
            case Mnemonic.Sgdt:
            case Mnemonic.Sidt:
            {
                ulong lin = MemAddr(ref d);
                bool g = d.Op == Mnemonic.Sgdt;
                WriteLin(lin, 2, g ? GdtLimit : IdtLimit);
                if (Bitness == 64) WriteLin(lin + 2, 8, g ? GdtBase : IdtBase);
                else WriteLin(lin + 2, 4, (uint)(g ? GdtBase : IdtBase));
                return;
            }
            case Mnemonic.Sldt: WriteOp0(ref d, d.OpSize, Seg[LDTR].Sel); return;
            case Mnemonic.Str: WriteOp0(ref d, d.OpSize, Seg[TR].Sel); return;
            case Mnemonic.Lldt: ExecLldt((ushort)ReadOp0(ref d, 2)); return;
            case Mnemonic.Ltr: ExecLtr((ushort)ReadOp0(ref d, 2)); return;
            case Mnemonic.Smsw: WriteOp0(ref d, d.OpSize, d.OpSize == 2 ? Cr0 & 0xFFFF : Cr0); return;
            case Mnemonic.Lmsw:
            {
                RequireCpl0();
                ulong v = ReadOp0(ref d, 2) & 0xF;
                // LMSW can set but not clear PE.
                WriteCr0((Cr0 & ~0xEUL) | v | (Cr0 & 1));
                return;
            }
            case Mnemonic.Clts: RequireCpl0(); Cr0 &= ~8UL; return;
            case Mnemonic.Invlpg:
                RequireCpl0();
                InvalidatePage(ref d);
                Stop = true;
                return;
            case Mnemonic.Invpcid:
                ExecInvpcid(ref d);
                return;
            case Mnemonic.Wbinvd: case Mnemonic.Invd: RequireCpl0(); return;
            case Mnemonic.Syscall: ExecSyscall(); return;
            case Mnemonic.Sysret: case Mnemonic.Sysretq: ExecSysret(d.Op == Mnemonic.Sysretq); return;
            case Mnemonic.Sysenter: ExecSysenter(); return;
            case Mnemonic.Sysexit: case Mnemonic.Sysexitq: ExecSysexit(d.Op == Mnemonic.Sysexitq); return;
            case Mnemonic.Swapgs:
            {
                if (Bitness != 64) throw UD();
                RequireCpl0();
                (Seg[GS].Base, KernelGsBase) = (KernelGsBase, Seg[GS].Base);
                return;
            }
            case Mnemonic.Rdfsbase: case Mnemonic.Rdgsbase:
                if (Bitness != 64 || (Cr4 & 0x10000) == 0) throw UD();
                WriteReg(d.I.Op0Register, Seg[d.Op == Mnemonic.Rdfsbase ? FS : GS].Base);
                return;
            case Mnemonic.Wrfsbase: case Mnemonic.Wrgsbase:
            {
                if (Bitness != 64 || (Cr4 & 0x10000) == 0) throw UD();
                ulong v = ReadReg(d.I.Op0Register);
                if (!Canonical(v)) throw GP();
                Seg[d.Op == Mnemonic.Wrfsbase ? FS : GS].Base = v;
                return;
            }
            case Mnemonic.Xgetbv:
                if ((Cr4 & 0x40000) == 0) throw UD();
                if ((uint)R[1] != 0) throw GP();
                R[0] = (uint)Xcr0; R[2] = Xcr0 >> 32;
                return;
            case Mnemonic.Xsetbv:
            {
                if ((Cr4 & 0x40000) == 0) throw UD();
                RequireCpl0();
                ulong v = (uint)R[0] | ((ulong)(uint)R[2] << 32);
                if ((uint)R[1] != 0 || (v & 1) == 0 || (v & ~SupportedXcr0) != 0) throw GP();
                Xcr0 = v;
                return;
            }
            case Mnemonic.Clac: RequireCpl0(); Rflags &= ~AC; return;
            case Mnemonic.Stac: RequireCpl0(); Rflags |= AC; return;
            case Mnemonic.Lar: case Mnemonic.Lsl: ExecLarLsl(ref d); return;
            case Mnemonic.Verr: case Mnemonic.Verw: ExecVerrVerw(ref d); return;
            case Mnemonic.Arpl:
            {
                if (!Protected || Bitness == 64) throw UD();
                ulong dst = ReadOp0(ref d, 2), src = ReadReg(d.I.Op1Register);
                if ((dst & 3) < (src & 3)) { WriteOp0(ref d, 2, (dst & ~3UL) | (src & 3)); Rflags |= ZF; }
                else Rflags &= ~ZF;
                return;
            }
            case Mnemonic.Bound:
            {
                int sz = d.I.Op0Register.GetSize();
                ulong lin = MemAddr(ref d);
                long idx = (long)SignExtend(ReadReg(d.I.Op0Register), sz);
                long lo = (long)SignExtend(ReadLin(lin, sz), sz), hi = (long)SignExtend(ReadLin(lin + (ulong)sz, sz), sz);
                if (idx < lo || idx > hi) throw Fault(5);
                return;
            }
            case Mnemonic.Monitor: case Mnemonic.Mwait:
                throw UD();
            // Neither RTM nor HLE is advertised: the RTM instructions are undefined (the XACQUIRE
            // and XRELEASE prefixes are simply ignored by the instructions they prefix).
            case Mnemonic.Xbegin: case Mnemonic.Xend: case Mnemonic.Xabort: case Mnemonic.Xtest:
                throw UD();
            case Mnemonic.Rdpmc:
                throw GP();
        }
        if (TryExecFloat(ref d)) return;
        // VEX/EVEX/XOP forms other than BMI are AVX: #UD, since XCR0 never enables AVX state.
        if (d.I.Encoding is EncodingKind.VEX or EncodingKind.EVEX or EncodingKind.XOP) throw UD();
        throw Unsupported(d.I);
    }

    internal static bool Canonical(ulong v) => (ulong)((long)(v << 16) >> 16) == v;

    /// <summary>INVLPG: the operand only names a linear address (nothing is accessed), so there
    /// is no segment limit, expand-down, null-selector, alignment or canonical check; a
    /// non-canonical address in 64-bit mode invalidates nothing.</summary>
    private void InvalidatePage(ref DecodedInsn d)
    {
        int seg = d.I.MemorySegment - Register.ES;
        ulong ea = d.MemSplit ? FastEa(ref d) : Ea(ref d);
        ulong lin = Bitness == 64 ? (seg >= FS ? Seg[seg].Base + ea : ea) : (uint)(Seg[seg].Base + ea);
        if (Bitness == 64 && !Canonical(lin)) return;
        FlushTlbPage(lin);
    }

    // ---- control and debug registers ----

    private void MovToSpecial(ref DecodedInsn d, Register r)
    {
        RequireCpl0();
        ulong v = ReadReg(d.I.Op1Register);
        if (r >= Register.CR0 && r <= Register.CR15)
        {
            switch (r)
            {
                case Register.CR0: WriteCr0(v); break;
                case Register.CR2: Cr2 = v; break;
                case Register.CR3: WriteCr3(v); break;
                case Register.CR4: WriteCr4(v); break;
                case Register.CR8: Cr8 = v & 0xF; break;
                default: throw UD();
            }
            Stop = true;
            return;
        }
        if (r >= Register.DR0 && r <= Register.DR7)
        {
            int n = DebugRegisterIndex(r - Register.DR0);
            if (n >= 6 && (v >> 32) != 0) throw GP();
            if (n == 6) v = (v & 0xE00F) | 0xFFFF0FF0;
            // Bit 11 (RTM) is reserved and reads as 0, as are bits 12, 14 and 15: RTM is not advertised.
            if (n == 7) v = (v & 0xFFFF23FF) | 0x400;
            if (n < 4 && Bitness != 64) v = (uint)v;
            Dr[n] = v;
            if (n != 6) UpdateBreakpoints();
            return;
        }
        throw Unsupported(d.I);
    }

    private void MovFromSpecial(ref DecodedInsn d, Register s)
    {
        RequireCpl0();
        ulong v;
        if (s >= Register.CR0 && s <= Register.CR15)
        {
            v = s switch
            {
                Register.CR0 => Cr0,
                Register.CR2 => Cr2,
                Register.CR3 => Cr3,
                Register.CR4 => Cr4,
                Register.CR8 => Cr8,
                _ => throw UD(),
            };
        }
        else if (s >= Register.DR0 && s <= Register.DR7)
        {
            int n = DebugRegisterIndex(s - Register.DR0);
            v = n == 6 ? Dr[6] | 0xFFFF0FF0 : n == 7 ? Dr[7] | 0x400 : Dr[n];
        }
        else throw Unsupported(d.I);
        WriteReg(d.I.Op0Register, v);
    }

    internal void WriteCr0(ulong v)
    {
        if ((v >> 32) != 0) throw GP();
        v |= 0x10;
        if ((v & 0x80000000) != 0 && (v & 1) == 0) throw GP();
        if ((v & 0x20000000) != 0 && (v & 0x40000000) == 0) throw GP(); // NW (bit 29) without CD (bit 30)
        bool pgNow = (v & 0x80000000) != 0, pgBefore = PagingEnabled;
        if (pgNow && !pgBefore && (Efer & 0x100) != 0)
        {
            if ((Cr4 & 0x20) == 0) throw GP();
            Efer |= 0x400;
        }
        if (!pgNow && pgBefore && (Cr4 & Cr4Pcide) != 0) throw GP();
        if (!pgNow && pgBefore && LongMode)
        {
            if (Bitness == 64) throw GP();
            Efer &= ~0x400UL;
        }
        ulong changed = Cr0 ^ v;
        Cr0 = v;
        if ((changed & 0x80010001) != 0) FlushTlb(true);
        UpdateMode();
        Stop = true;
    }

    private void WriteCr3(ulong v)
    {
        // With CR4.PCIDE, bit 63 asks to keep the new PCID's translations; it is never stored.
        // The TLB keeps no translations across PCIDs (the architecture allows dropping them at
        // any time), so every CR3 write drops the non-global ones whatever the PCID and bit 63.
        v &= ~(1UL << 63);
        if (LongMode && (v >> MaxPhysAddr) != 0) throw GP();
        Cr3 = v;
        FlushTlb(false);
    }

    /// <summary>INVPCID: the type in the register, a 16-byte descriptor (PCID in bits 11:0, the
    /// rest of the first quadword reserved, a linear address in the second) in memory.</summary>
    private void ExecInvpcid(ref DecodedInsn d)
    {
        RequireCpl0();
        ulong type = ReadReg(d.I.Op0Register);
        ulong at = MemAddr(ref d);
        ulong pcidWord = ReadLin(at, 8), address = ReadLin(at + 8, 8);
        if (type > 3 || (pcidWord >> 12) != 0) throw GP();
        bool pcide = (Cr4 & Cr4Pcide) != 0;
        switch (type)
        {
            case 0:
                if (!Canonical(address) || (!pcide && pcidWord != 0)) throw GP();
                FlushTlbPage(address);
                break;
            case 1:
                if (!pcide && pcidWord != 0) throw GP();
                FlushTlb(false);
                break;
            case 2:
                FlushTlb(true);
                break;
            default:
                FlushTlb(false);
                break;
        }
        Stop = true;
    }

    private const ulong Cr4Pcide = 0x20000;

    /// <summary>CR4 bits the engine implements (VME/PVI and others are refused with #GP).</summary>
    internal const ulong SupportedCr4 = 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x10000 | 0x20000 | 0x40000 | 0x100000 | 0x200000;

    internal void WriteCr4(ulong v)
    {
        if ((v & ~SupportedCr4) != 0) throw GP();
        if (LongMode && (v & 0x20) == 0) throw GP();
        // PCIDs exist in IA-32e mode only, and turning them on needs PCID 0 in CR3.
        if ((v & Cr4Pcide) != 0 && (Cr4 & Cr4Pcide) == 0 && (!LongMode || (Cr3 & 0xFFF) != 0)) throw GP();
        ulong changed = Cr4 ^ v;
        Cr4 = v;
        if ((changed & 8) != 0) UpdateBreakpoints();
        if ((changed & (0x10 | 0x20 | 0x80 | 0x20000 | 0x100000 | 0x200000)) != 0) FlushTlb(true);
        Stop = true;
    }

    // ---- descriptor tables ----

    private void ExecLldt(ushort sel)
    {
        RequireCpl0();
        if (!Protected) throw UD();
        if ((sel & 0xFFFC) == 0) { Seg[LDTR] = new SegReg { Sel = sel }; return; }
        if ((sel & 4) != 0) throw GP((uint)(sel & 0xFFFC));
        ulong addr = DescriptorAddress(sel);
        ulong desc = ReadSys(addr, 8);
        ushort attr = AttrFromDesc(desc);
        if ((attr & 0x1F) != 2) throw GP((uint)(sel & 0xFFFC));
        if ((attr & 0x80) == 0) throw Fault(11, (uint)(sel & 0xFFFC));
        ulong b = BaseFromDesc(desc);
        if (LongMode) b |= ReadSys(addr + 8, 4) << 32;
        Seg[LDTR] = new SegReg { Sel = sel, Base = b, Limit = LimitFromDesc(desc), Attr = attr };
    }

    private void ExecLtr(ushort sel)
    {
        RequireCpl0();
        if (!Protected) throw UD();
        if ((sel & 0xFFFC) == 0 || (sel & 4) != 0) throw GP((uint)(sel & 0xFFFC));
        ulong addr = DescriptorAddress(sel);
        ulong desc = ReadSys(addr, 8);
        ushort attr = AttrFromDesc(desc);
        int type = attr & 0x1F;
        if (type != 9 && !(type == 1 && !LongMode)) throw GP((uint)(sel & 0xFFFC));
        if ((attr & 0x80) == 0) throw Fault(11, (uint)(sel & 0xFFFC));
        ulong b = BaseFromDesc(desc);
        if (LongMode) b |= ReadSys(addr + 8, 4) << 32;
        WriteSys(addr + 5, 1, (ulong)((byte)(desc >> 40) | 2)); // busy
        Seg[TR] = new SegReg { Sel = sel, Base = b, Limit = LimitFromDesc(desc), Attr = (ushort)(attr | 2) };
    }

    private void ExecLarLsl(ref DecodedInsn d)
    {
        if (!Protected) throw UD();
        ushort sel = (ushort)ReadOp(ref d, 1, 2);
        ulong desc = 0;
        bool ok = (sel & 0xFFFC) != 0;
        if (ok)
        {
            try { desc = ReadDescriptor(sel, out _); }
            catch (GuestFault f) when (f.Vector == 13) { ok = false; }
        }
        if (ok)
        {
            ushort attr = AttrFromDesc(desc);
            int dpl = (attr >> 5) & 3;
            bool conformingCode = (attr & 0x1C) == 0x1C;
            int type = attr & 0x1F;
            if ((attr & 0x10) == 0)
                ok = d.Op == Mnemonic.Lar ? type is 1 or 2 or 3 or 9 or 11 or 4 or 12 or 5 : type is 1 or 2 or 3 or 9 or 11;
            if (ok && !conformingCode && (dpl < Cpl || dpl < (sel & 3))) ok = false;
        }
        if (!ok) { Rflags &= ~ZF; return; }
        ulong v = d.Op == Mnemonic.Lar ? (desc >> 32) & 0x00F0FF00 : LimitFromDesc(desc);
        WriteReg(d.I.Op0Register, v);
        Rflags |= ZF;
    }

    private void ExecVerrVerw(ref DecodedInsn d)
    {
        if (!Protected) throw UD();
        ushort sel = (ushort)ReadOp0(ref d, 2);
        bool ok = (sel & 0xFFFC) != 0;
        ulong desc = 0;
        if (ok)
        {
            try { desc = ReadDescriptor(sel, out _); }
            catch (GuestFault f) when (f.Vector == 13) { ok = false; }
        }
        if (ok)
        {
            ushort attr = AttrFromDesc(desc);
            int dpl = (attr >> 5) & 3;
            bool code = (attr & 8) != 0;
            ok = (attr & 0x10) != 0;
            if (ok && !(code && (attr & 4) != 0) && (dpl < Cpl || dpl < (sel & 3))) ok = false;
            if (ok) ok = d.Op == Mnemonic.Verr ? (!code || (attr & 2) != 0) : (!code && (attr & 2) != 0);
        }
        Rflags = ok ? Rflags | ZF : Rflags & ~ZF;
    }

    // ---- fast system calls ----

    private void SetFlatCs(ushort sel, bool long64, int dpl)
    {
        Seg[CS] = new SegReg
        {
            Sel = sel, Base = 0, Limit = 0xFFFF_FFFF,
            Attr = (ushort)(0x809B | (dpl << 5) | (long64 ? 0x2000 : 0x4000)),
        };
    }

    private void SetFlatSs(ushort sel, int dpl)
        => Seg[SS] = new SegReg { Sel = sel, Base = 0, Limit = 0xFFFF_FFFF, Attr = (ushort)(0xC093 | (dpl << 5)) };

    private void ExecSyscall()
    {
        if (InterceptTraps)
        {
            Stop = true;
            throw Exit(VcpuExitReason.Syscall);
        }
        if ((Efer & 1) == 0 || !Protected) throw UD();
        Stop = true;
        ushort sel = (ushort)(Star >> 32);
        if (LongMode)
        {
            R[1] = Rip;
            R[11] = Rflags & ~RF;
            SetFlatCs((ushort)(sel & 0xFFFC), true, 0);
            SetFlatSs((ushort)((sel + 8) & 0xFFFC), 0);
            Rflags &= ~(Sfmask | RF);
            Rflags |= 2;
            Rip = Bitness == 64 ? Lstar : Cstar;
        }
        else
        {
            R[1] = (uint)Rip;
            SetFlatCs((ushort)(sel & 0xFFFC), false, 0);
            SetFlatSs((ushort)((sel + 8) & 0xFFFC), 0);
            Rflags &= ~(VM | IF | RF);
            Rip = (uint)Star;
        }
        UpdateMode();
    }

    private void ExecSysret(bool to64)
    {
        if ((Efer & 1) == 0 || !Protected) throw UD();
        RequireCpl0();
        Stop = true;
        ushort sel = (ushort)(Star >> 48);
        if (LongMode)
        {
            if (to64)
            {
                if (!Canonical(R[1])) throw GP();
                SetFlatCs((ushort)((sel + 16) | 3), true, 3);
                Rip = R[1];
            }
            else
            {
                SetFlatCs((ushort)(sel | 3), false, 3);
                Rip = (uint)R[1];
            }
            Rflags = (R[11] & 0x3C7FD7) | 2;
        }
        else
        {
            SetFlatCs((ushort)(sel | 3), false, 3);
            Rip = (uint)R[1];
            Rflags |= IF;
        }
        // SS keeps a flat descriptor with the selector STAR names.
        SetFlatSs((ushort)((sel + 8) | 3), 3);
        UpdateMode();
    }

    private void ExecSysenter()
    {
        if (!Protected || (SysenterCs & 0xFFFC) == 0) throw GP();
        Stop = true;
        ushort cs = (ushort)(SysenterCs & 0xFFFC);
        Rflags &= ~(VM | IF | RF);
        SetFlatCs(cs, LongMode, 0);
        SetFlatSs((ushort)(cs + 8), 0);
        UpdateMode();
        Rip = LongMode ? SysenterEip : (uint)SysenterEip;
        R[4] = LongMode ? SysenterEsp : (uint)SysenterEsp;
    }

    private void ExecSysexit(bool to64)
    {
        if (!Protected || Cpl != 0 || (SysenterCs & 0xFFFC) == 0) throw GP();
        Stop = true;
        ushort cs = (ushort)SysenterCs;
        if (to64)
        {
            SetFlatCs((ushort)((cs + 32) | 3), true, 3);
            SetFlatSs((ushort)((cs + 40) | 3), 3);
            Rip = R[2]; R[4] = R[1];
        }
        else
        {
            SetFlatCs((ushort)((cs + 16) | 3), false, 3);
            SetFlatSs((ushort)((cs + 24) | 3), 3);
            Rip = (uint)R[2]; R[4] = (uint)R[1];
        }
        UpdateMode();
    }

    // ---- CPUID, TSC, MSRs ----

    private void ExecCpuid()
    {
        uint leaf = (uint)R[0], sub = (uint)R[1];
        _cpuid.Cpuid(leaf, sub, out uint a, out uint b, out uint c, out uint dx);
        if (leaf == 1)
        {
            // OSXSAVE mirrors CR4.OSXSAVE, as on hardware.
            c = (c & ~(1u << 27)) | ((Cr4 & 0x40000) != 0 && (c & (1u << 26)) != 0 ? 1u << 27 : 0);
        }
        R[0] = a; R[3] = b; R[1] = c; R[2] = dx;
    }

    internal ulong ReadTsc() => X86Engine.ComputeTsc(X86Engine.HostMonotonicNs(), _engine.TscKhz, TscOffset);

    private void ExecRdmsr()
    {
        RequireCpl0();
        uint idx = (uint)R[1];
        if (TryGetMsr(idx, out ulong v))
        {
            R[0] = (uint)v; R[2] = v >> 32;
            return;
        }
        _pending = PendingCompletion.RdMsr;
        _pendingIp = CurIp;
        _pendingValue = 0;
        Stop = true;
        _exit.Port = idx;
        ExitAfterInstruction(VcpuExitReason.RdMsr);
    }

    private void ExecWrmsr()
    {
        RequireCpl0();
        uint idx = (uint)R[1];
        ulong v = (uint)R[0] | ((ulong)(uint)R[2] << 32);
        switch (SetMsr(idx, v))
        {
            case MsrResult.Ok: Stop = true; return;
            case MsrResult.Fault: throw GP();
        }
        _pending = PendingCompletion.WrMsr;
        _pendingIp = CurIp;
        Stop = true;
        _exit.Port = idx;
        _exit.Data = v;
        _exit.IsWrite = true;
        ExitAfterInstruction(VcpuExitReason.WrMsr);
    }

    private enum MsrResult { Ok, Fault, Unknown }

    public bool TryGetMsr(uint index, out ulong value)
    {
        switch (index)
        {
            case 0x10: value = ReadTsc(); return true;
            case 0x1B: value = ApicBase; return true;
            case 0x3B: value = (ulong)TscAdjust; return true;
            case 0xFE: value = 0x508; return true; // MTRRcap: 8 variable ranges, fixed ranges, WC
            case 0x10A: value = DefaultCpuidPolicy.ArchCapabilities; return true;
            case 0x174: value = SysenterCs; return true;
            case 0x175: value = SysenterEsp; return true;
            case 0x176: value = SysenterEip; return true;
            case 0x1A0: value = MiscEnable; return true;
            case 0x1D9: value = DebugCtl; return true;
            case 0x277: value = Pat; return true;
            case 0x2FF: value = MtrrDefType; return true;
            case 0x250: value = MtrrFixed[0]; return true;
            case 0x258: value = MtrrFixed[1]; return true;
            case 0x259: value = MtrrFixed[2]; return true;
            case >= 0x268 and <= 0x26F: value = MtrrFixed[3 + (int)(index - 0x268)]; return true;
            case >= 0x200 and <= 0x20F: value = MtrrVar[index - 0x200]; return true;
            case 0xC0000080: value = Efer; return true;
            case 0xC0000081: value = Star; return true;
            case 0xC0000082: value = Lstar; return true;
            case 0xC0000083: value = Cstar; return true;
            case 0xC0000084: value = Sfmask; return true;
            case 0xC0000100: value = Seg[FS].Base; return true;
            case 0xC0000101: value = Seg[GS].Base; return true;
            case 0xC0000102: value = KernelGsBase; return true;
            case 0xC0000103: value = TscAux; return true;
        }
        value = 0;
        return false;
    }

    public bool TrySetMsr(uint index, ulong value) => SetMsr(index, value) == MsrResult.Ok;

    private MsrResult SetMsr(uint index, ulong v)
    {
        switch (index)
        {
            case 0x10:
            {
                // A write to the TSC moves IA32_TSC_ADJUST by as much as it moves the counter.
                long offset = (long)(v - X86Engine.ComputeTsc(X86Engine.HostMonotonicNs(), _engine.TscKhz, 0));
                TscAdjust += offset - TscOffset;
                TscOffset = offset;
                return MsrResult.Ok;
            }
            case 0x3B:
                // IA32_TSC_ADJUST: the counter moves by the change written.
                TscOffset += (long)v - TscAdjust;
                TscAdjust = (long)v;
                return MsrResult.Ok;
            case 0x1B: ApicBase = v; return MsrResult.Ok;
            case 0xFE: return MsrResult.Fault;
            case 0x10A: return MsrResult.Fault; // read-only
            case 0x174: SysenterCs = v & 0xFFFF; return MsrResult.Ok;
            case 0x175: if (!Canonical(v)) return MsrResult.Fault; SysenterEsp = v; return MsrResult.Ok;
            case 0x176: if (!Canonical(v)) return MsrResult.Fault; SysenterEip = v; return MsrResult.Ok;
            case 0x1A0: MiscEnable = v; return MsrResult.Ok;
            case 0x1D9:
                if ((v & ~DebugCtlBtf) != 0) return MsrResult.Fault;
                DebugCtl = v;
                return MsrResult.Ok;
            case 0x277:
                for (int i = 0; i < 8; i++)
                {
                    ulong t = (v >> (i * 8)) & 0xFF;
                    if (t is 2 or 3 or > 7) return MsrResult.Fault;
                }
                Pat = v; return MsrResult.Ok;
            case 0x2FF: MtrrDefType = v; return MsrResult.Ok;
            case 0x250: MtrrFixed[0] = v; return MsrResult.Ok;
            case 0x258: MtrrFixed[1] = v; return MsrResult.Ok;
            case 0x259: MtrrFixed[2] = v; return MsrResult.Ok;
            case >= 0x268 and <= 0x26F: MtrrFixed[3 + (int)(index - 0x268)] = v; return MsrResult.Ok;
            case >= 0x200 and <= 0x20F: MtrrVar[index - 0x200] = v; return MsrResult.Ok;
            case 0xC0000080:
            {
                if ((v & ~0xD01UL) != 0) return MsrResult.Fault;
                bool lme = (v & 0x100) != 0;
                if (PagingEnabled && lme != ((Efer & 0x100) != 0)) return MsrResult.Fault;
                Efer = (v & ~0x400UL) | (Efer & 0x400);
                UpdateMode();
                FlushTlb(true);
                return MsrResult.Ok;
            }
            case 0xC0000081: Star = v; return MsrResult.Ok;
            case 0xC0000082: if (!Canonical(v)) return MsrResult.Fault; Lstar = v; return MsrResult.Ok;
            case 0xC0000083: if (!Canonical(v)) return MsrResult.Fault; Cstar = v; return MsrResult.Ok;
            case 0xC0000084: Sfmask = v & 0xFFFF_FFFF; return MsrResult.Ok;
            case 0xC0000100: if (!Canonical(v)) return MsrResult.Fault; Seg[FS].Base = v; return MsrResult.Ok;
            case 0xC0000101: if (!Canonical(v)) return MsrResult.Fault; Seg[GS].Base = v; return MsrResult.Ok;
            case 0xC0000102: if (!Canonical(v)) return MsrResult.Fault; KernelGsBase = v; return MsrResult.Ok;
            case 0xC0000103: TscAux = v & 0xFFFF_FFFF; return MsrResult.Ok;
        }
        return MsrResult.Unknown;
    }
}
