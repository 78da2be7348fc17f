using System.Runtime.InteropServices;
using XenSharp.Public.Migration;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Save;

/// <summary>Where a restored PV guest's rings are, for the toolstack to connect them: their PFNs and new MFNs, and
/// the start_info page whose event channel fields it fills in.</summary>
internal sealed record PvRestored(ulong StartInfoPfn, ulong StorePfn, ulong StoreMfn, ulong ConsolePfn, ulong ConsoleMfn, bool Is32);

/// <summary>
/// The x86 PV parts of a restore (libxc's restore for PV guests). The records are collected as they come; the pages
/// are loaded as they are (their frame numbers PFNs). At the end of the stream (of a checkpointed one: at the failover,
/// each checkpoint's pages having been written over the last's) the new domain's frames are known, and
/// <see cref="Finish"/> makes every page table's entries MFNs again, writes the new frames into the guest's own p2m,
/// rewrites start_info (its rings' frames, shared_info), pins what the guest had pinned, loads the vCPUs (CR3 and GDT
/// frames as MFNs) and the shared_info.
/// </summary>
internal sealed class RestoreX86Pv
{
    private readonly IHypervisorDomain _d;
    private readonly IPvBuildTarget _pv;
    private readonly X86PvLayout _l;
    private readonly string _file;
    private readonly Dictionary<ulong, ulong> _types = [];
    private readonly SortedDictionary<int, byte[]> _vcpus = [];
    private readonly Dictionary<int, byte[]> _extended = [];
    private List<ulong>? _p2mFrames;
    private ulong _p2mEnd;
    private byte[]? _sharedInfo;

    public RestoreX86Pv(IHypervisorDomain d, ReadOnlySpan<byte> info, string file, long at)
    {
        _d = d;
        _file = file;
        _pv = d.Pv ?? throw new SaveFileException($"{file}: a PV stream, but the domain made for it is not a PV domain");
        if (info.Length != 8 || info[2] != 0 || info[3] != 0 || BitConverter.ToUInt32(info[4..]) != 0)
            throw Corrupt($"X86_PV_INFO record at byte {at} is malformed");
        bool is32 = (info[0], info[1]) switch
        {
            (8, 4) => false,
            (4, 3) => true,
            _ => throw Corrupt($"X86_PV_INFO at byte {at}: a guest of width {info[0]} with {info[1]} levels of page tables"),
        };
        if (is32) _pv.SetAddressSize(32);
        _l = new X86PvLayout(is32);
    }

    private SaveFileException Corrupt(string what) => new($"{_file}: corrupt: {what}");

    /// <summary>The type a PAGE_DATA record gave a page (the last one counts: a live stream sends a page again).</summary>
    public void NotePage(ulong pfn, ulong type)
    {
        if ((type & LibxcStream.PAGE_DATA_TYPE_LTAB_MASK) is var level and not 0 && level <= LibxcStream.PAGE_DATA_TYPE_L4TAB)
            _types[pfn] = type;
        else
            _types.Remove(pfn);
    }

    public bool HasVcpus => _vcpus.Count > 0;

