namespace XenSharp.Cpu;

internal enum TaskSwitchSource { Jump, Call, Interrupt, Iret }

/// <summary>Hardware task switches with 16- and 32-bit TSSs (SDM vol. 3 ch. 7): JMP/CALL to a TSS
/// or task gate, task gates in the IDT, and IRET with NT set.</summary>
internal unsafe partial class X86Vcpu
{
    /// <summary>Reads the TSS descriptor a task gate names (TI must be 0): #GP(selector) when it is
    /// not an available TSS, #NP when not present.</summary>
    private ulong ReadTssDescriptorForSwitch(ushort tss, int vectorOnError, uint ext = 0)
    {
        uint err = (uint)(tss & 0xFFFC) | ext;
        if ((tss & 4) != 0 || (tss & 0xFFFC) == 0) throw Fault(vectorOnError, err);
        if ((uint)(tss & 0xFFF8) + 7 > GdtLimit) throw Fault(vectorOnError, err);
        ulong desc = ReadSys(GdtBase + (ulong)(tss & 0xFFF8), 8);
        int type = (int)((desc >> 40) & 0x1F);
        if (type is not (0x1 or 0x9)) throw Fault(vectorOnError, err);
        if ((desc & (1UL << 47)) == 0) throw Fault(11, err);
        return desc;
    }

