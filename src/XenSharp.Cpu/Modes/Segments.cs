using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>Segment loading, descriptor tables and far transfers (SDM vol. 3 ch. 3 and 5).</summary>
internal unsafe partial class X86Vcpu
{
    /// <summary>Hidden-part attributes (VMX layout) from the high dword of a descriptor.</summary>
    internal static ushort AttrFromDesc(ulong desc)
    {
        uint hi = (uint)(desc >> 32);
        return (ushort)(((hi >> 8) & 0x00FF) | ((hi >> 8) & 0xF000));
    }

    internal static ulong BaseFromDesc(ulong desc)
        => ((desc >> 16) & 0xFF_FFFF) | (((desc >> 56) & 0xFF) << 24);

    internal static uint LimitFromDesc(ulong desc)
    {
        uint lim = (uint)(desc & 0xFFFF) | (uint)((desc >> 32) & 0xF_0000);
        if ((desc & (1UL << 55)) != 0) lim = (lim << 12) | 0xFFF;
        return lim;
    }

    /// <summary>Address of the descriptor <paramref name="sel"/> names, or #GP(sel) when outside the table.</summary>
    private ulong DescriptorAddress(ushort sel, int vectorOnError = 13)
    {
        ulong tableBase; uint tableLimit;
        if ((sel & 4) != 0)
        {
            if ((Seg[LDTR].Attr & 0x80) == 0 || Seg[LDTR].Sel < 4) throw Fault(vectorOnError, (uint)(sel & 0xFFFC));
            tableBase = Seg[LDTR].Base; tableLimit = Seg[LDTR].Limit;
        }
        else { tableBase = GdtBase; tableLimit = GdtLimit; }
        uint idx = (uint)(sel & 0xFFF8);
        if (idx + 7 > tableLimit) throw Fault(vectorOnError, (uint)(sel & 0xFFFC));
        return tableBase + idx;
    }

    private ulong ReadDescriptor(ushort sel, out ulong addr)
    {
        addr = DescriptorAddress(sel);
        return ReadSys(addr, 8);
    }

    private void SetAccessed(ulong addr, ulong desc)
    {
        if ((desc & (1UL << 40)) == 0) WriteSys(addr + 5, 1, (ulong)((byte)(desc >> 40) | 1));
    }

    /// <summary>MOV/POP to a data segment register (and SS), with the protected-mode checks.</summary>
    internal void LoadSegment(int seg, ushort sel)
    {
        if (!Protected || (Rflags & VM) != 0)
        {
            ref SegReg rs = ref Seg[seg];
            rs.Sel = sel; rs.Base = (ulong)sel << 4;
            if ((Rflags & VM) != 0) { rs.Limit = 0xFFFF; rs.Attr = (ushort)(seg == CS ? 0xFB : 0xF3); }
            return;
        }
        int rpl = sel & 3;
        if ((sel & 0xFFFC) == 0)
        {
            if (seg == SS && (Bitness != 64 || Cpl == 3 || rpl != Cpl)) throw GP();
            // A null SS is only legal in 64-bit mode; it keeps a flat, writable shape there.
            Seg[seg] = seg == SS
                ? new SegReg { Sel = sel, Base = 0, Limit = 0xFFFF_FFFF, Attr = (ushort)(0xC093 | (Cpl << 5)) }
                : new SegReg { Sel = sel, Base = 0, Limit = 0, Attr = 0 };
            return;
        }
        ulong desc = ReadDescriptor(sel, out ulong addr);
        ushort attr = AttrFromDesc(desc);
        int dpl = (attr >> 5) & 3;
        bool s = (attr & 0x10) != 0;
        int type = attr & 0xF;
        bool code = (type & 8) != 0;
        if (seg == SS)
        {
            if (rpl != Cpl || dpl != Cpl || !s || code || (type & 2) == 0) throw GP((uint)(sel & 0xFFFC));
            if ((attr & 0x80) == 0) throw Fault(12, (uint)(sel & 0xFFFC));
        }
        else
        {
            if (!s || (code && (type & 2) == 0)) throw GP((uint)(sel & 0xFFFC));
            bool conforming = code && (type & 4) != 0;
            if (!conforming && (rpl > dpl || Cpl > dpl)) throw GP((uint)(sel & 0xFFFC));
            if ((attr & 0x80) == 0) throw Fault(11, (uint)(sel & 0xFFFC));
        }
        SetAccessed(addr, desc);
        Seg[seg] = new SegReg { Sel = sel, Base = BaseFromDesc(desc), Limit = LimitFromDesc(desc), Attr = (ushort)(attr | 1) };
        if (seg == SS) UpdateMode();
    }