    public void Record(uint type, ReadOnlySpan<byte> body, long at)
    {
        switch (type)
        {
            case LibxcStream.REC_TYPE_X86_PV_P2M_FRAMES:
                if (body.Length < 8 || body.Length % 8 != 0) throw Corrupt($"X86_PV_P2M_FRAMES record at byte {at} of {body.Length} bytes");
                uint start = BitConverter.ToUInt32(body), end = BitConverter.ToUInt32(body[4..]);
                int fpp = 4096 / _l.Width;
                int count = (body.Length - 8) / 8;
                if (start != 0 || end < start || (ulong)count != (end + (ulong)fpp) / (ulong)fpp)
                    throw Corrupt($"X86_PV_P2M_FRAMES at byte {at}: pfns 0x{start:x}-0x{end:x} in {count} frames");
                _p2mFrames = [.. MemoryMarshal.Cast<byte, ulong>(body[8..])];
                _p2mEnd = end;
                break;
            case LibxcStream.REC_TYPE_X86_PV_VCPU_BASIC:
            case LibxcStream.REC_TYPE_X86_PV_VCPU_EXTENDED:
            {
                if (body.Length < 8 || BitConverter.ToUInt32(body[4..]) != 0) throw Corrupt($"vCPU record at byte {at} is malformed");
                int vcpu = (int)BitConverter.ToUInt32(body);
                if (vcpu >= 4096) throw Corrupt($"vCPU record at byte {at} for vCPU {vcpu}");
                if (type == LibxcStream.REC_TYPE_X86_PV_VCPU_BASIC)
                {
                    if (body.Length - 8 != _l.ContextSize)
                        throw Corrupt($"X86_PV_VCPU_BASIC at byte {at}: {body.Length - 8} bytes of context, a {_l.Width * 8}-bit guest's is {_l.ContextSize}");
                    _vcpus[vcpu] = body[8..].ToArray();
                }
                else
                    _extended[vcpu] = body[8..].ToArray();
                break;
            }
            case LibxcStream.REC_TYPE_X86_PV_VCPU_XSAVE:
            case LibxcStream.REC_TYPE_X86_PV_VCPU_MSRS:
                // XenSharp's vCPUs have x87 and SSE state only, which the basic context carries; the MSRs Xen lists
                // there (speculation controls, AMD's breakpoint masks) are not among those XenSharp's PV vCPUs have.
                break;
            case LibxcStream.REC_TYPE_SHARED_INFO:
                if (body.Length != 4096) throw Corrupt($"SHARED_INFO record at byte {at} of {body.Length} bytes");
                _sharedInfo = body.ToArray(); // the reader reuses its record buffer
                break;
        }
    }

    /// <summary>Where the rings are and which frames they have, without changing the guest (its start_info still
    /// names them by PFN): what the backup of a checkpointed stream connects before <see cref="Finish"/>.</summary>
    public PvRestored Rings()
    {
        if (!_vcpus.TryGetValue(0, out var ctx0)) throw Corrupt("the stream has no context for vCPU 0");
        var p2m = new Dictionary<ulong, ulong>();
        foreach (var (pfn, mfn) in _pv.Physmap()) p2m[pfn] = mfn;
        ulong startInfoPfn = StartInfoPfn(ctx0, p2m);
        var page = new byte[4096];
        _d.Memory.Read(startInfoPfn << 12, page);
        ulong storePfn = _l.Word(page, _l.StartInfoStoreMfn), consolePfn = _l.Word(page, _l.StartInfoConsoleMfn);
        ulong Mfn(ulong pfn, string what) => p2m.TryGetValue(pfn, out ulong mfn) ? mfn
            : throw new SaveFileException($"{_file}: {what} names pfn 0x{pfn:x}, which the stream did not populate");
        return new PvRestored(startInfoPfn, storePfn, Mfn(storePfn, "start_info's xenstore ring"), consolePfn,
            Mfn(consolePfn, "start_info's console ring"), _l.Is32);
    }

    /// <summary>start_info's PFN, named by vCPU 0's suspend record.</summary>
    private ulong StartInfoPfn(byte[] ctx0, Dictionary<ulong, ulong> p2m)
    {
        ulong startInfoPfn = _l.SuspendRecord(ctx0);
        if (!p2m.ContainsKey(startInfoPfn) || _types.ContainsKey(startInfoPfn))
            throw new SaveFileException($"{_file}: the suspend record (vCPU 0's EDX) names pfn 0x{startInfoPfn:x}, which is not a data page of the guest");
        return startInfoPfn;
    }

