using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Public;
using static XenSharp.Public.Hypfs;

namespace XenSharp.Hypervisor.Tests;

/// <summary>
/// __HYPERVISOR_hypfs_op as a Domain-0 program reaches it: the wire format of directory listings and typed leaves,
/// the size a too-small buffer learns, runtime parameter writes, and Xen's errno for malformed calls.
/// </summary>
[Trait("Feature", "Runtime parameters")]
public sealed unsafe class HypfsTests : IDisposable
{
    private const ulong CallerBase = 0x7f00_0000_0000;
    private const int BufferBytes = 64 * 1024;
    private const int PathAt = 0, DataAt = 4096;
    private readonly XenHypervisor _host = TestHosts.Create(pcpus: 1);
    private readonly byte* _buffers = (byte*)NativeMemory.AllocZeroed(BufferBytes);
    private readonly Dom0HypercallContext _dom0;

    public HypfsTests() => _dom0 = _host.OpenDom0Hypercalls((nint)_buffers, CallerBase, BufferBytes);

    public void Dispose()
    {
        _dom0.Dispose();
        _host.Dispose();
        NativeMemory.Free(_buffers);
    }

    private ulong PutPath(string path, bool terminate = true)
    {
        var bytes = Encoding.UTF8.GetBytes(terminate ? path + "\0" : path);
        bytes.CopyTo(new Span<byte>(_buffers + PathAt, bytes.Length));
        return (ulong)bytes.Length;
    }

    private long Op(uint cmd, string path, ulong length, bool terminate = true) =>
        _dom0.Hypercall(Xen.__HYPERVISOR_hypfs_op, cmd, CallerBase + PathAt, PutPath(path, terminate), CallerBase + DataAt, length);

    private XenHypfsDirentry Header => *(XenHypfsDirentry*)(_buffers + DataAt);
    private ReadOnlySpan<byte> Content => new(_buffers + DataAt + sizeof(XenHypfsDirentry), (int)Header.ContentLen);

    private List<(string Name, byte Type, uint Length, uint MaxWrite)> List(string path)
    {
        Assert.Equal(0, Op(XEN_HYPFS_OP_read, path, 8192));
        Assert.Equal(XEN_HYPFS_TYPE_DIR, Header.Type);
        var entries = new List<(string, byte, uint, uint)>();
        var content = Content.ToArray();
        for (int at = 0; ;)
        {
            var e = MemoryMarshal.Read<XenHypfsDirentry>(content.AsSpan(at));
            ushort next = BitConverter.ToUInt16(content, at + 12);
            int nameEnd = Array.IndexOf(content, (byte)0, at + DirlistNameOffset);
            entries.Add((Encoding.UTF8.GetString(content, at + DirlistNameOffset, nameEnd - at - DirlistNameOffset), e.Type, e.ContentLen, e.MaxWriteLen));
            if (next == 0)
                break;
            Assert.Equal(0, next % 4);
            at += next;
        }
        Assert.True(content.Length >= entries.Count * 16);
        return entries;
    }

    [Fact, Trait("Feature", "Build info")]
    public void TheTreeListsXensDirectoriesAndTypedLeaves()
    {
        Assert.Equal(XEN_HYPFS_VERSION, _dom0.Hypercall(Xen.__HYPERVISOR_hypfs_op, XEN_HYPFS_OP_get_version));
        Assert.Equal(["buildinfo", "params"], List("/").Select(e => e.Name));
        var version = List("/buildinfo/version");
        Assert.Equal(("major", XEN_HYPFS_TYPE_UINT, 4u, 0u), version[0]);
        Assert.Equal(("minor", XEN_HYPFS_TYPE_UINT, 4u, 0u), version[1]);
        Assert.Equal(XEN_HYPFS_TYPE_STRING, version[2].Type);

        Assert.Equal(0, Op(XEN_HYPFS_OP_read, "/buildinfo/version/minor", 64));
        Assert.Equal(14u, BitConverter.ToUInt32(Content));
        Assert.Equal(0, Op(XEN_HYPFS_OP_read, "/buildinfo/version/extra", 64));
        Assert.Equal(".0\0", Encoding.ASCII.GetString(Content));
        // Empty components are skipped, as Xen's path walk does.
        Assert.Equal(0, Op(XEN_HYPFS_OP_read, "//buildinfo//version/major", 64));
        Assert.Equal(4u, BitConverter.ToUInt32(Content));
    }

