using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Public.Migration;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Save;

/// <summary>What the headers of a save file say, read before any domain is made.</summary>
internal sealed record SaveFileHeader(string ConfigText, bool ConfigIsJson, uint LibxcVersion, uint XenMajor, uint XenMinor, bool Pv = false);

/// <summary>What the records left to the toolstack: the HVM params (rings and their event channels), and an HVM
/// domain's device model state.</summary>
internal sealed record RestoredState(IReadOnlyDictionary<int, ulong> Params, long Pages, uint TscKhz, PvRestored? Pv = null)
{
    public EmulatorState? Emulator { get; init; }
}

/// <summary>The device model's records of a stream (qemu-xen's, index 0): its xenstore keys, relative to its
/// directory, and the state QEMU saved, which the new QEMU takes through -incoming.</summary>
internal sealed record EmulatorState(IReadOnlyList<(string Key, string Value)> Xenstore, byte[]? Context);

/// <summary>
/// Reads a file <see cref="SaveFileWriter"/> (or Xen's xl for a PVH guest) wrote, in two steps as xl restore does:
/// <see cref="ReadHeader"/> checks everything up to the libxc domain header, so a file that is not a save file, is of
/// an unknown version or of another guest type fails before a domain exists; <see cref="Load"/> then streams the
/// records into the new domain, and any fault there is the caller's cue to destroy it.
/// </summary>
internal sealed class SaveFileReader(Stream input, string file)
{
    private readonly MigrationRecordReader _r = new(input, file);

    /// <summary>The stream is an x86 PV domain's (its domain header says so).</summary>
    private bool _pv;

    /// <summary>A checkpointed PV stream's restore state, kept from checkpoint to checkpoint until the failover
    /// completes it (<see cref="CompletePv"/>).</summary>
    private RestoreX86Pv? _checkpointedPv;

    /// <summary>Called once, when the first record of the guest's state (TSC info, HVM context) arrives: a live
    /// stream's pages are over and the guest has stopped.</summary>
    public Action? OnState { get; set; }