    /// <summary>Makes the loaded pages a running guest's again (see the class); the rings' frames for the caller.</summary>
    public PvRestored Finish()
    {
        if (_vcpus.Count == 0 || !_vcpus.ContainsKey(0)) throw Corrupt("the stream has no context for vCPU 0");
        if (_sharedInfo is null) throw Corrupt("the stream has no SHARED_INFO record");
        var p2m = new Dictionary<ulong, ulong>();
        ulong maxPfn = 0;
        foreach (var (pfn, mfn) in _pv.Physmap())
        {
            p2m[pfn] = mfn;
            maxPfn = Math.Max(maxPfn, pfn);
        }
        if (_p2mFrames is not null) maxPfn = Math.Max(maxPfn, _p2mEnd);
        ulong Mfn(ulong pfn, string what) => p2m.TryGetValue(pfn, out ulong mfn) ? mfn
            : throw new SaveFileException($"{_file}: {what} names pfn 0x{pfn:x}, which the stream did not populate");
        _pv.SetMachToPhys(0, maxPfn + 1);

        // Page tables: PFNs to the new MFNs.
        var page = new byte[4096];
        foreach (var (pfn, type) in _types)
        {
            int level = (int)((type & LibxcStream.PAGE_DATA_TYPE_LTAB_MASK) >> LibxcStream.PAGE_DATA_TYPE_SHIFT);
            _d.Memory.Read(pfn << 12, page);
            var entries = MemoryMarshal.Cast<byte, ulong>(page.AsSpan());
            for (int i = 0; i < 512; i++)
            {
                ulong e = entries[i];
                if (_l.IsXenSlot(level, i))
                    entries[i] = 0;
                else if ((e & X86PvLayout.PtePresent) != 0)
                    entries[i] = (e & ~X86PvLayout.PteFrameMask) | (Mfn((e & X86PvLayout.PteFrameMask) >> 12, $"L{level} table 0x{pfn:x}'s entry {i}") << 12);
            }
            _d.Memory.Write(pfn << 12, page);
        }

        // The guest's p2m: the new frame of each pfn, invalid for those without one.
        if (_p2mFrames is not null)
        {
            int fpp = 4096 / _l.Width;
            for (int f = 0; f < _p2mFrames.Count; f++)
            {
                for (int i = 0; i < fpp; i++)
                {
                    ulong pfn = (ulong)f * (ulong)fpp + (ulong)i;
                    _l.SetWord(page, i * _l.Width, pfn <= _p2mEnd && p2m.TryGetValue(pfn, out ulong mfn) ? mfn : ulong.MaxValue);
                }
                Mfn(_p2mFrames[f], $"p2m frame {f}");
                _d.Memory.Write(_p2mFrames[f] << 12, page);
            }
        }

        // start_info, named by vCPU 0's suspend record: its rings' PFNs (the guest made them so before it
        // suspended) become the new MFNs; shared_info's frame is the new domain's.
        var ctx0 = _vcpus[0];
        ulong startInfoPfn = StartInfoPfn(ctx0, p2m);
        _d.Memory.Read(startInfoPfn << 12, page);
        ulong storePfn = _l.Word(page, _l.StartInfoStoreMfn), consolePfn = _l.Word(page, _l.StartInfoConsoleMfn);
        ulong storeMfn = Mfn(storePfn, "start_info's xenstore ring"), consoleMfn = Mfn(consolePfn, "start_info's console ring");
        _l.SetWord(page, _l.StartInfoStoreMfn, storeMfn);
        _l.SetWord(page, _l.StartInfoConsoleMfn, consoleMfn);
        _l.SetWord(page, X86PvLayout.StartInfoNrPages, maxPfn + 1);
        _l.SetWord(page, _l.StartInfoSharedInfo, _pv.SharedInfoMfn << 12);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(page.AsSpan(_l.StartInfoFlags), 0);
        _d.Memory.Write(startInfoPfn << 12, page);

        // Pinned tables, the top level first: its validation takes the lower levels' types.
        foreach (var (pfn, type) in _types.Where(t => (t.Value & LibxcStream.PAGE_DATA_TYPE_LPINTAB) != 0)
                     .OrderByDescending(t => t.Value & LibxcStream.PAGE_DATA_TYPE_LTAB_MASK))
        {
            int level = (int)((type & LibxcStream.PAGE_DATA_TYPE_LTAB_MASK) >> LibxcStream.PAGE_DATA_TYPE_SHIFT);
            try { _pv.PinTable(level, p2m[pfn]); }
            catch (XenSharp.Hypervisor.HypervisorException e)
            {
                throw new SaveFileException($"{_file}: the pinned L{level} table at pfn 0x{pfn:x} does not validate: {e.Message}");
            }
        }

        foreach (var (vcpu, ctx) in _vcpus)
        {
            _l.MapContextFrames(ctx, vcpu, (pfn, what) => Mfn(pfn, what));
            try
            {
                _pv.SetVcpuContext(vcpu, ctx);
                if (_extended.TryGetValue(vcpu, out var ext)) _pv.SetExtVcpuContext(vcpu, ext);
            }
            catch (XenSharp.Hypervisor.HypervisorException e)
            {
                throw new SaveFileException($"{_file}: vCPU {vcpu}'s context: {e.Message}");
            }
        }
        _pv.RestoreSharedInfo(_sharedInfo);
        return new PvRestored(startInfoPfn, storePfn, storeMfn, consolePfn, consoleMfn, _l.Is32);
    }
}
