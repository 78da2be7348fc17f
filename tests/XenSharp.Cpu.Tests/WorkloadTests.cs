namespace XenSharp.Cpu.Tests;

/// <summary>
/// gcc-compiled code (Workload/workload.c, -O3, SSE2 and x87) run in the engine must produce what
/// the same code computed on the host (the values below come from Workload/build.sh).
/// </summary>
public class WorkloadTests
{
    private static readonly ulong[] Expected =
    {
        0x6FB5BB602D8B60FEUL,
        0x000000000116A8C8UL,
        0x0FE7D9FEA81DB32BUL,
        0x29EADABBCF8B9F25UL,
        0xF151214BA856A9A5UL,
        0x00000000600DF00DUL,
    };

    [Fact]
    public void CompiledWorkloadMatchesTheHost()
    {
        using var m = new TestMachine();
        var image = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Workload", "workload.bin"));
        m.Enter64(image, at: 0x100000);
        m.RunToHlt();
        var names = new[] { "divs", "strings", "floats", "sorting", "bitops", "end" };
        for (int i = 0; i < Expected.Length; i++)
            Assert.True(Expected[i] == m.Mem.R64(0x200000 + (ulong)i * 8), $"{names[i]}: expected 0x{Expected[i]:X16}, got 0x{m.Mem.R64(0x200000 + (ulong)i * 8):X16}");
    }
}