    /// <summary>Switches to the task whose TSS descriptor is <paramref name="desc"/>. For interrupts,
    /// the error code (if any) is pushed on the new task's stack.</summary>
    internal void TaskSwitch(ushort sel, ulong desc, TaskSwitchSource src, bool hasError, uint error, uint ext = 0)
    {
        uint selErr = (uint)(sel & 0xFFFC) | ext;
        if ((sel & 4) != 0) throw GP(selErr);
        int newType = (int)((desc >> 40) & 0xF);
        bool newBusy = (newType & 2) != 0;
        bool new32 = (newType & 8) != 0;
        uint newLimit = LimitFromDesc(desc);
        ulong newBase = BaseFromDesc(desc);
        if (newLimit < (new32 ? 0x67u : 0x2Bu)) throw Fault(10, selErr);
        if (src == TaskSwitchSource.Iret ? !newBusy : newBusy) throw src == TaskSwitchSource.Iret ? Fault(10, selErr) : GP(selErr);

        // Current task: its dynamic state goes to its TSS.
        ref SegReg tr = ref Seg[TR];
        bool old32 = (tr.Attr & 0xF) is 9 or 11;
        if (tr.Limit < (old32 ? 0x5Fu : 0x29u)) throw Fault(10, (uint)(tr.Sel & 0xFFFC) | ext);
        // Touch both TSSs before changing anything, so that a #PF leaves the old task intact.
        ReadSys(newBase, 2);
        ReadSys(newBase + (new32 ? 0x64UL : 0x2AUL), 2);
        ulong oldBase = tr.Base;
        ushort oldSel = tr.Sel;

        ulong flags = FlagsImage();
        if (src == TaskSwitchSource.Iret) flags &= ~NT;
        if (src is TaskSwitchSource.Jump or TaskSwitchSource.Iret) SetTssBusy(oldSel, false);
        if (old32)
        {
            WriteSys(oldBase + 0x20, 4, (uint)Rip);
            WriteSys(oldBase + 0x24, 4, (uint)flags);
            for (int i = 0; i < 8; i++) WriteSys(oldBase + 0x28 + (ulong)i * 4, 4, (uint)R[i]);
            for (int i = 0; i < 6; i++) WriteSys(oldBase + 0x48 + (ulong)i * 4, 2, Seg[i].Sel);
        }
        else
        {
            WriteSys(oldBase + 0x0E, 2, (ushort)Rip);
            WriteSys(oldBase + 0x10, 2, (ushort)flags);
            for (int i = 0; i < 8; i++) WriteSys(oldBase + 0x12 + (ulong)i * 2, 2, (ushort)R[i]);
            for (int i = 0; i < 4; i++) WriteSys(oldBase + 0x22 + (ulong)i * 2, 2, Seg[i].Sel);
        }

        // New task: read its state.
        ulong nb = newBase;
        ulong eip, eflags, cr3 = 0;
        Span<ulong> regs = stackalloc ulong[8];
        Span<ushort> sels = stackalloc ushort[6];
        ushort ldt;
        if (new32)
        {
            cr3 = ReadSys(nb + 0x1C, 4);
            eip = ReadSys(nb + 0x20, 4);
            eflags = ReadSys(nb + 0x24, 4);
            for (int i = 0; i < 8; i++) regs[i] = ReadSys(nb + 0x28 + (ulong)i * 4, 4);
            for (int i = 0; i < 6; i++) sels[i] = (ushort)ReadSys(nb + 0x48 + (ulong)i * 4, 2);
            ldt = (ushort)ReadSys(nb + 0x60, 2);
        }
        else
        {
            eip = ReadSys(nb + 0x0E, 2);
            eflags = ReadSys(nb + 0x10, 2) | (Rflags & 0xFFFF_0000 & ~(VM | RF));
            for (int i = 0; i < 8; i++) regs[i] = (R[i] & ~0xFFFFUL) | ReadSys(nb + 0x12 + (ulong)i * 2, 2);
            for (int i = 0; i < 4; i++) sels[i] = (ushort)ReadSys(nb + 0x22 + (ulong)i * 2, 2);
            sels[FS] = sels[GS] = 0;
            ldt = (ushort)ReadSys(nb + 0x2A, 2);
        }

        if (src is TaskSwitchSource.Call or TaskSwitchSource.Interrupt)
        {
            WriteSys(nb, 2, oldSel);
            eflags |= NT;
        }
        if (src != TaskSwitchSource.Iret) SetTssBusy(sel, true);

        // Commit: from here on, faults belong to the new task.
        Seg[TR] = new SegReg { Sel = sel, Base = newBase, Limit = newLimit, Attr = (ushort)(AttrFromDesc(desc) | 2) };
        Cr0 |= 8; // TS
        if (new32 && PagingEnabled)
        {
            Cr3 = cr3;
            FlushTlb(false);
        }
        Rflags = (eflags & 0x3F7FD5) | 2;
        Rip = eip;
        CurIp = eip;
        for (int i = 0; i < 8; i++) R[i] = new32 ? (uint)regs[i] : regs[i];
        // Selectors first (their descriptors unusable until checked), as the processor does.
        for (int i = 0; i < 6; i++) Seg[i] = new SegReg { Sel = sels[i], Attr = i == CS ? Seg[CS].Attr : (ushort)0 };
        Seg[LDTR] = new SegReg { Sel = ldt };
        Stop = true;
        LoadTaskLdt(ldt);
        if ((eflags & VM) != 0)
        {
            // A virtual-8086 task: segments are real-mode style, CPL 3.
            for (int i = 0; i < 6; i++) LoadVm86Segment(i, sels[i]);
        }
        else LoadTaskSegments(sels);
        UpdateMode();
        if (hasError)
        {
            Push(error, new32 ? 4 : 2);
        }
        // The new TSS's T bit: #DB (DR6.BT) once the switch is complete, before the task's first instruction.
        if (new32 && (ReadSys(nb + 0x64, 2) & 1) != 0) RaiseDebug(1, 0x8000, fault: false);
    }

    private void SetTssBusy(ushort sel, bool busy)
    {
        ulong addr = GdtBase + (ulong)(sel & 0xFFF8) + 5;
        byte b = (byte)ReadSys(addr, 1);
        b = busy ? (byte)(b | 2) : (byte)(b & ~2);
        WriteSys(addr, 1, b);
    }

    private void LoadTaskLdt(ushort ldt)
    {
        if ((ldt & 0xFFFC) == 0) return;
        uint err = (uint)(ldt & 0xFFFC);
        if ((ldt & 4) != 0 || (uint)(ldt & 0xFFF8) + 7 > GdtLimit) throw Fault(10, err);
        ulong desc = ReadSys(GdtBase + (ulong)(ldt & 0xFFF8), 8);
        ushort attr = AttrFromDesc(desc);
        if ((attr & 0x1F) != 2) throw Fault(10, err);
        if ((attr & 0x80) == 0) throw Fault(10, err);
        Seg[LDTR] = new SegReg { Sel = ldt, Base = BaseFromDesc(desc), Limit = LimitFromDesc(desc), Attr = attr };
    }

