using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

internal enum InterruptKind
{
    /// <summary>A fault or trap raised by the processor (no gate DPL check).</summary>
    Exception,
    /// <summary>An external interrupt or NMI (no gate DPL check).</summary>
    External,
    /// <summary>INT n: gate DPL checked against CPL.</summary>
    Software,
    /// <summary>INT3 / INTO: like INT n.</summary>
    SoftwareException,
    /// <summary>INT1 (ICEBP): no DPL check.</summary>
    PrivilegedSoftware,
}

/// <summary>Interrupt and exception delivery through the IVT/IDT, and IRET (SDM vol. 3 ch. 6).</summary>
internal unsafe partial class X86Vcpu
{
    public bool InterceptTraps { get; set; }

    /// <summary>Delivers <paramref name="vector"/> with the return address in <see cref="Rip"/>.</summary>
    internal void RaiseInterrupt(int vector, bool hasError, uint error, InterruptKind kind)
    {
        Stop = true;
        Halted = false;
        if (InterceptTraps && kind != InterruptKind.External)
        {
            _exit = default;
            _exit.Reason = VcpuExitReason.Exception;
            _exit.Port = (uint)vector;
            _exit.Data = error;
            _exit.Size = hasError ? 1 : 0;
            _exit.Address = vector == 14 ? Cr2 : 0;
            _exit.IsWrite = kind is InterruptKind.Software or InterruptKind.SoftwareException;
            throw _exitSignal;
        }
        if (InterceptDebug && ((vector == 3 && kind == InterruptKind.SoftwareException) || (vector == 1 && kind == InterruptKind.PrivilegedSoftware)))
            RaiseDebug(vector, 0, fault: false);
        if (vector == 2 && kind != InterruptKind.Software) _nmiBlocked = true;
        // EXT: only INT n, INT3 and INTO count as the program's own events; INT1 (ICEBP) is
        // delivered like a hardware #DB, so errors in its delivery carry EXT as well.
        uint ext = kind is InterruptKind.External or InterruptKind.PrivilegedSoftware ? 1u : 0u;
        bool soft = kind is InterruptKind.Software or InterruptKind.SoftwareException;

        if (!Protected)
        {
            if ((ulong)vector * 4 + 3 > IdtLimit) throw GP((uint)(vector * 8 + 2));
            ulong entry = ReadSys(IdtBase + (ulong)vector * 4, 4);
            Push(FlagsImage() & 0xFFFF, 2);
            Push(Seg[CS].Sel, 2);
            Push(Rip & 0xFFFF, 2);
            Rflags &= ~(IF | TF | AC | RF);
            ushort sel = (ushort)(entry >> 16);
            Seg[CS].Sel = sel; Seg[CS].Base = (ulong)sel << 4;
            Rip = entry & 0xFFFF;
            return;
        }
        bool fromVm86 = (Rflags & VM) != 0;
        // INT n is IOPL-sensitive in virtual-8086 mode (INT3 and INTO are not).
        if (fromVm86 && kind == InterruptKind.Software && ((Rflags >> 12) & 3) < 3) throw GP();

        int gateSize = LongMode ? 16 : 8;
        uint idtErr = (uint)(vector * 8 + 2) | ext;
        if ((ulong)(vector * gateSize + gateSize - 1) > IdtLimit) throw GP(idtErr);
        ulong gateAddr = IdtBase + (ulong)(vector * gateSize);
        ulong lo = ReadSys(gateAddr, 8);
        ulong hi = LongMode ? ReadSys(gateAddr + 8, 8) : 0;
        int type = (int)((lo >> 40) & 0xF);
        int gateDpl = (int)((lo >> 45) & 3);
        bool present = (lo & (1UL << 47)) != 0;
        bool validType = LongMode ? type is 0xE or 0xF : type is 0x6 or 0x7 or 0xE or 0xF;
        if (type == 5 && !LongMode)
        {
            if (soft && gateDpl < Cpl) throw GP(idtErr);
            if (!present) throw Fault(11, idtErr);
            ushort tss = (ushort)(lo >> 16);
            ulong tssDesc = ReadTssDescriptorForSwitch(tss, 13, ext);
            TaskSwitch(tss, tssDesc, TaskSwitchSource.Interrupt, hasError, error, ext);
            return;
        }
        if (!validType) throw GP(idtErr);
        if (soft && gateDpl < Cpl) throw GP(idtErr);
        if (!present) throw Fault(11, idtErr);
        bool trapGate = (type & 1) != 0;
        bool gate32 = (type & 8) != 0;
        ushort csSel = (ushort)(lo >> 16);
        ulong target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000) | (hi << 32);
        int ist = LongMode ? (int)((lo >> 32) & 7) : 0;

