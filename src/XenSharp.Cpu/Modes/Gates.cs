namespace XenSharp.Cpu;

/// <summary>Far JMP/CALL through call gates (16-, 32- and 64-bit) and to task gates and TSS
/// descriptors (SDM vol. 3 5.8 and 7.3).</summary>
internal unsafe partial class X86Vcpu
{
    /// <summary>Far JMP/CALL whose selector names a system descriptor.</summary>
    private void FarTransferThroughSystemDescriptor(ushort sel, ulong desc, ulong addr, bool call)
    {
        ushort attr = AttrFromDesc(desc);
        int type = attr & 0xF;
        int dpl = (attr >> 5) & 3;
        int rpl = sel & 3;
        uint selErr = (uint)(sel & 0xFFFC);
        if (LongMode)
        {
            // Only 64-bit call gates exist in IA-32e mode.
            if (type != 0xC) throw GP(selErr);
        }
        else if (type is not (0x1 or 0x4 or 0x5 or 0x9 or 0xC)) throw GP(selErr);
        if (dpl < Cpl || dpl < rpl) throw GP(selErr);
        if ((attr & 0x80) == 0) throw Fault(11, selErr);
        switch (type)
        {
            case 0x1:
            case 0x9:
                TaskSwitch(sel, desc, call ? TaskSwitchSource.Call : TaskSwitchSource.Jump, false, 0);
                return;
            case 0x5:
            {
                ushort tss = (ushort)(desc >> 16);
                ulong tssDesc = ReadTssDescriptorForSwitch(tss, 13);
                TaskSwitch(tss, tssDesc, call ? TaskSwitchSource.Call : TaskSwitchSource.Jump, false, 0);
                return;
            }
            default:
                CallGate(sel, desc, addr, call);
                return;
        }
    }

