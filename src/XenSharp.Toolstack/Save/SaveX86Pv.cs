using System.Runtime.InteropServices;
using XenSharp.Public.Migration;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Save;

/// <summary>
/// The x86 PV parts of a save stream (libxc's save for PV guests): X86_PV_INFO and X86_PV_P2M_FRAMES first, page-table
/// pages sent with their type and with every frame number in them made a PFN (the receiver's frames differ), and at
/// the end each online vCPU's context (its frames made PFNs too) and extended context, then SHARED_INFO. The guest
/// is suspended: its own suspend path already made start_info's ring frames PFNs and pinned its page tables.
/// </summary>
internal sealed class SaveX86Pv
{
    private readonly IHypervisorDomain _d;
    private readonly IPvBuildTarget _pv;
    private readonly X86PvLayout _l;
    private readonly Dictionary<ulong, ulong> _m2p = [];
    private readonly Dictionary<ulong, ulong> _p2m = [];

    public SaveX86Pv(IHypervisorDomain d, IPvBuildTarget pv)
    {
        _d = d;
        _pv = pv;
        _l = new X86PvLayout(pv.Is32);
        foreach (var (pfn, mfn) in pv.Physmap())
        {
            _m2p[mfn] = pfn;
            _p2m[pfn] = mfn;
        }
    }

    public bool Is32 => _l.Is32;

    private ulong Pfn(ulong mfn, string what) => _m2p.TryGetValue(mfn, out ulong pfn) ? pfn
        : throw new SaveFileException($"d{_d.DomId}: {what} names machine frame 0x{mfn:x}, which is not the domain's");

    /// <summary>X86_PV_INFO and X86_PV_P2M_FRAMES (none when the guest published no p2m: a kernel without one has
    /// no frames of it to keep).</summary>
    public void WriteStart(MigrationRecordWriter w)
    {
        Span<byte> info = stackalloc byte[8];
        info.Clear();
        info[0] = (byte)_l.Width;
        info[1] = (byte)_l.Levels;
        w.Record(LibxcStream.REC_TYPE_X86_PV_INFO, info);

        var frames = P2mFrames(out ulong maxPfn);
        if (frames is null) return;
        Span<uint> head = [0, (uint)maxPfn];
        w.Record(LibxcStream.REC_TYPE_X86_PV_P2M_FRAMES, MemoryMarshal.AsBytes(head), MemoryMarshal.AsBytes(frames.ToArray().AsSpan()));
    }

    /// <summary>The PFNs of the frames of the guest's p2m, as libxc finds them: through the virtually linear list
    /// shared_info's p2m_cr3 and p2m_vaddr name (Linux's), else through the frame-list list.</summary>
    private List<ulong>? P2mFrames(out ulong maxPfn)
    {
        var shinfo = new byte[4096];
        _d.ReadSharedInfo(shinfo);
        maxPfn = _l.MaxPfnField(shinfo);
        if (maxPfn == 0) return null;
        maxPfn--;
        int fpp = 4096 / _l.Width;
        ulong count = (maxPfn + (ulong)fpp) / (ulong)fpp;
        if (count > 1 << 20)
            throw new SaveFileException($"d{_d.DomId}: shared_info claims {maxPfn + 1} pfns of p2m");
        var frames = new List<ulong>((int)count);
        ulong cr3 = _l.P2mCr3(shinfo), fll = _l.FrameListList(shinfo);
        if (cr3 != 0)
        {
            ulong top = _l.Cr3ToFrame(cr3), va = _l.P2mVaddr(shinfo);
            for (ulong i = 0; i < count; i++)
                frames.Add(Pfn(Walk(top, va + i * 4096), $"the p2m page at 0x{va + i * 4096:x}"));
        }
        else if (fll != 0 && fll != ulong.MaxValue && fll != uint.MaxValue)
        {
            var list = ReadFrame(Pfn(fll, "the p2m frame-list list"));
            for (ulong i = 0; i < count; i += (ulong)fpp)
            {
                var fl = ReadFrame(Pfn(_l.Word(list, (int)(i / (ulong)fpp) * _l.Width), "a p2m frame list"));
                for (ulong j = i; j < Math.Min(count, i + (ulong)fpp); j++)
                    frames.Add(Pfn(_l.Word(fl, (int)(j - i) * _l.Width), "a p2m frame"));
            }
        }
        else
            return null;
        return frames;
    }

