using XenSharp.Public;
using static XenSharp.Public.GrantTable;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// A domain's grant table (Xen's struct grant_table): the shared frames holding its grant entries
/// (v1: 8-byte entries, v2: 16-byte entries plus separate status frames), the pin counts of its
/// grants that others use, and the maptrack of the grants this domain has mapped from others.
/// </summary>
internal sealed unsafe class GrantTable
{
    public const int DefaultMaxFrames = 64;
    private const int StatusPerFrame = FrameTable.PageSize / sizeof(ushort);

    private readonly Domain _d;
    private readonly List<uint> _shared = new();
    private readonly List<uint> _status = new();
    /// <summary>Where each table frame sits in the guest's physmap.</summary>
    private readonly Dictionary<uint, ulong> _frameGfn = new();
    /// <summary>Pins of this domain's grants: ref → (readers, writers).</summary>
    private readonly Dictionary<uint, (int Read, int Write)> _active = new();
    private readonly List<Mapping?> _maptrack = new();

    public GrantTable(Domain d) => _d = d;

    public int Version { get; private set; } = 1;
    public int MaxFrames { get; set; } = DefaultMaxFrames;
    public int NrFrames => _shared.Count;
    private int EntriesPerFrame => Version == 1 ? FrameTable.PageSize / sizeof(GrantEntryV1) : FrameTable.PageSize / sizeof(GrantEntryV2);
    public uint NrEntries => (uint)(_shared.Count * EntriesPerFrame);
    private int StatusFramesNeeded => (int)((NrEntries + StatusPerFrame - 1) / StatusPerFrame);

    /// <summary>A grant this domain (the mapper) holds from a granter.</summary>
    internal sealed class Mapping
    {
        public required Domain Granter;
        public required uint Ref;
        public required uint Mfn;
        public required bool ReadOnly;
        /// <summary>GFN in the mapper's physmap, or null for a host (Domain-0) mapping.</summary>
        public ulong? Gfn;
        /// <summary>For a PV mapper's host mapping: the L1 slot holding the grant's PTE.</summary>
        public (ulong L1Mfn, int Index)? Pte;
        public bool ByPte;
    }

    // ---------------- table frames ----------------

    /// <summary>Grows the table to <paramref name="frames"/> frames; caller holds the domain lock.</summary>
    public bool Grow(int frames)
    {
        if (frames > MaxFrames)
            return false;
        while (_shared.Count < frames)
        {
            if (!_d.Host.Frames.TryAllocate(_d.DomainId, FrameType.XenShared, out uint mfn))
                return false;
            _shared.Add(mfn);
        }
        if (Version == 2)
            GrowStatus();
        return true;
    }

    private void GrowStatus()
    {
        while (_status.Count < StatusFramesNeeded && _d.Host.Frames.TryAllocate(_d.DomainId, FrameType.XenShared, out uint mfn))
            _status.Add(mfn);
    }

    /// <summary>XENMEM_add_to_physmap with XENMAPSPACE_grant_table.</summary>
    public long MapFrameIntoPhysmap(ulong idx, ulong gpfn)
    {
        lock (_d.Lock)
        {
            uint mfn;
            if ((idx & Memory.XENMAPIDX_grant_table_status) != 0)
            {
                idx &= ~Memory.XENMAPIDX_grant_table_status;
                if (Version != 2 || idx >= (ulong)_status.Count)
                    return -Errno.EINVAL;
                mfn = _status[(int)idx];
            }
            else
            {
                if (idx >= (ulong)MaxFrames)
                    return -Errno.EINVAL;
                if (idx >= (ulong)_shared.Count && !Grow((int)idx + 1))
                    return -Errno.ENOMEM;
                mfn = _shared[(int)idx];
            }
            if (_frameGfn.TryGetValue(mfn, out ulong oldGfn))
                _d.P2m.Remove(oldGfn);
            _d.ReleaseOld(_d.P2m.Set(gpfn, mfn, P2mType.XenShared));
            _frameGfn[mfn] = gpfn;
            return 0;
        }
    }

