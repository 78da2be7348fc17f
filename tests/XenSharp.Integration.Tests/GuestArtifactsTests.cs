using System.Diagnostics;
using System.IO.Compression;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

public class GuestArtifactsTests
{
    [Fact]
    public void CpioArchiveIsReadByTheRealCpio()
    {
        var dir = Directory.CreateTempSubdirectory("xensharp-cpio-");
        try
        {
            var archive = Path.Combine(dir.FullName, "a.cpio");
            using (var f = File.Create(archive))
            using (var cpio = new CpioWriter(f))
            {
                cpio.AddDirectory("etc");
                cpio.AddFile("etc/motd", "hello from cpio\n"u8, 0x1A4);
                cpio.AddFile("odd", "x"u8);
                cpio.AddSymlink("etc/link", "motd");
            }
            var outDir = Directory.CreateDirectory(Path.Combine(dir.FullName, "out"));
            var p = Process.Start(new ProcessStartInfo("sh", $"-c \"cpio -id --quiet < {archive}\"") { WorkingDirectory = outDir.FullName })!;
            p.WaitForExit();
            Assert.Equal(0, p.ExitCode);
            Assert.Equal("hello from cpio\n", File.ReadAllText(Path.Combine(outDir.FullName, "etc", "motd")));
            Assert.Equal("x", File.ReadAllText(Path.Combine(outDir.FullName, "odd")));
            Assert.Equal("motd", new FileInfo(Path.Combine(outDir.FullName, "etc", "link")).LinkTarget);
        }
        finally { dir.Delete(recursive: true); }
    }

    /// <summary>./test fetches the artifacts before the suite runs; this checks what it left.</summary>
    [Fact]
    public void DebianArtifactsAreCachedAndWellFormed()
    {
        var store = new GuestArtifacts();
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        var kernel = File.ReadAllBytes(store.KernelPath);
        // A bzImage carries "HdrS" at 0x202 and the boot protocol version after it.
        Assert.Equal("HdrS", System.Text.Encoding.ASCII.GetString(kernel, 0x202, 4));
        Assert.Matches(@"^\S+ \d+\.\d+\.\d+-\d+-amd64$", store.KernelVersion);
        using var gz = new GZipStream(File.OpenRead(store.ShellInitrdPath), CompressionMode.Decompress);
        var head = new byte[6];
        gz.ReadExactly(head);
        Assert.Equal("070701", System.Text.Encoding.ASCII.GetString(head));
    }
}