    private byte[] ReadFrame(ulong pfn)
    {
        var page = new byte[4096];
        if (!_d.Memory.TryReadFrame(pfn, page))
            throw new SaveFileException($"d{_d.DomId}: pfn 0x{pfn:x} has no frame to read");
        return page;
    }

    /// <summary>The frame a virtual address of the guest's kernel maps, through its page tables from
    /// <paramref name="top"/>.</summary>
    private ulong Walk(ulong top, ulong va)
    {
        ulong frame = top;
        for (int level = _l.Levels; level >= 1; level--)
        {
            int shift = 12 + 9 * (level - 1);
            int index = (int)((va >> shift) & (ulong)(level == 3 && _l.Is32 ? 3 : 511));
            var table = ReadFrame(Pfn(frame, $"the p2m's L{level} table"));
            ulong e = BitConverter.ToUInt64(table, index * 8);
            if ((e & X86PvLayout.PtePresent) == 0)
                throw new SaveFileException($"d{_d.DomId}: the p2m at 0x{va:x} is not mapped (L{level} entry {index})");
            ulong next = (e & X86PvLayout.PteFrameMask) >> 12;
            if (level is 2 or 3 && (e & 0x80) != 0)
                return next + ((va >> 12) & ((1UL << (shift - 12)) - 1));
            frame = next;
        }
        return frame;
    }

    /// <summary>The PAGE_DATA type of the page at <paramref name="pfn"/>; a page table's entries are made PFNs in
    /// <paramref name="page"/> and Xen's slots cleared.</summary>
    public ulong Normalise(ulong pfn, Span<byte> page)
    {
        if (!_p2m.TryGetValue(pfn, out ulong mfn)) return LibxcStream.PAGE_DATA_TYPE_NOTAB;
        var (level, pinned) = _pv.PageType(mfn);
        if (level == 0) return LibxcStream.PAGE_DATA_TYPE_NOTAB;
        var entries = MemoryMarshal.Cast<byte, ulong>(page);
        for (int i = 0; i < 512; i++)
        {
            ulong e = entries[i];
            if (_l.IsXenSlot(level, i))
                entries[i] = 0;
            else if ((e & X86PvLayout.PtePresent) != 0)
                entries[i] = (e & ~X86PvLayout.PteFrameMask) | (Pfn((e & X86PvLayout.PteFrameMask) >> 12, $"L{level} table 0x{pfn:x}'s entry {i}") << 12);
        }
        return ((ulong)level << LibxcStream.PAGE_DATA_TYPE_SHIFT) | (pinned ? LibxcStream.PAGE_DATA_TYPE_LPINTAB : 0);
    }

    /// <summary>What a suspended guest's last pages must include though log-dirty mode did not see them written:
    /// start_info (named by vCPU 0's suspend record) and the xenstore and console rings it names (by PFN: the guest's
    /// suspend made them so), which the toolstack's daemons write through mappings of their own.</summary>
    public IEnumerable<ulong> RingPfns()
    {
        var ctx = _pv.GetVcpuContext(0);
        if (ctx is null || !_m2p.TryGetValue(_l.SuspendRecord(ctx), out ulong startInfo)) yield break;
        yield return startInfo;
        var page = ReadFrame(startInfo);
        foreach (int field in new[] { _l.StartInfoStoreMfn, _l.StartInfoConsoleMfn })
            if (_l.Word(page, field) is var pfn && _p2m.ContainsKey(pfn))
                yield return pfn;
    }

    /// <summary>The end of a checkpoint: X86_PV_VCPU_BASIC and X86_PV_VCPU_EXTENDED for each online vCPU, then
    /// SHARED_INFO.</summary>
    public void WriteEnd(MigrationRecordWriter w, int maxVcpus)
    {
        Span<uint> head = [0, 0];
        for (int v = 0; v < maxVcpus; v++)
        {
            var ctx = _pv.GetVcpuContext(v);
            if (ctx is null) continue;
            _l.MapContextFrames(ctx, v, Pfn);
            head[0] = (uint)v;
            w.Record(LibxcStream.REC_TYPE_X86_PV_VCPU_BASIC, MemoryMarshal.AsBytes(head), ctx);
            w.Record(LibxcStream.REC_TYPE_X86_PV_VCPU_EXTENDED, MemoryMarshal.AsBytes(head), _pv.GetExtVcpuContext(v));
        }
        var shinfo = new byte[4096];
        _d.ReadSharedInfo(shinfo);
        w.Record(LibxcStream.REC_TYPE_SHARED_INFO, shinfo);
    }
}