    public SaveFileHeader ReadHeader()
    {
        Span<byte> magic = stackalloc byte[32];
        _r.Exactly(magic, "the xl header");
        if (!magic.SequenceEqual(XlSaveFile.Magic))
            throw new SaveFileException($"{file}: not an xl save file (its first 32 bytes are not \"Xen saved domain, xl format\")");
        var words = _r.Struct<XlWords>("the xl header");
        if (words.ByteOrder != XlSaveFile.BYTEORDER_VALUE)
            throw new SaveFileException($"{file}: saved on a host of the other byte order (byte order word 0x{words.ByteOrder:x})");
        uint unknown = words.Mandatory & ~XlSaveFile.XL_MANDATORY_FLAG_ALL;
        if (unknown != 0)
            throw new SaveFileException($"{file}: unknown mandatory flags 0x{unknown:x} in the xl header (a newer xl wrote it)");
        if ((words.Mandatory & XlSaveFile.XL_MANDATORY_FLAG_STREAMV2) == 0)
            throw new SaveFileException($"{file}: a legacy (pre migration v2) stream, which XenSharp does not restore");
        if (words.OptionalLength > 16 << 20)
            throw _r.Corrupt($"the xl header claims {words.OptionalLength} bytes of optional data");
        var optional = new byte[words.OptionalLength];
        _r.Exactly(optional, "the domain configuration");
        string config = "";
        if (optional.Length >= 4)
        {
            uint length = BitConverter.ToUInt32(optional, 0);
            if (length > optional.Length - 4)
                throw _r.Corrupt($"the configuration claims {length} bytes, the optional data holds {optional.Length - 4}");
            config = Encoding.UTF8.GetString(optional, 4, (int)length).TrimEnd('\0');
        }

        ulong ident = _r.UInt64BigEndian("the libxl stream header");
        if (ident != LibxlStream.HDR_IDENT)
            throw _r.Corrupt($"no libxl stream after the xl header (identifier 0x{ident:x})");
        uint version = _r.UInt32BigEndian("the libxl stream header");
        if (version != LibxlStream.HDR_VERSION)
            throw new SaveFileException($"{file}: libxl stream version {version}, XenSharp reads version {LibxlStream.HDR_VERSION}");
        uint options = _r.UInt32BigEndian("the libxl stream header");
        if ((options & LibxlStream.HDR_OPT_BIG_ENDIAN) != 0)
            throw new SaveFileException($"{file}: a big-endian libxl stream");
        if ((options & LibxlStream.HDR_OPT_LEGACY) != 0)
            throw new SaveFileException($"{file}: a libxl stream converted from a legacy one, which XenSharp does not restore");

        var (type, _) = _r.Record("libxl");
        if (type != LibxlStream.REC_TYPE_LIBXC_CONTEXT)
            throw new SaveFileException($"{file}: the libxl stream has record type 0x{type:x} where XenSharp expects the libxc context " +
                "(libxl writes it first)");

        ulong marker = _r.UInt64BigEndian("the libxc image header");
        uint xenf = _r.UInt32BigEndian("the libxc image header");
        if (marker != LibxcStream.IHDR_MARKER || xenf != LibxcStream.IHDR_IDENT)
            throw _r.Corrupt($"bad libxc image header (marker 0x{marker:x}, identifier 0x{xenf:x})");
        uint libxcVersion = _r.UInt32BigEndian("the libxc image header");
        if (libxcVersion is < 2 or > 3)
            throw new SaveFileException($"{file}: libxc stream version {libxcVersion}, XenSharp reads versions 2 and 3");
        ushort imageOptions = _r.UInt16BigEndian("the libxc image header");
        _r.UInt16BigEndian("the libxc image header");
        _r.UInt32BigEndian("the libxc image header");
        if (imageOptions != LibxcStream.IHDR_OPT_LITTLE_ENDIAN)
            throw new SaveFileException($"{file}: libxc image options 0x{imageOptions:x} (a big-endian stream or unknown options)");
        var dh = _r.Struct<LibxcDomainHeader>("the libxc domain header");
        if (dh.Type is not (LibxcStream.DHDR_TYPE_X86_HVM or LibxcStream.DHDR_TYPE_X86_PV))
            throw new SaveFileException($"{file}: a domain of type 0x{dh.Type:x}; XenSharp restores x86 HVM-type (PVH) domains (0x{LibxcStream.DHDR_TYPE_X86_HVM:x}) and x86 PV ones (0x{LibxcStream.DHDR_TYPE_X86_PV:x})");
        if (dh.PageShift != LibxcStream.PageShift)
            throw _r.Corrupt($"page shift {dh.PageShift}, expected {LibxcStream.PageShift}");
        _pv = dh.Type == LibxcStream.DHDR_TYPE_X86_PV;
        return new SaveFileHeader(config, (words.Mandatory & XlSaveFile.XL_MANDATORY_FLAG_JSON) != 0, libxcVersion, dh.XenMajor, dh.XenMinor, _pv);
    }

    /// <summary>Loads the libxc records into <paramref name="d"/> (populating each page it carries) and reads the
    /// libxl stream to its end. The HVM context is loaded as it comes; the params are handed back for the
    /// toolstack to wire up. In a <paramref name="checkpointed"/> stream (Remus) it stops at the first checkpoint
    /// instead, and <see cref="ReadCheckpoint"/> reads the ones that follow.</summary>
    public RestoredState Load(IHypervisorDomain d, Func<bool>? cancelled = null, bool checkpointed = false)
    {
        var state = new LoadState();
        while (true)
        {
            long at = _r.Position;
            var (type, body) = _r.SharedRecord("libxc");
            if (type == LibxcStream.REC_TYPE_END || type == LibxcStream.REC_TYPE_CHECKPOINT)
            {
                if (body.Count != 0) throw _r.Corrupt($"{(type == 0 ? "END" : "CHECKPOINT")} record at byte {at} with {body.Count} bytes");
                if (_pv && state.Pv is null) throw _r.Corrupt("the PV stream ends without an X86_PV_INFO record");
                if (!state.Context && !_pv) throw _r.Corrupt("the libxc stream ends without an HVM context");
                PvRestored? pv;
                EmulatorState? emulator = null;
                if (type == LibxcStream.REC_TYPE_CHECKPOINT)
                {
                    if (!checkpointed) throw _r.Corrupt($"a CHECKPOINT record at byte {at} in a stream that is not checkpointed");
                    // A PV guest's tables are pinned and its vCPUs loaded only when it is started (libxc's
                    // stream_complete at the failover): later checkpoints rewrite its pages, and a pinned table
                    // cannot simply be overwritten. Until then its page tables hold PFNs.
                    _checkpointedPv = state.Pv;
                    pv = state.Pv?.Rings();
                    emulator = ReadLibxlCheckpointEnd();
                    FirstCheckpointEmulator = emulator;
                }
                else
                {
                    pv = state.Pv?.Finish();
                    emulator = ReadLibxlEnd();
                }
                return new RestoredState(state.Params, state.Pages, state.TscKhz, pv) { Emulator = emulator };
            }
            Apply(d, type, body, at, state);
            if (type == LibxcStream.REC_TYPE_PAGE_DATA && cancelled?.Invoke() == true)
                throw new OperationCanceledException("the domain was destroyed while it was being restored");
        }
    }

