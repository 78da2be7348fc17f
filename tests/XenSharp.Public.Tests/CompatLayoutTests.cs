using System.Diagnostics;
using System.Runtime.InteropServices;
using XenSharp.Public.Compat;

namespace XenSharp.Public.Tests;

/// <summary>
/// Pins the 32-bit (compat) layouts. The recorded numbers come from the installed headers built with
/// gcc -m32; when gcc and objcopy are present the test rebuilds that object and compares live.
/// </summary>
public class CompatLayoutTests
{
    private static readonly (string C, Type? Cs, int Size, (string CField, string? CsField, int Offset)[] Fields)[] Layouts =
    [
        ("struct xen_memory_reservation", typeof(XenMemoryReservation32), 20, [("nr_extents", "NrExtents", 4), ("extent_order", "ExtentOrder", 8), ("mem_flags", "MemFlags", 12), ("domid", "Domid", 16)]),
        ("struct xen_memory_exchange", typeof(XenMemoryExchange32), 44, [("out", "Out", 20), ("nr_exchanged", "NrExchanged", XenMemoryExchange32.OffsetNrExchanged)]),
        ("struct xen_add_to_physmap_batch", typeof(XenAddToPhysmapBatch32), 20, [("u.foreign_domid", "ForeignDomid", 6), ("idxs", "Idxs", 8), ("gpfns", "Gpfns", 12), ("errs", "Errs", 16)]),
        ("struct xen_add_to_physmap", typeof(XenAddToPhysmap32), 16, [("idx", "Idx", 8), ("gpfn", "Gpfn", 12)]),
        ("struct xen_remove_from_physmap", typeof(XenRemoveFromPhysmap32), 8, [("gpfn", "Gpfn", 4)]),
        ("struct xen_memory_map", typeof(XenMemoryMap32), 8, [("buffer", "Buffer", 4)]),
        ("struct xen_machphys_mapping", typeof(XenMachphysMapping32), 12, [("v_end", "VEnd", 4), ("max_mfn", "MaxMfn", 8)]),
        ("struct xen_machphys_mfn_list", typeof(XenMachphysMfnList32), 12, [("extent_start", "ExtentStart", 4), ("nr_extents", "NrExtents", 8)]),
        ("struct xen_pod_target", typeof(XenPodTarget32), 36, [("pod_entries", "PodEntries", 24), ("domid", "Domid", 32)]),
        ("struct gnttab_setup_table", typeof(GnttabSetupTable32), 16, [("frame_list", "FrameList", 12)]),
        ("struct gnttab_copy", typeof(GnttabCopy32), 24, [("dest", "Dest", 8), ("len", "Len", 16), ("flags", "Flags", 18), ("status", "Status", 20)]),
        ("struct gnttab_get_status_frames", typeof(GnttabGetStatusFrames32), 12, [("frame_list", "FrameList", 8)]),
        ("struct sched_poll", typeof(SchedPoll32), 16, [("nr_ports", "NrPorts", 4), ("timeout", "Timeout", 8)]),
        ("struct vcpu_runstate_info", typeof(VcpuRunstateInfo32), 44, [("state_entry_time", "StateEntryTime", 4), ("time", "Time", 12)]),
        ("struct multicall_entry", typeof(MulticallEntry32), 32, [("args", "Args", 8)]),
        ("struct xen_platform_parameters", typeof(XenPlatformParameters32), 4, []),
        ("struct blkif_request", typeof(XenSharp.Public.Io.BlkifRequest32), 108, [("id", "Id", 4), ("sector_number", "SectorNumber", 12), ("seg", "Seg", 20)]),
        ("struct blkif_request_discard", typeof(XenSharp.Public.Io.BlkifRequestDiscard32), 28, [("id", "Id", 4), ("sector_number", "SectorNumber", 12), ("nr_sectors", "NrSectors", 20)]),
        ("struct blkif_request_indirect", typeof(XenSharp.Public.Io.BlkifRequestIndirect32), 64, [("nr_segments", "NrSegments", 2), ("id", "Id", 4), ("sector_number", "SectorNumber", 12),
            ("handle", "Handle", 20), ("indirect_grefs", "IndirectGrefs", 24)]),
        ("struct blkif_response", typeof(XenSharp.Public.Io.BlkifResponse32), 12, [("id", "Id", 0), ("operation", "Operation", 8), ("status", "Status", 10)]),
        ("struct shared_info", null, SharedInfo32.Size, [("evtchn_pending", null, SharedInfo32.OffsetEvtchnPending), ("evtchn_mask", null, SharedInfo32.OffsetEvtchnMask),
            ("wc_version", null, SharedInfo32.OffsetWcVersion), ("wc_sec", null, SharedInfo32.OffsetWcSec), ("wc_nsec", null, SharedInfo32.OffsetWcNsec),
            ("arch", null, SharedInfo32.OffsetArch), ("arch.wc_sec_hi", null, SharedInfo32.OffsetWcSecHi)]),
        ("struct vcpu_info", null, 64, [("evtchn_pending_sel", null, SharedInfo32.VcpuInfoOffsetPendingSel), ("time", null, 32)]),
    ];