    private void CallGate(ushort gateSel, ulong gate, ulong gateAddr, bool call)
    {
        int type = (int)((gate >> 40) & 0xF);
        ushort csSel = (ushort)(gate >> 16);
        int gsize;
        ulong target;
        if (LongMode)
        {
            ulong hi = ReadSys(gateAddr + 8, 8);
            if (((hi >> 40) & 0x1F) != 0) throw GP((uint)(gateSel & 0xFFFC));
            target = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF_0000) | (hi << 32);
            gsize = 8;
        }
        else if (type == 0xC)
        {
            target = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF_0000);
            gsize = 4;
        }
        else
        {
            target = gate & 0xFFFF;
            gsize = 2;
        }
        int paramCount = LongMode ? 0 : (int)((gate >> 32) & 0x1F);

        if ((csSel & 0xFFFC) == 0) throw GP();
        uint csErr = (uint)(csSel & 0xFFFC);
        ulong desc = ReadDescriptor(csSel, out ulong csAddr);
        ushort cattr = AttrFromDesc(desc);
        int cdpl = (cattr >> 5) & 3;
        if ((cattr & 0x18) != 0x18 || cdpl > Cpl) throw GP(csErr);
        if (LongMode && ((cattr & 0x2000) == 0 || (cattr & 0x4000) != 0)) throw GP(csErr);
        if ((cattr & 0x80) == 0) throw Fault(11, csErr);
        bool conforming = (cattr & 4) != 0;
        if (LongMode && !Canonical(target)) throw GP();

        if (!call)
        {
            if (!conforming && cdpl != Cpl) throw GP(csErr);
            SetAccessed(csAddr, desc);
            LoadCs(csSel, desc, Cpl);
        }
        else if (!conforming && cdpl < Cpl)
        {
            CallGateInward(csSel, desc, cdpl, gsize, paramCount);
        }
        else
        {
            ushort oldCs = Seg[CS].Sel;
            if (LongMode && Bitness != 64)
            {
                // A 64-bit gate from compatibility mode: the return frame is 64-bit.
                ulong sp = (uint)R[4];
                WriteSys(sp - 8, 8, oldCs); // same privilege: the access rights are the current ones
                WriteSys(sp - 16, 8, Rip);
                R[4] = sp - 16;
            }
            else
            {
                Push(oldCs, gsize);
                Push(Rip, gsize);
            }
            SetAccessed(csAddr, desc);
            LoadCs(csSel, desc, Cpl);
        }
        UpdateMode();
        Rip = gsize == 8 ? target : gsize == 4 ? (uint)target : target & 0xFFFF;
        Stop = true;
    }

    /// <summary>CALL through a gate to a more privileged non-conforming segment: the stack for the
    /// new CPL comes from the TSS; the old SS:SP, the gate's parameters (16/32-bit gates), CS and IP
    /// are pushed there.</summary>
    private void CallGateInward(ushort csSel, ulong desc, int newCpl, int gsize, int paramCount)
    {
        ushort oldSs = Seg[SS].Sel, oldCs = Seg[CS].Sel;
        ulong oldSp = R[4], retIp = Rip;
        if (LongMode)
        {
            ulong rsp = ReadTss64(4 + newCpl * 8);
            if (!Canonical(rsp)) throw Fault(12, 0);
            rsp &= ~0x7UL;
            WriteFrame8(rsp - 8, oldSs);
            WriteFrame8(rsp - 16, oldSp);
            WriteFrame8(rsp - 24, oldCs);
            WriteFrame8(rsp - 32, retIp);
            LoadCs(csSel, desc, newCpl);
            Seg[SS] = new SegReg { Sel = (ushort)newCpl, Base = 0, Limit = 0xFFFF_FFFF, Attr = (ushort)(0xC093 | (newCpl << 5)) };
            R[4] = rsp - 32;
            return;
        }

        var (ss, sp) = TssStack32(newCpl);
        SegReg newSs = CheckInnerStack(ss, newCpl);
        // The parameters come from the caller's stack before it is left.
        Span<ulong> args = stackalloc ulong[32];
        for (int i = 0; i < paramCount; i++) args[i] = PeekStack((ulong)(i * gsize), gsize);

        SegReg savedSs = Seg[SS];
        ulong savedSp = R[4];
        int savedCpl = Cpl;
        Seg[SS] = newSs;
        R[4] = newSs.Big ? (uint)sp : (R[4] & ~0xFFFFUL) | (ushort)sp;
        SetCpl(newCpl);
        try
        {
            ulong oldSpImage = savedSs.Big ? (uint)oldSp : (ushort)oldSp;
            Push(oldSs, gsize);
            Push(oldSpImage, gsize);
            for (int i = paramCount - 1; i >= 0; i--) Push(args[i], gsize);
            Push(oldCs, gsize);
            Push(retIp, gsize);
        }
        catch (GuestFault)
        {
            // The new stack faulted (#SS or #PF): the CALL did not happen.
            Seg[SS] = savedSs; R[4] = savedSp; SetCpl(savedCpl);
            throw;
        }
        LoadCs(csSel, desc, newCpl);
    }

    /// <summary>Checks the SS a privilege change loads from the TSS: #TS(selector), or #SS when not present.</summary>
    private SegReg CheckInnerStack(ushort ss, int cpl)
    {
        uint err = (uint)(ss & 0xFFFC);
        if ((ss & 0xFFFC) == 0) throw Fault(10, 0);
        ulong addr;
        try { addr = DescriptorAddress(ss, 10); }
        catch (GuestFault) { throw Fault(10, err); }
        ulong desc = ReadSys(addr, 8);
        ushort attr = AttrFromDesc(desc);
        int dpl = (attr >> 5) & 3;
        if ((ss & 3) != cpl || dpl != cpl || (attr & 0x1A) != 0x12) throw Fault(10, err);
        if ((attr & 0x80) == 0) throw Fault(12, err);
        SetAccessed(addr, desc);
        return new SegReg { Sel = ss, Base = BaseFromDesc(desc), Limit = LimitFromDesc(desc), Attr = (ushort)(attr | 1) };
    }
}
