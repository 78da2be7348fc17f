using System.Diagnostics;
using System.Runtime.InteropServices;
using XenSharp.Hypervisor.Common;

namespace XenSharp.Hypervisor.Tests;

/// <summary>Machine frames: per-domain memfd backing another process can map, hole-punched frees that give the
/// host its memory back, and the quarantine that keeps a freed frame from anyone while a vCPU may still reach it.</summary>
public sealed unsafe partial class FrameTableTests : IDisposable
{
    private readonly FrameTable _frames = new(64UL << 20);
    public void Dispose() => _frames.Dispose();

    private sealed class FakeVcpu
    {
        public int Flushes, Kicks;
        public readonly TranslationCache Cache;
        public FakeVcpu() => Cache = new TranslationCache(() => Flushes++, () => Kicks++);
    }

    private uint Alloc(ushort domid)
    {
        Assert.True(_frames.TryAllocate(domid, FrameType.Ram, out uint mfn));
        return mfn;
    }

    private static void Fill(byte* page, byte value) => new Span<byte>(page, FrameTable.PageSize).Fill(value);

    private static bool AllZero(byte* page) => !new ReadOnlySpan<byte>(page, FrameTable.PageSize).ContainsAnyExcept((byte)0);

    [Fact]
    public void TheFrameTableCostsWhatTheGuestsUseNotWhatTheMachineCouldHold()
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        using var machine = new FrameTable(64UL << 30);
        long table = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(table < 1 << 20, $"a 64 GiB machine's frame table took {table} bytes before any frame was used");

