using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace XenSharp.Cpu;

/// <summary>One soft-TLB entry: a 4 KiB linear page and the host addresses of its frame.</summary>
internal unsafe struct TlbEntry
{
    /// <summary>Linear page number when reads may use <see cref="Host"/>, else ulong.MaxValue.</summary>
    public ulong ReadTag;
    /// <summary>Linear page number when writes may use <see cref="Host"/>, else ulong.MaxValue.</summary>
    public ulong WriteTag;
    public byte* Host;
    public ulong Gfn;
    public bool Global;
    /// <summary>The page is writable (and dirty) but its frame holds decoded code: writes take the
    /// slow path, which checks them against the decoded bytes without a page walk.</summary>
    public bool WritableCode;
    /// <summary>Which fill logs hold the entry (<see cref="X86Vcpu.LoggedNonGlobal"/>, <see cref="X86Vcpu.LoggedGlobal"/>).</summary>
    public byte Logged;
}

internal unsafe partial class X86Vcpu
{
    // Direct-mapped contexts: supervisor accesses, user (CPL 3) accesses, so that a privilege
    // change needs no flush; and supervisor accesses made with EFLAGS.AC set under SMAP, which may
    // reach user pages (copy_to_user and friends: string instructions consult it, see HostRead).
    // 8,192 entries each (32 MiB of 4 KiB pages): a flush costs only the entries filled since the
    // last one (the fill logs below), so the size is paid in memory, not in CR3 writes.
    internal const int TlbSize = 8192;
    private const int TlbContexts = 3;
    private const int SmapOverrideCtx = 2 * TlbSize;
    private const int TlbMask = TlbSize - 1;
    private TlbEntry* _tlb;
    private int _tlbCtx;
    /// <summary>The entries of the current context (<c>_tlb + _tlbCtx</c>), which compiled blocks load once.</summary>
    private TlbEntry* _tlbCur;

    /// <summary>Selects the TLB context of the CPL (user or supervisor).</summary>
    private void SetTlbContext(int ctx)
    {
        _tlbCtx = ctx;
        _tlbCur = _tlb == null ? null : _tlb + ctx;
    }

    // Fill logs: the indices of the entries filled since the last flush that could drop them, one log
    // for non-global fills (emptied by every flush) and one for global ones (emptied by full flushes).
    // An entry is in each log at most once (TlbEntry.Logged), so neither outgrows the TLB.
    internal const byte LoggedNonGlobal = 1, LoggedGlobal = 2;
    private int* _tlbLog, _tlbGlobalLog;
    private int _tlbLogCount, _tlbGlobalLogCount;

    private void AllocateTlb()
    {
        _tlb = (TlbEntry*)NativeMemory.AllocZeroed((nuint)(TlbSize * TlbContexts * sizeof(TlbEntry)));
        _tlbLog = (int*)NativeMemory.Alloc((nuint)(TlbSize * TlbContexts * sizeof(int)));
        _tlbGlobalLog = (int*)NativeMemory.Alloc((nuint)(TlbSize * TlbContexts * sizeof(int)));
        for (int i = 0; i < TlbSize * TlbContexts; i++) ClearTlbEntry(ref _tlb[i]);
        SetTlbContext(_tlbCtx);
    }

