using System.Diagnostics;
using System.Runtime.CompilerServices;
using XenSharp.Backends.Block.Images;

namespace XenSharp.Backends.Tests.Block;

/// <summary>
/// A child process writes and flushes in a loop and is killed with SIGKILL; qemu-img check must
/// then find nothing worse than leaked clusters, and every write the child saw flushed must be there.
/// </summary>
public sealed class CrashConsistencyTests
{
    private const string ChildVariable = "XENSHARP_TEST_IMAGE_WRITER";
    private const int Regions = 3000, RegionStride = 20480;

    /// <summary>Region i: a few sectors at an offset that straddles 4 KiB clusters differently each time.</summary>
    private static (long Offset, byte[] Data) Region(int i)
    {
        var data = new byte[6144 + i % 3 * 1024];
        new Random(i).NextBytes(data);
        return ((long)i * RegionStride + i % 7 * 512, data);
    }

    /// <summary>
    /// The child's body: the test assembly run as a program (<c>dotnet XenSharp.Backends.Tests.dll</c>)
    /// with the variable set. It runs before the generated entry point and exits, so the test host never sees it.
    /// </summary>
    [ModuleInitializer]
    internal static void RunAsChild()
    {
        string? spec = Environment.GetEnvironmentVariable(ChildVariable);
        if (spec is null)
            return;
        string[] parts = spec.Split('|');
        using var image = BlockImages.Open(parts[0]);
        for (int i = int.Parse(parts[1]); i < Regions; i++)
        {
            var (offset, data) = Region(i);
            if (image.Write(offset, data) != 0)
                Environment.Exit(2);
            if (Discarded(i) is int j)
            {
                // Give an earlier region back (its whole 4 KiB clusters), so frees race the kill too.
                var (at, old) = Region(j);
                long start = (at + 4095) & ~4095L, end = (at + old.Length) & ~4095L;
                if (image.Discard(start, end - start) != 0)
                    Environment.Exit(4);
            }
            if (i % 4 == 3)
                continue; // some writes are never flushed: they may or may not survive
            if (image.Flush() != 0)
                Environment.Exit(3);
            System.Console.Out.WriteLine($"flushed {i}");
            System.Console.Out.Flush();
        }
        Environment.Exit(0);
    }

    /// <summary>The region iteration i discards, if any.</summary>
    private static int? Discarded(int i) => i % 10 == 9 ? i - 3 : null;

    /// <summary>Runs the child from region <paramref name="start"/>, kills it after it reports <paramref name="killAfter"/>; returns the flushed regions.</summary>
    private static List<int> RunAndKill(string image, int start, int killAfter)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(typeof(CrashConsistencyTests).Assembly.Location);
        psi.Environment[ChildVariable] = $"{image}|{start}";
        using var child = Process.Start(psi)!;
        var flushed = new List<int>();
        string? line;
        while ((line = child.StandardOutput.ReadLine()) != null)
        {
            flushed.Add(int.Parse(line["flushed ".Length..]));
            if (flushed.Count == killAfter)
                child.Kill(); // SIGKILL
        }
        child.WaitForExit();
        Assert.True(flushed.Count >= killAfter, $"child stopped early ({child.ExitCode}): {child.StandardError.ReadToEnd()}");
        return flushed;
    }

    [Theory]
    [InlineData("qcow2", "compat=1.1,cluster_size=4096")]
    [InlineData("qcow2", "compat=0.10,cluster_size=4096")]
    [InlineData("qcow", "")]
    [InlineData("vpc", "force_size=on")]
    public void SurvivesSigkill(string format, string options)
    {
        using var dir = new ImageDir();
        const int size = Regions * RegionStride;
        byte[] expected;
        if (format == "vpc")
        {
            // VHD has no backing files here: the disk starts empty.
            expected = new byte[size];
            Qemu.Img("create", "-f", "vpc", "-o", options, dir["a.img"], size.ToString());
        }
        else
        {
            expected = dir.WriteRaw("base.raw", size, seed: 50);
            Qemu.Img(options == ""
                ? ["create", "-f", format, "-b", "base.raw", "-F", "raw", dir["a.img"]]
                : ["create", "-f", format, "-o", options, "-b", "base.raw", "-F", "raw", dir["a.img"]]);
        }
        string image = dir["a.img"];

        var flushed = RunAndKill(image, start: 0, killAfter: 400);
        if (format == "qcow2") // the only one of these formats qemu-img can check
            Qemu.CheckClean(image, allowLeaks: true);
        // Restart after the crash where the child stopped, and crash again.
        flushed.AddRange(RunAndKill(image, start: flushed[^1] + 1, killAfter: 400));
        if (format == "qcow2")
            Qemu.CheckClean(image, allowLeaks: true);

        byte[] actual = Qemu.ReadWithQemu(dir, image, format);
        var discarded = new HashSet<int>();
        for (int i = 0; i <= flushed[^1] + 8; i++)
            if (Discarded(i) is int j)
                discarded.Add(j);
        foreach (int i in flushed)
        {
            if (discarded.Contains(i))
                continue; // zeros, its old data or its new data, depending on the format and the kill
            var (offset, data) = Region(i);
            Assert.True(data.AsSpan().SequenceEqual(actual.AsSpan((int)offset, data.Length)), $"flushed write {i} is missing");
        }
        // Everything else is the backing file's data or a write that had been made (flushed or not).
        var written = new bool[size / 512];
        for (int i = 0; i <= flushed[^1] + 8 && i < Regions; i++)
        {
            var (offset, data) = Region(i);
            for (int s = 0; s < data.Length / 512; s++)
                written[offset / 512 + s] = true;
        }
        for (int s = 0; s < written.Length; s++)
            if (!written[s])
                Assert.True(expected.AsSpan(s * 512, 512).SequenceEqual(actual.AsSpan(s * 512, 512)), $"sector {s} changed");
    }
}
