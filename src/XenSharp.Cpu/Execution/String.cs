using Iced.Intel;
using XenSharp.Cpu.Decoding;

namespace XenSharp.Cpu;

/// <summary>String instructions with REP/REPE/REPNE in every address size, and port I/O.</summary>
internal unsafe partial class X86Vcpu
{
    /// <summary>Iterations of one REP instruction before it yields (RIP kept on it) so that
    /// interrupts and exit requests are not delayed by huge counts.</summary>
    private const int RepChunk = 1 << 16;

    private ulong Idx(int reg, int asz) => asz switch { 8 => R[reg], 4 => (uint)R[reg], _ => (ushort)R[reg] };

    private void SetIdx(int reg, int asz, ulong v)
    {
        if (asz == 8) R[reg] = v;
        else if (asz == 4) R[reg] = (uint)v;
        else R[reg] = (R[reg] & ~0xFFFFUL) | (ushort)v;
    }

    private static int ElemSize(Mnemonic m) => m switch
    {
        Mnemonic.Movsb or Mnemonic.Stosb or Mnemonic.Lodsb or Mnemonic.Scasb or Mnemonic.Cmpsb or Mnemonic.Insb or Mnemonic.Outsb => 1,
        Mnemonic.Movsw or Mnemonic.Stosw or Mnemonic.Lodsw or Mnemonic.Scasw or Mnemonic.Cmpsw or Mnemonic.Insw or Mnemonic.Outsw => 2,
        Mnemonic.Movsq or Mnemonic.Stosq or Mnemonic.Lodsq or Mnemonic.Scasq or Mnemonic.Cmpsq => 8,
        _ => 4,
    };

    private bool IsRep(ref DecodedInsn d) => d.I.HasRepPrefix || d.I.HasRepnePrefix;

    private void ExecMovs(ref DecodedInsn d)
    {
        int es = ElemSize(d.Op), asz = d.AddrSize;
        bool rep = IsRep(ref d);
        int srcSeg = d.I.MemorySegment - Register.ES;
        long step = (Rflags & DF) != 0 ? -es : es;
        int n = 0;
        while (true)
        {
            if (rep && Idx(1, asz) == 0) return;
            ulong si = Idx(6, asz), di = Idx(7, asz);
            ulong src = StrLinear(srcSeg, si, es), dst = StrLinear(ES, di, es);
            if (rep && TryBulkMove(src, dst, es, step < 0, asz, srcSeg)) { if (++n >= RepChunk) break; continue; }
            if (rep && BatchStringIo && TryRepeatedMovsMmio(srcSeg, si, src, di, dst, es, asz)) return;
            // A page fault (copy_to_user into a fresh mapping) ends the instruction through Abort, not as an exception.
            ulong value = ReadLinSoft(src, es);
            if (Abort != 0) return;
            WriteLinSoft(dst, es, value);
            if (Abort != 0) return;
            SetIdx(6, asz, si + (ulong)step);
            SetIdx(7, asz, di + (ulong)step);
            if (!rep) return;
            ElementDone();
            SetIdx(1, asz, Idx(1, asz) - 1);
            if (++n >= RepChunk || _dbHits != 0) break; // a data breakpoint traps after its iteration
        }
        if (Idx(1, asz) != 0) { Rip = CurIp; Stop = true; }
    }

