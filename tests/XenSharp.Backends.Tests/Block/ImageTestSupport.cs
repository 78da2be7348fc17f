using System.Diagnostics;
using XenSharp.Backends.Block.Images;

namespace XenSharp.Backends.Tests.Block;

/// <summary>A scratch directory per test, and qemu-img / qemu-io as the judges of what an image holds.</summary>
internal sealed class ImageDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("xensharp-images-").FullName;

    public string this[string name] => System.IO.Path.Combine(Path, name);

    public void Dispose() => Directory.Delete(Path, recursive: true);

    /// <summary>A raw file of <paramref name="size"/> bytes: random data with runs of zeros, the same for a seed.</summary>
    public byte[] WriteRaw(string name, int size, int seed)
    {
        var data = new byte[size];
        new Random(seed).NextBytes(data);
        for (int at = 0; at < size; at += 256 * 1024)
            data.AsSpan(at, Math.Min(64 * 1024, size - at)).Clear(); // holes: unallocated in the converted image
        File.WriteAllBytes(this[name], data);
        return data;
    }

    /// <summary>Everything an image holds as the guest sees it, read through our code.</summary>
    public static byte[] ReadAll(IBlockImage image)
    {
        var all = new byte[image.Size];
        for (long at = 0; at < all.Length; at += 1 << 20)
        {
            int n = (int)Math.Min(1 << 20, all.Length - at);
            Assert.Equal(0, image.Read(at, all.AsSpan((int)at, n)));
        }
        return all;
    }
}

internal static class Qemu
{
    public static (int Code, string Output) Run(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output + stderr.Result);
    }

    public static string Img(params string[] args)
    {
        var (code, output) = Run("qemu-img", args);
        Assert.True(code == 0, $"qemu-img {string.Join(' ', args)} failed ({code}): {output}");
        return output;
    }

    public static void Io(string image, string format, string command) =>
        Assert.Equal(0, Run("qemu-io", "-f", format, "-c", command, image).Code);

    /// <summary>What qemu-img reads from an image, as raw bytes.</summary>
    public static byte[] ReadWithQemu(ImageDir dir, string image, string format)
    {
        string raw = image + ".judge.raw";
        Img("convert", "-f", format, "-O", "raw", image, raw);
        byte[] data = File.ReadAllBytes(raw);
        File.Delete(raw);
        return data;
    }

    /// <summary><c>qemu-img check</c>: 0 is clean, 3 is leaked clusters only (what QEMU tolerates); anything else fails.</summary>
    public static void CheckClean(string image, string format = "qcow2", bool allowLeaks = false)
    {
        var (code, output) = Run("qemu-img", "check", "-f", format, image);
        Assert.True(code == 0 || allowLeaks && code == 3, $"qemu-img check {image} exited {code}: {output}");
    }

    public static void CompareWithRaw(string image, string format, string raw)
    {
        var (code, output) = Run("qemu-img", "compare", "-f", format, "-F", "raw", image, raw);
        Assert.True(code == 0, $"qemu-img compare {image} {raw} exited {code}: {output}");
    }
}
