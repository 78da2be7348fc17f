using System.Text.RegularExpressions;

namespace XenSharp.Integration.Tests;

public sealed partial class XenToolsTests
{
    [Fact, Trait("Feature", "x86/vMCE")]
    public void XenMceinjMachineChecksAGuestPage()
    {
        int domid = StartGuest("vmce", "checked", "# ready page=");
        try
        {
            var ready = Regex.Match(ConsoleLog("checked"), @"# ready page=0x([0-9a-f]+)");
            Assert.True(ready.Success, ConsoleLog("checked"));
            ulong page = Convert.ToUInt64(ready.Groups[1].Value, 16);
            ulong gaddr = page + 0x40;

            // An address beyond the guest's memory is refused by xen-mceinj itself (it reads memory/target).
            Assert.Contains("gaddr exceeds max_gpa", Failing("xen-mceinj", "-d", domid.ToString(), "-p", "0x40000000", "-t", "0"));

            // Type 0: an uncorrected, action-optional L3 writeback error (MCACOD 0x17a) at the guest's page.
            var inj = Dom0("xen-mceinj", "-d", domid.ToString(), "-p", $"0x{gaddr:x}", "-t", "0");
            Assert.Contains($"get gaddr of error inject is: 0x{gaddr:x}", inj.Stdout);
            Assert.True(XlHost.WaitUntil(() => ConsoleLog("checked").Contains("DONE"), TimeSpan.FromMinutes(3)), ConsoleLog("checked"));
            var log = ConsoleLog("checked");
            // What the guest's #MC handler read: MCIP|RIPV, the error in bank 1 with its model-specific code filtered
            // out, the address it was given back as its own, the misc register as injected, bank 0 empty.
            Assert.Contains($"# mce mcg_status=0x5 mc1_status=0xbd2000000000017a mc1_addr=0x{gaddr:x} mc1_misc=0x86 mc0_status=0", log);
            Assert.Contains("PASS vmce.bank1_names_the_page", log);
            Assert.Contains("PASS vmce.mcg_cap_banks", log);
            Assert.Contains("failed=0", log);

            var dmesg = Dom0("xl", "dmesg").Stdout;
            Assert.Contains("Simulating #MC on cpu 0", dmesg);
            Assert.Contains($"MCE: vMCE injected into d{domid}", dmesg);
        }
        finally
        {
            _xl.Run("destroy", "checked");
        }
    }

    [Fact, Trait("Feature", "x86/vMCE")]
    public void McaHypercallRefusesWhatXenRefuses()
    {
        // Bank MSRs without interposition cannot be written on a host whose banks are modelled: xen-mceinj always
        // interposes, so its CMCI and LMCE types are what tell: neither exists on XenSharp's pCPUs.
        Assert.Contains("Failed to inject MCE error", Dom0Output("xen-mceinj", "-t", "2"));
        Assert.Contains("Failed to inject MCE error", Dom0Output("xen-mceinj", "-l", "-t", "0"));
        // A pCPU that does not exist.
        Assert.Contains("Failed to inject MSR", Dom0Output("xen-mceinj", "-c", "4000", "-t", "0"));
        // A machine address (no -d) outside machine memory: logged, nothing delivered, the host carries on.
        Dom0("xen-mceinj", "-t", "1", "-p", "0x7ffffff000");
        var dmesg = Dom0("xl", "dmesg").Stdout;
        Assert.Contains("MCE: CPU0 Bank 8: bd000000004000cf[0000000000000086] at 0000007ffffff000", dmesg);
        Assert.Contains("MCE: CPU0: address 0x7ffffff000 is not in machine memory", dmesg);
        // The fatal one (processor context corrupt) would reset a Xen host; here it is logged.
        Dom0("xen-mceinj", "-t", "4", "-p", "0x7ffffff000");
        Assert.Contains("MCE: Fatal error happened on CPU0", Dom0("xl", "dmesg").Stdout);
        Assert.Equal(0, _xl.Run("domid", "watched").ExitCode);
    }

    /// <summary>Everything a program said, whether or not it succeeded.</summary>
    private string Dom0Output(params string[] args)
    {
        var r = _xl.RunDom0(args);
        return r.Stdout + r.Stderr;
    }
}