    /// <summary>Loads CS for a far JMP/CALL/RET/IRET to <paramref name="sel"/> at privilege <paramref name="newCpl"/>.</summary>
    private void LoadCs(ushort sel, ulong desc, int newCpl)
    {
        Seg[CS] = new SegReg
        {
            Sel = (ushort)((sel & 0xFFFC) | newCpl),
            Base = BaseFromDesc(desc),
            Limit = LimitFromDesc(desc),
            Attr = (ushort)(AttrFromDesc(desc) | 1),
        };
        SetCpl(newCpl);
    }

    /// <summary>Checks a code-segment descriptor for a far transfer; returns it.</summary>
    private ulong CheckCodeDescriptor(ushort sel, out ulong addr)
    {
        if ((sel & 0xFFFC) == 0) throw GP();
        ulong desc = ReadDescriptor(sel, out addr);
        ushort attr = AttrFromDesc(desc);
        if ((attr & 0x18) != 0x18) throw GP((uint)(sel & 0xFFFC));
        if ((attr & 0x80) == 0) throw Fault(11, (uint)(sel & 0xFFFC));
        if ((attr & 0x2000) != 0 && (attr & 0x4000) != 0 && LongMode) throw GP((uint)(sel & 0xFFFC));
        return desc;
    }

    /// <summary>Far JMP / CALL to a code segment (call gates and task switches are not supported).</summary>
    private void FarJump(ushort sel, ulong offset, bool call, int pushSize)
    {
        if (!Protected || (Rflags & VM) != 0)
        {
            if (call)
            {
                Push(Seg[CS].Sel, pushSize);
                Push(Rip, pushSize);
            }
            Seg[CS].Sel = sel; Seg[CS].Base = (ulong)sel << 4;
            Rip = pushSize == 2 || !call && offset <= 0xFFFF ? offset & 0xFFFF : (uint)offset;
            Stop = true;
            return;
        }
        if ((sel & 0xFFFC) == 0) throw GP();
        ulong desc = ReadDescriptor(sel, out ulong addr);
        ushort attr = AttrFromDesc(desc);
        int dpl = (attr >> 5) & 3;
        int rpl = sel & 3;
        if ((attr & 0x10) == 0)
        {
            FarTransferThroughSystemDescriptor(sel, desc, addr, call);
            return;
        }
        desc = CheckCodeDescriptor(sel, out addr);
        bool conforming = (attr & 4) != 0;
        if (conforming ? dpl > Cpl : (rpl > Cpl || dpl != Cpl)) throw GP((uint)(sel & 0xFFFC));
        SetAccessed(addr, desc);
        if (call)
        {
            Push(Seg[CS].Sel, pushSize);
            Push(Rip, pushSize);
        }
        LoadCs(sel, desc, Cpl);
        UpdateMode();
        Rip = Bitness == 64 ? offset : (uint)offset;
        Stop = true;
    }

