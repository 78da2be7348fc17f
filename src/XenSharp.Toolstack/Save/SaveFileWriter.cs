using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Public.Hvm;
using XenSharp.Public.Migration;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Save;

/// <summary>What a save file records of a suspended domain besides its memory and vCPUs.</summary>
internal sealed record SaveSource(IHypervisorDomain Domain, string ConfigText, uint XenMajor, uint XenMinor, uint TscMode);

/// <summary>
/// Writes the file `xl save` writes: xl's header with the domain's configuration, then the libxl stream (v2) whose
/// LIBXC_CONTEXT record holds the libxc stream (v3) of an x86 HVM-type domain (PVH is one): the static data end,
/// TSC info, the RAM pages in PAGE_DATA batches, the HVM context, the HVM params and END. The configuration is
/// xl.cfg text (the optional data of an xl file without the JSON flag), which Xen's xl restore reads as well.
/// </summary>
internal static class SaveFileWriter
{
    /// <summary>The params a PVH domain's restore needs: where its xenstore and console rings are, their event
    /// channels, and its callback; Xen's save writes the ones that are set.</summary>
    internal static readonly int[] SavedParams =
    [
        Params.HVM_PARAM_CALLBACK_IRQ, Params.HVM_PARAM_STORE_PFN, Params.HVM_PARAM_STORE_EVTCHN,
        Params.HVM_PARAM_CONSOLE_PFN, Params.HVM_PARAM_CONSOLE_EVTCHN,
    ];

    /// <summary>Writes the whole file; returns the number of pages written. <paramref name="cancelled"/> stops it
    /// between batches (the domain was destroyed meanwhile).</summary>
    public static long Write(Stream output, SaveSource s, Func<bool>? cancelled = null)
    {
        var w = new MigrationRecordWriter(output);
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
            Type = LibxcStream.DHDR_TYPE_X86_HVM, PageShift = LibxcStream.PageShift, XenMajor = s.XenMajor, XenMinor = s.XenMinor,
        });
        w.Record(LibxcStream.REC_TYPE_STATIC_DATA_END, []);

        var tsc = new X86TscInfo { Mode = s.TscMode, Khz = s.Domain.TscKhz, Nsec = s.Domain.SystemTimeNs };
        w.Record(LibxcStream.REC_TYPE_X86_TSC_INFO, MemoryMarshal.AsBytes(new ReadOnlySpan<X86TscInfo>(in tsc)));

        long pages = WritePages(w, s.Domain, cancelled);

        w.Record(LibxcStream.REC_TYPE_HVM_CONTEXT, s.Domain.GetHvmContext());
        WriteParams(w, s.Domain);
        w.Record(LibxcStream.REC_TYPE_END, []);

        w.Record(LibxlStream.REC_TYPE_END, []);
        return pages;
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

    private static long WritePages(MigrationRecordWriter w, IHypervisorDomain d, Func<bool>? cancelled)
    {
        int batch = LibxcStream.MaxBatchPages;
        var pfns = new ulong[batch + 1]; // [0] holds count and reserved
        var data = new byte[batch * 4096];
        int n = 0;
        long total = 0;
        ulong max = d.Memory.MaxGfn;
        void Flush()
        {
            if (n == 0) return;
            pfns[0] = (uint)n; // count, then a reserved word of zero
            w.Record(LibxcStream.REC_TYPE_PAGE_DATA, MemoryMarshal.AsBytes(pfns.AsSpan(0, n + 1)), data.AsSpan(0, n * 4096));
            total += n;
            n = 0;
        }
        for (ulong gfn = 0; gfn <= max; gfn++)
        {
            if (!d.TryReadSaveFrame(gfn, data.AsSpan(n * 4096, 4096)))
                continue;
            pfns[n + 1] = gfn | LibxcStream.PAGE_DATA_TYPE_NOTAB;
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
