using System.Diagnostics;
using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

public sealed partial class XenToolsTests
{
    private string ConsoleLog(string name)
    {
        var path = Path.Combine(_xl.RunDir, "console", name + ".log");
        try { return File.Exists(path) ? File.ReadAllText(path) : ""; }
        catch (IOException) { return ""; }
    }

    /// <summary>Starts a test guest under its own name and waits for the line saying it is ready.</summary>
    private int StartGuest(string guest, string name, string ready, params string[] extra)
    {
        var r = _xl.Run(["create", Repository.PathOf("tests", "guests", guest + ".cfg"), $"name=\"{name}\"", .. extra]);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.True(XlHost.WaitUntil(() => ConsoleLog(name).Contains(ready), TimeSpan.FromMinutes(3)),
            $"{name} never printed \"{ready}\"\n{ConsoleLog(name)}");
        return int.Parse(_xl.Run("domid", name).Stdout.Trim());
    }

    /// <summary>A System.map for a test kernel: nm's listing, with _stext and _etext bounding the image as a
    /// kernel's map has them (xenctx walks stacks only from addresses between them).</summary>
    private string SystemMap(string guest)
    {
        var nm = XlHost.RunProcess(new ProcessStartInfo("nm", [Repository.PathOf("tests", "guests", "build", guest + ".elf")])
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true,
        }, TimeSpan.FromMinutes(1));
        Assert.True(nm.ExitCode == 0, nm.ToString());
        string Address(string symbol) => Regex.Match(nm.Stdout, $@"(?m)^([0-9a-f]+) \w {symbol}$").Groups[1].Value;
        string map = Path.Combine(_xl.RunDir, guest + ".map");
        File.WriteAllText(map, $"{Address("__image_start")} T _stext\n{Address("__image_end")} T _etext\n" + nm.Stdout);
        return map;
    }

    [Fact, Trait("Feature", "Dom0 stable libraries")]
    public void XenctxShowsWhereTheGuestHalted()
    {
        int domid = StartGuest("vcpuctx", "parked", "# parked");
        try
        {
            var parked = Regex.Match(ConsoleLog("parked"), @"# parked rsp=0x([0-9a-f]+) seed=0x([0-9a-f]+)");
            Assert.True(parked.Success, ConsoleLog("parked"));
            ulong rsp = Convert.ToUInt64(parked.Groups[1].Value, 16), seed = Convert.ToUInt64(parked.Groups[2].Value, 16);
            // Give the guest time to reach its HLT after printing; the registers only settle there.
            Assert.True(XlHost.WaitUntil(() => Regex.IsMatch(Dom0("xenctx", "-s", SystemMap("vcpuctx"), domid.ToString(), "0").Stdout,
                @"rip: [0-9a-f]{16} ctx_halt\+0x[0-3]\b"), TimeSpan.FromMinutes(1)), Dom0("xenctx", domid.ToString()).Stdout);

            var ctx = Dom0("xenctx", "-f", "-s", SystemMap("vcpuctx"), domid.ToString(), "0").Stdout;
            // Where ctx_parked said its stack pointer was, and the values it loaded before halting.
            Assert.Matches($@"rsp: {rsp:x16}\b", ctx);
            Assert.Matches($@"r12: {seed:x16}\b", ctx);
            Assert.Matches($@"r13: {seed + 1:x16}\b", ctx);
            // HLT with interrupts on, in ring 0 of a 64-bit kernel.
            Assert.Matches(@"flags: [0-9a-f]{8}.* i\b", ctx);
            Assert.Matches(@"cs: 00[0-9a-f][048c]\b", ctx);
            // The stack as the guest's frame pointers chain it: each caller in order.
            int trace = ctx.IndexOf("Call Trace:", StringComparison.Ordinal);
            Assert.True(trace >= 0, ctx);
            var frames = Regex.Matches(ctx[trace..], @"\[<[0-9a-f]{16}>\] (\w+)\+0x").Select(m => m.Groups[1].Value).ToArray();
            Assert.True(frames.Length >= 4, ctx);
            Assert.Equal(["ctx_halt", "ctx_middle", "ctx_outer", "guest_main"], frames[..4]);
            // The code at rip, read through the guest's page tables: sti; hlt; jmp ctx_halt (fb f4 eb fc).
            Assert.Contains("Code (instr addr", ctx);
            Assert.Contains("fb f4 eb fc", ctx.Replace("<", "").Replace(">", ""));

            // A vCPU the domain does not have: Xen's -EINVAL, which xenctx reports and carries on past.
            var missing = _xl.RunDom0("xenctx", domid.ToString(), "7");
            Assert.Contains("xc_vcpu_getcontext: Invalid argument", missing.Stderr);
        }
        finally
        {
            _xl.Run("destroy", "parked");
        }
    }

    /// <summary>Debian's xenctx on a 32-bit PV guest: XEN_DOMCTL_get_address_size says 4, getvcpucontext gives the
    /// compat (x86_32) layout, and the code and stack are read through the guest's PAE tables by machine frame.</summary>
    [Fact, Trait("Feature", "x86/PV"), Trait("Feature", "Dom0 stable libraries")]
    public void XenctxReadsA32BitPvGuest()
    {
        int domid = StartGuest("pvctx32", "parked32", "# parked");
        try
        {
            var parked = Regex.Match(ConsoleLog("parked32"), @"# parked .* seed=0x([0-9a-f]+)");
            Assert.True(parked.Success, ConsoleLog("parked32"));
            uint seed = Convert.ToUInt32(parked.Groups[1].Value, 16);
            string map = SystemMap("pvctx32");
            string ctx = "";
            // The vCPU settles in its block loop after printing.
            Assert.True(XlHost.WaitUntil(() => Regex.IsMatch(ctx = Dom0("xenctx", "-a", "-s", map, domid.ToString(), "0").Stdout,
                @"cs:eip: e019:[0-9a-f]{8} ctx_park\+0x"), TimeSpan.FromMinutes(1)), ctx);
            // Ring 1 of a 32-bit PV kernel on Xen's flat selectors, the values it parked with.
            Assert.Matches($@"esi: {seed:x8}\b", ctx);
            Assert.Matches($@"edi: {seed + 1:x8}\b", ctx);
            Assert.Matches($@"ebp: {seed + 2:x8}\b", ctx);
            Assert.Matches(@"ss:esp: e021:c01[0-9a-f]{5}\b", ctx);
            Assert.Matches(@"ds:\s+e021\b", ctx);
            Assert.Matches(@"cr0: 80050033\b", ctx);
            // The code at eip, read through the PAE tables: int $0x82 (sched_op block), then jmp back.
            Assert.Contains("cd 82 eb f0", ctx.Replace("<", "").Replace(">", ""));
            Assert.Contains("Stack:", ctx);

            var missing = _xl.RunDom0("xenctx", domid.ToString(), "3");
            Assert.Contains("xc_vcpu_getcontext: Invalid argument", missing.Stderr);
        }
        finally
        {
            _xl.Run("destroy", "parked32");
        }
    }
}
