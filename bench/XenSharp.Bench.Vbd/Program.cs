// bench-vbd: XenSharp's disk-image layer alone, driven the way the PV block backend drives it (one
// request at a time from one thread, through one page-aligned buffer, requests of at most 128 KiB),
// beside QEMU's block layer doing the same requests through `qemu-img bench`.
//   bench-vbd RAW-FILE WORK-DIR
// The raw file is opened as direct-io-safe opens it (O_DIRECT; QEMU cache=none); qcow2 images are made
// fresh in WORK-DIR for each side and used buffered (QEMU cache=writeback), as the backend uses them.
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using XenSharp.Backends.Block.Images;

const int Request = 128 * 1024;      // the backend's largest request: 32 indirect segments of one page
const long Sequential = 256L << 20;  // as the guest's fio jobs
const int RandomReads = 20000;
const long Stride = 4096L * 12345;   // an odd number of 4 KiB blocks: every block of a power-of-two disk once before any repeats
const int Rounds = 3;
const byte Pattern = 0xa5;           // what the writes write, on both sides (not zeros, which a host may treat specially)

if (args.Length != 2)
{
    Console.Error.WriteLine("usage: bench-vbd RAW-FILE WORK-DIR");
    return 2;
}
string raw = args[0], dir = args[1];
Directory.CreateDirectory(dir);

// A short pass of every kind first, on scratch images, so that the timed passes do not pay for JIT compilation.
string scratch = Path.Combine(dir, "scratch.qcow2");
Run("qemu-img", $"create -q -f qcow2 {scratch} 16M");
foreach (var (path, options) in new[] { (scratch, new BlockImageOptions { Format = BlockImageFormat.Qcow2 }), (raw, new BlockImageOptions { Format = BlockImageFormat.Raw, DirectIo = true }) })
{
    Measure(path, options, write: path == scratch, Request, 64, Request);
    Measure(path, options, write: false, Request, 64, Request);
    Measure(path, options, write: false, 4096, 256, Stride);
}
File.Delete(scratch);

Report("raw", raw, raw, "none", new BlockImageOptions { Format = BlockImageFormat.Raw, DirectIo = true });
string ours = Path.Combine(dir, "image-ours.qcow2"), peer = Path.Combine(dir, "image-qemu.qcow2");
Report("qcow2", ours, peer, "writeback", new BlockImageOptions { Format = BlockImageFormat.Qcow2 });
File.Delete(ours);
File.Delete(peer);
return 0;

void Report(string name, string ourPath, string peerPath, string cache, BlockImageOptions options)
{
    bool fresh = ourPath != peerPath; // qcow2: each write pass starts from an empty image, as the guest's does
    void Recreate(string path) => Run("qemu-img", $"create -q -f qcow2 {path} {Sequential}");
    // Writes first, so that the qcow2 reads meet allocated clusters.
    string how = $"one request at a time, {(fresh ? "buffered (QEMU cache=writeback)" : "O_DIRECT (QEMU cache=none)")}";
    Figure($"vbd-image-{name}-seq-write", "MB/s", "F1", Sequential / 1e6, $"{how}, 128 KiB requests{(fresh ? ", into new clusters" : "")}",
        () => { if (fresh) Recreate(ourPath); return Measure(ourPath, options, write: true, Request, Sequential / Request, Request); },
        () => { if (fresh) Recreate(peerPath); return QemuImgBench(peerPath, name, cache, write: true, Request, Sequential / Request, Request); });
    Figure($"vbd-image-{name}-seq-read", "MB/s", "F1", Sequential / 1e6, $"{how}, 128 KiB requests",
        () => Measure(ourPath, options, write: false, Request, Sequential / Request, Request),
        () => QemuImgBench(peerPath, name, cache, write: false, Request, Sequential / Request, Request));
    Figure($"vbd-image-{name}-rand-read-4k", "IOPS", "F0", RandomReads, how,
        () => Measure(ourPath, options, write: false, 4096, RandomReads, Stride),
        () => QemuImgBench(peerPath, name, cache, write: false, 4096, RandomReads, Stride));
}

// The host's disk is shared and its speed wanders: the two sides take turns, and each keeps its median.
void Figure(string name, string unit, string format, double work, string how, Func<double> ours, Func<double> peer)
{
    var a = new double[Rounds];
    var b = new double[Rounds];
    for (int i = 0; i < Rounds; i++)
    {
        a[i] = ours();
        b[i] = peer();
    }
    Array.Sort(a);
    Array.Sort(b);
    double value = work / a[Rounds / 2], peerValue = work / b[Rounds / 2];
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"{name}: {value.ToString(format, CultureInfo.InvariantCulture)} {unit} (qemu-img: {peerValue.ToString(format, CultureInfo.InvariantCulture)}, ratio {value / peerValue:F2}) [{how}]"));
}

// Seconds for COUNT requests of SIZE bytes at offsets stepping by STEP (wrapping at the disk's end).
// No flush: qemu-img bench times none, and the guest's fio jobs send none either.
unsafe double Measure(string path, BlockImageOptions options, bool write, int size, long count, long step)
{
    using var image = BlockImages.Open(path, options with { ReadOnly = !write });
    byte* buffer = (byte*)NativeMemory.AlignedAlloc(Request, 4096);
    try
    {
        var span = new Span<byte>(buffer, size);
        span.Fill(Pattern);
        long offset = 0;
        var clock = Stopwatch.StartNew();
        for (long i = 0; i < count; i++)
        {
            int rc = write ? image.Write(offset, span) : image.Read(offset, span);
            if (rc != 0)
                throw new InvalidOperationException($"{path}: {(write ? "write" : "read")} at {offset} failed: errno {-rc}");
            offset = (offset + step) % image.Size;
        }
        return clock.Elapsed.TotalSeconds;
    }
    finally
    {
        NativeMemory.AlignedFree(buffer);
    }
}

// The same requests through QEMU's block layer (thread-pool AIO, one in flight).
double QemuImgBench(string path, string format, string cache, bool write, int size, long count, long step)
{
    string output = Run("qemu-img", $"bench -c {count} -d 1 -f {format} -t {cache} -i threads {(write ? $"-w --pattern={Pattern} " : "")}-s {size} -S {step} {path}");
    var m = Regex.Match(output, @"Run completed in ([0-9.]+) seconds");
    if (!m.Success)
        throw new InvalidOperationException($"qemu-img bench said: {output}");
    return double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
}

static string Run(string file, string arguments)
{
    var psi = new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
    using var p = Process.Start(psi)!;
    string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
    p.WaitForExit();
    if (p.ExitCode != 0)
        throw new InvalidOperationException($"{file} {arguments}: {output}");
    return output;
}