    public void OnFrameUnmapped(uint mfn) => _frameGfn.Remove(mfn);

    /// <summary>XENMEM_resource_grant_table: frames <paramref name="first"/>.. of the shared table (growing it as
    /// acquire_resource does) or of the v2 status table. -EINVAL past the table's limit or for status frames under v1.</summary>
    public long ResourceFrames(bool status, ulong first, Span<uint> mfns)
    {
        lock (_d.Lock)
        {
            ulong end = first + (ulong)mfns.Length;
            if (status)
            {
                if (Version != 2 || end > (ulong)_status.Count)
                    return -Errno.EINVAL;
                for (int i = 0; i < mfns.Length; i++)
                    mfns[i] = _status[(int)first + i];
                return 0;
            }
            if (end > (ulong)MaxFrames)
                return -Errno.EINVAL;
            if (end > (ulong)_shared.Count && !Grow((int)end))
                return -Errno.ENOMEM;
            for (int i = 0; i < mfns.Length; i++)
                mfns[i] = _shared[(int)first + i];
            return 0;
        }
    }

    /// <summary>Host access to the table for the toolstack (seeding the console and xenstore grants).</summary>
    public bool WriteEntryV1(uint gref, ushort flags, ushort domid, uint frame)
    {
        lock (_d.Lock)
        {
            if (gref >= NrEntries && !Grow((int)(gref / (uint)EntriesPerFrame) + 1))
                return false;
            if (Version == 1)
            {
                var e = EntryV1(gref);
                e->Frame = frame;
                e->Domid = domid;
                Volatile.Write(ref e->Flags, flags);
            }
            else
            {
                var e = EntryV2(gref);
                e->Frame = frame;
                e->Domid = domid;
                Volatile.Write(ref e->Flags, flags);
            }
            return true;
        }
    }

    private GrantEntryV1* EntryV1(uint gref) =>
        (GrantEntryV1*)_d.Host.Frames.PageAddress(_shared[(int)(gref / 512)]) + gref % 512;

    private GrantEntryV2* EntryV2(uint gref) =>
        (GrantEntryV2*)_d.Host.Frames.PageAddress(_shared[(int)(gref / 256)]) + gref % 256;

    private ushort* StatusV2(uint gref) =>
        (ushort*)_d.Host.Frames.PageAddress(_status[(int)(gref / StatusPerFrame)]) + gref % StatusPerFrame;

    // ---------------- granting side: checking and pinning grants ----------------