        before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 2 * machine.ExtentFrames; i++)
            Assert.True(machine.TryAllocate(1, FrameType.Ram, out _));
        long used = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(used < 64 * machine.ExtentFrames, $"{2 * machine.ExtentFrames} frames took {used} bytes of page_info");
    }

    [Fact]
    public void AFreedFrameWaitsUntilEveryRunningVcpuFlushed()
    {
        var running = new FakeVcpu();
        var idle = new FakeVcpu();
        _frames.Register(running.Cache);
        _frames.Register(idle.Cache);
        _frames.Enter(running.Cache);
        _frames.Enter(idle.Cache);
        _frames.Leave(idle.Cache);

        uint a = Alloc(1);
        Alloc(1);
        Fill(_frames.PageAddress(a), 0x5A);
        _frames.Free(a);

        // The running vCPU may still hold a translation: the frame waits, and that vCPU (only) is kicked once.
        Assert.Equal(1, _frames.QuarantinedFrames);
        Assert.Equal(1, running.Kicks);
        Assert.Equal(0, idle.Kicks);
        Assert.False(_frames.TryGetBacking(a, out _, out _));
        uint c = Alloc(1);
        Assert.NotEqual(a, c);
        _frames.Reclaim();
        Assert.Equal(1, _frames.QuarantinedFrames);
        Assert.Equal(1, running.Kicks);

        // Its next exit flushes it, and the frame comes back zeroed.
        _frames.Sync(running.Cache);
        Assert.Equal(1, running.Flushes);
        Assert.Equal(0, _frames.QuarantinedFrames);
        Assert.Equal(a, Alloc(1));
        Assert.True(AllZero(_frames.PageAddress(a)));

        // The idle vCPU flushes when it next runs, before any guest code.
        _frames.Enter(idle.Cache);
        Assert.Equal(1, idle.Flushes);
        _frames.Sync(idle.Cache);
        Assert.Equal(1, idle.Flushes);
    }

    [Fact]
    public void WithNoVcpuRunningAFreedFrameIsReusableAtOnce()
    {
        var v = new FakeVcpu();
        _frames.Register(v.Cache);
        uint a = Alloc(3);
        _frames.Free(a);
        Assert.Equal(0, _frames.QuarantinedFrames);
        Assert.Equal(a, Alloc(3));
        // A referenced frame waits for its last reference, then for the flushes.
        _frames.AddRef(a);
        _frames.Free(a);
        _frames.Enter(v.Cache);
        _frames.Release(a, dropRef: true);
        Assert.Equal(1, _frames.QuarantinedFrames);
        _frames.Leave(v.Cache);
        Assert.Equal(0, _frames.QuarantinedFrames);
    }

    [Fact]
    public void FramesAreReusedOnlyByTheirOwnDomainUntilTheirExtentIsEmpty()
    {
        uint a = Alloc(1), b = Alloc(1);
        uint other = Alloc(2);
        Assert.NotEqual(a / (uint)_frames.ExtentFrames, other / (uint)_frames.ExtentFrames);
        _frames.Free(a);
        Assert.NotEqual(a, Alloc(2));
        _frames.Free(b);
        _frames.CloseOwner(1);
        // Domain 1's extent has a frame in use again? No: both went, so the extent is in the pool and another domain gets it.
        var got = new HashSet<uint>();
        for (int i = 0; i < 2 * _frames.ExtentFrames; i++)
            got.Add(Alloc(2));
        Assert.Contains(a, got);
    }

    [Fact]
    public void AGuestFrameIsMappableFromItsMemfdAndAnOldMappingNeverShowsAnotherDomain()
    {
        uint a = Alloc(1);
        Fill(_frames.PageAddress(a), 0x11);
        Assert.True(_frames.TryGetBacking(a, out var fd, out long offset));
        Assert.Same(fd, _frames.MemoryFileOf(1));
        byte* view = MapShared(fd, offset);
        try
        {
            Assert.Equal(0x11, view[0]);
            Assert.Equal(0x11, view[FrameTable.PageSize - 1]);
            // Writes through the other mapping are the guest's memory.
            view[8] = 0x22;
            Assert.Equal(0x22, _frames.PageAddress(a)[8]);

            // Domain 1 goes away; domain 2 takes every frame it can, the freed range included, and fills them.
            _frames.Free(a);
            _frames.CloseOwner(1);
            var mine = new List<uint>();
            while (_frames.TryAllocate(2, FrameType.Ram, out uint m))
            {
                Fill(_frames.PageAddress(m), 0x77);
                mine.Add(m);
            }
            Assert.Contains(a, mine);
            Assert.Equal(0x77, _frames.PageAddress(a)[0]);
            Assert.True(AllZero(view), "a mapping of the freed frame shows another domain's data");
        }
        finally
        {
            munmap((nint)view, FrameTable.PageSize);
        }
    }

    [Fact]
    public void AnotherProcessMapsAGuestFrameAndNeverSeesTheNextOwnersData()
    {
        string helper = BuildHelper();
        uint a = Alloc(1);
        Fill(_frames.PageAddress(a), 0x3C);
        Assert.True(_frames.TryGetBacking(a, out var fd, out long offset));
        var psi = new ProcessStartInfo(helper, [$"/proc/{Environment.ProcessId}/fd/{fd.DangerousGetHandle()}", offset.ToString()])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
        };
        using var p = Process.Start(psi)!;
        try
        {
            // The helper maps the page and reports its first and last byte each time it is asked.
            Assert.Equal("3c 3c", Ask(p));
            _frames.PageAddress(a)[FrameTable.PageSize - 1] = 0x4D;
            Assert.Equal("3c 4d", Ask(p));

            _frames.Free(a);
            _frames.CloseOwner(1);
            bool reused = false;
            while (_frames.TryAllocate(2, FrameType.Ram, out uint m))
            {
                Fill(_frames.PageAddress(m), 0x99);
                reused |= m == a;
            }
            Assert.True(reused);
            Assert.Equal("00 00", Ask(p));
        }
        finally
        {
            p.StandardInput.Close();
            p.WaitForExit();
        }
    }

    [Fact]
    public void BallooningGivesTheHostTheMemoryBack()
    {
        var frames = new List<uint>();
        for (int i = 0; i < 256; i++)
        {
            uint m = Alloc(4);
            Fill(_frames.PageAddress(m), 0xEE);
            frames.Add(m);
        }
        long before = _frames.BackedBytes(4);
        Assert.True(before >= 256L * FrameTable.PageSize, $"the memfd holds {before} bytes");
        for (int i = 0; i < 128; i++)
            _frames.Free(frames[i]);
        long after = _frames.BackedBytes(4);
        Assert.True(before - after >= 128L * FrameTable.PageSize, $"{before} -> {after} bytes after freeing 128 frames");
        // A scrubbed frame the domain keeps is zero and costs the host nothing either.
        _frames.Scrub(frames[200]);
        Assert.True(_frames.BackedBytes(4) < after, $"{after} -> {_frames.BackedBytes(4)} after a scrub");
        Assert.True(AllZero(_frames.PageAddress(frames[200])));
    }

    [Fact]
    public void FramesFreedTogetherGoBackTogetherZeroedAndTheHostHasTheirMemory()
    {
        // Most of one extent and a scattered part of another: runs of pages, single pages and a whole extent.
        int n = _frames.ExtentFrames + _frames.ExtentFrames / 2;
        var frames = new List<uint>();
        for (int i = 0; i < n; i++)
        {
            uint m = Alloc(5);
            Fill(_frames.PageAddress(m), 0xA5);
            frames.Add(m);
        }
        long before = _frames.BackedBytes(5);
        var freed = frames.Where((m, i) => i < _frames.ExtentFrames || i % 3 != 0).ToList();
        var kept = frames.Except(freed).ToList();
        using (_frames.DeferReclaim())
        {
            foreach (uint m in freed)
                _frames.Free(m);
            // Held back until the scope ends: nothing is released, so nothing can be handed out unscrubbed.
            Assert.Equal(freed.Count, _frames.QuarantinedFrames);
        }
        Assert.Equal(0, _frames.QuarantinedFrames);
        long after = _frames.BackedBytes(5);
        Assert.True(before - after >= (long)freed.Count * FrameTable.PageSize, $"{before} -> {after} bytes after freeing {freed.Count} frames");
        foreach (uint m in kept)
            Assert.Equal(0xA5, _frames.PageAddress(m)[100]);
        // Taken again by the same domain: every reused frame reads zero.
        var again = new List<uint>();
        for (int i = 0; i < freed.Count; i++)
            again.Add(Alloc(5));
        Assert.NotEmpty(again.Intersect(freed));
        Assert.All(again, m => Assert.True(AllZero(_frames.PageAddress(m)), $"frame {m} kept its old contents"));
    }

    [Fact]
    public void WhenOnlyQuarantinedFramesAreLeftTheAllocatorWaitsForTheFlushesItNeeds()
    {
        using var small = new FrameTable(2UL << 20);
        var frames = new List<uint>();
        while (small.TryAllocate(1, FrameType.Ram, out uint m))
            frames.Add(m);
        Assert.Equal((int)small.FrameCount, frames.Count);

        // On a pCPU running a vCPU (between its exits), that vCPU's own caches are dropped on the spot.
        var self = new FakeVcpu();
        small.Register(self.Cache);
        small.Enter(self.Cache);
        small.Free(frames[0]);
        Assert.Equal(1, small.QuarantinedFrames);
        Assert.True(small.TryAllocate(1, FrameType.Ram, out uint again));
        Assert.Equal(frames[0], again);
        Assert.Equal(1, self.Flushes);
        small.Leave(self.Cache);
        small.Unregister(self.Cache);

        // Elsewhere (the toolstack) it waits while the kicked vCPU leaves guest code and flushes on its pCPU.
        TranslationCache? other = null;
        // The kicked pCPU is a thread of its own: a pool work item could wait behind a busy pool for longer
        // than the allocator waits.
        other = new TranslationCache(() => { }, () => new Thread(() =>
        {
            Thread.Sleep(50); // still in guest code for a while
            small.Sync(other!);
        }) { IsBackground = true }.Start());
        small.Register(other);
        var pcpu = new Thread(() => small.Enter(other));
        pcpu.Start();
        pcpu.Join();
        small.Free(frames[1]);
        Assert.Equal(1, small.QuarantinedFrames);
        Assert.True(small.TryAllocate(1, FrameType.Ram, out uint got));
        Assert.Equal(frames[1], got);
    }

    [Fact]
    public void CopyingOutAFrameNeverWrittenGivesItNoHostMemory()
    {
        uint written = Alloc(5), untouched = Alloc(5);
        Fill(_frames.PageAddress(written), 0x42);
        long before = _frames.BackedBytes(5);
        var page = new byte[FrameTable.PageSize];
        Array.Fill(page, (byte)0xFF);
        _frames.CopyOut(untouched, page);
        Assert.DoesNotContain(page, b => b != 0);
        Assert.Equal(before, _frames.BackedBytes(5));
        _frames.CopyOut(written, page);
        Assert.DoesNotContain(page, b => b != 0x42);
    }

    private static string Ask(Process p)
    {
        p.StandardInput.WriteLine();
        p.StandardInput.Flush();
        return p.StandardOutput.ReadLine() ?? "(helper exited)";
    }

    private static readonly Lazy<string> s_helper = new(() =>
    {
        string dir = Path.Combine(Path.GetTempPath(), $"xensharp-frametable-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        string src = Path.Combine(dir, "mapframe.c"), exe = Path.Combine(dir, "mapframe");
        File.WriteAllText(src, """
            #include <fcntl.h>
            #include <stdio.h>
            #include <stdlib.h>
            #include <sys/mman.h>
            #include <unistd.h>
            /* mapframe PATH OFFSET: maps one page of PATH shared; prints its first and last byte per input line. */
            int main(int argc, char **argv)
            {
                if (argc != 3) return 2;
                int fd = open(argv[1], O_RDWR);
                if (fd < 0) { perror("open"); return 1; }
                unsigned char *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, strtoll(argv[2], NULL, 0));
                if (p == MAP_FAILED) { perror("mmap"); return 1; }
                close(fd);
                int c;
                while ((c = getchar()) != EOF)
                    if (c == '\n') { printf("%02x %02x\n", p[0], p[4095]); fflush(stdout); }
                munmap(p, 4096);
                return 0;
            }
            """);
        using var gcc = Process.Start(new ProcessStartInfo("gcc", ["-O1", "-Wall", "-Werror", "-o", exe, src]) { RedirectStandardError = true })!;
        string err = gcc.StandardError.ReadToEnd();
        gcc.WaitForExit();
        Assert.True(gcc.ExitCode == 0, err);
        return exe;
    });

    private static string BuildHelper() => s_helper.Value;

    private static byte* MapShared(SafeHandle fd, long offset)
    {
        nint p = mmap(0, FrameTable.PageSize, 3, 1, (int)fd.DangerousGetHandle(), (nint)offset);
        Assert.NotEqual(-1, p);
        return (byte*)p;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);
}
