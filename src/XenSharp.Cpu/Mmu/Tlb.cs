using System.Runtime.CompilerServices;

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
}

internal unsafe partial class X86Vcpu
{
    // Direct-mapped contexts: supervisor accesses, user (CPL 3) accesses, so that a privilege
    // change needs no flush; and supervisor accesses made with EFLAGS.AC set under SMAP, which may
    // reach user pages (copy_to_user and friends: string instructions consult it, see HostRead).
    internal const int TlbSize = 1024;
    private const int TlbContexts = 3;
    private const int SmapOverrideCtx = 2 * TlbSize;
    private const int TlbMask = TlbSize - 1;
    private TlbEntry* _tlb;
    private int _tlbCtx;

    internal void FlushTlb(bool includeGlobal)
    {
        if (Stats) { if (includeGlobal) S.TlbFlushAll++; else S.TlbFlushNonGlobal++; }
        for (int i = 0; i < TlbSize * TlbContexts; i++)
        {
            ref TlbEntry e = ref _tlb[i];
            if (includeGlobal || !e.Global)
            {
                e.ReadTag = ulong.MaxValue; e.WriteTag = ulong.MaxValue; e.Host = null; e.Global = false; e.WritableCode = false;
            }
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
            if (e.ReadTag == vpn || e.WriteTag == vpn)
            {
                e.ReadTag = ulong.MaxValue; e.WriteTag = ulong.MaxValue; e.Host = null; e.Global = false; e.WritableCode = false;
            }
        }
        FlushJumpCachePage(linear);
    }

    private void FlushWritableTlb()
    {
        for (int i = 0; i < TlbSize * TlbContexts; i++) { _tlb[i].WriteTag = ulong.MaxValue; _tlb[i].WritableCode = false; }
    }

    /// <summary>Drops write entries for one frame (it just became a code frame). Called from any
    /// thread: each store is one aligned word, and refills re-check the code-frame set.</summary>
    internal void DropWritableFrame(ulong gfn)
    {
        if (_tlb == null) return;
        for (int i = 0; i < TlbSize * TlbContexts; i++)
            if (_tlb[i].Gfn == gfn && _tlb[i].WriteTag != ulong.MaxValue)
            {
                _tlb[i].WritableCode = true;
                Volatile.Write(ref _tlb[i].WriteTag, ulong.MaxValue);
            }
    }
}