    /// <summary>REP MOVS of any element size, either direction, for the elements that stay within one source and one
    /// destination page, in RAM: copied as a block when that gives what element after element would (no overlap the
    /// copy runs into). The decompressor of a bzImage moves itself to the end of its buffer with STD; REP
    /// MOVSQ, and its memcpy is REP MOVSQ. Returns false when the slow path must do the element.</summary>
    private bool TryBulkMove(ulong src, ulong dst, int es, bool backward, int asz, int srcSeg)
    {
        ulong count = Idx(1, asz);
        // Elements from the first one towards the page boundary the copy runs to, in each page.
        ulong room = backward
            ? Math.Min((src & 0xFFF) + (ulong)es, (dst & 0xFFF) + (ulong)es) / (ulong)es
            : Math.Min(4096 - (src & 0xFFF), 4096 - (dst & 0xFFF)) / (ulong)es;
        ulong chunk = Math.Min(count, room);
        // A first element across its page's end is the slow path's.
        if (chunk < 2 || (backward && ((src & 0xFFF) + (ulong)es > 4096 || (dst & 0xFFF) + (ulong)es > 4096))) return false;
        ulong bytes = chunk * (ulong)es, span = bytes - (ulong)es;
        ulong si = Idx(6, asz), di = Idx(7, asz);
        // The lowest element of each side, which for a backward copy lies below the first.
        ulong srcLow = backward ? src - span : src, dstLow = backward ? dst - span : dst;
        if (backward && (si < span || di < span)) return false;
        // An index that wraps at the address size within the block is the slow path's (a 64-bit segment base need not
        // put the wrap on a page boundary).
        if (!backward && asz != 8 && Math.Max(si, di) + bytes - 1 > (asz == 4 ? 0xFFFF_FFFFUL : 0xFFFFUL)) return false;
        if (!BulkWithinLimit(srcSeg, backward ? si - span : si, bytes) || !BulkWithinLimit(ES, backward ? di - span : di, bytes)) return false;
        // Element by element, a forward copy into a destination just above its source (or a backward one into a
        // destination just below) reads what it wrote: a pattern, not a move.
        if (!backward && dst > src && dst - src < bytes) return false;
        if (backward && src > dst && src - dst < bytes) return false;
        byte* s = HostRead(src), dp = HostWrite(dst);
        if (s == null || dp == null) return false;
        Buffer.MemoryCopy(s - (src - srcLow), dp - (dst - dstLow), bytes, bytes);
        long delta = backward ? -(long)bytes : (long)bytes;
        SetIdx(6, asz, si + (ulong)delta);
        SetIdx(7, asz, di + (ulong)delta);
        SetIdx(1, asz, count - chunk);
        return true;
    }

    /// <summary>Linear address of one string element: limit-checked, and alignment-checked when
    /// CR0.AM and EFLAGS.AC are set at CPL 3.</summary>
    private ulong StrLinear(int seg, ulong off, int es)
    {
        ulong lin = Linear(seg, off, (uint)es);
        if (_acUser && (Rflags & AC) != 0) CheckAlignment(lin, (uint)es);
        return lin;
    }

    /// <summary>A forward block of <paramref name="bytes"/> at <paramref name="off"/> lies within an
    /// expand-up segment's limit (otherwise the element-by-element path finds the faulting element).</summary>
    private bool BulkWithinLimit(int seg, ulong off, ulong bytes)
    {
        if (Bitness == 64) return true;
        ref SegReg s = ref Seg[seg];
        return (s.Attr & 0x1C) != 0x14 && off + bytes - 1 <= s.Limit;
    }

    /// <summary>Host pointer for reading one linear byte through the TLB (filling it), or null for MMIO.</summary>
    private byte* HostRead(ulong lin)
    {
        ulong vpn = lin >> 12;
        TlbEntry* e = StringTlbEntry(vpn, read: true);
        if (e == null)
        {
            ReadLin(lin, 1);
            e = StringTlbEntry(vpn, read: true);
            if (e == null) return null;
        }
        return e->Host + (lin & 0xFFF);
    }

    private byte* HostWrite(ulong lin)
    {
        TlbEntry* e = StringTlbEntry(lin >> 12, read: false);
        return e == null ? null : e->Host + (lin & 0xFFF);
    }

    /// <summary>The TLB entry a string instruction may use for a page: the current context's, or,
    /// for a supervisor copy with EFLAGS.AC set under SMAP (a kernel's user copy), the entry
    /// that lets it reach user pages.</summary>
    private TlbEntry* StringTlbEntry(ulong vpn, bool read)
    {
        int slot = (int)(vpn & TlbMask);
        TlbEntry* e = _tlb + _tlbCtx + slot;
        if ((read ? e->ReadTag : e->WriteTag) == vpn) return e;
        if (_tlbCtx != 0 || (Rflags & AC) == 0 || (Cr4 & 0x200000) == 0) return null;
        e = _tlb + SmapOverrideCtx + slot;
        return (read ? e->ReadTag : e->WriteTag) == vpn ? e : null;
    }