    /// <summary>The device model state of a checkpointed stream's first checkpoint, which <see cref="Load"/> stops at;
    /// null when it carried none (a PVH or PV domain).</summary>
    public EmulatorState? FirstCheckpointEmulator { get; private set; }

    /// <summary>One record of a checkpoint, kept until the checkpoint is complete.</summary>
    internal readonly record struct PendingRecord(uint Type, byte[] Body, long At);

    /// <summary>The records of the next checkpoint of a checkpointed stream, read whole but not applied (libxl
    /// buffers them likewise, so that a stream cut inside one leaves the last complete checkpoint as it was), and
    /// whether the stream ended there (an END record: the primary stopped Remus). A stream cut or corrupted before
    /// the checkpoint is complete throws <see cref="SaveFileException"/>. An HVM domain's checkpoint also carries its
    /// device model's state (libxl's emulator records before CHECKPOINT_END), handed back with it; null when it has
    /// none.</summary>
    public (List<PendingRecord> Records, bool Ended, EmulatorState? Emulator) ReadCheckpoint()
    {
        var records = new List<PendingRecord>();
        while (true)
        {
            long at = _r.Position;
            var (type, body) = _r.Record("libxc");
            switch (type)
            {
                case LibxcStream.REC_TYPE_CHECKPOINT:
                    return (records, false, ReadLibxlCheckpointEnd());
                case LibxcStream.REC_TYPE_END:
                    return (records, true, ReadLibxlEnd());
                case LibxcStream.REC_TYPE_PAGE_DATA or LibxcStream.REC_TYPE_X86_TSC_INFO or LibxcStream.REC_TYPE_HVM_CONTEXT
                    or LibxcStream.REC_TYPE_HVM_PARAMS:
                    records.Add(new PendingRecord(type, body, at));
                    break;
                // A PV guest's end of checkpoint: its vCPUs and shared_info (libxc's x86_pv_end_of_checkpoint).
                case LibxcStream.REC_TYPE_X86_PV_VCPU_BASIC or LibxcStream.REC_TYPE_X86_PV_VCPU_EXTENDED or LibxcStream.REC_TYPE_X86_PV_VCPU_XSAVE
                    or LibxcStream.REC_TYPE_X86_PV_VCPU_MSRS or LibxcStream.REC_TYPE_SHARED_INFO when _pv:
                    records.Add(new PendingRecord(type, body, at));
                    break;
                default:
                    throw new SaveFileException($"{file}: libxc record type 0x{type:x} at byte {at} inside a checkpoint is not one XenSharp restores");
            }
        }
    }

    /// <summary>Applies a complete checkpoint's records to the paused domain; returns the pages it carried.</summary>
    public long Apply(IHypervisorDomain d, List<PendingRecord> records)
    {
        var state = new LoadState { Pv = _checkpointedPv };
        foreach (var r in records)
            Apply(d, r.Type, r.Body, r.At, state);
        return state.Pages;
    }

    /// <summary>The failover of a checkpointed PV stream: the last complete checkpoint made a running guest's
    /// (<see cref="RestoreX86Pv.Finish"/>); null for a PVH stream, which is complete at each checkpoint.</summary>
    public PvRestored? CompletePv()
    {
        var pv = _checkpointedPv;
        _checkpointedPv = null;
        return pv?.Finish();
    }

    private sealed class LoadState
    {
        public readonly Dictionary<int, ulong> Params = [];
        public long Pages;
        public uint TscKhz;
        public bool Context;
        public RestoreX86Pv? Pv;
    }