    /// <summary>
    /// Validates that <paramref name="mapper"/> may use grant <paramref name="gref"/> of this domain and pins it
    /// (setting GTF_reading/GTF_writing). Gives the frame and, for sub-page grants, the permitted byte range.
    /// </summary>
    public short Acquire(ushort mapper, uint gref, bool readOnly, bool allowSubPage, out uint mfn, out int subOff, out int subLen)
    {
        mfn = 0;
        subOff = 0;
        subLen = FrameTable.PageSize;
        lock (_d.Lock)
        {
            if (gref >= NrEntries)
                return GNTST_bad_gntref;
            ushort flags, domid;
            ulong frame;
            if (Version == 1)
            {
                var e = EntryV1(gref);
                flags = Volatile.Read(ref e->Flags);
                domid = e->Domid;
                frame = e->Frame;
            }
            else
            {
                var e = EntryV2(gref);
                flags = Volatile.Read(ref e->Flags);
                domid = e->Domid;
                frame = e->Frame;
                if ((flags & GTF_sub_page) != 0)
                {
                    if (!allowSubPage)
                        return GNTST_general_error;
                    subOff = e->SubPageOff;
                    subLen = e->SubPageLength;
                    if (subOff + subLen > FrameTable.PageSize)
                        return GNTST_general_error;
                }
            }
            // Xen answers a wrong type, a wrong grantee and a write to a read-only grant alike.
            if ((flags & GTF_type_mask) != GTF_permit_access || domid != mapper)
                return GNTST_general_error;
            if (!readOnly && (flags & GTF_readonly) != 0)
                return GNTST_general_error;
            if (_d.IsHost)
            {
                // Domain-0 is not translated: its entries name machine frames, which the daemon shares for its
                // programs (gntalloc); anything else in the field is no page of Domain-0's.
                if (frame >= _d.Host.Frames.FrameCount || _d.Host.Frames.OwnerOf((uint)frame) != _d.DomainId
                    || _d.Host.Frames.TypeOf((uint)frame) != FrameType.Ram)
                    return GNTST_bad_page;
                mfn = (uint)frame;
            }
            else if (_d.Pv is not null)
            {
                // A PV granter is not translated either: the entry names one of its machine frames. A writable use
                // holds a writable type on it, so a page table or descriptor page can never be granted writable
                // (Xen's get_page_and_type(PGT_writable_page) in map_grant_ref).
                var frames = _d.Host.Frames;
                if (frame >= frames.FrameCount || !frames.TryGetPage(frame, _d.DomainId))
                    return GNTST_bad_page;
                if (!readOnly && X86.Pv.PvMm.GetPageType(frames, frame, PageType.Writable) != 0)
                {
                    frames.PutPage(frame);
                    return GNTST_general_error;
                }
                mfn = (uint)frame;
                AddPin(gref, readOnly);
                return GNTST_okay;
            }
            else
            {
                if (!_d.P2m.TryLookup(frame, out mfn, out var type) || type is not (P2mType.RamRw or P2mType.RamRo))
                    return P2m.IsPaging(type) ? PagedOut(_d, frame) : GNTST_bad_page;
                if (!readOnly && type == P2mType.RamRo)
                    return GNTST_general_error;
            }
            _d.Host.Frames.AddRef(mfn);
            AddPin(gref, readOnly);
            return GNTST_okay;
        }
    }

    /// <summary>A granted frame that is paged out: the pager is asked for it and the caller told to try again (Xen's
    /// GNTST_eagain, which Linux's backends retry).</summary>
    private static short PagedOut(Domain d, ulong gfn)
    {
        MemPaging.Populate(d, gfn, null);
        return GNTST_eagain;
    }

    /// <summary>Counts one more use of grant <paramref name="gref"/> and shows it in the entry's in-use flags;
    /// the caller holds the domain lock.</summary>
    private void AddPin(uint gref, bool readOnly)
    {
        _active.TryGetValue(gref, out var pins);
        pins = readOnly ? (pins.Read + 1, pins.Write) : (pins.Read, pins.Write + 1);
        _active[gref] = pins;
        UpdateInUseFlags(gref, pins);
    }

    public void ReleasePin(uint gref, uint mfn, bool readOnly)
    {
        // A writable use (a copy into the page, a mapping) ends here: the granter's page counts as written, as
        // Xen's gnttab marks it dirty on unmap and after copies.
        if (!readOnly && _d.P2m.LogDirty && gref < NrEntries)
        {
            // A PV granter's bitmap is found through the M2P, a translated one's by the gfn its entry names.
            ulong frame = Version == 1 ? EntryV1(gref)->Frame : EntryV2(gref)->Frame;
            if (_d.Pv is { } pv) pv.MarkDirty(mfn);
            else _d.P2m.MarkDirty(frame);
        }
        lock (_d.Lock)
        {
            if (_active.TryGetValue(gref, out var pins))
            {
                pins = readOnly ? (Math.Max(0, pins.Read - 1), pins.Write) : (pins.Read, Math.Max(0, pins.Write - 1));
                if (pins == (0, 0))
                    _active.Remove(gref);
                else
                    _active[gref] = pins;
                if (gref < NrEntries)
                    UpdateInUseFlags(gref, pins);
            }
        }
        if (!readOnly && _d.Pv is not null)
            X86.Pv.PvMm.PutPageType(_d.Host.Frames, mfn);
        _d.Host.Frames.Release(mfn, dropRef: true);
    }

