using XenSharp.Public.Migration;
using XenSharp.Toolstack.Save;

namespace XenSharp.Toolstack.Tests.Save;

/// <summary>
/// The backup's reading of a Remus stream after its first checkpoint: each checkpoint's records come back only once
/// libxc's CHECKPOINT and libxl's CHECKPOINT_END have closed it, so a stream cut inside a checkpoint gives nothing of
/// it (the backup keeps the last complete one); END ends the stream; a checkpoint closed by anything else is refused.
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
            var (first, ended1) = reader.ReadCheckpoint();
            Assert.False(ended1);
            Assert.Equal([LibxcStream.REC_TYPE_PAGE_DATA, LibxcStream.REC_TYPE_HVM_CONTEXT], first.Select(r => r.Type));
            var (second, _) = reader.ReadCheckpoint();
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
        var (last, ended) = reader.ReadCheckpoint();
        Assert.True(ended);
        Assert.Equal(2, last.Count);
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
