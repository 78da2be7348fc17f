using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Public;
using static XenSharp.Public.Hypfs;

namespace XenSharp.Hypervisor.Common;

/// <summary>
/// The hypervisor file system (Xen's common/hypfs.c, __HYPERVISOR_hypfs_op): a tree of directories and typed leaves a
/// control domain reads (`xenhypfs ls/cat`) and whose runtime parameters it writes (`xenhypfs write`,
/// `xl set-parameters`). The tree is Xen's: /buildinfo with the version and compile information, and /params with
/// the parameters that can change while the hypervisor runs.
/// </summary>
internal sealed class HypfsTree
{
    /// <summary>Longest value a runtime parameter takes (Xen's MAX_PARAM_SIZE).</summary>
    public const int MaxParamSize = 128;

    private readonly HypfsDir _root = new("");

    public HypfsTree(HostServices host)
    {
        var build = _root.Add(new HypfsDir("buildinfo"));
        build.Add(HypfsLeaf.String("changeset", () => XenVersion.Changeset));
        var compile = build.Add(new HypfsDir("compileinfo"));
        var info = XenVersion.CompileInfo();
        compile.Add(HypfsLeaf.String("compile_by", () => CString(info.AsSpan(64, 16))));
        compile.Add(HypfsLeaf.String("compile_date", () => CString(info.AsSpan(112, 32))));
        compile.Add(HypfsLeaf.String("compile_domain", () => CString(info.AsSpan(80, 32))));
        compile.Add(HypfsLeaf.String("compiler", () => CString(info.AsSpan(0, 64))));
        var version = build.Add(new HypfsDir("version"));
        version.Add(HypfsLeaf.Uint("major", () => XenVersion.Major));
        version.Add(HypfsLeaf.Uint("minor", () => XenVersion.Minor));
        version.Add(HypfsLeaf.String("extra", () => XenVersion.ExtraVersion));

        var parameters = _root.Add(new HypfsDir("params"));
        parameters.Add(HypfsLeaf.Parameter("console_timestamps", () => host.ConsoleTimestamps.Name(), host.SetConsoleTimestamps));
    }

    private static string CString(ReadOnlySpan<byte> field)
    {
        int n = field.IndexOf((byte)0);
        return Encoding.ASCII.GetString(n < 0 ? field : field[..n]);
    }

    /// <summary>The entry at an absolute path ("/" the root; empty components are skipped as Xen skips them); null when
    /// there is none.</summary>
    public HypfsEntry? Find(string path)
    {
        HypfsEntry e = _root;
        foreach (var name in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            if (e is not HypfsDir dir || dir.Child(name) is not { } child)
                return null;
            e = child;
        }
        return e;
    }

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        if (!v.Domain.IsPrivileged)
            return -Errno.EPERM;
        uint cmd = (uint)a.A1;
        if (cmd == XEN_HYPFS_OP_get_version)
            return a.A2 != 0 || a.A3 != 0 || a.A4 != 0 || a.A5 != 0 ? -Errno.EINVAL : XEN_HYPFS_VERSION;
        if (cmd != XEN_HYPFS_OP_read && cmd != XEN_HYPFS_OP_write_contents)
            return -Errno.EOPNOTSUPP;

        // The path comes NUL-terminated with its length, at most XEN_HYPFS_MAX_PATHLEN bytes.
        ulong pathLen = a.A3;
        if (pathLen == 0 || pathLen > XEN_HYPFS_MAX_PATHLEN)
            return -Errno.EINVAL;
        Span<byte> raw = stackalloc byte[(int)pathLen];
        if (!GuestAccess.CopyFrom(v, a.A2, raw))
            return -Errno.EFAULT;
        if (raw[^1] != 0 || raw[0] != (byte)'/')
            return -Errno.EINVAL;
        string path = Encoding.UTF8.GetString(raw[..^1]);
        var tree = v.Domain.Host.Hypfs;
        var entry = tree.Find(path);
        if (entry == null)
            return -Errno.ENOENT;
        ulong buffer = a.A4, length = a.A5;
        return cmd == XEN_HYPFS_OP_read ? Read(v, entry, buffer, length) : Write(v, entry, buffer, length);
    }

    private static long Read(Vcpu v, HypfsEntry entry, ulong buffer, ulong length)
    {
        int header = Marshal.SizeOf<XenHypfsDirentry>();
        if (length < (ulong)header)
            return -Errno.EINVAL;
        byte[] content = entry.Content();
        var e = new XenHypfsDirentry
        {
            Type = entry.Type,
            Encoding = XEN_HYPFS_ENC_PLAIN,
            ContentLen = (uint)content.Length,
            MaxWriteLen = (uint)entry.MaxWriteLen,
        };
        if (!GuestAccess.Write(v, buffer, e))
            return -Errno.EFAULT;
        // A buffer too small still learns the size it needs from the header.
        if (length < (ulong)(header + content.Length))
            return -Errno.ENOBUFS;
        return GuestAccess.CopyTo(v, buffer + (ulong)header, content) ? 0 : -Errno.EFAULT;
    }

    private static long Write(Vcpu v, HypfsEntry entry, ulong buffer, ulong length)
    {
        if (entry is not HypfsLeaf leaf || leaf.MaxWriteLen == 0)
            return -Errno.EACCES;
        if (length > (ulong)leaf.MaxWriteLen)
            return -Errno.ENOSPC;
        var data = new byte[length];
        if (!GuestAccess.CopyFrom(v, buffer, data))
            return -Errno.EFAULT;
        return leaf.Write(data);
    }
}

