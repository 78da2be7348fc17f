using System.Diagnostics;
using System.Text;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// A PV guest's bootloader, run as libxl's bootloader.c runs it: the program (Xen's pygrub from its libexec
/// directory, or a path) with the configuration's kernel/ramdisk/cmdline as <c>--kernel=</c>, <c>--ramdisk=</c>,
/// <c>--args=</c>, an output file in the "simple0" format and an output directory it writes the kernel and ramdisk
/// into, then bootloader_args, then the guest's first disk. libxl gives it a pseudo-terminal on the guest's console
/// for its menu; here nobody can answer a menu, so it runs with <c>--quiet</c> and boots the configuration's default.
/// </summary>
internal static class Bootloader
{
    /// <summary>Where Debian's Xen keeps pygrub (libxl's libexec bin directory).</summary>
    public const string XenBinDir = "/usr/lib/xen-4.17/bin";

    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(2);

    /// <summary>What the bootloader chose: files it wrote (the caller deletes them) and the kernel's arguments.</summary>
    public sealed record Result(string Kernel, string? Ramdisk, string? Args);

    /// <summary>A bootloader name as libxl resolves it: a bare name is looked up in Xen's bin directory.</summary>
    public static string Resolve(string bootloader) =>
        bootloader.Contains('/') ? bootloader : Path.Combine(XenBinDir, bootloader);

    public static Result Run(DomainConfig c, string outputDir)
    {
        var disk = c.Disks.FirstOrDefault() ?? throw new ControlException("a bootloader needs a disk to boot from");
        if (disk.Target is not { Length: > 0 } image)
            throw new ControlException($"bootloader: disk {disk.Vdev} has no target to boot from");
        // libxl attaches other formats to Domain-0 first; pygrub reads raw images only.
        if (disk.Format != DiskFormat.Raw)
            throw new ControlException($"bootloader: disk {disk.Vdev} is {disk.Format.ToString().ToLowerInvariant()}; only a raw image can be read by the bootloader");
        string program = Resolve(c.Bootloader!);
        if (!File.Exists(program))
            throw new ControlException($"bootloader {program} not found");
        Directory.CreateDirectory(outputDir);
        string output = Path.Combine(outputDir, "output");
        File.WriteAllBytes(output, []);

        var psi = new ProcessStartInfo(program)
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        if (c.Kernel is { } k) psi.ArgumentList.Add($"--kernel={k}");
        if (c.Ramdisk is { } r) psi.ArgumentList.Add($"--ramdisk={r}");
        if (c.Cmdline is { Length: > 0 } a) psi.ArgumentList.Add($"--args={a}");
        psi.ArgumentList.Add("--quiet");
        psi.ArgumentList.Add($"--output={output}");
        psi.ArgumentList.Add("--output-format=simple0");
        psi.ArgumentList.Add($"--output-directory={outputDir}");
        foreach (var arg in c.BootloaderArgs) psi.ArgumentList.Add(arg);
        psi.ArgumentList.Add(image);

        using var p = Process.Start(psi) ?? throw new ControlException($"bootloader {program} could not be started");
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(Limit))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            throw new ControlException($"bootloader {program} did not finish in {Limit.TotalSeconds:0} s");
        }
        if (p.ExitCode != 0)
            throw new ControlException($"bootloader {program} failed ({p.ExitCode}): {LastLines(stderr.Result + stdout.Result)}");
        return Parse(File.ReadAllText(output, Encoding.UTF8))
            ?? throw new ControlException($"bootloader {program} named no kernel: {LastLines(stderr.Result + stdout.Result)}");
    }

    /// <summary>The "simple0" output: "kernel PATH", "ramdisk PATH", "args TEXT", each ended by a NUL; null without
    /// a kernel.</summary>
    public static Result? Parse(string output)
    {
        string? kernel = null, ramdisk = null, args = null;
        foreach (var item in output.Split('\0', StringSplitOptions.RemoveEmptyEntries))
        {
            int space = item.IndexOf(' ');
            string key = space < 0 ? item : item[..space], value = space < 0 ? "" : item[(space + 1)..];
            switch (key)
            {
                case "kernel": kernel = value; break;
                case "ramdisk": ramdisk = value; break;
                case "args": args = value; break;
            }
        }
        return kernel is { Length: > 0 } ? new Result(kernel, ramdisk is { Length: > 0 } ? ramdisk : null, args) : null;
    }

    private static string LastLines(string text)
    {
        var lines = text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return string.Join("; ", lines.TakeLast(3));
    }
}
