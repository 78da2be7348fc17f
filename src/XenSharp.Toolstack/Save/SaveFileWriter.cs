using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Public;
using XenSharp.Public.Hvm;
using XenSharp.Public.Migration;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Save;

/// <summary>What a save file records of a suspended domain besides its memory and vCPUs.</summary>
internal sealed record SaveSource(IHypervisorDomain Domain, string ConfigText, uint XenMajor, uint XenMinor, uint TscMode, int MaxVcpus = 1)
{
    /// <summary>An HVM domain's device model state, asked for once the guest has stopped and its libxc stream has
    /// ended: the libxl records (EMULATOR_XENSTORE_DATA, EMULATOR_CONTEXT) that follow it.</summary>
    public Func<IReadOnlyList<EmulatorRecord>>? Emulator { get; init; }
}

/// <summary>One of libxl's emulator records: its type, the emulator (id and index of the sub-header), and its data.</summary>
internal sealed record EmulatorRecord(uint Type, uint EmulatorId, uint Index, byte[] Data)
{
    /// <summary>The xenstore data's encoding: each key (relative to the device model's directory) and value, each
    /// NUL-terminated.</summary>
    public static byte[] XenstoreData(IEnumerable<(string Key, string Value)> entries)
    {
        var b = new MemoryStream();
        foreach (var (key, value) in entries)
        {
            b.Write(Encoding.ASCII.GetBytes(key));
            b.WriteByte(0);
            b.Write(Encoding.ASCII.GetBytes(value));
            b.WriteByte(0);
        }
        return b.ToArray();
    }
}

/// <summary>How a live stream goes: how to suspend the guest when the rounds are over, where progress lines go, when
/// to give up; libxc's limits (5 rounds, 50 pages) by default.</summary>
internal sealed record LiveOptions(Action Suspend, Action<string> Progress, Func<bool> Cancelled)
{
    /// <summary>Told the round, the pages sent in it so far and the pages it sends, batch by batch.</summary>
    public Action<int, long, long>? Pages { get; init; }

    /// <summary>When set, asks the guest to suspend without waiting and gives back a wait (true once the guest has
    /// suspended, false after the time given while it has not): the pages the guest dirties on its way to the stop
    /// are sent while it runs, in short rounds, and the suspended guest's last set is what it dirtied in the last
    /// of them. <see cref="Suspend"/> follows once it has stopped.</summary>
    public Func<Func<TimeSpan, bool>>? RequestSuspend { get; init; }

    /// <summary>How long a round waits for the stop before it takes the dirty set while the guest suspends.</summary>
    public TimeSpan SuspendingRound { get; init; } = TimeSpan.FromMilliseconds(2);

    /// <summary>When set, the bytes written but not yet taken by the target (what its link still holds): the guest
    /// is not stopped before that is down to <see cref="BacklogLimit"/>, since whatever is queued ahead of the last
    /// pages reaches the target in the downtime.</summary>
    public Func<long>? Backlog { get; init; }

    /// <summary>Called once the rounds are over, before the last wait for the target and the suspend: what must be
    /// done before the guest stops.</summary>
    public Action? BeforeStop { get; init; }

    public long BacklogLimit { get; init; } = 64 << 10;

    /// <summary>Called as the stream's last byte has been written, before the progress line and the log-dirty off
    /// that follow: where a migration's downtime, counted as QEMU counts it, ends.</summary>
    public Action? Sent { get; init; }

    /// <summary>How long to wait at most for the target to take the backlog (a slow link: the guest stops anyway).</summary>
    public TimeSpan BacklogWait { get; init; } = TimeSpan.FromSeconds(10);

    public int MaxIterations { get; init; } = 5;
    public long DirtyThreshold { get; init; } = 50;
}

