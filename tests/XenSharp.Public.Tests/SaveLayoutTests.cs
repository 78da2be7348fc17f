using System.Diagnostics;
using System.Runtime.InteropServices;
using XenSharp.Public.Hvm;
using XenSharp.Public.Migration;

namespace XenSharp.Public.Tests;

/// <summary>
/// The save/restore layouts: the HVM save records against what gcc computes from the installed
/// &lt;xen/hvm/save.h&gt;, and the migration stream records against the sizes Xen's stream specification gives
/// (the stream's own headers are private to Xen's tools, so the spec's numbers are recorded here).
/// </summary>
public class SaveLayoutTests
{
    private static readonly (string C, Type Cs, string[] Fields)[] HvmRecords =
    [
        ("struct hvm_save_descriptor", typeof(HvmSaveDescriptor), ["typecode:Typecode", "instance:Instance", "length:Length"]),
        ("struct hvm_save_header", typeof(HvmSaveHeader), ["magic:Magic", "changeset:Changeset", "cpuid:Cpuid", "gtsc_khz:GtscKhz"]),
        ("struct hvm_hw_cpu", typeof(HvmHwCpu), ["rax:Rax", "rip:Rip", "cr0:Cr0", "dr7:Dr7", "cs_sel:CsSel", "cs_limit:CsLimit", "gdtr_limit:GdtrLimit",
            "cs_base:CsBase", "gdtr_base:GdtrBase", "cs_arbytes:CsArbytes", "ldtr_arbytes:LdtrArbytes", "sysenter_cs:SysenterCs",
            "shadow_gs:ShadowGs", "msr_lstar:MsrLstar", "msr_efer:MsrEfer", "msr_tsc_aux:MsrTscAux", "tsc:Tsc",
            "pending_event:PendingEvent", "error_code:ErrorCode", "flags:Flags"]),
        ("struct hvm_hw_lapic", typeof(HvmHwLapic), ["apic_base_msr:ApicBaseMsr", "disabled:Disabled", "timer_divisor:TimerDivisor", "tdt_msr:TdtMsr"]),
        ("struct hvm_hw_mtrr", typeof(HvmHwMtrr), ["msr_pat_cr:MsrPatCr", "msr_mtrr_var:MsrMtrrVar", "msr_mtrr_fixed:MsrMtrrFixed",
            "msr_mtrr_cap:MsrMtrrCap", "msr_mtrr_def_type:MsrMtrrDefType"]),
        ("struct hvm_hw_vpic", typeof(HvmHwVpic), ["irr:Irr", "imr:Imr", "isr:Isr", "irq_base:IrqBase", "elcr:Elcr", "int_output:IntOutput"]),
        ("struct hvm_hw_vioapic", typeof(HvmHwVioapic), ["base_address:BaseAddress", "ioregsel:Ioregsel", "id:Id", "redirtbl:Redirtbl"]),
        ("struct hvm_hw_pit", typeof(HvmHwPit), ["channels:Channel0", "speaker_data_on:SpeakerDataOn"]),
        ("struct hvm_hw_pit_channel", typeof(HvmHwPitChannel), ["count:Count", "latched_count:LatchedCount", "count_latched:CountLatched",
            "status_latched:StatusLatched", "status:Status", "read_state:ReadState", "write_state:WriteState", "write_latch:WriteLatch",
            "rw_mode:RwMode", "mode:Mode", "bcd:Bcd", "gate:Gate"]),
        ("struct hvm_hw_rtc", typeof(HvmHwRtc), ["cmos_data:CmosData", "cmos_index:CmosIndex", "rtc_offset:RtcOffset"]),
        ("struct hvm_hw_hpet", typeof(HvmHwHpet), ["capability:Capability", "config:Config", "isr:Isr", "mc64:Mc64", "timers:Timers", "period:Period"]),
        ("struct hvm_hw_pmtimer", typeof(HvmHwPmtimer), ["tmr_val:TmrVal", "pm1a_sts:Pm1aSts", "pm1a_en:Pm1aEn"]),
    ];

    [Fact]
    public void HvmSaveRecordsMatchTheInstalledHeader()
    {
        Assert.True(File.Exists("/usr/include/xen/arch-x86/hvm/save.h"), "libxen-dev is not installed");
        var c = new System.Text.StringBuilder("#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n#include <xen/xen.h>\n#include <xen/hvm/save.h>\nint main(void) {\n");
        var expected = new List<(string What, long Value)>();
        foreach (var (cType, cs, fields) in HvmRecords)
        {
            c.AppendLine($"printf(\"%zu\\n\", sizeof({cType}));");
            expected.Add(($"sizeof({cType})", Marshal.SizeOf(cs)));
            foreach (var f in fields)
            {
                var (cf, csf) = (f.Split(':')[0], f.Split(':')[1]);
                c.AppendLine($"printf(\"%zu\\n\", offsetof({cType}, {cf}));");
                expected.Add(($"{cType}.{cf}", (long)Marshal.OffsetOf(cs, csf)));
            }
        }
        c.AppendLine("printf(\"%d %d %d %d %d %d %d\\n\", HVM_SAVE_CODE(HEADER), HVM_SAVE_CODE(CPU), HVM_SAVE_CODE(LAPIC), HVM_SAVE_CODE(LAPIC_REGS), HVM_SAVE_CODE(MTRR), HVM_SAVE_CODE(END), HVM_FILE_MAGIC == 0x54381286);");
        c.AppendLine("return 0; }");
        var got = CompileAndRun(c.ToString());
        for (int i = 0; i < expected.Count; i++)
            Assert.True(long.Parse(got[i]) == expected[i].Value, $"{expected[i].What}: C {got[i]}, C# {expected[i].Value}");
        Assert.Equal($"{HvmSave.HEADER} {HvmSave.CPU} {HvmSave.LAPIC} {HvmSave.LAPIC_REGS} {HvmSave.MTRR} {HvmSave.END} 1", got[expected.Count]);
    }

    [Fact]
    public void MigrationStreamRecordsHaveTheSpecifiedSizes()
    {
        Assert.Equal(16, Marshal.SizeOf<LibxcDomainHeader>());
        Assert.Equal(8, (int)Marshal.OffsetOf<LibxcDomainHeader>(nameof(LibxcDomainHeader.XenMajor)));
        Assert.Equal(8, Marshal.SizeOf<MigrationRecordHeader>());
        Assert.Equal(24, Marshal.SizeOf<X86TscInfo>());
        Assert.Equal(8, (int)Marshal.OffsetOf<X86TscInfo>(nameof(X86TscInfo.Nsec)));
        Assert.Equal(16, Marshal.SizeOf<HvmParamsEntry>());
        Assert.Equal(24, Marshal.SizeOf<XenCpuidLeaf>());
        Assert.Equal(32, XlSaveFile.Magic.Length);
        Assert.Equal("XENF"u8.ToArray(), BitConverter.GetBytes(LibxcStream.IHDR_IDENT).Reverse().ToArray());
        Assert.Equal("LibxlFmt"u8.ToArray(), BitConverter.GetBytes(LibxlStream.HDR_IDENT).Reverse().ToArray());
    }

    private static string[] CompileAndRun(string source)
    {
        string dir = Directory.CreateTempSubdirectory("xensharp-savelayout-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "l.c"), source);
            Run("gcc", $"-o {dir}/l {dir}/l.c", out _);
            Run($"{dir}/l", "", out string output);
            return output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    private static void Run(string file, string args, out string output)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {args}: {err.Result}");
    }
}