    [Fact, Trait("Feature", "Build info")]
    public void ASmallBufferLearnsTheSizeItNeeds()
    {
        Assert.Equal(-Errno.ENOBUFS, Op(XEN_HYPFS_OP_read, "/buildinfo", (ulong)sizeof(XenHypfsDirentry)));
        uint needed = Header.ContentLen;
        Assert.True(needed > 0);
        Assert.Equal(0, Op(XEN_HYPFS_OP_read, "/buildinfo", (ulong)sizeof(XenHypfsDirentry) + needed));
        Assert.Equal(-Errno.EINVAL, Op(XEN_HYPFS_OP_read, "/buildinfo", (ulong)sizeof(XenHypfsDirentry) - 1));
    }

    [Fact]
    public void MalformedCallsGetXensErrno()
    {
        Assert.Equal(-Errno.EINVAL, _dom0.Hypercall(Xen.__HYPERVISOR_hypfs_op, XEN_HYPFS_OP_get_version, CallerBase));
        Assert.Equal(-Errno.EOPNOTSUPP, Op(7, "/", 64));
        Assert.Equal(-Errno.EINVAL, Op(XEN_HYPFS_OP_read, "/buildinfo", 64, terminate: false));
        Assert.Equal(-Errno.EINVAL, Op(XEN_HYPFS_OP_read, "buildinfo", 64));
        Assert.Equal(-Errno.EINVAL, _dom0.Hypercall(Xen.__HYPERVISOR_hypfs_op, XEN_HYPFS_OP_read, CallerBase, XEN_HYPFS_MAX_PATHLEN + 1, CallerBase + DataAt, 64));
        Assert.Equal(-Errno.ENOENT, Op(XEN_HYPFS_OP_read, "/buildinfo/nothing", 64));
        Assert.Equal(-Errno.ENOENT, Op(XEN_HYPFS_OP_read, "/buildinfo/version/major/below", 64));
        Assert.Equal(-Errno.EFAULT, _dom0.Hypercall(Xen.__HYPERVISOR_hypfs_op, XEN_HYPFS_OP_read, 0x1000, 2, CallerBase + DataAt, 64));
    }

    private long Write(string path, byte[] value)
    {
        value.CopyTo(new Span<byte>(_buffers + DataAt, value.Length));
        return _dom0.Hypercall(Xen.__HYPERVISOR_hypfs_op, XEN_HYPFS_OP_write_contents, CallerBase + PathAt, PutPath(path), CallerBase + DataAt, (ulong)value.Length);
    }

    [Fact]
    public void RuntimeParametersTakeValidValuesOnly()
    {
        var p = List("/params").Single(e => e.Name == "console_timestamps");
        Assert.Equal(XEN_HYPFS_TYPE_STRING, p.Type);
        Assert.True(p.MaxWrite > 0);

        Assert.Equal(0, Write("/params/console_timestamps", "boot\0"u8.ToArray()));
        _host.DebugKeys("h");
        Assert.Matches(@"\(XEN\) \[\s*\d+\.\d{6}\] 'h' pressed", _host.ReadDmesg());
        Assert.Equal(0, Op(XEN_HYPFS_OP_read, "/params/console_timestamps", 256));
        Assert.Equal("boot\0", Encoding.ASCII.GetString(Content));

        Assert.Equal(-Errno.EINVAL, Write("/params/console_timestamps", "often\0"u8.ToArray()));
        Assert.Equal(-Errno.EDOM, Write("/params/console_timestamps", "raw"u8.ToArray()));
        Assert.Equal(-Errno.EDOM, Write("/params/console_timestamps", "ra\0w\0"u8.ToArray()));
        Assert.Equal(-Errno.ENOSPC, Write("/params/console_timestamps", new byte[HypfsMaxParam + 1]));
        Assert.Equal(-Errno.EACCES, Write("/buildinfo/version/major", [5, 0, 0, 0]));
        Assert.Equal(-Errno.EACCES, Write("/params", "x\0"u8.ToArray()));
        Assert.Equal(0, Op(XEN_HYPFS_OP_read, "/params/console_timestamps", 256));
        Assert.Equal("boot\0", Encoding.ASCII.GetString(Content));

        Assert.Equal(0, Write("/params/console_timestamps", "no\0"u8.ToArray()));
        Assert.Equal(0, Op(XEN_HYPFS_OP_read, "/params/console_timestamps", 256));
        Assert.Equal("none\0", Encoding.ASCII.GetString(Content));
    }

    private const int HypfsMaxParam = 128;
}