/// <summary>
/// Writes the file `xl save` writes: xl's header with the domain's configuration, then the libxl stream (v2) whose
/// LIBXC_CONTEXT record holds the libxc stream (v3) of an x86 HVM-type domain (PVH is one): the static data end,
/// TSC info, the RAM pages in PAGE_DATA batches, the HVM context, the HVM params and END; a PV domain's is an x86 PV
/// stream instead (<see cref="SaveX86Pv"/>). The configuration is
/// xl.cfg text (the optional data of an xl file without the JSON flag), which Xen's xl restore reads as well.
/// </summary>
internal static class SaveFileWriter
{
    /// <summary>The params a restore needs: where the xenstore and console rings are, their event channels and the
    /// callback, then libxc's list (write_hvm_params) of what an HVM domain's firmware and device model set up: the
    /// ioreq and vm_event pages, the VM86 TSS, the ACPI port layout, the identity page table and the rest. Xen's save
    /// writes the ones that are set.</summary>
    internal static readonly int[] SavedParams =
    [
        Params.HVM_PARAM_CALLBACK_IRQ, Params.HVM_PARAM_STORE_PFN, Params.HVM_PARAM_STORE_EVTCHN,
        Params.HVM_PARAM_CONSOLE_PFN, Params.HVM_PARAM_CONSOLE_EVTCHN,
        Params.HVM_PARAM_IOREQ_PFN, Params.HVM_PARAM_BUFIOREQ_PFN, Params.HVM_PARAM_PAGING_RING_PFN,
        Params.HVM_PARAM_MONITOR_RING_PFN, Params.HVM_PARAM_SHARING_RING_PFN, Params.HVM_PARAM_VM86_TSS_SIZED,
        Params.HVM_PARAM_ACPI_IOPORTS_LOCATION, Params.HVM_PARAM_VIRIDIAN, Params.HVM_PARAM_IDENT_PT,
        Params.HVM_PARAM_VM_GENERATION_ID_ADDR, Params.HVM_PARAM_IOREQ_SERVER_PFN, Params.HVM_PARAM_NR_IOREQ_SERVER_PAGES,
        Params.HVM_PARAM_X87_FIP_WIDTH, Params.HVM_PARAM_MCA_CAP,
    ];

    /// <summary>Of <see cref="SavedParams"/>, the ones a restore sets again as they were (libxc's handle_hvm_params);
    /// the rings' pages and ports, and the callback the guest registers again on resume, are the toolstack's.</summary>
    internal static readonly int[] RestoredParams =
    [
        Params.HVM_PARAM_IOREQ_PFN, Params.HVM_PARAM_BUFIOREQ_PFN, Params.HVM_PARAM_VM86_TSS_SIZED,
        Params.HVM_PARAM_ACPI_IOPORTS_LOCATION, Params.HVM_PARAM_VIRIDIAN, Params.HVM_PARAM_IDENT_PT,
        Params.HVM_PARAM_VM_GENERATION_ID_ADDR, Params.HVM_PARAM_IOREQ_SERVER_PFN, Params.HVM_PARAM_NR_IOREQ_SERVER_PAGES,
        Params.HVM_PARAM_X87_FIP_WIDTH, Params.HVM_PARAM_MCA_CAP,
    ];

    /// <summary>Writes the whole file; returns the number of pages written. <paramref name="cancelled"/> stops it
    /// between batches (the domain was destroyed meanwhile).</summary>
    public static long Write(Stream output, SaveSource s, Func<bool>? cancelled = null)
    {
        var w = new MigrationRecordWriter(output);
        if (s.Domain.Pv is { } target)
        {
            // An x86 PV domain's stream (libxc's PV save): its own start and end records around the pages.
            var pv = new SaveX86Pv(s.Domain, target);
            WriteHeaders(w, s, LibxcStream.DHDR_TYPE_X86_PV);
            pv.WriteStart(w);
            WriteTscInfo(w, s);
            long sent = WritePages(w, s.Domain, AllGfns(s.Domain.Memory.MaxGfn), cancelled, firstPass: true, pv: pv);
            pv.WriteEnd(w, s.MaxVcpus);
            w.Record(LibxcStream.REC_TYPE_END, []);
            w.Record(LibxlStream.REC_TYPE_END, []);
            return sent;
        }
        WriteHeaders(w, s);
        WriteTscInfo(w, s);
        long pages = WritePages(w, s.Domain, AllGfns(s.Domain.Memory.MaxGfn), cancelled, firstPass: true);
        WriteTail(w, s);
        return pages;
    }

