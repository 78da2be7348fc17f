using XenSharp.Public;

namespace XenSharp.Backends.Block.Images;

/// <summary>
/// What the formats with metadata (qcow2, qcow, vhd) share: one lock per image guarding its
/// metadata (held for whole requests unless the format says otherwise),
/// argument checks, and the rule that a request fails with an errno — corrupt metadata, a host I/O
/// error — and never throws.
/// </summary>
internal abstract class FormattedImage : IBlockImage
{
    protected readonly ImageFile File;
    protected readonly BlockImageOptions Options;
    protected readonly object Lock = new();
    private volatile bool _disposed;

    protected FormattedImage(ImageFile file, BlockImageOptions options)
    {
        File = file;
        Options = options;
    }

    public string Name => File.Path;
    public abstract BlockImageFormat Format { get; }
    public long Size { get; protected init; }
    public int SectorSize => 512;
    public bool ReadOnly => !File.Writable;
    public virtual bool SupportsDiscard => !ReadOnly;
    public virtual int DiscardGranularity => SectorSize;
    /// <summary>The image this one reads unallocated ranges from, if any.</summary>
    public IBlockImage? Backing { get; protected init; }

    public int Read(long offset, Span<byte> destination)
    {
        int check = Check(offset, destination.Length);
        if (check != 0)
            return check;
        bool locked = false;
        try
        {
            if (!LocksItself)
                Monitor.Enter(Lock, ref locked);
            return _disposed ? -Errno.EIO : ReadCore(offset, destination);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return Fail(e, "read", offset);
        }
        finally
        {
            if (locked)
                Monitor.Exit(Lock);
        }
    }

    public int Write(long offset, ReadOnlySpan<byte> source)
    {
        if (ReadOnly)
            return -Errno.EROFS;
        int check = Check(offset, source.Length);
        if (check != 0)
            return check;
        bool locked = false;
        try
        {
            if (!LocksItself)
                Monitor.Enter(Lock, ref locked);
            return _disposed ? -Errno.EIO : WriteCore(offset, source);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return Fail(e, "write", offset);
        }
        finally
        {
            if (locked)
                Monitor.Exit(Lock);
        }
    }

    public int Flush()
    {
        if (ReadOnly)
            return 0;
        try
        {
            return _disposed ? -Errno.EIO : FlushCore();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return Fail(e, "flush", 0);
        }
    }

    public int Discard(long offset, long length)
    {
        if (ReadOnly)
            return -Errno.EROFS;
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
            return -Errno.EINVAL;
        bool locked = false;
        try
        {
            if (!LocksItself)
                Monitor.Enter(Lock, ref locked);
            return _disposed ? -Errno.EIO : DiscardCore(offset, length);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return Fail(e, "discard", offset);
        }
        finally
        {
            if (locked)
                Monitor.Exit(Lock);
        }
    }

    public long RefreshSize() => Size;

    /// <summary>
    /// A size rounded up to whole sectors, as QEMU's block layer counts it: the tail of a file or
    /// virtual size that ends mid-sector reads as zeros.
    /// </summary>
    public static long SectorAligned(long size) => (size + 511) & ~511L;

    /// <summary>
    /// True for a format that takes <see cref="Lock"/> only around its metadata, so that the data I/O
    /// of many requests proceeds in parallel; otherwise each request runs whole under the lock.
    /// </summary>
    protected virtual bool LocksItself => false;

    protected abstract int ReadCore(long offset, Span<byte> destination);
    protected abstract int WriteCore(long offset, ReadOnlySpan<byte> source);
    protected virtual int DiscardCore(long offset, long length) => 0;

    /// <summary>Makes completed writes durable. Needs no lock where every completed write is in the file already.</summary>
    protected virtual int FlushCore() => File.DataSync();

    /// <summary>Writes back what the format holds in memory, under the lock, before the file closes.</summary>
    protected virtual void Close() { }

    /// <summary>Fills <paramref name="destination"/> from the backing image, zeros past its end or without one.</summary>
    protected int ReadBacking(long offset, Span<byte> destination)
    {
        if (Backing is null || offset >= Backing.Size)
        {
            destination.Clear();
            return 0;
        }
        int inBacking = (int)Math.Min(destination.Length, Backing.Size - offset);
        destination[inBacking..].Clear();
        return Backing.Read(offset, destination[..inBacking]);
    }

    private int Check(long offset, int length)
    {
        if (offset < 0 || (offset | (uint)length) % SectorSize != 0 || offset > Size || length > Size - offset)
            return -Errno.EINVAL;
        return 0;
    }

    private int Fail(Exception e, string what, long offset)
    {
        // Anything but damaged metadata or a host I/O error is a bug here; it still fails only this request.
        string kind = e is ImageCorruptException or IOException or UnauthorizedAccessException ? "" : $" ({e.GetType().Name})";
        Options.Log?.Invoke($"{Name}: {what} at {offset} failed{kind}: {e.Message}");
        return e is ImageCorruptException ? -Errno.EIO : ImageFile.ErrnoOf(e);
    }

    public void Dispose()
    {
        lock (Lock)
        {
            if (_disposed)
                return;
            _disposed = true;
            try
            {
                Close();
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Options.Log?.Invoke($"{Name}: closing failed: {e.Message}");
            }
            File.Dispose();
            Backing?.Dispose();
        }
    }
}