    /// <summary>Loads CS, SS and the data segments of the new task with the checks of SDM table 7-1:
    /// #TS(selector) for a bad descriptor, #NP (#SS for SS) when not present.</summary>
    private void LoadTaskSegments(ReadOnlySpan<ushort> sels)
    {
        // CS first: it sets the CPL the others are checked against.
        ushort cs = sels[CS];
        uint csErr = (uint)(cs & 0xFFFC);
        if ((cs & 0xFFFC) == 0) throw Fault(10, 0);
        ulong csDesc = ReadTaskDescriptor(cs, out ulong csAddr);
        ushort ca = AttrFromDesc(csDesc);
        int cdpl = (ca >> 5) & 3, cpl = cs & 3;
        if ((ca & 0x18) != 0x18) throw Fault(10, csErr);
        if ((ca & 4) != 0 ? cdpl > cpl : cdpl != cpl) throw Fault(10, csErr);
        if ((ca & 0x80) == 0) throw Fault(11, csErr);
        SetAccessed(csAddr, csDesc);
        Seg[CS] = new SegReg { Sel = cs, Base = BaseFromDesc(csDesc), Limit = LimitFromDesc(csDesc), Attr = (ushort)(ca | 1) };
        SetCpl(cpl);

        ushort ss = sels[SS];
        uint ssErr = (uint)(ss & 0xFFFC);
        if ((ss & 0xFFFC) == 0) throw Fault(10, 0);
        ulong ssDesc = ReadTaskDescriptor(ss, out ulong ssAddr);
        ushort sa = AttrFromDesc(ssDesc);
        if ((ss & 3) != cpl || ((sa >> 5) & 3) != cpl || (sa & 0x1A) != 0x12) throw Fault(10, ssErr);
        if ((sa & 0x80) == 0) throw Fault(12, ssErr);
        SetAccessed(ssAddr, ssDesc);
        Seg[SS] = new SegReg { Sel = ss, Base = BaseFromDesc(ssDesc), Limit = LimitFromDesc(ssDesc), Attr = (ushort)(sa | 1) };
        UpdateMode();

        foreach (int s in stackalloc[] { DS, ES, FS, GS })
        {
            ushort sel = sels[s];
            if ((sel & 0xFFFC) == 0) { Seg[s] = new SegReg { Sel = sel }; continue; }
            uint err = (uint)(sel & 0xFFFC);
            ulong desc = ReadTaskDescriptor(sel, out ulong addr);
            ushort a = AttrFromDesc(desc);
            int dpl = (a >> 5) & 3;
            bool code = (a & 8) != 0;
            if ((a & 0x10) == 0 || (code && (a & 2) == 0)) throw Fault(10, err);
            bool conforming = code && (a & 4) != 0;
            if (!conforming && (dpl < cpl || dpl < (sel & 3))) throw Fault(10, err);
            if ((a & 0x80) == 0) throw Fault(11, err);
            SetAccessed(addr, desc);
            Seg[s] = new SegReg { Sel = sel, Base = BaseFromDesc(desc), Limit = LimitFromDesc(desc), Attr = (ushort)(a | 1) };
        }
    }

    /// <summary>A descriptor of the new task's segments: outside its table is #TS(selector).</summary>
    private ulong ReadTaskDescriptor(ushort sel, out ulong addr)
    {
        addr = DescriptorAddress(sel, 10);
        return ReadSys(addr, 8);
    }

    /// <summary>IRET with NT set outside long mode: back to the task in the current TSS's link field.</summary>
    private void IretTaskReturn()
    {
        ushort link = (ushort)ReadSys(Seg[TR].Base, 2);
        uint err = (uint)(link & 0xFFFC);
        if ((link & 4) != 0 || (link & 0xFFFC) == 0 || (uint)(link & 0xFFF8) + 7 > GdtLimit) throw Fault(10, err);
        ulong desc = ReadSys(GdtBase + (ulong)(link & 0xFFF8), 8);
        int type = (int)((desc >> 40) & 0x1F);
        if (type is not (0x3 or 0xB)) throw Fault(10, err);
        if ((desc & (1UL << 47)) == 0) throw Fault(11, err);
        TaskSwitch(link, desc, TaskSwitchSource.Iret, false, 0);
    }
}
