using XenSharp.Public.Migration;
using XenSharp.Toolstack.Save;

namespace XenSharp.Toolstack.Tests.Save;

/// <summary>
/// The backup's reading of a Remus stream after its first checkpoint: each checkpoint's records come back only once
/// libxc's CHECKPOINT and libxl's CHECKPOINT_END have closed it, so a stream cut inside a checkpoint gives nothing of
/// it (the backup keeps the last complete one); END ends the stream; a checkpoint closed by anything else is refused.
/// An HVM domain's checkpoint carries its QEMU's state between CHECKPOINT and CHECKPOINT_END (libxl's emulator
/// records), handed back with the checkpoint and only once it is complete.
/// </summary>
[Trait("Feature", "Remus Fault Tolerance")]
public sealed class CheckpointStreamTests
{
    private static void Page(MigrationRecordWriter w, ulong gfn, byte fill)
    {
        var head = new ulong[] { 1, gfn | LibxcStream.PAGE_DATA_TYPE_NOTAB };
        var data = new byte[4096];
        Array.Fill(data, fill);
        w.Record(LibxcStream.REC_TYPE_PAGE_DATA, System.Runtime.InteropServices.MemoryMarshal.AsBytes(head.AsSpan()), data);
    }

    private static void Checkpoint(MigrationRecordWriter w)
    {
        w.Record(LibxcStream.REC_TYPE_HVM_CONTEXT, new byte[16]);
        w.Record(LibxcStream.REC_TYPE_CHECKPOINT, []);
        w.Record(LibxlStream.REC_TYPE_CHECKPOINT_END, []);
    }

    [Fact]
    public void CompleteCheckpointsComeWholeAndACutOneNotAtAll()
    {
        var s = new MemoryStream();
        var w = new MigrationRecordWriter(s);
        Page(w, 5, 1);
        Checkpoint(w);
        Page(w, 5, 2);
        Page(w, 6, 2);
        Checkpoint(w);
        long complete = s.Length;
        Page(w, 5, 3);
        Page(w, 7, 3);
        Checkpoint(w);

        // The third checkpoint is cut at every length short of its end: the first two still come whole.
        for (long cut = complete; cut < s.Length; cut += 517)
        {
            var reader = new SaveFileReader(new MemoryStream(s.ToArray(), 0, (int)cut), "cut");
            var (first, ended1, _) = reader.ReadCheckpoint();
            Assert.False(ended1);
            Assert.Equal([LibxcStream.REC_TYPE_PAGE_DATA, LibxcStream.REC_TYPE_HVM_CONTEXT], first.Select(r => r.Type));
            var (second, _, _) = reader.ReadCheckpoint();
            Assert.Equal(3, second.Count);
            Assert.Equal(2, second[0].Body[16]);
            var e = Assert.Throws<SaveFileException>(() => reader.ReadCheckpoint());
            Assert.Contains("truncated", e.Message);
        }
    }

    [Fact]
    public void EndAfterACheckpointEndsTheStream()
    {
        var s = new MemoryStream();
        var w = new MigrationRecordWriter(s);
        Page(w, 9, 4);
        Checkpoint(w);
        Page(w, 9, 5);
        w.Record(LibxcStream.REC_TYPE_HVM_CONTEXT, new byte[16]);
        w.Record(LibxcStream.REC_TYPE_END, []);
        w.Record(LibxlStream.REC_TYPE_END, []);
        var reader = new SaveFileReader(new MemoryStream(s.ToArray()), "ended");
        Assert.False(reader.ReadCheckpoint().Ended);
        var (last, ended, _) = reader.ReadCheckpoint();
        Assert.True(ended);
        Assert.Equal(2, last.Count);
    }

    private static void Emulator(MigrationRecordWriter w, uint type, byte[] data, uint emulator = LibxlStream.EMULATOR_QEMU_UPSTREAM)
    {
        var head = new uint[] { emulator, 0 };
        w.Record(type, System.Runtime.InteropServices.MemoryMarshal.AsBytes(head.AsSpan()), data);
    }