    /// <summary>
    /// The live stream of xl migrate (libxc's send_memory_live): see <see cref="LiveStream"/>; the suspended guest's
    /// last pages and state end it. Log-dirty is off again whatever happens.
    /// </summary>
    public static long WriteLive(Stream output, SaveSource s, LiveOptions o)
    {
        using var live = new LiveStream(output, s);
        live.PreCopy(o);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        long final = live.SendSuspended();
        var state = clock.Elapsed;
        live.End();
        output.Flush();
        o.Sent?.Invoke();
        var all = clock.Elapsed;
        o.Progress(string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"Suspended: {final} pages sent, {live.Total} in all; the last pages and state in {all.TotalMilliseconds:0.0} ms " +
            $"(pages {live.SuspendedPagesTime.TotalMilliseconds:0.0} ms, state {(state - live.SuspendedPagesTime).TotalMilliseconds:0.0} ms, " +
            $"flush {(all - state).TotalMilliseconds:0.0} ms)"));
        return live.Total;
    }

    /// <summary>
    /// A stream sent while the guest runs: log-dirty on, every page once while the guest runs, then the pages it
    /// dirtied meanwhile, round after round, until a round leaves fewer than <see cref="LiveOptions.DirtyThreshold"/>
    /// pages or <see cref="LiveOptions.MaxIterations"/> rounds are done; then the guest is suspended and its last dirty
    /// pages, its rings' pages and its state follow. A migration ends the stream there; Remus (a checkpointed stream)
    /// marks a checkpoint instead (libxc's CHECKPOINT, libxl's CHECKPOINT_END), lets the guest run, and sends each
    /// later checkpoint the same way: suspended, the pages dirtied since the last one, the state, the marks.
    /// </summary>
    internal sealed class LiveStream : IDisposable
    {
        private readonly MigrationRecordWriter _w;
        private readonly Stream _output;
        private readonly SaveSource _s;
        private readonly ulong _max;
        private readonly ulong[] _bits, _last;
        private readonly PageBatch _batch = new();
        // A PV guest's: its stream's own records and page-table typing, and the pages a round could not convert
        // (a page table changing under the round), left for the suspended guest's last pages.
        private readonly SaveX86Pv? _pv;
        private readonly ulong[]? _deferred;

        public LiveStream(Stream output, SaveSource s)
        {
            _w = new MigrationRecordWriter(output);
            _output = output;
            _s = s;
            _max = s.Domain.Memory.MaxGfn;
            _bits = new ulong[(_max + 64) / 64];
            _last = new ulong[_bits.Length];
            if (s.Domain.Pv is { } target)
            {
                // libxc's PV save: X86_PV_INFO and the p2m's frames first; the vCPUs and shared_info at the end.
                _pv = new SaveX86Pv(s.Domain, target);
                _deferred = new ulong[_bits.Length];
                WriteHeaders(_w, s, LibxcStream.DHDR_TYPE_X86_PV);
                _pv.WriteStart(_w);
            }
            else
                WriteHeaders(_w, s);
            s.Domain.ShadowOp(Domctl.XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY, _bits);
        }

        /// <summary>A round's pages while the guest runs.</summary>
        private long Send(IEnumerable<ulong> gfns, Func<bool>? cancelled, Action<long>? progress = null, bool firstPass = false) =>
            WritePages(_w, _s.Domain, gfns, cancelled, progress, firstPass, _pv, _batch, _deferred);

        /// <summary>Pages sent so far.</summary>
        public long Total { get; private set; }

        /// <summary>How long the last <see cref="SendSuspended"/> took for its dirty set (and the pages' copy).</summary>
        public TimeSpan SuspendedPagesTime { get; private set; }

        /// <summary>The rounds while the guest runs, then <see cref="LiveOptions.Suspend"/>; what the last round
        /// left dirty waits for <see cref="SendSuspended"/>.</summary>
        public void PreCopy(LiveOptions o)
        {
            var d = _s.Domain;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            long all = (long)_max + 1;
            Total = Send(AllGfns(_max), o.Cancelled, n => o.Pages?.Invoke(0, n, all), firstPass: true);
            o.Progress(Round(0, Total, Total, clock));
            for (int i = 1; ; i++)
            {
                d.ShadowOp(Domctl.XEN_DOMCTL_SHADOW_OP_CLEAN, _bits);
                long dirty = Count(_bits);
                if (dirty < o.DirtyThreshold || i > o.MaxIterations)
                {
                    o.Progress($"Iteration {i}: {dirty} dirty pages left for the suspended guest");
                    break;
                }
                clock.Restart();
                int round = i;
                long sent = Send(Gfns(_bits), o.Cancelled, n => o.Pages?.Invoke(round, n, dirty));
                Total += sent;
                o.Progress(Round(i, sent, dirty, clock));
            }
            // What the rounds sent goes on its way now, not in the downtime.
            _output.Flush();
            Rehearse();
            o.BeforeStop?.Invoke();
            if (o.Backlog is { } backlog)
                WaitForTarget(backlog, o);
            if (o.RequestSuspend is { } request)
                SendWhileSuspending(request(), o);
            o.Suspend();
        }

        /// <summary>Writes the state records the stop-and-copy ends with into nothing while the guest runs, so that
        /// their methods (the HVM context's, the records') are compiled now and not in the downtime: a tiered method
        /// the JIT warm-up prepared is compiled again at its first call. The guest is held off its CPUs for the
        /// context as for a round's CLEAN.</summary>
        private void Rehearse()
        {
            var w = new MigrationRecordWriter(Stream.Null);
            WriteTscInfo(w, _s);
            if (_pv is not null)
                return; // its vCPUs' contexts are read once it has stopped
            w.Record(LibxcStream.REC_TYPE_HVM_CONTEXT, _s.Domain.GetHvmContext());
            WriteParams(w, _s.Domain);
            w.Record(LibxcStream.REC_TYPE_END, []);
        }

        /// <summary>Until the target has taken what was sent (a receiver populating the first pass's pages can lag
        /// behind by megabytes), then one more round for what the guest dirtied meanwhile, so that neither the
        /// backlog nor a large dirty set is left for the downtime.</summary>
        private void WaitForTarget(Func<long> backlog, LiveOptions o)
        {
            var d = _s.Domain;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            long queued, sent = 0;
            for (int round = 0; ; round++)
            {
                while ((queued = backlog()) > o.BacklogLimit && clock.Elapsed < o.BacklogWait)
                {
                    if (o.Cancelled()) throw new OperationCanceledException("the domain was destroyed while it was being sent");
                    Thread.Sleep(1);
                }
                if (round == 2 || queued > o.BacklogLimit) break;
                d.ShadowOp(Domctl.XEN_DOMCTL_SHADOW_OP_PEEK, _last);
                for (int i = 0; i < _bits.Length; i++) _last[i] |= _bits[i];
                if (Count(_last) < o.DirtyThreshold) break;
                d.ShadowOp(Domctl.XEN_DOMCTL_SHADOW_OP_CLEAN, _last);
                for (int i = 0; i < _bits.Length; i++) _bits[i] |= _last[i];
                sent += Send(Gfns(_bits), o.Cancelled);
                Array.Clear(_bits);
                _output.Flush();
            }
            Total += sent;
            MigrationTrace.Mark("source", $"target caught up: {queued} bytes queued");
            o.Progress(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"Target caught up in {clock.Elapsed.TotalMilliseconds:0.0} ms ({sent} pages sent meanwhile, {queued} bytes left queued)"));
        }

        /// <summary>Until the guest has suspended: every <see cref="LiveOptions.SuspendingRound"/>, the pages it dirtied
        /// (a guest's suspend path writes hundreds: frozen tasks, the devices' state), so that few are left for the
        /// stop-and-copy.</summary>
        private void SendWhileSuspending(Func<TimeSpan, bool> stopped, LiveOptions o)
        {
            var d = _s.Domain;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            long sent = 0;
            int rounds = 0;
            while (!stopped(o.SuspendingRound))
            {
                d.ShadowOp(Domctl.XEN_DOMCTL_SHADOW_OP_CLEAN, _last);
                for (int i = 0; i < _bits.Length; i++) _bits[i] |= _last[i];
                long n = Send(Gfns(_bits), o.Cancelled);
                Array.Clear(_bits);
                if (n > 0) _output.Flush();
                sent += n;
                rounds++;
                if (MigrationTrace.On) MigrationTrace.Mark("source", $"suspending round {rounds}: {n} pages");
            }
            Total += sent;
            o.Progress(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"Suspending: {sent} pages sent in {rounds} rounds while the guest suspended, {clock.Elapsed.TotalMilliseconds:0.0} ms"));
        }

        /// <summary>With the guest suspended: the pages dirtied since the last round or checkpoint, the rings'
        /// pages, TSC info, the HVM context and params (libxc's end of checkpoint). Returns the pages sent. Not
        /// tiered, so that the JIT warm-up's compilation before the stop is the code that runs after it (a tiered
        /// method's first call compiles it again, milliseconds of the downtime).</summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        public long SendSuspended()
        {
            var d = _s.Domain;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            d.ShadowOp(Domctl.XEN_DOMCTL_SHADOW_OP_CLEAN, _last);
            for (int i = 0; i < _bits.Length; i++) _bits[i] |= _last[i];
            MigrationTrace.Mark("source", $"dirty set taken: {Count(_bits)} pages");
            // The rings' pages are written through the toolstack's own mappings, which log-dirty does not see.
            if (_pv is not null)
            {
                for (int i = 0; i < _bits.Length; i++) _bits[i] |= _deferred![i];
                Array.Clear(_deferred!);
                foreach (ulong gfn in _pv.RingPfns())
                    if (gfn <= _max)
                        _bits[gfn >> 6] |= 1UL << (int)(gfn & 63);
            }
            else
                foreach (int p in new[] { Params.HVM_PARAM_STORE_PFN, Params.HVM_PARAM_CONSOLE_PFN })
                    if (d.GetHvmParam(p) is var gfn and not 0 && gfn <= _max)
                        _bits[gfn >> 6] |= 1UL << (int)(gfn & 63);
            // Stopped, a page table that does not convert is an error, not a race.
            long sent = WritePages(_w, d, Gfns(_bits), null, pv: _pv, buffers: _batch);
            Array.Clear(_bits);
            Total += sent;
            SuspendedPagesTime = clock.Elapsed;
            MigrationTrace.Mark("source", $"{sent} pages written");
            WriteTscInfo(_w, _s);
            if (_pv is not null)
                _pv.WriteEnd(_w, _s.MaxVcpus);
            else
            {
                _w.Record(LibxcStream.REC_TYPE_HVM_CONTEXT, d.GetHvmContext());
                WriteParams(_w, d);
            }
            MigrationTrace.Mark("source", "state written");
            return sent;
        }

        /// <summary>The records so far are a consistent state of the guest (libxc's CHECKPOINT, then libxl's part:
        /// an HVM domain's device model records, none for PVH or PV, and CHECKPOINT_END).</summary>
        public void Checkpoint()
        {
            _w.Record(LibxcStream.REC_TYPE_CHECKPOINT, []);
            WriteEmulator(_w, _s);
            _w.Record(LibxlStream.REC_TYPE_CHECKPOINT_END, []);
        }

        public void End()
        {
            _w.Record(LibxcStream.REC_TYPE_END, []);
            WriteEmulator(_w, _s);
            _w.Record(LibxlStream.REC_TYPE_END, []);
        }

        public void Dispose()
        {
            try { _s.Domain.ShadowOp(Domctl.XEN_DOMCTL_SHADOW_OP_OFF, _bits); }
            catch (XenSharp.Hypervisor.HypervisorException) { }
            catch (ObjectDisposedException) { }
        }
    }

    private static string Round(int i, long sent, long dirty, System.Diagnostics.Stopwatch clock)
    {
        double s = Math.Max(clock.Elapsed.TotalSeconds, 1e-6);
        return string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"Iteration {i}: {sent} pages sent ({dirty} dirty) in {s:0.00} s, {sent * 4096 / s / (1 << 20):0.0} MiB/s");
    }

    private static long Count(ulong[] bits)
    {
        long n = 0;
        foreach (ulong b in bits) n += System.Numerics.BitOperations.PopCount(b);
        return n;
    }

    private static IEnumerable<ulong> AllGfns(ulong max)
    {
        for (ulong gfn = 0; gfn <= max; gfn++) yield return gfn;
    }

    private static IEnumerable<ulong> Gfns(ulong[] bits)
    {
        for (int i = 0; i < bits.Length; i++)
            for (ulong b = bits[i]; b != 0; b &= b - 1)
                yield return (ulong)i * 64 + (ulong)System.Numerics.BitOperations.TrailingZeroCount(b);
    }

    private static void WriteHeaders(MigrationRecordWriter w, SaveSource s, uint type = LibxcStream.DHDR_TYPE_X86_HVM)
    {
        WriteXlHeader(w, s.ConfigText);

        // libxl stream header (big-endian), then the record that the libxc stream follows.
        w.UInt64BigEndian(LibxlStream.HDR_IDENT);
        w.UInt32BigEndian(LibxlStream.HDR_VERSION);
        w.UInt32BigEndian(0); // little-endian records, not converted from a legacy stream
        w.Record(LibxlStream.REC_TYPE_LIBXC_CONTEXT, []);

        // libxc image header (big-endian) and domain header.
        w.UInt64BigEndian(LibxcStream.IHDR_MARKER);
        w.UInt32BigEndian(LibxcStream.IHDR_IDENT);
        w.UInt32BigEndian(LibxcStream.IHDR_VERSION);
        w.UInt16BigEndian(LibxcStream.IHDR_OPT_LITTLE_ENDIAN);
        w.UInt16BigEndian(0);
        w.UInt32BigEndian(0);
        w.Struct(new LibxcDomainHeader
        {
            Type = type, PageShift = LibxcStream.PageShift, XenMajor = s.XenMajor, XenMinor = s.XenMinor,
        });
        w.Record(LibxcStream.REC_TYPE_STATIC_DATA_END, []);
    }

    private static void WriteTscInfo(MigrationRecordWriter w, SaveSource s)
    {
        var tsc = new X86TscInfo { Mode = s.TscMode, Khz = s.Domain.TscKhz, Nsec = s.Domain.SystemTimeNs };
        w.Record(LibxcStream.REC_TYPE_X86_TSC_INFO, MemoryMarshal.AsBytes(new ReadOnlySpan<X86TscInfo>(in tsc)));
    }

    private static void WriteTail(MigrationRecordWriter w, SaveSource s)
    {
        w.Record(LibxcStream.REC_TYPE_HVM_CONTEXT, s.Domain.GetHvmContext());
        WriteParams(w, s.Domain);
        w.Record(LibxcStream.REC_TYPE_END, []);
        WriteEmulator(w, s);
        w.Record(LibxlStream.REC_TYPE_END, []);
    }

    /// <summary>libxl's records after the libxc stream: the device model's xenstore keys and state, if it has one.</summary>
    private static void WriteEmulator(MigrationRecordWriter w, SaveSource s)
    {
        if (s.Emulator is null) return;
        Span<uint> head = stackalloc uint[2];
        foreach (var r in s.Emulator())
        {
            head[0] = r.EmulatorId;
            head[1] = r.Index;
            w.Record(r.Type, MemoryMarshal.AsBytes(head), r.Data);
        }
    }

    private static void WriteXlHeader(MigrationRecordWriter w, string configText)
    {
        byte[] config = Encoding.UTF8.GetBytes(configText + "\0");
        w.Raw(XlSaveFile.Magic);
        Span<uint> words = [XlSaveFile.BYTEORDER_VALUE, XlSaveFile.XL_MANDATORY_FLAG_STREAMV2, 0, (uint)(4 + config.Length)];
        w.Raw(MemoryMarshal.AsBytes(words));
        uint length = (uint)config.Length;
        w.Struct(length);
        w.Raw(config);
    }

    /// <summary>
    /// PAGE_DATA records for <paramref name="gfns"/>. With <paramref name="firstPass"/> (every page once, to a domain
    /// that has none yet) an all-zero page goes as an XALLOC entry without data: the receiver populates it, and a
    /// freshly populated page is zero (Xen scrubs what it hands out). A later round must send data, since the
    /// receiver's copy may hold what the page had before. Returns the pages described.
    /// </summary>
    private static long WritePages(MigrationRecordWriter w, IHypervisorDomain d, IEnumerable<ulong> gfns, Func<bool>? cancelled,
        Action<long>? progress = null, bool firstPass = false, SaveX86Pv? pv = null, PageBatch? buffers = null, ulong[]? deferred = null)
    {
        int batch = LibxcStream.MaxBatchPages;
        buffers ??= new PageBatch();
        var pfns = buffers.Pfns;
        var data = buffers.Data;
        int n = 0, withData = 0;
        long total = 0;
        void Flush()
        {
            if (n == 0) return;
            pfns[0] = (uint)n; // count, then a reserved word of zero
            w.Record(LibxcStream.REC_TYPE_PAGE_DATA, MemoryMarshal.AsBytes(pfns.AsSpan(0, n + 1)), data.AsSpan(0, withData * 4096));
            total += n;
            n = withData = 0;
            progress?.Invoke(total);
        }
        foreach (ulong gfn in gfns)
        {
            var page = data.AsSpan(withData * 4096, 4096);
            if (!d.TryReadSaveFrame(gfn, page))
                continue;
            ulong type;
            try { type = pv?.Normalise(gfn, page) ?? LibxcStream.PAGE_DATA_TYPE_NOTAB; }
            catch (SaveFileException) when (deferred is not null)
            {
                // A running PV guest's page table may name a frame that is not its own for a moment (libxc's
                // race in normalise_pagetable): the page goes again once the guest has stopped.
                deferred[gfn >> 6] |= 1UL << (int)(gfn & 63);
                continue;
            }
            if (firstPass && type == LibxcStream.PAGE_DATA_TYPE_NOTAB && !page.ContainsAnyExcept((byte)0))
                pfns[n + 1] = gfn | LibxcStream.PAGE_DATA_TYPE_XALLOC;
            else
            {
                pfns[n + 1] = gfn | type;
                withData++;
            }
            if (++n == batch)
            {
                Flush();
                if (cancelled?.Invoke() == true)
                    throw new OperationCanceledException("the domain was destroyed while it was being saved");
            }
        }
        Flush();
        return total;
    }

    /// <summary>A batch's pfn list and page data, kept by a live stream for all its rounds: 4 MiB allocated (and
    /// zeroed) for each round, as many as one every 2 ms while the guest suspends and one after it stopped, is time
    /// the stop-and-copy does not have.</summary>
    private sealed class PageBatch
    {
        public readonly ulong[] Pfns = new ulong[LibxcStream.MaxBatchPages + 1]; // [0] holds count and reserved
        public readonly byte[] Data = GC.AllocateUninitializedArray<byte>(LibxcStream.MaxBatchPages * 4096);
    }

    private static void WriteParams(MigrationRecordWriter w, IHypervisorDomain d)
    {
        var entries = new List<HvmParamsEntry>();
        foreach (int index in SavedParams)
        {
            ulong value = d.GetHvmParam(index);
            if (value != 0)
                entries.Add(new HvmParamsEntry { Index = (ulong)index, Value = value });
        }
        Span<uint> head = [(uint)entries.Count, 0];
        w.Record(LibxcStream.REC_TYPE_HVM_PARAMS, MemoryMarshal.AsBytes(head), MemoryMarshal.AsBytes(CollectionsMarshal.AsSpan(entries)));
    }
}