    private void ExecStos(ref DecodedInsn d)
    {
        int es = ElemSize(d.Op), asz = d.AddrSize;
        bool rep = IsRep(ref d);
        long step = (Rflags & DF) != 0 ? -es : es;
        ulong v = R[0] & Mask(es);
        int n = 0;
        while (true)
        {
            if (rep && Idx(1, asz) == 0) return;
            ulong di = Idx(7, asz);
            ulong dst = StrLinear(ES, di, es);
            if (rep && step > 0)
            {
                ulong count = Idx(1, asz);
                ulong room = (4096 - (dst & 0xFFF)) / (ulong)es;
                ulong chunk = Math.Min(count, room);
                if (chunk >= 2 && (dst & (ulong)(es - 1)) == 0 && BulkWithinLimit(ES, di, chunk * (ulong)es))
                {
                    byte* p = HostWrite(dst);
                    if (p != null)
                    {
                        switch (es)
                        {
                            case 1: new Span<byte>(p, (int)chunk).Fill((byte)v); break;
                            case 2: new Span<ushort>(p, (int)chunk).Fill((ushort)v); break;
                            case 4: new Span<uint>(p, (int)chunk).Fill((uint)v); break;
                            default: new Span<ulong>(p, (int)chunk).Fill(v); break;
                        }
                        SetIdx(7, asz, di + chunk * (ulong)es);
                        SetIdx(1, asz, count - chunk);
                        if (++n >= RepChunk) break;
                        continue;
                    }
                }
            }
            if (rep && BatchStringIo && TryRepeatedStosMmio(di, dst, es, asz, v)) return;
            // Clearing freshly mapped user pages (clear_user) faults once a page: not as an exception.
            WriteLinSoft(dst, es, v);
            if (Abort != 0) return;
            SetIdx(7, asz, di + (ulong)step);
            if (!rep) return;
            ElementDone();
            SetIdx(1, asz, Idx(1, asz) - 1);
            if (++n >= RepChunk || _dbHits != 0) break; // a data breakpoint traps after its iteration
        }
        if (Idx(1, asz) != 0) { Rip = CurIp; Stop = true; }
    }

    private void ExecLods(ref DecodedInsn d)
    {
        int es = ElemSize(d.Op), asz = d.AddrSize;
        bool rep = IsRep(ref d);
        int srcSeg = d.I.MemorySegment - Register.ES;
        long step = (Rflags & DF) != 0 ? -es : es;
        while (true)
        {
            if (rep && Idx(1, asz) == 0) return;
            ulong si = Idx(6, asz);
            WriteAcc(es, ReadLin(StrLinear(srcSeg, si, es), es));
            SetIdx(6, asz, si + (ulong)step);
            if (!rep) return;
            ElementDone();
            SetIdx(1, asz, Idx(1, asz) - 1);
            if (_dbHits != 0) { if (Idx(1, asz) != 0) Rip = CurIp; return; }
        }
    }

    private void ExecScas(ref DecodedInsn d)
    {
        int es = ElemSize(d.Op), asz = d.AddrSize;
        bool repe = d.I.HasRepePrefix, repne = d.I.HasRepnePrefix;
        bool rep = repe || repne;
        long step = (Rflags & DF) != 0 ? -es : es;
        ulong acc = R[0] & Mask(es);
        int n = 0;
        while (true)
        {
            if (rep && Idx(1, asz) == 0) return;
            ulong di = Idx(7, asz);
            ulong v = ReadLin(StrLinear(ES, di, es), es);
            Alu(AluOp.Cmp, acc, v, es, out ulong f);
            SetArith(f);
            SetIdx(7, asz, di + (ulong)step);
            if (!rep) return;
            SetIdx(1, asz, Idx(1, asz) - 1);
            if (repe && (f & ZF) == 0) return;
            if (repne && (f & ZF) != 0) return;
            if (++n >= RepChunk || _dbHits != 0) break; // a data breakpoint traps after its iteration
        }
        if (Idx(1, asz) != 0) { Rip = CurIp; Stop = true; }
    }