    private void FreeTlb()
    {
        NativeMemory.Free(_tlb);
        NativeMemory.Free(_tlbLog);
        NativeMemory.Free(_tlbGlobalLog);
        _tlb = null;
        _tlbCur = null;
        _tlbLog = _tlbGlobalLog = null;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ClearTlbEntry(ref TlbEntry e)
    {
        e.ReadTag = ulong.MaxValue; e.WriteTag = ulong.MaxValue; e.Host = null; e.Global = false; e.WritableCode = false;
    }

    /// <summary>Notes a filled entry in the log the next flush of its kind reads.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void LogTlbFill(TlbEntry* e)
    {
        byte bit = e->Global ? LoggedGlobal : LoggedNonGlobal;
        if ((e->Logged & bit) != 0) return;
        e->Logged |= bit;
        int index = (int)(e - _tlb);
        // The index before the count: another thread's DropWritableFrame reads up to the count.
        if (bit == LoggedGlobal)
        {
            int n = _tlbGlobalLogCount;
            _tlbGlobalLog[n] = index;
            Volatile.Write(ref _tlbGlobalLogCount, n + 1);
        }
        else
        {
            int n = _tlbLogCount;
            _tlbLog[n] = index;
            Volatile.Write(ref _tlbLogCount, n + 1);
        }
    }

    internal void FlushTlb(bool includeGlobal)
    {
        if (Stats) { if (includeGlobal) S.TlbFlushAll++; else S.TlbFlushNonGlobal++; }
        // An entry refilled as non-global since it was logged as global is in both logs, so the
        // non-global log alone covers every entry a non-global flush drops.
        for (int k = 0; k < _tlbLogCount; k++)
        {
            ref TlbEntry e = ref _tlb[_tlbLog[k]];
            if (includeGlobal || !e.Global) ClearTlbEntry(ref e);
            e.Logged &= unchecked((byte)~LoggedNonGlobal);
        }
        _tlbLogCount = 0;
        if (includeGlobal)
        {
            for (int k = 0; k < _tlbGlobalLogCount; k++)
            {
                ref TlbEntry e = ref _tlb[_tlbGlobalLog[k]];
                ClearTlbEntry(ref e);
                e.Logged = 0;
            }
            _tlbGlobalLogCount = 0;
        }
        FlushJumpCache(includeGlobal);
    }

    internal void FlushTlbPage(ulong linear)
    {
        if (Stats) S.TlbFlushPage++;
        ulong vpn = linear >> 12;
        for (int ctx = 0; ctx < TlbContexts; ctx++)
        {
            ref TlbEntry e = ref _tlb[ctx * TlbSize + (int)(vpn & TlbMask)];
            if (e.ReadTag == vpn || e.WriteTag == vpn) ClearTlbEntry(ref e);
        }
        FlushJumpCachePage(linear);
    }

    /// <summary>Drops every write permission (called while the vCPU is not running).</summary>
    private void FlushWritableTlb()
    {
        for (int k = 0; k < _tlbLogCount; k++) { ref TlbEntry e = ref _tlb[_tlbLog[k]]; e.WriteTag = ulong.MaxValue; e.WritableCode = false; }
        for (int k = 0; k < _tlbGlobalLogCount; k++) { ref TlbEntry e = ref _tlb[_tlbGlobalLog[k]]; e.WriteTag = ulong.MaxValue; e.WritableCode = false; }
    }

    /// <summary>Drops write entries for one frame (it just became a code frame). Called from any
    /// thread: each store is one aligned word, and refills re-check the code-frame set. Only logged
    /// entries can hold a translation, and the logs are append-only between the owner's flushes: an
    /// index reused after a flush names an entry filled after it, while the entry it replaced was
    /// cleared by that flush or, being global, is in the global log as well.</summary>
    internal void DropWritableFrame(ulong gfn)
    {
        TlbEntry* tlb = _tlb;
        int* log = _tlbLog, globalLog = _tlbGlobalLog;
        if (tlb == null || log == null || globalLog == null) return;
        DropWritableFrame(tlb, log, Volatile.Read(ref _tlbLogCount), gfn);
        DropWritableFrame(tlb, globalLog, Volatile.Read(ref _tlbGlobalLogCount), gfn);
    }

    private static void DropWritableFrame(TlbEntry* tlb, int* log, int count, ulong gfn)
    {
        for (int k = 0; k < count; k++)
        {
            TlbEntry* e = tlb + log[k];
            if (e->Gfn == gfn && e->WriteTag != ulong.MaxValue)
            {
                e->WritableCode = true;
                Volatile.Write(ref e->WriteTag, ulong.MaxValue);
            }
        }
    }
}