    private void Apply(IHypervisorDomain d, uint type, ReadOnlySpan<byte> body, long at, LoadState state)
    {
        if (type is LibxcStream.REC_TYPE_X86_TSC_INFO or LibxcStream.REC_TYPE_HVM_CONTEXT or LibxcStream.REC_TYPE_X86_PV_VCPU_BASIC
            && OnState is { } onState)
        {
            OnState = null;
            onState();
        }
        switch (type)
        {
            case LibxcStream.REC_TYPE_PAGE_DATA:
                if (_pv && state.Pv is null) throw _r.Corrupt($"PAGE_DATA at byte {at} before the X86_PV_INFO record");
                state.Pages += LoadPages(d, body, at, state.Pv);
                break;
            case LibxcStream.REC_TYPE_X86_PV_INFO when _pv:
                if (state.Pv is not null) throw _r.Corrupt($"a second X86_PV_INFO record at byte {at}");
                state.Pv = new RestoreX86Pv(d, body, file, at);
                break;
            case LibxcStream.REC_TYPE_X86_PV_P2M_FRAMES or LibxcStream.REC_TYPE_X86_PV_VCPU_BASIC or LibxcStream.REC_TYPE_X86_PV_VCPU_EXTENDED
                or LibxcStream.REC_TYPE_X86_PV_VCPU_XSAVE or LibxcStream.REC_TYPE_X86_PV_VCPU_MSRS or LibxcStream.REC_TYPE_SHARED_INFO when _pv:
                if (state.Pv is null) throw _r.Corrupt($"PV record type 0x{type:x} at byte {at} before the X86_PV_INFO record");
                state.Pv.Record(type, body, at);
                state.Context |= type == LibxcStream.REC_TYPE_X86_PV_VCPU_BASIC;
                break;
            case LibxcStream.REC_TYPE_X86_TSC_INFO:
                if (body.Length != Marshal.SizeOf<X86TscInfo>()) throw _r.Corrupt($"TSC info record at byte {at} of {body.Length} bytes");
                state.TscKhz = MemoryMarshal.Read<X86TscInfo>(body).Khz;
                break;
            case LibxcStream.REC_TYPE_HVM_CONTEXT when !_pv:
                if (body.Length == 0) throw _r.Corrupt($"empty HVM context at byte {at}");
                try { d.SetHvmContext(body); }
                catch (XenSharp.Hypervisor.HypervisorException e) { throw _r.Corrupt($"HVM context at byte {at}: {e.Message}"); }
                state.Context = true;
                break;
            case LibxcStream.REC_TYPE_HVM_PARAMS when !_pv:
                ReadParams(body, at, state.Params);
                break;
            case LibxcStream.REC_TYPE_STATIC_DATA_END:
            case LibxcStream.REC_TYPE_X86_CPUID_POLICY:
            case LibxcStream.REC_TYPE_X86_MSR_POLICY:
            case LibxcStream.REC_TYPE_VERIFY:
                // The policies describe the saving host's CPU; XenSharp's engine presents one CPU everywhere.
                break;
            default:
                throw new SaveFileException($"{file}: libxc record type 0x{type:x} at byte {at} is not one XenSharp restores");
        }
    }

