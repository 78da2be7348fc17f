using System.Runtime.CompilerServices;

namespace XenSharp.Cpu;

internal struct MmioReplay
{
    public ulong Address;
    public ulong Value;
    public int Size;
    public bool IsWrite;
}

/// <summary>Linear-memory access through the soft TLB, with the slow path for misses, page
/// crossings, MMIO and writes to frames that hold decoded code.</summary>
internal unsafe partial class X86Vcpu
{
    private readonly MmioReplay[] _replay = new MmioReplay[4];
    private int _replayCount, _replayIdx;
    private ulong _pendingAddr;

    // ---- fast paths ----

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal byte Read8(ulong lin)
    {
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + _tlbCtx + (int)(vpn & TlbMask);
        if (e->ReadTag == vpn) return e->Host[lin & 0xFFF];
        return (byte)ReadSlow(lin, 1, Cpl == 3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ushort Read16(ulong lin)
    {
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + _tlbCtx + (int)(vpn & TlbMask);
        if (e->ReadTag == vpn && (lin & 0xFFF) <= 0xFFE) return *(ushort*)(e->Host + (lin & 0xFFF));
        return (ushort)ReadSlow(lin, 2, Cpl == 3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal uint Read32(ulong lin)
    {
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + _tlbCtx + (int)(vpn & TlbMask);
        if (e->ReadTag == vpn && (lin & 0xFFF) <= 0xFFC) return *(uint*)(e->Host + (lin & 0xFFF));
        return (uint)ReadSlow(lin, 4, Cpl == 3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong Read64(ulong lin)
    {
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + _tlbCtx + (int)(vpn & TlbMask);
        if (e->ReadTag == vpn && (lin & 0xFFF) <= 0xFF8) return *(ulong*)(e->Host + (lin & 0xFFF));
        return ReadSlow(lin, 8, Cpl == 3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong ReadLin(ulong lin, int size)
    {
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + _tlbCtx + (int)(vpn & TlbMask);
        if (e->ReadTag == vpn && (int)(lin & 0xFFF) <= 4096 - size)
        {
            byte* p = e->Host + (lin & 0xFFF);
            switch (size)
            {
                case 1: return *p;
                case 2: return *(ushort*)p;
                case 4: return *(uint*)p;
                default: return *(ulong*)p;
            }
        }
        return ReadSlow(lin, size, Cpl == 3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void WriteLin(ulong lin, int size, ulong v)
    {
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + _tlbCtx + (int)(vpn & TlbMask);
        if (e->WriteTag == vpn && (int)(lin & 0xFFF) <= 4096 - size)
        {
            byte* p = e->Host + (lin & 0xFFF);
            switch (size)
            {
                case 1: *p = (byte)v; return;
                case 2: *(ushort*)p = (ushort)v; return;
                case 4: *(uint*)p = (uint)v; return;
                default: *(ulong*)p = v; return;
            }
        }
        WriteSlow(lin, size, v, Cpl == 3);
    }

    /// <summary><see cref="WriteLin"/> with a page fault recorded in <see cref="Abort"/> rather than thrown
    /// (see <see cref="ReadSlow"/>); the caller returns at once when Abort is set.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void WriteLinSoft(ulong lin, int size, ulong v)
    {
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + _tlbCtx + (int)(vpn & TlbMask);
        if (e->WriteTag == vpn && (int)(lin & 0xFFF) <= 4096 - size) StoreHost(e->Host + (lin & 0xFFF), size, v);
        else WriteSlow(lin, size, v, Cpl == 3, soft: true);
    }

    /// <summary><see cref="ReadLin"/> with a page fault recorded in <see cref="Abort"/> rather than thrown.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong ReadLinSoft(ulong lin, int size)
    {
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + _tlbCtx + (int)(vpn & TlbMask);
        if (e->ReadTag == vpn && (int)(lin & 0xFFF) <= 4096 - size) return LoadHost(e->Host + (lin & 0xFFF), size);
        return ReadSlow(lin, size, Cpl == 3, soft: true);
    }

    internal void Write8(ulong lin, byte v) => WriteLin(lin, 1, v);
    internal void Write16(ulong lin, ushort v) => WriteLin(lin, 2, v);
    internal void Write32(ulong lin, uint v) => WriteLin(lin, 4, v);
    internal void Write64(ulong lin, ulong v) => WriteLin(lin, 8, v);

    /// <summary>Implicit supervisor-mode accesses (descriptor tables, TSS, IDT, stacks of the
    /// interrupt delivery at CPL 0). A hit in the supervisor context needs no walk whatever the CPL: its
    /// entries hold only what a supervisor access may repeat without EFLAGS.AC (under SMAP, user pages go
    /// to the AC context or stay uncached), which is exactly an implicit access's rights; pages with a
    /// data breakpoint are never cached, and code frames never have a write tag.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal ulong ReadSys(ulong lin, int size)
    {
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + (int)(vpn & TlbMask);
        if (e->ReadTag == vpn && (int)(lin & 0xFFF) <= 4096 - size) return LoadHost(e->Host + (lin & 0xFFF), size);
        return ReadSlow(lin, size, false, true);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void WriteSys(ulong lin, int size, ulong v)
    {
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + (int)(vpn & TlbMask);
        if (e->WriteTag == vpn && (int)(lin & 0xFFF) <= 4096 - size) StoreHost(e->Host + (lin & 0xFFF), size, v);
        else WriteSlow(lin, size, v, false, true);
    }

    // ---- slow paths ----

    /// <summary>TranslateAndFill's result when a soft page fault was recorded instead of thrown.</summary>
    private const ulong PageFaulted = ulong.MaxValue;

    /// <summary>With <paramref name="soft"/>, a #PF from the page walk of an access within one page is not
    /// thrown but recorded (<see cref="Abort"/>, _fault, CR2) and 0 returned: the caller abandons the
    /// instruction by returning, which costs nothing next to a .NET exception (Linux takes its page faults
    /// by the million). Everything else (#GP, faults on page-crossing accesses, MMIO exits) still throws.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal ulong ReadSlow(ulong lin, int size, bool user, bool implicitSup = false, bool soft = false)
    {
        if (!LongMode) lin &= 0xFFFF_FFFF;
        else if (!Canonical(lin) || !Canonical(lin + (ulong)size - 1)) throw GP();
        if (_bpData != 0) CheckDataBreakpoints(lin, size, false);
        if ((lin & 0xFFF) + (ulong)size > 4096)
        {
            // Split at the page boundary; check both pages before reading either.
            ulong mask = LongMode ? ulong.MaxValue : 0xFFFF_FFFF;
            Translate(lin, Access.Read, user, implicitSup);
            Translate((lin + (ulong)size - 1) & mask, Access.Read, user, implicitSup);
            ulong r = 0;
            for (int i = 0; i < size; i++)
                r |= ReadSlow((lin + (ulong)i) & mask, 1, user, implicitSup) << (8 * i);
            return r;
        }
        ulong phys = TranslateAndFill(lin, Access.Read, user, implicitSup, out byte* host, soft);
        if (host == null) return phys == PageFaulted ? 0 : MmioRead(phys, size);
        switch (size)
        {
            case 1: return *host;
            case 2: return *(ushort*)host;
            case 4: return *(uint*)host;
            case 8: return *(ulong*)host;
            default: throw new InvalidOperationException();
        }
    }

    /// <summary>See <see cref="ReadSlow"/> for <paramref name="soft"/>.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void WriteSlow(ulong lin, int size, ulong v, bool user, bool implicitSup = false, bool soft = false)
    {
        if (!LongMode) lin &= 0xFFFF_FFFF;
        else if (!Canonical(lin) || !Canonical(lin + (ulong)size - 1)) throw GP();
        if (_bpData != 0) CheckDataBreakpoints(lin, size, true);
        if ((lin & 0xFFF) + (ulong)size <= 4096 && !implicitSup)
        {
            // A writable page whose frame holds code: no walk needed, only the code check.
            ulong vpn = lin >> 12;
            TlbEntry* e = _tlb + (user ? TlbSize : 0) + (int)(vpn & TlbMask);
            if (e->WritableCode && e->ReadTag == vpn)
            {
                byte* p = e->Host + (lin & 0xFFF);
                StoreHost(p, size, v);
                AfterCodeFrameWrite(e->Gfn, (int)(lin & 0xFFF), size);
                return;
            }
        }
        if ((lin & 0xFFF) + (ulong)size > 4096)
        {
            ulong mask = LongMode ? ulong.MaxValue : 0xFFFF_FFFF;
            Translate(lin, Access.Write, user, implicitSup);
            Translate((lin + (ulong)size - 1) & mask, Access.Write, user, implicitSup);
            for (int i = 0; i < size; i++)
                WriteSlow((lin + (ulong)i) & mask, 1, v >> (8 * i), user, implicitSup);
            return;
        }
        ulong phys = TranslateAndFill(lin, Access.Write, user, implicitSup, out byte* host, soft);
        if (host == null) { if (phys != PageFaulted) MmioWrite(phys, size, v); return; }
        StoreHost(host, size, v);
        AfterCodeFrameWrite(phys >> 12, (int)(phys & 0xFFF), size);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong LoadHost(byte* host, int size) => size switch
    {
        1 => *host,
        2 => *(ushort*)host,
        4 => *(uint*)host,
        _ => *(ulong*)host,
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreHost(byte* host, int size, ulong v)
    {
        switch (size)
        {
            case 1: *host = (byte)v; break;
            case 2: *(ushort*)host = (ushort)v; break;
            case 4: *(uint*)host = (uint)v; break;
            case 8: *(ulong*)host = v; break;
        }
    }

    /// <summary>Self-modifying code: a write that touched decoded bytes drops the frame's blocks,
    /// and the current block may be stale from the next instruction on.</summary>
    private void AfterCodeFrameWrite(ulong gfn, int offset, int size)
    {
        if (_blocks.OnWrite(gfn, offset, size))
        {
            Stop = true;
            FlushJumpCache();
        }
    }

    /// <summary>Translates one access and fills the TLB entry; host is null for MMIO.</summary>
    private ulong TranslateAndFill(ulong lin, Access access, bool user, bool implicitSup, out byte* host, bool soft = false)
    {
        if (LongMode && !Canonical(lin)) throw GP();
        if (!TryWalk(lin, access, user, true, out ulong phys, out uint err, out bool global, implicitSup))
        {
            Cr2 = lin;
            if (soft)
            {
                Fault(14, err);
                Abort = AbortFault;
                host = null;
                return PageFaulted;
            }
            throw Fault(14, err);
        }
        ulong gfn = phys >> 12;
        bool write = access == Access.Write;
        byte* page = _mem.GetPage(gfn, write);
        if (page == null) { host = null; return phys; }
        host = page + (phys & 0xFFF);
        if (implicitSup && user == false && Cpl == 3) return phys; // do not cache into the user half
        // Only cache what the same access at this privilege could repeat without a walk.
        int ctx = user ? TlbSize : 0;
        if (!user && _lastWalkUser && (Cr4 & 0x200000) != 0)
        {
            // SMAP let this through only because EFLAGS.AC is set: keep it out of the ordinary
            // supervisor context, in the one consulted only while AC is set.
            if (implicitSup || (Rflags & AC) == 0) return phys;
            ctx = SmapOverrideCtx;
        }
        // Pages with a data breakpoint stay uncached so that every access is checked.
        if (_bpData != 0 && DataBreakpointPage(lin)) return phys;
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + ctx + (int)(vpn & TlbMask);
        if (e->Gfn != gfn || e->Host != page || (e->ReadTag != vpn && e->WriteTag != vpn))
        {
            e->ReadTag = ulong.MaxValue; e->WriteTag = ulong.MaxValue;
        }
        e->Host = page;
        e->Gfn = gfn;
        e->Global = global;
        e->WritableCode = false;
        LogTlbFill(e);
        if (write)
        {
            bool code = IsCodeFrame(gfn);
            bool readable = _mem.GetPage(gfn, false) == page;
            e->WriteTag = code ? ulong.MaxValue : vpn;
            if (readable) e->ReadTag = vpn;
            e->WritableCode = code && readable;
        }
        else
        {
            e->ReadTag = vpn;
            if (_lastWalkWritable && _lastWalkDirty && _mem.GetPageForWriteCache(gfn) == page)
            {
                if (IsCodeFrame(gfn)) e->WritableCode = true;
                else e->WriteTag = vpn;
            }
        }
        return phys;
    }

    // Frames this vCPU found not to hold decoded code, valid while no frame has become a code frame
    // since (BlockCache.CodeFrameEpoch): a TLB fill for writing asks, and the domain-wide answer
    // takes the block cache's lock.
    private const int NotCodeSlots = 256;
    private readonly ulong[] _notCodeGfn = new ulong[NotCodeSlots];
    private readonly long[] _notCodeEpoch = new long[NotCodeSlots];

    private bool IsCodeFrame(ulong gfn)
    {
        int i = (int)(gfn & (NotCodeSlots - 1));
        // Read before the lookup: a frame added after it bumps the epoch past the one recorded.
        long epoch = Volatile.Read(ref _blocks.CodeFrameEpoch) + 1;
        if (_notCodeEpoch[i] == epoch && _notCodeGfn[i] == gfn) return false;
        if (_blocks.IsCodeFrame(gfn)) return true;
        _notCodeGfn[i] = gfn;
        _notCodeEpoch[i] = epoch;
        return false;
    }

    /// <summary>Host pointer for an atomic read-modify-write of <paramref name="size"/> bytes, or null
    /// when the operand crosses a page or is not RAM (then the caller falls back to read + write).</summary>
    internal byte* HostForRmw(ulong lin, int size)
    {
        if ((lin & 0xFFF) + (ulong)size > 4096) return null;
        if (_bpData != 0 && DataBreakpointPage(lin)) return null;
        ulong vpn = lin >> 12;
        TlbEntry* e = _tlb + _tlbCtx + (int)(vpn & TlbMask);
        if (e->WriteTag == vpn && e->ReadTag == vpn) return e->Host + (lin & 0xFFF);
        // Fill the entry through an ordinary write probe of the current value. A page fault is recorded in Abort (null
        // then; the caller returns at once): glibc's locked operations meet fresh pages of a starting program.
        ulong phys = TranslateAndFill(LongMode ? lin : lin & 0xFFFF_FFFF, Access.Write, Cpl == 3, false, out byte* host, soft: true);
        if (host == null) return null;
        AfterCodeFrameWrite(phys >> 12, (int)(phys & 0xFFF), size);
        return host;
    }

    // ---- MMIO (KVM semantics: exit, then the instruction completes on the next Run) ----

    private ulong MmioRead(ulong phys, int size)
    {
        if (_replayIdx < _replayCount)
        {
            ref MmioReplay r = ref _replay[_replayIdx++];
            if (!r.IsWrite && r.Address == phys && r.Size == size) return r.Value & Mask(size);
        }
        _exit.Reason = VcpuExitReason.Mmio;
        _exit.Address = phys; _exit.Size = size; _exit.IsWrite = false; _exit.Data = 0;
        _pending = PendingCompletion.MmioRead;
        _pendingAddr = phys;
        _pendingSize = size;
        _pendingValue = 0;
        Rip = CurIp;
        throw _exitSignal;
    }

    private void MmioWrite(ulong phys, int size, ulong v)
    {
        if (_replayIdx < _replayCount)
        {
            ref MmioReplay r = ref _replay[_replayIdx++];
            if (r.IsWrite && r.Address == phys && r.Size == size) return;
        }
        _exit.Reason = VcpuExitReason.Mmio;
        _exit.Address = phys; _exit.Size = size; _exit.IsWrite = true;
        _exit.Data = size == 8 ? v : v & ((1UL << (size * 8)) - 1);
        _pending = PendingCompletion.MmioWrite;
        _pendingAddr = phys;
        _pendingSize = size;
        Rip = CurIp;
        throw _exitSignal;
    }

    private void AddReplay(bool write, ulong value)
    {
        if (_replayCount == _replay.Length) _replayCount = 0;
        _replay[_replayCount++] = new MmioReplay { Address = _pendingAddr, Size = _pendingSize, IsWrite = write, Value = value };
    }
}
