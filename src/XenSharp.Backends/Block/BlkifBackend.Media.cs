using System.Buffers.Binary;
using System.Globalization;
using Microsoft.Win32.SafeHandles;
using XenSharp.Backends.Block.Images;
using XenSharp.Backends.Xenbus;
using XenSharp.Public.Io;
using static XenSharp.Public.Io.Blkif;

namespace XenSharp.Backends.Block;

/// <summary>
/// What changes under a connected disk without a new device: the medium of a CD-ROM drive and the size of
/// an image. <c>xl cd-insert</c>/<c>cd-eject</c> rewrite the backend's <c>params</c> (as libxl does); a watch
/// on it makes the backend close its image and open the new one, or none (an empty drive). An image that
/// grows on the host (<c>qemu-img resize</c>, a larger block device) is noticed by a check once a second on
/// the I/O thread: the raw file's length, or the qcow/qcow2 header's size field, after which a qcow2 image
/// is reopened so that its tables are read again. Either way the backend writes the new <c>sectors</c> and
/// then its own <c>state</c> again, as Linux blkback's vbd_resize does, which makes blkfront re-read the
/// capacity of the disk it has mounted.
/// </summary>
internal sealed unsafe partial class BlkifBackend
{
    private static readonly TimeSpan SizeCheckPeriod = TimeSpan.FromSeconds(1);

    private IDisposable? _paramsWatch;
    private Timer? _sizeTimer;
    private MediaWork? _mediaWork;
    private int _paramsChanged, _mediaQueued;
    /// <summary>The <c>params</c> the open medium came from ("" for none).</summary>
    private string _mediaParams = "";
    /// <summary>A read-only handle on a qcow/qcow2 image for reading its header's size.</summary>
    private SafeFileHandle? _header;

    /// <summary>Media changes: CD-ROM inserts and ejects seen so far, and resizes published.</summary>
    public int MediaChanges { get; private set; }

    /// <summary>Starts following <c>params</c> and the image's size; called once the device has published its features.</summary>
    private void WatchMedia()
    {
        _mediaParams = ReadBackend("params") ?? "";
        _mediaWork = new MediaWork(this);
        _paramsWatch = Store.Watch($"{Address.BackendPath}/params", _ =>
        {
            Volatile.Write(ref _paramsChanged, 1);
            QueueMedia();
        });
        // One-shot, armed again after each check: once the I/O thread stops, nothing fires any more.
        _sizeTimer = new Timer(static s => ((BlkifBackend)s!).QueueMedia(), this, SizeCheckPeriod, Timeout.InfiniteTimeSpan);
    }

    private void QueueMedia()
    {
        if (_mediaWork is { } w && Interlocked.Exchange(ref _mediaQueued, 1) == 0)
            Context.Io.Schedule(w);
    }

    private sealed class MediaWork(BlkifBackend device) : IBackendWork
    {
        public void RunQueued()
        {
            Volatile.Write(ref device._mediaQueued, 0);
            try { device.CheckMedia(); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                System.Console.Error.WriteLine($"xensharpd: backend {device.Address}: media: {e.Message}");
            }
        }
    }

    /// <summary>On the I/O thread, between ring batches: a changed <c>params</c>, then the image's size.</summary>
    private void CheckMedia()
    {
        if (ReadBackend("state") is null)
        {
            // The toolstack removed the device: nothing more to follow.
            StopWatchingMedia();
            return;
        }
        try
        {
            if (Interlocked.Exchange(ref _paramsChanged, 0) != 0)
                ChangeMedia();
            CheckSize();
        }
        finally { _sizeTimer?.Change(SizeCheckPeriod, Timeout.InfiniteTimeSpan); }
    }

    /// <summary>cd-insert or cd-eject: the old medium is closed and the new one (if any) opened.</summary>
    private void ChangeMedia()
    {
        string param = ReadBackend("params") ?? "";
        if (param == _mediaParams) return;
        _mediaParams = param;
        MediaChanges++;
        CloseHeader();
        if (State is not (XenbusState.InitWait or XenbusState.Connected))
            return; // not open now: the next connect opens what params names
        CloseMedium();
        try { OpenImage(); }
        catch (BackendDeviceException e)
        {
            // The drive stays empty; the guest sees no medium rather than losing the device.
            System.Console.Error.WriteLine($"xensharpd: backend {Address}: {e.Message}");
            _sectors = 0;
        }
        PublishSize();
    }

    private void CloseMedium()
    {
        // Requests already on the workers finish on the medium they started on.
        _pool?.WaitForSubmitted();
        if (Interlocked.Exchange(ref _image, null) is { } old)
        {
            old.Flush();
            old.Dispose();
        }
        _sectors = 0;
    }

    /// <summary>Online resize: the image's size now, compared with what the frontend was told.</summary>
    private void CheckSize()
    {
        var image = _image;
        if (image is null) return;
        long size = image.Format switch
        {
            BlockImageFormat.Raw => image.RefreshSize(),
            BlockImageFormat.Qcow2 or BlockImageFormat.Qcow => QcowHeaderSize(image.Name),
            _ => image.Size,
        };
        if (size < 0 || size >> SectorShift == _sectors) return;
        if (image.Format is BlockImageFormat.Qcow2 or BlockImageFormat.Qcow)
        {
            // The tables may have moved with the size (a longer L1 table): read the image again.
            CloseMedium();
            try { OpenImage(); }
            catch (BackendDeviceException e) { Fail(e.Errno, e.Message); return; }
        }
        else
        {
            _sectors = size >> SectorShift;
        }
        MediaChanges++;
        PublishSize();
    }

    /// <summary>The virtual size in a qcow or qcow2 header (both keep it big-endian at byte 24); -1 if unreadable.</summary>
    private long QcowHeaderSize(string path)
    {
        const int SizeOffset = 24;
        try
        {
            _header ??= File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            Span<byte> b = stackalloc byte[8];
            if (RandomAccess.Read(_header, b, SizeOffset) != 8) return -1;
            long size = BinaryPrimitives.ReadInt64BigEndian(b);
            return size >= 0 ? size & ~(long)(_sectorSize - 1) : -1;
        }
        catch (IOException) { return -1; }
        catch (UnauthorizedAccessException) { return -1; }
    }

    /// <summary>The new capacity for the frontend: <c>sectors</c>, then <c>state</c> written again so that a
    /// connected blkfront's watch fires and it reads the capacity (blkback's vbd_resize).</summary>
    private void PublishSize()
    {
        WriteBackend("sectors", _sectors.ToString(CultureInfo.InvariantCulture));
        if (State == XenbusState.Connected)
            WriteBackend("state", ((int)XenbusState.Connected).ToString(CultureInfo.InvariantCulture));
    }

    private void CloseHeader()
    {
        _header?.Dispose();
        _header = null;
    }

    private void StopWatchingMedia()
    {
        _sizeTimer?.Dispose();
        _sizeTimer = null;
        _paramsWatch?.Dispose();
        _paramsWatch = null;
        _mediaWork = null;
        CloseHeader();
    }
}