    [Fact]
    public void AnHvmCheckpointHandsBackItsDeviceModelStateOnceItIsComplete()
    {
        var s = new MemoryStream();
        var w = new MigrationRecordWriter(s);
        Page(w, 3, 1);
        w.Record(LibxcStream.REC_TYPE_HVM_CONTEXT, new byte[16]);
        w.Record(LibxcStream.REC_TYPE_CHECKPOINT, []);
        Emulator(w, LibxlStream.REC_TYPE_EMULATOR_XENSTORE_DATA, "physmap/f0000000/size\0800000\0"u8.ToArray());
        Emulator(w, LibxlStream.REC_TYPE_EMULATOR_CONTEXT, [(byte)'Q', (byte)'E', (byte)'V', (byte)'M', 7]);
        w.Record(LibxlStream.REC_TYPE_CHECKPOINT_END, []);
        Checkpoint(w);
        long complete = s.Length;
        Page(w, 3, 2);
        w.Record(LibxcStream.REC_TYPE_CHECKPOINT, []);
        Emulator(w, LibxlStream.REC_TYPE_EMULATOR_CONTEXT, [9, 9]);

        var reader = new SaveFileReader(new MemoryStream(s.ToArray()), "hvm");
        var (records, ended, emulator) = reader.ReadCheckpoint();
        Assert.False(ended);
        Assert.Equal(2, records.Count);
        Assert.NotNull(emulator);
        Assert.Equal([("physmap/f0000000/size", "800000")], emulator.Xenstore);
        Assert.Equal([(byte)'Q', (byte)'E', (byte)'V', (byte)'M', 7], emulator.Context);
        // A checkpoint without emulator records has none (a PVH guest's).
        Assert.Null(reader.ReadCheckpoint().Emulator);
        // The third is cut after its emulator context, before CHECKPOINT_END: nothing of it comes back.
        Assert.Throws<SaveFileException>(() => reader.ReadCheckpoint());
        Assert.True(complete < s.Length);
    }

    [Fact]
    public void ACheckpointWithAnotherEmulatorsStateOrTwoContextsIsRefused()
    {
        var s = new MemoryStream();
        var w = new MigrationRecordWriter(s);
        w.Record(LibxcStream.REC_TYPE_CHECKPOINT, []);
        Emulator(w, LibxlStream.REC_TYPE_EMULATOR_CONTEXT, [1], LibxlStream.EMULATOR_QEMU_TRADITIONAL);
        w.Record(LibxlStream.REC_TYPE_CHECKPOINT_END, []);
        var e = Assert.Throws<SaveFileException>(() => new SaveFileReader(new MemoryStream(s.ToArray()), "trad").ReadCheckpoint());
        Assert.Contains("qemu-xen-traditional", e.Message);

        s = new MemoryStream();
        w = new MigrationRecordWriter(s);
        w.Record(LibxcStream.REC_TYPE_CHECKPOINT, []);
        Emulator(w, LibxlStream.REC_TYPE_EMULATOR_CONTEXT, [1]);
        Emulator(w, LibxlStream.REC_TYPE_EMULATOR_CONTEXT, [2]);
        w.Record(LibxlStream.REC_TYPE_CHECKPOINT_END, []);
        e = Assert.Throws<SaveFileException>(() => new SaveFileReader(new MemoryStream(s.ToArray()), "two").ReadCheckpoint());
        Assert.Contains("a second emulator context", e.Message);
    }

    [Fact]
    public void ACheckpointClosedByAnotherLibxlRecordIsRefused()
    {
        var s = new MemoryStream();
        var w = new MigrationRecordWriter(s);
        Page(w, 1, 1);
        w.Record(LibxcStream.REC_TYPE_CHECKPOINT, []);
        w.Record(LibxlStream.REC_TYPE_LIBXC_CONTEXT, []);
        var reader = new SaveFileReader(new MemoryStream(s.ToArray()), "bad");
        var e = Assert.Throws<SaveFileException>(() => reader.ReadCheckpoint());
        Assert.Contains("where a checkpoint ends", e.Message);

        s = new MemoryStream();
        w = new MigrationRecordWriter(s);
        w.Record(LibxcStream.REC_TYPE_X86_PV_INFO, new byte[8]);
        reader = new SaveFileReader(new MemoryStream(s.ToArray()), "pv");
        Assert.Throws<SaveFileException>(() => reader.ReadCheckpoint());
    }
}
