using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>
/// Debian's kernel and its xen-blkfront as the judge of the PV block backend: one guest, booted once for
/// the class, gets a raw image read-write as xvda and a qcow2 image read-only as xvdb. What the guest reads
/// is what the host's files hold, what it writes reaches the raw file, and the read-only disk refuses writes.
/// </summary>
public sealed partial class LinuxBlockTests(LinuxBlockTests.BlockGuest guest) : IClassFixture<LinuxBlockTests.BlockGuest>
{
    private static readonly TimeSpan IoLimit = TimeSpan.FromMinutes(5);

    [GeneratedRegex(@"md5-([0-9a-f]{32})-end")]
    private static partial Regex Md5Line();

    [GeneratedRegex(@"size-(\d+)-end")]
    private static partial Regex SizeLine();

    [GeneratedRegex(@"queues-(\d+)-end")]
    private static partial Regex QueuesLine();

    /// <summary>md5 of a guest block device, asked at its shell. The typed line never holds the reply's
    /// "-end" (the shell joins "-e" and "nd").</summary>
    private string GuestMd5(string dev)
    {
        var m = Md5Line().Match(guest.Console.Ask($"echo md5-$(md5sum </dev/{dev} | cut -c1-32)-e\"\"nd", "-end", IoLimit));
        Assert.True(m.Success, "no md5 line from the guest");
        return m.Groups[1].Value;
    }

    private static string HostMd5(string path) => Convert.ToHexStringLower(MD5.HashData(File.ReadAllBytes(path)));

    [Fact]
    [Trait("Feature", "Blkfront"), Trait("Feature", "Blkback")]
    public void TheGuestReadsTheRawAndQcow2ImagesExactly()
    {
        var size = SizeLine().Match(guest.Console.Ask("echo size-$(cat /sys/block/xvda/size)-e\"\"nd", "-end"));
        Assert.Equal((BlockGuest.RawBytes / 512).ToString(), size.Groups[1].Value);
        Assert.Equal(HostMd5(guest.RawPath), GuestMd5("xvda"));
        Assert.Equal(HostMd5(guest.QcowSourcePath), GuestMd5("xvdb"));
    }

    [Fact]
    [Trait("Feature", "Blkfront"), Trait("Feature", "Blkback")]
    public void BlkfrontUsesFlushAndIndirectDescriptors()
    {
        string reply = guest.Console.Ask("dmesg | grep 'blkfront: xvda'; echo dmesg-e\"\"nd", "dmesg-end");
        Assert.Contains("flush diskcache: enabled", reply);
        Assert.Contains("indirect descriptors: enabled", reply);
        Assert.Contains("persistent grants: enabled", reply);
    }

    [Fact]
    [Trait("Feature", "Blkfront"), Trait("Feature", "Blkback")]
    public void BlkfrontUsesOneQueuePerVcpuTheBackendOffers()
    {
        // The backend offers a queue per host core (at most 4); blkfront takes at most one per vCPU. Each
        // queue blk-mq drives shows as a directory under mq/.
        int expected = Math.Min(BlockGuest.Vcpus, Math.Clamp(Environment.ProcessorCount, 1, 4));
        var m = QueuesLine().Match(guest.Console.Ask("echo queues-$(ls /sys/block/xvda/mq | wc -l)-e\"\"nd", "-end"));
        Assert.True(m.Success, "no queue count from the guest");
        Assert.Equal(expected.ToString(), m.Groups[1].Value);
        Assert.Equal(HostMd5(guest.QcowSourcePath), GuestMd5("xvdb"));
    }