    private void UpdateInUseFlags(uint gref, (int Read, int Write) pins)
    {
        ushort set = (ushort)((pins.Read > 0 ? GTF_reading : 0) | (pins.Write > 0 ? GTF_writing : 0));
        ushort* f = Version == 1 ? &EntryV1(gref)->Flags : StatusV2(gref);
        if (Version == 2 && _status.Count * StatusPerFrame <= gref)
            return;
        // The guest updates the same 16 bits concurrently: change only the two in-use bits, atomically.
        uint* word = (uint*)((nint)f & ~3);
        int shift = ((nint)f & 3) == 0 ? 0 : 16;
        uint clearMask = ~((uint)(GTF_reading | GTF_writing) << shift);
        while (true)
        {
            uint old = Volatile.Read(ref *word);
            uint nw = (old & clearMask) | ((uint)set << shift);
            if (Interlocked.CompareExchange(ref *word, nw, old) == old)
                break;
        }
    }

    /// <summary>Grants of this table that are pinned, with their entry (for the 'g' debug key).</summary>
    public List<(uint Ref, int Readers, int Writers, ushort Grantee, ulong Frame, ushort Flags, uint Mfn)> ActiveGrants()
    {
        var list = new List<(uint, int, int, ushort, ulong, ushort, uint)>();
        lock (_d.Lock)
        {
            foreach (var (gref, pins) in _active.OrderBy(a => a.Key))
            {
                if (gref >= NrEntries)
                    continue;
                ushort flags, domid;
                ulong frame;
                if (Version == 1)
                {
                    var e = EntryV1(gref);
                    (flags, domid, frame) = (e->Flags, e->Domid, e->Frame);
                }
                else
                {
                    var e = EntryV2(gref);
                    (flags, domid, frame) = (e->Flags, e->Domid, e->Frame);
                }
                uint mfn = (uint)frame;
                if (_d.Pv is null)
                    _d.P2m.TryLookup(frame, out mfn, out _);
                list.Add((gref, pins.Read, pins.Write, domid, frame, flags, mfn));
            }
        }
        return list;
    }

    public int MaptrackEntries { get { lock (_maptrack) return _maptrack.Count; } }

    public bool HasActiveGrants { get { lock (_d.Lock) return _active.Count > 0; } }

    /// <summary>Whether a grantee has grant <paramref name="gref"/> mapped or is copying through it.</summary>
    public bool IsActive(uint gref) { lock (_d.Lock) return _active.ContainsKey(gref); }

    // ---------------- mapping side ----------------