    private void ExecCmps(ref DecodedInsn d)
    {
        int es = ElemSize(d.Op), asz = d.AddrSize;
        bool repe = d.I.HasRepePrefix, repne = d.I.HasRepnePrefix;
        bool rep = repe || repne;
        int srcSeg = d.I.MemorySegment - Register.ES;
        long step = (Rflags & DF) != 0 ? -es : es;
        int n = 0;
        while (true)
        {
            if (rep && Idx(1, asz) == 0) return;
            ulong si = Idx(6, asz), di = Idx(7, asz);
            ulong a = ReadLin(StrLinear(srcSeg, si, es), es);
            ulong b = ReadLin(StrLinear(ES, di, es), es);
            Alu(AluOp.Cmp, a, b, es, out ulong f);
            SetArith(f);
            SetIdx(6, asz, si + (ulong)step);
            SetIdx(7, asz, di + (ulong)step);
            if (!rep) return;
            SetIdx(1, asz, Idx(1, asz) - 1);
            if (repe && (f & ZF) == 0) return;
            if (repne && (f & ZF) != 0) return;
            if (++n >= RepChunk || _dbHits != 0) break; // a data breakpoint traps after its iteration
        }
        if (Idx(1, asz) != 0) { Rip = CurIp; Stop = true; }
    }

    // ---- REP string accesses to devices as one exit (Xen's hvmemul_rep_ins/outs/movs/stos) ----

    public bool BatchStringIo { get; set; }

    public ulong[]? UnclaimedPorts { get; set; }

    public IDirectPortReads? DirectPortReads { get; set; }

    /// <summary>Every byte of the access is a port nothing claims (<see cref="UnclaimedPorts"/>).</summary>
    private bool Unclaimed(uint port, int size)
    {
        if (UnclaimedPorts is not { } map || port + (uint)size > 0x10000)
            return false;
        for (uint p = port; p < port + (uint)size; p++)
            if ((map[p >> 6] & (1UL << (int)(p & 63))) == 0)
                return false;
        return true;
    }

    private ulong _pendingCount;
    /// <summary>Index registers the repeated access advances: 1 RSI, 2 RDI.</summary>
    private int _pendingIndexRegs;
    /// <summary>Guest-physical address of the first RAM element the device fills, or ulong.MaxValue when it fills none.</summary>
    private ulong _pendingRamWritten;

    /// <summary>No per-iteration checks are due: no breakpoints, no single-step, no MMIO results being replayed.</summary>
    private bool RepeatedAccessAllowed => !PerInstructionChecks && _replayCount == 0 && !(_acUser && (Rflags & AC) != 0);

    /// <summary>How many of <paramref name="count"/> iterations from offset <paramref name="off"/> of segment
    /// <paramref name="seg"/> (linear <paramref name="lin"/>) stay in the element's 4 KiB page in the direction DF
    /// gives, without the index wrapping at the address size or leaving an expand-up segment's limit; 1 when the
    /// element itself crosses the page or the segment is expand-down.</summary>
    private ulong IterationsInPage(int seg, ulong off, ulong lin, int es, int asz, ulong count)
    {
        ulong pageOff = lin & 0xFFF, size = (ulong)es;
        if (pageOff + size > 4096) return 1;
        bool back = (Rflags & DF) != 0;
        ulong n = back ? pageOff / size + 1 : (4096 - pageOff) / size;
        if (back) n = Math.Min(n, off / size + 1);
        else if (asz != 8)
        {
            ulong top = asz == 4 ? 0xFFFF_FFFFUL : 0xFFFF;
            n = Math.Min(n, (top - off + 1) / size);
        }
        if (Bitness != 64)
        {
            ref SegReg s = ref Seg[seg];
            if ((s.Attr & 0x1C) == 0x14) return 1;
            if (!back) n = off + size - 1 > s.Limit ? 1 : Math.Min(n, ((ulong)s.Limit - off + 1) / size);
        }
        return Math.Max(1, Math.Min(n, count));
    }

    /// <summary>REP INS/OUTS with the buffer in RAM: one Io exit for the iterations within its page. The first
    /// element's checks (limit, alignment, paging) fault as the single-element path would.</summary>
    private bool TryRepeatedPortIo(uint port, int seg, ulong off, int es, int asz, bool write)
    {
        ulong count = Idx(1, asz);
        if (count < 2 || !RepeatedAccessAllowed) return false;
        ulong lin = StrLinear(seg, off, es);
        ulong n = IterationsInPage(seg, off, lin, es, asz, count);
        if (n < 2) return false;
        ulong phys = Translate(lin, write ? Access.Read : Access.Write, Cpl == 3);
        if (_mem.GetPage(phys >> 12, !write) == null) return false;
        _exit.Port = port; _exit.IsWrite = write;
        return RepeatedExit(VcpuExitReason.Io, es, asz, n, phys, dataIsPointer: true,
            write ? 1 : 2, write ? ulong.MaxValue : phys);
    }