        if ((csSel & 0xFFFC) == 0) throw GP(ext);
        ulong csDesc = ReadDescriptor(csSel, out _);
        ushort csAttr = AttrFromDesc(csDesc);
        int csDpl = (csAttr >> 5) & 3;
        if ((csAttr & 0x18) != 0x18 || csDpl > Cpl) throw GP((uint)(csSel & 0xFFFC) | ext);
        if ((csAttr & 0x80) == 0) throw Fault(11, (uint)(csSel & 0xFFFC) | ext);
        if (LongMode && ((csAttr & 0x2000) == 0 || (csAttr & 0x4000) != 0)) throw GP((uint)(csSel & 0xFFFC) | ext);
        bool conforming = (csAttr & 4) != 0;
        // From virtual-8086 mode only a ring-0 non-conforming handler will do.
        if (fromVm86 && (conforming || csDpl != 0)) throw GP((uint)(csSel & 0xFFFC) | ext);
        int newCpl = conforming ? Cpl : csDpl;

        ulong oldFlags = FlagsImage();
        // A fault's saved RF is set so that returning to the restarted instruction does not hit its
        // instruction breakpoint again (#DB is left to its handler, as instruction breakpoints require).
        if (kind == InterruptKind.Exception && IsFaultVector(vector)) oldFlags |= RF;
        // An interrupt taken before the instruction an IRET set RF for keeps RF for the return.
        else if (kind == InterruptKind.External) oldFlags |= Rflags & RF;
        ushort oldCs = Seg[CS].Sel;
        ushort oldSs = Seg[SS].Sel;
        ulong oldSp = R[4];
        ulong retIp = Rip;