    /// <summary>GNTTABOP_map_grant_ref for this (mapping) domain; <paramref name="caller"/> is the vCPU whose page
    /// tables a PV domain's host mapping by linear address goes into.</summary>
    public short Map(ref GnttabMapGrantRef op, bool host, out byte* hostPointer, Vcpu? caller = null)
    {
        hostPointer = null;
        if ((op.Flags & (GNTMAP_device_map | GNTMAP_host_map)) == 0)
            return GNTST_bad_gntref;
        bool pvHostMap = !host && _d.Pv is not null && (op.Flags & GNTMAP_host_map) != 0;
        if (!host && _d.Pv is null && (op.Flags & GNTMAP_contains_pte) != 0)
            return GNTST_general_error; // translated guests map by guest-physical address only
        var granter = op.Dom == Xen.DOMID_SELF ? _d : _d.Host.FindDomain(op.Dom);
        if (granter is null || granter.IsDying)
            return GNTST_bad_domain;
        bool ro = (op.Flags & GNTMAP_readonly) != 0;
        if (Xsm.XsmHooks.GrantMap(_d, granter, ro) < 0)
            return GNTST_permission_denied;
        ulong gfn = op.HostAddr >> FrameTable.PageShift;
        if (!host && _d.Pv is null && (op.Flags & GNTMAP_host_map) != 0 && gfn > P2m.MaxGfn)
            return GNTST_bad_virt_addr;
        // A PV domain's host mapping is a PTE: the L1 slot it goes into must exist before anything is pinned.
        (ulong L1Mfn, int Index) pte = default;
        if (pvHostMap && (caller is null
            || !X86.Pv.PvMm.TryGrantSlot(caller, op.HostAddr, (op.Flags & GNTMAP_contains_pte) != 0, out pte.L1Mfn, out pte.Index)))
            return GNTST_general_error;
        short st = granter.Gnttab.Acquire(_d.DomainId, op.Ref, ro, allowSubPage: false, out uint mfn, out _, out _);
        if (st != GNTST_okay)
            return st;
        var m = new Mapping { Granter = granter, Ref = op.Ref, Mfn = mfn, ReadOnly = ro };
        if (pvHostMap)
        {
            if (!X86.Pv.PvMm.WriteGrantPte(_d.Host.Frames, pte.L1Mfn, pte.Index, mfn, ro))
            {
                granter.Gnttab.ReleasePin(op.Ref, mfn, ro);
                return GNTST_general_error;
            }
            _d.Pv!.GrantMapped.Add(mfn, ro);
            m.Pte = pte;
            m.ByPte = (op.Flags & GNTMAP_contains_pte) != 0;
        }
        else if (!host && (op.Flags & GNTMAP_host_map) != 0)
        {
            lock (_d.Lock)
            {
                _d.ReleaseOld(_d.P2m.Set(gfn, mfn, ro ? P2mType.GrantMapRo : P2mType.GrantMapRw));
            }
            m.Gfn = gfn;
        }
        op.Handle = AddMapping(m);
        op.DevBusAddr = (op.Flags & GNTMAP_device_map) != 0 ? (ulong)mfn << FrameTable.PageShift : 0;
        hostPointer = _d.Host.Frames.PageAddress(mfn);
        return GNTST_okay;
    }

    private uint AddMapping(Mapping m)
    {
        lock (_maptrack)
        {
            for (int i = 0; i < _maptrack.Count; i++)
                if (_maptrack[i] is null)
                {
                    _maptrack[i] = m;
                    return (uint)i;
                }
            _maptrack.Add(m);
            return (uint)(_maptrack.Count - 1);
        }
    }

    /// <summary>GNTTABOP_unmap_grant_ref for this (mapping) domain; a PV domain's host mapping is found by
    /// <paramref name="hostAddr"/> as it was mapped (a linear address in <paramref name="caller"/>'s page tables, or
    /// the PTE's machine address).</summary>
    public short Unmap(uint handle, ulong hostAddr, bool host, Vcpu? caller = null)
    {
        Mapping? m;
        lock (_maptrack)
        {
            m = handle < (uint)_maptrack.Count ? _maptrack[(int)handle] : null;
            if (m is null)
                return GNTST_bad_handle;
            if (!host && m.Gfn is ulong g && hostAddr != 0 && (hostAddr >> FrameTable.PageShift) != g)
                return GNTST_general_error;
            if (m.Pte is { } pte && hostAddr != 0)
            {
                // Xen's replace_grant_host_mapping: the entry at the address must still map the granted frame.
                if (caller is null || !X86.Pv.PvMm.TryGrantSlot(caller, hostAddr, m.ByPte, out ulong l1, out int index)
                    || (l1, index) != pte || !X86.Pv.PvMm.ClearGrantPte(_d.Host.Frames, l1, index, m.Mfn))
                    return GNTST_general_error;
                _d.Pv!.FlushTlbs(caller);
            }
            if (m.Pte is not null)
                _d.Pv!.GrantMapped.Remove(m.Mfn, m.ReadOnly);
            _maptrack[(int)handle] = null;
        }
        if (m.Gfn is ulong gfn)
        {
            lock (_d.Lock)
            {
                if (_d.P2m.TryLookup(gfn, out uint cur, out var t) && cur == m.Mfn && t is P2mType.GrantMapRw or P2mType.GrantMapRo)
                    _d.P2m.Remove(gfn);
            }
        }
        m.Granter.Gnttab.ReleasePin(m.Ref, m.Mfn, m.ReadOnly);
        return GNTST_okay;
    }