    /// <summary>REP MOVS with one side MMIO and the other RAM: one Mmio exit whose buffer is the RAM side.</summary>
    private bool TryRepeatedMovsMmio(int srcSeg, ulong si, ulong src, ulong di, ulong dst, int es, int asz)
    {
        ulong count = Idx(1, asz);
        if (count < 2 || !RepeatedAccessAllowed) return false;
        // Both pages in the TLB are RAM: the ordinary copy (this check keeps memcpy's cost as it was).
        if (TlbHoldsRam(src, write: false) && TlbHoldsRam(dst, write: true)) return false;
        ulong n = Math.Min(IterationsInPage(srcSeg, si, src, es, asz, count), IterationsInPage(ES, di, dst, es, asz, count));
        if (n < 2) return false;
        if (!TryTranslateQuietly(src, Access.Read, out ulong sp) || !TryTranslateQuietly(dst, Access.Write, out ulong dp)) return false;
        if (_mem.GetPage(sp >> 12, false) != null)
        {
            if (_mem.GetPage(dp >> 12, false) != null) return false;
            _exit.Address = dp; _exit.IsWrite = true;
            return RepeatedExit(VcpuExitReason.Mmio, es, asz, n, sp, dataIsPointer: true, 3, ulong.MaxValue);
        }
        if (_mem.GetPage(dp >> 12, true) == null) return false;
        _exit.Address = sp; _exit.IsWrite = false;
        return RepeatedExit(VcpuExitReason.Mmio, es, asz, n, dp, dataIsPointer: true, 3, dp);
    }

    /// <summary>REP STOS to MMIO: one Mmio exit writing the value <c>Count</c> times.</summary>
    private bool TryRepeatedStosMmio(ulong di, ulong dst, int es, int asz, ulong value)
    {
        ulong count = Idx(1, asz);
        if (count < 2 || !RepeatedAccessAllowed) return false;
        if (TlbHoldsRam(dst, write: true)) return false;
        ulong n = IterationsInPage(ES, di, dst, es, asz, count);
        if (n < 2) return false;
        if (!TryTranslateQuietly(dst, Access.Write, out ulong dp)) return false;
        if (_mem.GetPage(dp >> 12, false) != null) return false;
        _exit.Address = dp; _exit.IsWrite = true;
        return RepeatedExit(VcpuExitReason.Mmio, es, asz, n, value, dataIsPointer: false, 2, ulong.MaxValue);
    }

    /// <summary>The guest-physical address of <paramref name="lin"/> for the MMIO probes above, or false where the access
    /// would fault: the element path then takes that fault, through <see cref="Abort"/> rather than an exception where it
    /// can (Linux's clear_user meets a not-present page once a page of a fresh mapping, tens of thousands of times a
    /// second, and a thrown fault costs microseconds).</summary>
    private bool TryTranslateQuietly(ulong lin, Access access, out ulong phys)
    {
        phys = 0;
        return (!LongMode || Canonical(lin)) && TryWalk(lin, access, Cpl == 3, true, out phys, out _, out _);
    }

    /// <summary>The soft TLB already maps the page as RAM for this access (a code page is writable RAM too).</summary>
    private bool TlbHoldsRam(ulong lin, bool write)
    {
        ulong vpn = lin >> 12;
        if (StringTlbEntry(vpn, read: !write) != null) return true;
        TlbEntry* e = _tlb + _tlbCtx + (int)(vpn & TlbMask);
        return write && e->WritableCode && e->ReadTag == vpn;
    }

    private bool RepeatedExit(VcpuExitReason reason, int es, int asz, ulong n, ulong data, bool dataIsPointer, int indexRegs, ulong ramWritten)
    {
        _pending = PendingCompletion.Repeated;
        _pendingSize = es;
        _pendingAsz = asz;
        _pendingIp = CurIp;
        _pendingCount = n;
        _pendingIndexRegs = indexRegs;
        _pendingRamWritten = ramWritten;
        _pendingValue = n;
        Stop = true;
        _exit.Size = es;
        _exit.Data = data;
        _exit.Count = (uint)n;
        _exit.DataIsPointer = dataIsPointer;
        _exit.Backward = (Rflags & DF) != 0;
        ExitAfterInstruction(reason);
        return true;
    }