    [Fact]
    [Trait("Feature", "Blkfront"), Trait("Feature", "Blkback")]
    public void WhatTheGuestWritesAndSyncsReachesTheRawFile()
    {
        // 64 KiB of a known line at 1 MiB, written through the page cache, then synced and flushed.
        string reply = guest.Console.Ask(
            "yes XenSharpBlock | head -c 65536 | dd of=/dev/xvda bs=4096 seek=256 conv=fsync 2>/dev/null; sync; " +
            "blockdev --flushbufs /dev/xvda; echo written-$?-e\"\"nd", "-end", IoLimit);
        Assert.Contains("written-0-end", reply);
        byte[] expected = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("XenSharpBlock\n", 65536 / 14 + 1)))[..65536];
        using var f = new FileStream(guest.RawPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var got = new byte[65536];
        f.Position = 1 << 20;
        f.ReadExactly(got);
        Assert.Equal(expected, got);
        // The rest of the disk is untouched: sector 0 still holds the pattern.
        var first = new byte[512];
        f.Position = 0;
        f.ReadExactly(first);
        Assert.Equal(BlockGuest.Pattern(0, 512), first);
    }

    [Fact]
    [Trait("Feature", "Blkfront"), Trait("Feature", "Blkback")]
    public void ADiscardFromTheGuestFreesTheRangeInTheRawFile()
    {
        string reply = guest.Console.Ask("blkdiscard -o 6291456 -l 1048576 /dev/xvda; echo discard-$?-e\"\"nd", "-end", IoLimit);
        Assert.Contains("discard-0-end", reply);
        using var f = new FileStream(guest.RawPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var got = new byte[1 << 20];
        f.Position = 6 << 20;
        f.ReadExactly(got);
        Assert.True(got.All(b => b == 0), "the discarded range still holds data");
        // Just before it, the pattern is intact.
        var before = new byte[4096];
        f.Position = (6 << 20) - 4096;
        f.ReadExactly(before);
        Assert.Equal(BlockGuest.Pattern(0, 6 << 20).AsSpan((6 << 20) - 4096).ToArray(), before);
    }

    [Fact]
    [Trait("Feature", "Blkfront"), Trait("Feature", "Blkback")]
    public void TheReadOnlyDiskRefusesWrites()
    {
        string before = HostMd5(guest.QcowPath);
        string reply = guest.Console.Ask(
            "echo $(cat /sys/block/xvdb/ro)-ro; dd if=/dev/zero of=/dev/xvdb bs=512 count=1 conv=fsync; echo dd-$?-e\"\"nd", "-end", IoLimit);
        Assert.Contains("1-ro", reply);
        Assert.DoesNotContain("dd-0-end", reply);
        Assert.Equal(before, HostMd5(guest.QcowPath));
    }

    [Fact]
    [Trait("Feature", "Blkback")]
    public void XlBlockListShowsBothDisksConnected()
    {
        var r = guest.Xl("block-list", "blk", "no-such-domain");
        Assert.Equal(0, r.ExitCode);
        var lines = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("Vdev  BE  handle state evt-ch ring-ref BE-path", lines[0].TrimEnd());
        var rows = lines.Skip(1).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToList();
        Assert.Equal(["51712", "51728"], rows.Select(f => f[0]));
        foreach (var f in rows)
        {
            Assert.Equal("0", f[1]);
            Assert.Equal(guest.DomId, f[2]);
            Assert.Equal("4", f[3]); // XenbusStateConnected
            // As libxl, only the top-level keys are read: a frontend with several queues keeps its event
            // channels and rings under queue-N/, shown as -1.
            Assert.True(int.Parse(f[4]) is > 0 or -1 && int.Parse(f[5]) >= -1, $"garbage event channel or ring: {string.Join(' ', f)}");
            Assert.Equal($"/local/domain/0/backend/vbd/{guest.DomId}/{f[0]}", f[6]);
        }
        Assert.Contains("no-such-domain is an invalid domain identifier", r.Stderr);
    }

    [Fact]
    [Trait("Feature", "Blkfront"), Trait("Feature", "Blkback"), Trait("Feature", "QEMU backend hotplugging for xl")]
    public void ADiskAttachedToTheRunningGuestAppearsAndGoesAwayOnDetach()
    {
        string path = Path.Combine(Path.GetDirectoryName(guest.RawPath)!, "hot.img");
        File.WriteAllBytes(path, BlockGuest.Pattern(5, 2 << 20));
        var attach = guest.Xl("block-attach", "blk", $"format=raw,vdev=xvdc,access=rw,target={path}");
        Assert.True(attach.ExitCode == 0, attach.ToString());
        try
        {
            Assert.Contains("hot-end", guest.Console.Ask(
                "until [ -e /sys/block/xvdc ]; do sleep 1; done; echo hot-e\"\"nd", "hot-end", TimeSpan.FromMinutes(2)));
            Assert.Equal(HostMd5(path), GuestMd5("xvdc"));
            Assert.Contains("51744 ", guest.Xl("block-list", "blk").Stdout);
            var again = guest.Xl("block-attach", "blk", $"format=raw,vdev=xvdc,access=rw,target={path}");
            Assert.NotEqual(0, again.ExitCode);
            Assert.Contains("already attached", again.Stderr);
        }
        finally
        {
            var detach = guest.Xl("block-detach", "blk", "xvdc");
            Assert.True(detach.ExitCode == 0, detach.ToString());
        }
        Assert.Contains("gone-end", guest.Console.Ask(
            "while [ -e /sys/block/xvdc ]; do sleep 1; done; echo gone-e\"\"nd", "gone-end", TimeSpan.FromMinutes(2)));
        Assert.DoesNotContain("51744 ", guest.Xl("block-list", "blk").Stdout);
        var missing = guest.Xl("block-detach", "blk", "xvdc");
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("Device xvdc not connected", missing.Stderr);
    }

    /// <summary>The guest of the class: images made on the host, `xl create -c` with both disks, its shell
    /// once both disks have appeared.</summary>
    public sealed class BlockGuest : IDisposable
    {
        public const int RawBytes = 8 << 20, QcowBytes = 4 << 20;
        /// <summary>Two, so that blkfront can use two queues.</summary>
        public const int Vcpus = 2;
        private readonly XlHost _xl = new();

        public string RawPath { get; }
        public string QcowSourcePath { get; }
        public string QcowPath { get; }
        internal LinuxPvhTests.ConsoleSession Console { get; }

        public XlResult Xl(params string[] args) => _xl.Run(args);

        /// <summary>The guest's domid, as `xl domid` answers it.</summary>
        public string DomId => _xl.Run("domid", "blk").Stdout.Trim();

        public static byte[] Pattern(int seed, int length)
        {
            var b = new byte[length];
            for (int i = 0; i < length; i++) b[i] = (byte)(i * 31 + i / 4096 + seed);
            return b;
        }

        public BlockGuest()
        {
            var store = new GuestArtifacts();
            Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
            RawPath = Path.Combine(_xl.RunDir, "a.img");
            QcowSourcePath = Path.Combine(_xl.RunDir, "b-data.raw");
            QcowPath = Path.Combine(_xl.RunDir, "b.qcow2");
            File.WriteAllBytes(RawPath, Pattern(0, RawBytes));
            File.WriteAllBytes(QcowSourcePath, Pattern(77, QcowBytes));
            QemuImg("convert", "-f", "raw", "-O", "qcow2", QcowSourcePath, QcowPath);

            string cfg = LinuxPvhTests.WriteConfig(_xl, store, "blk", vcpus: Vcpus);
            File.AppendAllText(cfg, $"\ndisk = [ 'format=raw,vdev=xvda,access=rw,target={RawPath}', 'format=qcow2,vdev=xvdb,access=ro,target={QcowPath}' ]\n");
            Console = new LinuxPvhTests.ConsoleSession(_xl.RunDir, "create", "-c", cfg);
            Console.WaitFor("~ # ", LinuxPvhTests.BootLimit);
            // blkfront connects its disks while the shell starts.
            Console.Ask("until [ -e /sys/block/xvda ] && [ -e /sys/block/xvdb ]; do sleep 1; done; echo disks-e\"\"nd", "disks-end", TimeSpan.FromMinutes(2));
        }

        private static void QemuImg(params string[] args)
        {
            var psi = new ProcessStartInfo("qemu-img") { RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (var a in args) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            string err = p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, $"qemu-img {string.Join(' ', args)}: {err}");
        }

        public void Dispose()
        {
            _xl.Run("destroy", "blk");
            Console.Dispose();
            _xl.Dispose();
        }
    }
}
