using System.Text;

namespace XenSharp.Artifacts;

/// <summary>Writes a cpio archive in the "newc" format that the Linux initramfs unpacker reads.</summary>
public sealed class CpioWriter : IDisposable
{
    private readonly Stream _out;
    private uint _ino = 1;
    private long _written;

    public CpioWriter(Stream output) => _out = output;

    public void AddDirectory(string path, uint mode = 0x41ED /* drwxr-xr-x */) =>
        AddEntry(path, mode, ReadOnlySpan<byte>.Empty);

    public void AddFile(string path, ReadOnlySpan<byte> data, uint permissions = 0x1A4 /* rw-r--r-- */) =>
        AddEntry(path, 0x8000 | permissions, data);

    public void AddSymlink(string path, string target) =>
        AddEntry(path, 0xA1FF, Encoding.UTF8.GetBytes(target));

    public void AddCharDevice(string path, uint major, uint minor, uint permissions = 0x180) =>
        AddEntry(path, 0x2000 | permissions, ReadOnlySpan<byte>.Empty, major, minor);

    private void AddEntry(string path, uint mode, ReadOnlySpan<byte> data, uint rdevMajor = 0, uint rdevMinor = 0)
    {
        var name = Encoding.UTF8.GetBytes(path.TrimStart('/'));
        var header = new StringBuilder("070701");
        foreach (var field in new uint[] { _ino++, mode, 0, 0, 1, 0, (uint)data.Length, 0, 0, rdevMajor, rdevMinor, (uint)name.Length + 1, 0 })
            header.Append(field.ToString("X8"));
        Write(Encoding.ASCII.GetBytes(header.ToString()));
        Write(name);
        Write([0]);
        Pad();
        Write(data);
        Pad();
    }

    private void Write(ReadOnlySpan<byte> bytes)
    {
        _out.Write(bytes);
        _written += bytes.Length;
    }

    private void Pad()
    {
        while (_written % 4 != 0) Write([0]);
    }

    /// <summary>Writes the trailer entry; the archive is complete afterwards.</summary>
    public void Dispose()
    {
        AddEntry("TRAILER!!!", 0, ReadOnlySpan<byte>.Empty);
        _out.Flush();
    }
}
