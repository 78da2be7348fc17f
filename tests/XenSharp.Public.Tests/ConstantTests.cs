using XenSharp.Public;
using XenSharp.Public.Io;

namespace XenSharp.Public.Tests;

public class ConstantTests
{
    [Fact]
    public void HypercallNumbersFollowXenH()
    {
        Assert.Equal(12, Xen.__HYPERVISOR_memory_op);
        Assert.Equal(17, Xen.__HYPERVISOR_xen_version);
        Assert.Equal(32, Xen.__HYPERVISOR_event_channel_op);
        Assert.Equal(34, Xen.__HYPERVISOR_hvm_op);
    }

    [Fact]
    public void RingSizeRoundsDownToPowerOfTwo()
    {
        // blkif: 112-byte entries in one page → 32 entries (4032/112 = 36, rounded down).
        Assert.Equal(32, Ring.Size(4096, 112));
        Assert.True(Ring.NeedNotify(5, 7, 6));
        Assert.False(Ring.NeedNotify(5, 7, 8));
    }

    [Fact]
    public void XenbusStatesFollowXenbusH()
    {
        // enum xenbus_state in io/xenbus.h, as recorded; recompiled against the header when it is installed.
        Assert.Equal([0, 1, 2, 3, 4, 5, 6, 7, 8], Enum.GetValues<XenbusState>().Select(s => (int)s));
        if (!File.Exists("/usr/include/xen/io/xenbus.h") || !File.Exists("/usr/bin/gcc"))
            return;
        var names = Enum.GetNames<XenbusState>();
        var dir = Directory.CreateTempSubdirectory("xenbus");
        try
        {
            string c = "#include <stdio.h>\n#include <xen/io/xenbus.h>\nint main(void) {\n"
                + string.Concat(names.Select(n => $"printf(\"%d\\n\", XenbusState{n});\n")) + "return 0; }\n";
            File.WriteAllText(Path.Combine(dir.FullName, "xb.c"), c);
            using (var gcc = System.Diagnostics.Process.Start("gcc", $"-o {dir.FullName}/xb {dir.FullName}/xb.c")!)
            {
                gcc.WaitForExit();
                Assert.Equal(0, gcc.ExitCode);
            }
            using var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo($"{dir.FullName}/xb") { RedirectStandardOutput = true })!;
            var values = p.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse);
            p.WaitForExit();
            Assert.Equal(names.Select(n => (int)Enum.Parse<XenbusState>(n)), values);
        }
        finally { dir.Delete(true); }
    }
}