internal abstract class HypfsEntry(string name, byte type)
{
    public string Name { get; } = name;
    public byte Type { get; } = type;
    public virtual int MaxWriteLen => 0;

    /// <summary>What a read returns after the direntry header.</summary>
    public abstract byte[] Content();
}

internal sealed class HypfsDir(string name) : HypfsEntry(name, XEN_HYPFS_TYPE_DIR)
{
    private readonly List<HypfsEntry> _children = [];

    public T Add<T>(T child) where T : HypfsEntry
    {
        _children.Add(child);
        return child;
    }

    public HypfsEntry? Child(string name) => _children.Find(c => c.Name == name);

    /// <summary>One xen_hypfs_dirlistentry per child: its direntry, the offset of the next (0 for the last) and its
    /// NUL-terminated name, padded to the entry's 4-byte alignment.</summary>
    public override byte[] Content()
    {
        var bytes = new List<byte>();
        for (int i = 0; i < _children.Count; i++)
        {
            var c = _children[i];
            byte[] name = Encoding.UTF8.GetBytes(c.Name);
            int size = (DirlistNameOffset + name.Length + 1 + 3) & ~3;
            var entry = new byte[size];
            entry[0] = c.Type;
            entry[1] = XEN_HYPFS_ENC_PLAIN;
            BinaryPrimitives.WriteUInt32LittleEndian(entry.AsSpan(4), (uint)c.Content().Length);
            BinaryPrimitives.WriteUInt32LittleEndian(entry.AsSpan(8), (uint)c.MaxWriteLen);
            BinaryPrimitives.WriteUInt16LittleEndian(entry.AsSpan(12), (ushort)(i == _children.Count - 1 ? 0 : size));
            name.CopyTo(entry.AsSpan(DirlistNameOffset));
            bytes.AddRange(entry);
        }
        return [.. bytes];
    }
}

/// <summary>A typed value: a string (NUL-terminated), or an unsigned integer of its C type's size; a runtime parameter
/// is a writable string whose write goes to its parser, which answers 0 or -errno as Xen's custom parameters do.</summary>
internal sealed class HypfsLeaf : HypfsEntry
{
    private readonly Func<byte[]> _read;
    private readonly Func<string, long>? _set;

    private HypfsLeaf(string name, byte type, Func<byte[]> read, Func<string, long>? set = null) : base(name, type)
    {
        _read = read;
        _set = set;
    }

    public static HypfsLeaf String(string name, Func<string> value) =>
        new(name, XEN_HYPFS_TYPE_STRING, () => Encoding.UTF8.GetBytes(value() + "\0"));

    public static HypfsLeaf Uint(string name, Func<uint> value) =>
        new(name, XEN_HYPFS_TYPE_UINT, () => BitConverter.GetBytes(value()));

    public static HypfsLeaf Parameter(string name, Func<string> value, Func<string, long> set) =>
        new(name, XEN_HYPFS_TYPE_STRING, () => Encoding.UTF8.GetBytes(value() + "\0"), set);

    public override int MaxWriteLen => _set == null ? 0 : HypfsTree.MaxParamSize;

    public override byte[] Content() => _read();

    public long Write(ReadOnlySpan<byte> data)
    {
        // A parameter's value is one NUL-terminated string: a NUL anywhere else is malformed.
        if (data.Length == 0 || data.IndexOf((byte)0) != data.Length - 1)
            return -Errno.EDOM;
        return _set!(Encoding.UTF8.GetString(data[..^1]));
    }
}

/// <summary>Xen's console timestamp modes (console_timestamps=).</summary>
internal enum ConsoleTimestamps { None, Date, DateMs, Boot, Raw }

internal static class ConsoleTimestampsExtensions
{
    public static string Name(this ConsoleTimestamps mode) => mode switch
    {
        ConsoleTimestamps.Date => "date",
        ConsoleTimestamps.DateMs => "datems",
        ConsoleTimestamps.Boot => "boot",
        ConsoleTimestamps.Raw => "raw",
        _ => "none",
    };

    /// <summary>A boolean (off: none, on: date, as Xen's old boolean form), a mode's name, or null.</summary>
    public static ConsoleTimestamps? Parse(string value) => value switch
    {
        "0" or "no" or "false" or "off" or "disable" or "none" => ConsoleTimestamps.None,
        "" or "1" or "yes" or "true" or "on" or "enable" or "date" => ConsoleTimestamps.Date,
        "datems" => ConsoleTimestamps.DateMs,
        "boot" => ConsoleTimestamps.Boot,
        "raw" => ConsoleTimestamps.Raw,
        _ => null,
    };
}