    /// <summary>Retires <paramref name="done"/> iterations of a repeated access: the index registers and RCX move by
    /// that many, RIP stays on the instruction while RCX is not zero, and decoded code in RAM the device filled is
    /// dropped (the device wrote it behind the engine's back).</summary>
    private void FinishRepeated(ulong done)
    {
        ulong next = Rip;
        int asz = _pendingAsz, es = _pendingSize;
        bool back = (Rflags & DF) != 0;
        ulong delta = done * (ulong)es;
        if ((_pendingIndexRegs & 1) != 0) SetIdx(6, asz, back ? Idx(6, asz) - delta : Idx(6, asz) + delta);
        if ((_pendingIndexRegs & 2) != 0) SetIdx(7, asz, back ? Idx(7, asz) - delta : Idx(7, asz) + delta);
        SetIdx(1, asz, Idx(1, asz) - done);
        Rip = Idx(1, asz) != 0 ? _pendingIp : next;
        if (_pendingRamWritten != ulong.MaxValue && done != 0)
        {
            ulong first = _pendingRamWritten, span = delta;
            ulong start = back ? first + (ulong)es - delta : first;
            if (_blocks.OnWrite(start >> 12, (int)(start & 0xFFF), (int)span)) FlushJumpCache();
        }
    }

    // ---- port I/O ----

    /// <summary>IOPL and the TSS I/O permission bitmap (SDM vol. 1 19.5).</summary>
    private void CheckIoPermission(uint port, int size)
    {
        if (!Protected) return;
        if ((Rflags & VM) == 0 && Cpl <= (int)((Rflags >> 12) & 3)) return;
        ref SegReg tr = ref Seg[TR];
        if ((tr.Attr & 0xF) is not (9 or 11) || tr.Limit < 0x67) throw GP();
        uint mapBase = (uint)ReadSys(tr.Base + 0x66, 2);
        uint byteOff = mapBase + port / 8;
        if (byteOff + 1 > tr.Limit) throw GP();
        uint bits = (uint)ReadSys(tr.Base + byteOff, 2);
        uint mask = ((1u << size) - 1) << (int)(port & 7);
        if ((bits & mask) != 0) throw GP();
    }

    private void ExecIn(ref DecodedInsn d)
    {
        var reg = d.I.Op0Register;
        int size = reg.GetSize();
        uint port = d.I.Op1Kind == OpKind.Register ? (ushort)R[2] : d.I.Immediate8;
        CheckIoPermission(port, size);
        CheckIoBreakpoints(port, size);
        if (Unclaimed(port, size))
        {
            WriteReg(reg, ulong.MaxValue); // all ones, as the exit would have answered
            return;
        }
        if (DirectPortReads is { } direct && direct.TryRead(port, size, out ulong value))
        {
            WriteReg(reg, value);
            return;
        }
        CarryDebugAcrossExit();
        _pending = PendingCompletion.In;
        _pendingReg = reg;
        _pendingSize = size;
        _pendingIp = CurIp;
        _pendingValue = ulong.MaxValue;
        Stop = true;
        _exit.Port = port; _exit.Size = size; _exit.IsWrite = false;
        ExitAfterInstruction(VcpuExitReason.Io);
    }

    private void ExecOut(ref DecodedInsn d)
    {
        var reg = d.I.Op1Register;
        int size = reg.GetSize();
        uint port = d.I.Op0Kind == OpKind.Register ? (ushort)R[2] : d.I.Immediate8;
        CheckIoPermission(port, size);
        CheckIoBreakpoints(port, size);
        if (Unclaimed(port, size))
            return;
        CarryDebugAcrossExit();
        Stop = true;
        _exit.Port = port; _exit.Size = size; _exit.IsWrite = true; _exit.Data = ReadReg(reg);
        ExitAfterInstruction(VcpuExitReason.Io);
    }