    /// <summary>RETF: same privilege, or to an outer one (also popping SS:SP).</summary>
    private void FarReturn(int size, int imm)
    {
        ulong ip = PeekStack(0, size);
        ushort sel = (ushort)PeekStack((ulong)size, size);
        if (!Protected || (Rflags & VM) != 0)
        {
            AddSp(2 * size + imm);
            Seg[CS].Sel = sel; Seg[CS].Base = (ulong)sel << 4;
            Rip = size == 2 ? (ushort)ip : (uint)ip;
            Stop = true;
            return;
        }
        int rpl = sel & 3;
        if (rpl < Cpl) throw GP((uint)(sel & 0xFFFC));
        ulong desc = CheckCodeDescriptor(sel, out _);
        ushort attr = AttrFromDesc(desc);
        int dpl = (attr >> 5) & 3;
        bool conforming = (attr & 4) != 0;
        if (conforming ? dpl > rpl : dpl != rpl) throw GP((uint)(sel & 0xFFFC));
        if (rpl == Cpl)
        {
            AddSp(2 * size + imm);
            LoadCs(sel, desc, rpl);
        }
        else
        {
            ulong sp = PeekStack((ulong)(2 * size + imm), size);
            ushort ss = (ushort)PeekStack((ulong)(3 * size + imm), size);
            SegReg savedCs = Seg[CS];
            int savedCpl = Cpl;
            LoadCs(sel, desc, rpl);
            try { LoadSegmentForCpl(SS, ss, rpl); }
            catch (GuestFault)
            {
                // The outer SS is checked before anything changes.
                Seg[CS] = savedCs;
                SetCpl(savedCpl);
                throw;
            }
            R[4] = size == 8 ? sp : size == 4 ? (uint)sp : (R[4] & ~0xFFFFUL) | (ushort)sp;
            AddSp(imm);
            NullifyDataSegmentsAbove(rpl);
        }
        UpdateMode();
        Rip = Bitness == 64 ? ip : size == 2 ? (ushort)ip : (uint)ip;
        Stop = true;
    }

    /// <summary>Loads SS during a privilege change (checks against the new CPL).</summary>
    private void LoadSegmentForCpl(int seg, ushort sel, int cpl)
    {
        int saved = Cpl;
        Cpl = cpl;
        try { LoadSegment(seg, sel); }
        catch { Cpl = saved; throw; }
        SetCpl(cpl);
    }

    private void NullifyDataSegmentsAbove(int cpl)
    {
        foreach (int s in stackalloc[] { ES, DS, FS, GS })
        {
            ref SegReg r = ref Seg[s];
            bool conformingCode = (r.Attr & 0x1C) == 0x1C;
            if ((r.Sel & 0xFFFC) != 0 && !conformingCode && r.Dpl < cpl)
            {
                r.Sel = 0; r.Attr = 0;
            }
        }
    }

    /// <summary>How many of the first <paramref name="n"/> instructions of <paramref name="b"/> lie
    /// wholly within the CS limit; #GP(0) when the first does not (outside 64-bit mode, instruction
    /// fetch is limit-checked like any other access).</summary>
    private int InstructionsWithinCsLimit(DecodedBlock b, int n)
    {
        if (Bitness == 64) return n;
        ulong limit = Seg[CS].Limit;
        // Last byte from IP + length (NextIP wraps at 64 KiB in 16-bit code), of every instruction (a followed
        // block's last is not its highest).
        if (b.LastByte <= limit) return n;
        for (int i = 0; i < n; i++)
        {
            if (b.Insns[i].I.IP + b.Insns[i].Length - 1 <= limit) continue;
            if (i == 0) { Rip = b.Insns[0].I.IP; throw GP(); }
            return i;
        }
        return n;
    }

    /// <summary>Reads a 32- or 64-bit TSS's stack pointer for privilege level <paramref name="dpl"/>.</summary>
    private (ushort ss, ulong sp) TssStack32(int dpl)
    {
        ulong b = Seg[TR].Base;
        bool tss32 = (Seg[TR].Attr & 0xF) is 9 or 11;
        if ((ulong)(tss32 ? dpl * 8 + 11 : dpl * 4 + 5) > Seg[TR].Limit) throw Fault(10, (uint)(Seg[TR].Sel & 0xFFFC));
        if (tss32)
        {
            ulong esp = ReadSys(b + 4 + (ulong)dpl * 8, 4);
            ushort ss = (ushort)ReadSys(b + 8 + (ulong)dpl * 8, 2);
            return (ss, esp);
        }
        ulong sp16 = ReadSys(b + 2 + (ulong)dpl * 4, 2);
        ushort ss16 = (ushort)ReadSys(b + 4 + (ulong)dpl * 4, 2);
        return (ss16, sp16);
    }
}