        if (LongMode)
        {
            ulong newSp;
            if (ist != 0) newSp = ReadTss64(0x24 + (ist - 1) * 8, ext);
            else if (newCpl != Cpl) newSp = ReadTss64(4 + newCpl * 8, ext);
            else newSp = Bitness == 64 ? R[4] : (uint)R[4];
            if (newCpl != Cpl && ist == 0 && (newSp >> 47 != 0 && newSp >> 47 != 0x1FFFF)) throw Fault(12, ext);
            newSp &= ~0xFUL;
            // Build the frame with supervisor writes at the new privilege.
            WriteFrame8(newSp - 8, oldSs);
            WriteFrame8(newSp - 16, oldSp);
            WriteFrame8(newSp - 24, oldFlags);
            WriteFrame8(newSp - 32, oldCs);
            WriteFrame8(newSp - 40, retIp);
            newSp -= 40;
            if (hasError) { newSp -= 8; WriteFrame8(newSp, error); }
            LoadCs(csSel, csDesc, newCpl);
            if (newCpl != Cpl || true)
            {
                if (newCpl != (oldCs & 3))
                    Seg[SS] = new SegReg { Sel = (ushort)newCpl, Base = 0, Limit = 0xFFFF_FFFF, Attr = (ushort)(0xC093 | (newCpl << 5)) };
            }
            R[4] = newSp;
            Rip = target;
        }
        else
        {
            int psize = gate32 ? 4 : 2;
            if (newCpl < Cpl)
            {
                var (ss, sp) = TssStack32(newCpl);
                if (fromVm86)
                {
                    oldFlags |= VM;
                    Rflags &= ~VM; // the ring-0 stack is a protected-mode segment
                }
                try { LoadSegmentForCpl(SS, ss, newCpl); }
                catch (GuestFault) { if (fromVm86) Rflags |= VM; throw; }
                R[4] = Seg[SS].Big ? (uint)sp : (R[4] & ~0xFFFFUL) | (ushort)sp;
                SetCpl(newCpl);
                if (fromVm86)
                {
                    Push(Seg[GS].Sel, psize);
                    Push(Seg[FS].Sel, psize);
                    Push(Seg[DS].Sel, psize);
                    Push(Seg[ES].Sel, psize);
                    foreach (int sr in stackalloc[] { ES, DS, FS, GS }) Seg[sr] = new SegReg();
                }
                Push(oldSs, psize);
                Push(oldSp, psize);
            }
            SetCpl(newCpl);
            Push(oldFlags, psize);
            Push(oldCs, psize);
            Push(retIp, psize);
            if (hasError) Push(error, psize);
            LoadCs(csSel, csDesc, newCpl);
            Rip = gate32 ? (uint)target : target & 0xFFFF;
        }
        Rflags &= ~(TF | NT | RF | VM);
        if (!trapGate) Rflags &= ~IF;
        UpdateMode();
    }

    /// <summary>A stack pointer from the 64-bit TSS: #TS(TR) when it lies beyond the TSS limit.</summary>
    private ulong ReadTss64(int offset, uint ext = 0)
    {
        if ((ulong)offset + 7 > Seg[TR].Limit) throw Fault(10, (uint)(Seg[TR].Sel & 0xFFFC) | ext);
        return ReadSys(Seg[TR].Base + (ulong)offset, 8);
    }

    /// <summary>IRET at CPL 0 to an image with VM set: the frame also holds SS:ESP, ES, DS, FS and GS.</summary>
    private void IretToVm86(ulong ip, ushort cs, ulong flags)
    {
        ulong sp = PeekStack(12, 4);
        Span<ushort> sels = stackalloc ushort[5];
        for (int i = 0; i < 5; i++) sels[i] = (ushort)PeekStack((ulong)(16 + 4 * i), 4);
        if ((ip & 0xFFFF_0000) != 0) throw GP();
        Rflags = (flags & 0x3F7FD5) | 2;
        LoadVm86Segment(CS, cs);
        LoadVm86Segment(SS, sels[0]);
        LoadVm86Segment(ES, sels[1]);
        LoadVm86Segment(DS, sels[2]);
        LoadVm86Segment(FS, sels[3]);
        LoadVm86Segment(GS, sels[4]);
        R[4] = (uint)sp;
        Rip = ip;
        UpdateMode();
    }

    private void LoadVm86Segment(int seg, ushort sel)
        => Seg[seg] = new SegReg { Sel = sel, Base = (ulong)sel << 4, Limit = 0xFFFF, Attr = (ushort)(seg == CS ? 0xFB : 0xF3) };

    private static bool IsFaultVector(int v) => v is 0 or 5 or 6 or 7 or 10 or 11 or 12 or 13 or 14 or 16 or 17 or 19 or 20 or 21;

    private void WriteFrame8(ulong lin, ulong v) => WriteSys(lin, 8, v);

    private void ExecIret(ref DecodedInsn d)
    {
        int size = d.Op switch { Iced.Intel.Mnemonic.Iretq => 8, Iced.Intel.Mnemonic.Iretd => 4, _ => 2 };
        Stop = true;
        _nmiBlocked = false;
        if (!Protected)
        {
            ulong ip = Pop(size);
            ushort cs = (ushort)Pop(size);
            ulong fl = Pop(size);
            Seg[CS].Sel = cs; Seg[CS].Base = (ulong)cs << 4;
            Rip = size == 2 ? (ushort)ip : (uint)ip;
            WriteFlagsFromPop(fl, size);
            return;
        }
        if ((Rflags & VM) != 0)
        {
            if (((Rflags >> 12) & 3) < 3) throw GP();
            ulong ip = Pop(size);
            ushort cs = (ushort)Pop(size);
            ulong fl = Pop(size);
            Seg[CS].Sel = cs; Seg[CS].Base = (ulong)cs << 4;
            Rip = (ushort)ip;
            ulong keep = IOPL | VM;
            ulong mask = (size == 2 ? 0xFFFFUL : 0x3F7FD5UL) & ~keep;
            Rflags = (Rflags & ~mask) | (fl & mask) | 2;
            return;
        }
        if ((Rflags & NT) != 0 && !LongMode)
        {
            IretTaskReturn();
            return;
        }
        if ((Rflags & NT) != 0 && LongMode) throw GP();

        ulong newIp = PeekStack(0, size);
        ushort newCs = (ushort)PeekStack((ulong)size, size);
        ulong newFlags = PeekStack((ulong)(2 * size), size);
        if (!LongMode && (newFlags & VM) != 0 && Cpl == 0 && size == 4)
        {
            IretToVm86(newIp, newCs, newFlags);
            return;
        }
        int rpl = newCs & 3;
        if (rpl < Cpl) throw GP((uint)(newCs & 0xFFFC));
        ulong desc = CheckCodeDescriptor(newCs, out _);
        ushort attr = AttrFromDesc(desc);
        int dpl = (attr >> 5) & 3;
        bool conforming = (attr & 4) != 0;
        if (conforming ? dpl > rpl : dpl != rpl) throw GP((uint)(newCs & 0xFFFC));

        bool popStack = rpl != Cpl || Bitness == 64;
        int oldCpl = Cpl;
        if (popStack)
        {
            ulong newSp = PeekStack((ulong)(3 * size), size);
            ushort newSs = (ushort)PeekStack((ulong)(4 * size), size);
            SegReg savedCs = Seg[CS];
            ulong savedFlags = Rflags;
            LoadCs(newCs, desc, rpl);
            SetCpl(oldCpl);
            // Flags are judged by the CPL before the return.
            WriteFlagsFromPop(newFlags, size);
            SetCpl(rpl);
            try
            {
                if ((newSs & 0xFFFC) == 0 && LongMode && rpl != 3 && Bitness == 64)
                    Seg[SS] = new SegReg { Sel = newSs, Base = 0, Limit = 0xFFFF_FFFF, Attr = (ushort)(0xC093 | (rpl << 5)) };
                else
                    LoadSegmentForCpl(SS, newSs, rpl);
            }
            catch (GuestFault)
            {
                // A bad outer SS faults with the state before the IRET.
                Seg[CS] = savedCs;
                Rflags = savedFlags;
                SetCpl(oldCpl);
                throw;
            }
            R[4] = size == 8 ? newSp : size == 4 ? (uint)newSp : (R[4] & ~0xFFFFUL) | (ushort)newSp;
            if (rpl > oldCpl) NullifyDataSegmentsAbove(rpl);
        }
        else
        {
            AddSp(3 * size);
            LoadCs(newCs, desc, rpl);
            WriteFlagsFromPop(newFlags, size);
        }
        // IRET (unlike POPF) loads RF: a #DB handler sets it to step over an instruction breakpoint.
        if (size >= 4) Rflags |= newFlags & RF;
        UpdateMode();
        Rip = Bitness == 64 ? newIp : size == 2 ? (ushort)newIp : (uint)newIp;
    }
}