    [Fact]
    public void CompatStructsMatchTheRecordedNumbers()
    {
        foreach (var l in Layouts.Where(l => l.Cs is not null))
        {
            Assert.True(Marshal.SizeOf(l.Cs!) == l.Size, $"sizeof {l.C}");
            foreach (var f in l.Fields)
                Assert.True((int)Marshal.OffsetOf(l.Cs!, f.CsField!) == f.Offset, $"{l.C}.{f.CField}");
        }
    }

    [Fact]
    public void RecordedNumbersMatchTheHeadersBuiltFor32Bit()
    {
        if (!File.Exists("/usr/include/xen/xen.h") || !OnPath("gcc") || !OnPath("objcopy"))
            return;
        var values = Layouts.SelectMany(l => new[] { ($"sizeof({l.C})", l.Size) }.Concat(l.Fields.Select(f => ($"offsetof({l.C}, {f.CField})", f.Offset)))).ToList();
        var c = "#include <stddef.h>\n#include <stdint.h>\n#include <xen/xen.h>\n#include <xen/memory.h>\n#include <xen/grant_table.h>\n#include <xen/sched.h>\n#include <xen/vcpu.h>\n#include <xen/version.h>\n#include <xen/io/blkif.h>\n"
            + "const unsigned long long values[] = {\n" + string.Join(",\n", values.Select(v => v.Item1)) + "\n};\n";
        var dir = Directory.CreateTempSubdirectory("xenabi32");
        try
        {
            File.WriteAllText(Path.Combine(dir.FullName, "abi.c"), c);
            var (rc, err) = Run("gcc", $"-m32 -ffreestanding -D__XEN_TOOLS__ -c -o {dir.FullName}/abi.o {dir.FullName}/abi.c");
            if (rc != 0 && err.Contains("No such file"))
                return; // no 32-bit compiler support installed
            Assert.True(rc == 0, err);
            (rc, err) = Run("objcopy", $"-O binary --only-section=.rodata {dir.FullName}/abi.o {dir.FullName}/abi.bin");
            Assert.True(rc == 0, err);
            var bytes = File.ReadAllBytes(Path.Combine(dir.FullName, "abi.bin"));
            for (int i = 0; i < values.Count; i++)
                Assert.True(BitConverter.ToUInt64(bytes, i * 8) == (ulong)values[i].Item2, $"{values[i].Item1} is {BitConverter.ToUInt64(bytes, i * 8)} for x86_32, recorded {values[i].Item2}");
        }
        finally { dir.Delete(true); }
    }

    private static bool OnPath(string exe) => Environment.GetEnvironmentVariable("PATH")!.Split(':').Any(p => File.Exists(Path.Combine(p, exe)));

    private static (int, string) Run(string file, string args)
    {
        using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        string o = p.StandardOutput.ReadToEnd(), e = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o + e);
    }
}