    private long LoadPages(IHypervisorDomain d, ReadOnlySpan<byte> body, long at, RestoreX86Pv? pv)
    {
        if (body.Length < 8) throw _r.Corrupt($"PAGE_DATA record at byte {at} of {body.Length} bytes");
        uint count = MemoryMarshal.Read<uint>(body);
        if (MemoryMarshal.Read<uint>(body[4..]) != 0) throw _r.Corrupt($"PAGE_DATA record at byte {at} has reserved bits set");
        if ((ulong)count * 8 > (ulong)body.Length - 8) throw _r.Corrupt($"PAGE_DATA record at byte {at} lists {count} pfns it has no room for");
        var pfns = MemoryMarshal.Cast<byte, ulong>(body.Slice(8, (int)count * 8));
        int withData = 0;
        foreach (ulong p in pfns)
            if (HasData(p)) withData++;
        if (body.Length != 8 + count * 8 + withData * 4096L)
            throw _r.Corrupt($"PAGE_DATA record at byte {at} is {body.Length} bytes, its {count} pfns need {8 + count * 8 + withData * 4096L}");
        // Every entry is checked, and the frames the batch needs are populated a run of consecutive gfns at a time
        // (a first pass is runs of 1024), before any data is written.
        ulong runStart = 0, runLength = 0;
        foreach (ulong p in pfns)
        {
            ulong type = p & LibxcStream.PAGE_DATA_TYPE_MASK, gfn = p & LibxcStream.PAGE_DATA_PFN_MASK;
            if ((p & ~(LibxcStream.PAGE_DATA_TYPE_MASK | LibxcStream.PAGE_DATA_PFN_MASK)) != 0)
                throw _r.Corrupt($"PAGE_DATA record at byte {at}: reserved bits set in pfn entry 0x{p:x}");
            if ((p >> LibxcStream.PAGE_DATA_TYPE_SHIFT) is >= 5 and <= 8)
                throw _r.Corrupt($"PAGE_DATA record at byte {at}: pfn entry 0x{p:x} has an invalid type");
            if (type is LibxcStream.PAGE_DATA_TYPE_XTAB or LibxcStream.PAGE_DATA_TYPE_BROKEN || d.Memory.IsPopulated(gfn))
                continue;
            if (runLength > 0 && gfn == runStart + runLength)
            {
                runLength++;
                continue;
            }
            if (runLength > 0) d.Memory.Populate(runStart, runLength);
            (runStart, runLength) = (gfn, 1);
        }
        if (runLength > 0) d.Memory.Populate(runStart, runLength);

        int data = 8 + (int)count * 8;
        long loaded = 0;
        foreach (ulong p in pfns)
        {
            ulong type = p & LibxcStream.PAGE_DATA_TYPE_MASK, gfn = p & LibxcStream.PAGE_DATA_PFN_MASK;
            if (HasData(p))
            {
                d.Memory.Write((p & LibxcStream.PAGE_DATA_PFN_MASK) << 12, body.Slice(data, 4096));
                data += 4096;
                loaded++;
                pv?.NotePage(gfn, type);
            }
            else if (type == LibxcStream.PAGE_DATA_TYPE_XALLOC)
            {
                loaded++; // allocated, no contents: a new page, zero (XenSharp's writer sends all-zero pages so)
                pv?.NotePage(gfn, type);
            }
        }
        return loaded;
    }

    /// <summary>Whether a PAGE_DATA entry carries the page's contents: a data page or a page table, pinned or not.</summary>
    private static bool HasData(ulong p) => (p >> LibxcStream.PAGE_DATA_TYPE_SHIFT) is <= 4 or (>= 9 and <= 12);

    private void ReadParams(ReadOnlySpan<byte> body, long at, Dictionary<int, ulong> parameters)
    {
        if (body.Length < 8 || MemoryMarshal.Read<uint>(body[4..]) != 0)
            throw _r.Corrupt($"HVM_PARAMS record at byte {at} is malformed");
        uint count = MemoryMarshal.Read<uint>(body);
        if (body.Length != 8 + count * 16L)
            throw _r.Corrupt($"HVM_PARAMS record at byte {at} is {body.Length} bytes for {count} params");
        foreach (var e in MemoryMarshal.Cast<byte, HvmParamsEntry>(body[8..]))
            if (e.Index < XenSharp.Public.Hvm.Params.HVM_NR_PARAMS)
                parameters[(int)e.Index] = e.Value;
            else
                throw _r.Corrupt($"HVM_PARAMS record at byte {at} names param {e.Index}, beyond HVM_NR_PARAMS");
    }

    /// <summary>What libxl writes at a checkpoint after libxc's part: an HVM domain's emulator records (none for PVH
    /// or PV), then CHECKPOINT_END; the libxc stream goes on after it.</summary>
    private EmulatorState? ReadLibxlCheckpointEnd() => ReadEmulatorRecords(LibxlStream.REC_TYPE_CHECKPOINT_END, "where a checkpoint ends");

    /// <summary>libxl's records after the libxc stream up to its END: an HVM domain's device model records (libxl's
    /// EMULATOR_XENSTORE_DATA and EMULATOR_CONTEXT, each at most once, for qemu-xen only); null when there are none.</summary>
    private EmulatorState? ReadLibxlEnd() => ReadEmulatorRecords(LibxlStream.REC_TYPE_END, "after the libxc stream");