    public int ActiveMappings { get { lock (_maptrack) return _maptrack.Count(m => m is not null); } }

    // ---------------- copy ----------------

    /// <summary>GNTTABOP_copy on behalf of this domain.</summary>
    public short Copy(ref GnttabCopy op)
    {
        if (op.Source.Offset + op.Len > FrameTable.PageSize || op.Dest.Offset + op.Len > FrameTable.PageSize)
            return GNTST_bad_copy_arg;
        short st = Resolve(op.Source, (op.Flags & GNTCOPY_source_gref) != 0, write: false, op.Len, out var src);
        if (st != GNTST_okay)
            return st;
        st = Resolve(op.Dest, (op.Flags & GNTCOPY_dest_gref) != 0, write: true, op.Len, out var dst);
        if (st == GNTST_okay)
        {
            Buffer.MemoryCopy(_d.Host.Frames.PageAddress(src.Mfn) + op.Source.Offset,
                _d.Host.Frames.PageAddress(dst.Mfn) + op.Dest.Offset, op.Len, op.Len);
            dst.Release();
        }
        src.Release();
        return st;
    }

    /// <summary>A frame held for a copy. Released after the copy, which is when a written frame named by number
    /// counts as dirty for its domain's log-dirty mode (<paramref name="DirtyP2m"/> and <paramref name="Gfn"/> for a
    /// translated domain; a PV one's is found through the M2P).</summary>
    private readonly record struct Pinned(GrantTable? Owner, uint Ref, uint Mfn, bool ReadOnly, FrameTable? PvFrames = null,
        P2m? DirtyP2m = null, ulong Gfn = 0)
    {
        public void Release()
        {
            Owner?.ReleasePin(Ref, Mfn, ReadOnly);
            if (!ReadOnly)
                DirtyP2m?.MarkDirty(Gfn);
            if (PvFrames is { } frames)
            {
                if (!ReadOnly)
                {
                    X86.Pv.PvMm.MarkDirty(frames, Mfn);
                    X86.Pv.PvMm.PutPageType(frames, Mfn);
                }
                frames.PutPage(Mfn);
            }
        }
    }

    private short Resolve(in GnttabCopyPtr p, bool isGref, bool write, int len, out Pinned pinned)
    {
        pinned = default;
        var dom = p.Domid == Xen.DOMID_SELF ? _d : _d.Host.FindDomain(p.Domid);
        if (dom is null || dom.IsHost)
            return GNTST_bad_domain;
        if (Xsm.XsmHooks.GrantCopy(_d, dom) < 0)
            return GNTST_permission_denied;
        if (isGref)
        {
            short st = dom.Gnttab.Acquire(_d.DomainId, (uint)p.RefOrGmfn, !write, allowSubPage: true, out uint mfn, out int off, out int sublen);
            if (st != GNTST_okay)
                return st;
            pinned = new Pinned(dom.Gnttab, (uint)p.RefOrGmfn, mfn, !write);
            if (p.Offset < off || p.Offset + len > off + sublen)
            {
                pinned.Release();
                pinned = default;
                return GNTST_general_error;
            }
            return GNTST_okay;
        }
        // Copying by frame number is for one's own memory (or a privileged domain's).
        if (dom != _d && !_d.IsPrivileged)
            return GNTST_permission_denied;
        if (dom.Pv is not null)
        {
            // A PV domain names its machine frames; the copy holds the frame (writable-typed to write it) meanwhile.
            var frames = _d.Host.Frames;
            if (p.RefOrGmfn >= frames.FrameCount || !frames.TryGetPage(p.RefOrGmfn, dom.DomainId))
                return GNTST_bad_page;
            if (write && X86.Pv.PvMm.GetPageType(frames, p.RefOrGmfn, PageType.Writable) != 0)
            {
                frames.PutPage(p.RefOrGmfn);
                return GNTST_general_error;
            }
            pinned = new Pinned(null, 0, (uint)p.RefOrGmfn, !write, frames);
            return GNTST_okay;
        }
        if (!dom.P2m.TryLookup(p.RefOrGmfn, out uint m, out var t) || t is not (P2mType.RamRw or P2mType.RamRo or P2mType.GrantMapRw or P2mType.GrantMapRo))
            return P2m.IsPaging(t) ? PagedOut(dom, p.RefOrGmfn) : GNTST_bad_page;
        if (write && t is P2mType.RamRo or P2mType.GrantMapRo)
            return GNTST_permission_denied;
        pinned = new Pinned(null, 0, m, !write, DirtyP2m: dom.P2m, Gfn: p.RefOrGmfn);
        return GNTST_okay;
    }