    private void ExecOuts(ref DecodedInsn d)
    {
        int es = ElemSize(d.Op), asz = d.AddrSize;
        bool rep = IsRep(ref d);
        uint port = (ushort)R[2];
        CheckIoPermission(port, es);
        if (rep && Idx(1, asz) == 0) return;
        ulong si = Idx(6, asz);
        int srcSeg = d.I.MemorySegment - Register.ES;
        if (rep && BatchStringIo && TryRepeatedPortIo(port, srcSeg, si, es, asz, write: true)) return;
        ulong v = ReadLin(StrLinear(srcSeg, si, es), es);
        SetIdx(6, asz, si + (ulong)((Rflags & DF) != 0 ? -es : es));
        if (rep)
        {
            SetIdx(1, asz, Idx(1, asz) - 1);
            if (Idx(1, asz) != 0) Rip = CurIp;
        }
        CheckIoBreakpoints(port, es);
        if (!rep || Idx(1, asz) == 0) CarryDebugAcrossExit();
        Stop = true;
        _exit.Port = port; _exit.Size = es; _exit.IsWrite = true; _exit.Data = v;
        throw Exit(VcpuExitReason.Io);
    }

    private void ExecIns(ref DecodedInsn d)
    {
        int es = ElemSize(d.Op), asz = d.AddrSize;
        bool rep = IsRep(ref d);
        uint port = (ushort)R[2];
        CheckIoPermission(port, es);
        if (rep && Idx(1, asz) == 0) return;
        if (rep && BatchStringIo && TryRepeatedPortIo(port, ES, Idx(7, asz), es, asz, write: false)) return;
        // Fault on the destination before the device sees the read.
        Translate(StrLinear(ES, Idx(7, asz), es), Access.Write, Cpl == 3);
        CheckIoBreakpoints(port, es);
        if (!rep || Idx(1, asz) == 1) CarryDebugAcrossExit();
        _pending = PendingCompletion.Ins;
        _pendingSize = es;
        _pendingIp = CurIp;
        _pendingRep = rep;
        _pendingAsz = asz;
        _pendingValue = ulong.MaxValue;
        Stop = true;
        _exit.Port = port; _exit.Size = es; _exit.IsWrite = false;
        throw Exit(VcpuExitReason.Io);
    }

    /// <summary>A REP element has completed: MMIO results it consumed must not be replayed
    /// for the next element.</summary>
    private void ElementDone()
    {
        if (_replayCount != 0 && _replayIdx == _replayCount) { _replayCount = 0; _replayIdx = 0; }
    }

    private ulong _pendingIp;
    private bool _pendingRep;
    private int _pendingAsz;

    /// <summary>Finishes the instruction that exited, with the value from CompleteExit.</summary>
    private void FinishPending()
    {
        var p = _pending;
        if (p == PendingCompletion.None) { DeliverDebugAfterExit(); return; }
        _pending = PendingCompletion.None;
        bool completed = _completed;
        _completed = false;
        ulong v = completed ? _pendingValue : ulong.MaxValue;
        switch (p)
        {
            case PendingCompletion.In:
                if (_pendingSize == 4) R[0] = (uint)v; else WriteReg(_pendingReg, v);
                break;
            case PendingCompletion.Ins:
            {
                ulong next = Rip;
                Rip = _pendingIp;
                CurIp = _pendingIp;
                int asz = _pendingAsz, es = _pendingSize;
                ulong di = Idx(7, asz);
                WriteLin(StrLinear(ES, di, es), es, v);
                SetIdx(7, asz, di + (ulong)((Rflags & DF) != 0 ? -es : es));
                if (_pendingRep)
                {
                    SetIdx(1, asz, Idx(1, asz) - 1);
                    Rip = Idx(1, asz) != 0 ? _pendingIp : next;
                }
                else Rip = next;
                break;
            }
            case PendingCompletion.RdMsr:
                if (completed && _pendingFault) { Rip = _pendingIp; throw GP(); }
                R[0] = (uint)v; R[2] = (uint)(v >> 32);
                break;
            case PendingCompletion.WrMsr:
                if (completed && _pendingFault) { Rip = _pendingIp; throw GP(); }
                break;
            case PendingCompletion.MmioRead:
                AddReplay(false, completed ? _pendingValue : ulong.MaxValue);
                _replayIdx = 0;
                break;
            case PendingCompletion.MmioWrite:
                AddReplay(true, 0);
                _replayIdx = 0;
                break;
            case PendingCompletion.Repeated:
                FinishRepeated(completed ? Math.Min(_pendingValue, _pendingCount) : _pendingCount);
                break;
        }
        DeliverDebugAfterExit();
    }
}