    /// <summary>Emulator records up to the libxl record <paramref name="last"/> (END, or CHECKPOINT_END in a
    /// checkpointed stream); null when there are none.</summary>
    private EmulatorState? ReadEmulatorRecords(uint last, string where)
    {
        List<(string, string)>? xenstore = null;
        byte[]? context = null;
        while (true)
        {
            long at = _r.Position;
            var (type, body) = _r.Record("libxl");
            if (type == last)
                return xenstore is null && context is null ? null : new EmulatorState(xenstore ?? [], context);
            switch (type)
            {
                case LibxlStream.REC_TYPE_EMULATOR_XENSTORE_DATA:
                    CheckEmulator(type, body, at);
                    if (xenstore is not null) throw _r.Corrupt($"a second emulator xenstore record at byte {at}");
                    xenstore = ParseXenstoreData(body.AsSpan(LibxlStream.EmulatorHeaderSize), at);
                    break;
                case LibxlStream.REC_TYPE_EMULATOR_CONTEXT:
                    CheckEmulator(type, body, at);
                    if (context is not null) throw _r.Corrupt($"a second emulator context record at byte {at}");
                    context = body[LibxlStream.EmulatorHeaderSize..];
                    break;
                default:
                    throw _r.Corrupt($"libxl record type 0x{type:x} at byte {at} {where}");
            }
        }
    }

    /// <summary>The emulator sub-header: present, and naming the one device model XenSharp runs (qemu-xen, the first).</summary>
    private void CheckEmulator(uint type, byte[] body, long at)
    {
        string what = type == LibxlStream.REC_TYPE_EMULATOR_CONTEXT ? "emulator context" : "emulator xenstore";
        if (body.Length < LibxlStream.EmulatorHeaderSize)
            throw _r.Corrupt($"the {what} record at byte {at} is {body.Length} bytes, too short for its emulator header");
        uint id = BitConverter.ToUInt32(body, 0), index = BitConverter.ToUInt32(body, 4);
        if (id != LibxlStream.EMULATOR_QEMU_UPSTREAM)
            throw new SaveFileException(id == LibxlStream.EMULATOR_QEMU_TRADITIONAL
                ? $"{file}: the {what} record at byte {at} is qemu-xen-traditional's, which XenSharp does not run"
                : $"{file}: corrupt: the {what} record at byte {at} names unknown emulator 0x{id:x}");
        if (index != 0)
            throw _r.Corrupt($"the {what} record at byte {at} is for device model {index}; a domain has one (index 0)");
    }

    /// <summary>The packed NUL-terminated keys and values, checked as libxl does (each terminated, keys not empty
    /// and relative) and as the stream's specification says (keys of xenstore's characters, no ".." in them).</summary>
    private List<(string, string)> ParseXenstoreData(ReadOnlySpan<byte> data, long at)
    {
        var list = new List<(string, string)>();
        while (data.Length > 0)
        {
            int k = data.IndexOf((byte)0);
            if (k < 0) throw _r.Corrupt($"emulator xenstore record at byte {at}: a key is not NUL-terminated");
            string key = Encoding.ASCII.GetString(data[..k]);
            data = data[(k + 1)..];
            if (key.Length == 0) throw _r.Corrupt($"emulator xenstore record at byte {at}: an empty key");
            if (key[0] == '/') throw _r.Corrupt($"emulator xenstore record at byte {at}: key {key} is not relative");
            foreach (char c in key)
                if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '/' or '_' or '@'))
                    throw _r.Corrupt($"emulator xenstore record at byte {at}: key {key} has a character xenstore does not allow");
            if (key.Split('/').Any(part => part.Length == 0))
                throw _r.Corrupt($"emulator xenstore record at byte {at}: key {key} has an empty path element");
            int v = data.IndexOf((byte)0);
            if (v < 0) throw _r.Corrupt($"emulator xenstore record at byte {at}: the value of {key} is not NUL-terminated");
            list.Add((key, Encoding.ASCII.GetString(data[..v])));
            data = data[(v + 1)..];
        }
        return list;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct XlWords
    {
        public uint ByteOrder, Mandatory, Optional, OptionalLength;
    }
}