    // ---------------- version ----------------

    public long SetVersion(uint version)
    {
        if (version is not (1 or 2))
            return -Errno.EINVAL;
        lock (_d.Lock)
        {
            if (version == Version)
                return 0;
            if (_active.Count > 0)
                return -Errno.EBUSY;
            // Keep the reserved entries the toolstack seeded (console, xenstore) across the switch.
            var keep = new (ushort Flags, ushort Domid, ulong Frame)[GNTTAB_NR_RESERVED_ENTRIES];
            uint n = Math.Min(NrEntries, (uint)GNTTAB_NR_RESERVED_ENTRIES);
            for (uint i = 0; i < n; i++)
                keep[i] = Version == 1 ? (EntryV1(i)->Flags, EntryV1(i)->Domid, EntryV1(i)->Frame) : (EntryV2(i)->Flags, EntryV2(i)->Domid, EntryV2(i)->Frame);
            foreach (var mfn in _shared)
                new Span<byte>(_d.Host.Frames.PageAddress(mfn), FrameTable.PageSize).Clear();
            if (version == 1)
            {
                foreach (var mfn in _status)
                {
                    if (_frameGfn.Remove(mfn, out ulong g))
                        _d.P2m.Remove(g);
                    _d.Host.Frames.Free(mfn);
                }
                _status.Clear();
            }
            Version = (int)version;
            if (version == 2)
                GrowStatus();
            for (uint i = 0; i < n; i++)
            {
                if (version == 1)
                    *EntryV1(i) = new GrantEntryV1 { Flags = keep[i].Flags, Domid = keep[i].Domid, Frame = (uint)keep[i].Frame };
                else
                    *EntryV2(i) = new GrantEntryV2 { Flags = keep[i].Flags, Domid = keep[i].Domid, Frame = keep[i].Frame };
            }
            return 0;
        }
    }

    public ulong FrameGfnOrInvalid(int idx, bool status)
    {
        lock (_d.Lock)
        {
            var list = status ? _status : _shared;
            if (idx >= list.Count)
                return ulong.MaxValue;
            // A PV domain is not translated: it maps its table by machine frame (Xen's gnttab_shared_gfn).
            if (_d.Pv is not null)
                return list[idx];
            return _frameGfn.TryGetValue(list[idx], out ulong g) ? g : ulong.MaxValue;
        }
    }

    public int StatusFrames { get { lock (_d.Lock) return _status.Count; } }

    public void Teardown()
    {
        List<Mapping> maps;
        lock (_maptrack)
        {
            maps = _maptrack.Where(m => m is not null).ToList()!;
            _maptrack.Clear();
        }
        foreach (var m in maps)
            m.Granter.Gnttab.ReleasePin(m.Ref, m.Mfn, m.ReadOnly);
        foreach (var mfn in _shared.Concat(_status))
            _d.Host.Frames.Free(mfn);
        _shared.Clear();
        _status.Clear();
        _frameGfn.Clear();
    }
}
