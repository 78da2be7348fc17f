using System.Text;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Tests;

public class ConsoleTests : IDisposable
{
    private readonly XenHypervisor _host = TestHosts.Create();
    public void Dispose() => _host.Dispose();

    [Fact]
    public void ConsoleIoWriteReachesDomainStreamAndDmesg()
    {
        var g = new Guest(_host);
        var seen = new StringBuilder();
        using var sub = _host.SubscribeConsole(g.Id, b => { lock (seen) seen.Append(Encoding.ASCII.GetString(b.Span)); });
        var text = Encoding.ASCII.GetBytes("hello from the guest\n");
        _host.WriteGuestMemory(g.Id, Guest.Scratch, text);
        Assert.Equal(0, g.Call(Xen.__HYPERVISOR_console_io, Xen.CONSOLEIO_write, (ulong)text.Length, Guest.Scratch));
        lock (seen)
            Assert.Equal("hello from the guest\n", seen.ToString());
        Assert.Equal("hello from the guest\n", Encoding.ASCII.GetString(_host.ReadConsoleHistory(g.Id)));
        Assert.Contains($"(d{g.Id}) hello from the guest", _host.ReadDmesg());
    }

    [Fact]
    public void ErrorsFollowXen()
    {
        var g = new Guest(_host);
        Assert.Equal(-Errno.EFAULT, g.Call(Xen.__HYPERVISOR_console_io, Xen.CONSOLEIO_write, 10, Guest.Bad));
        Assert.Equal(-Errno.EPERM, g.Call(Xen.__HYPERVISOR_console_io, Xen.CONSOLEIO_read, 10, Guest.Scratch));
        Assert.Equal(-Errno.ENOSYS, g.Call(Xen.__HYPERVISOR_console_io, 7, 10, Guest.Scratch));
    }

    [Fact]
    public void DmesgClearEmptiesTheRing()
    {
        Assert.Contains("Xen version 4.14", _host.ReadDmesg(clear: true));
        Assert.Equal("", _host.ReadDmesg());
    }
}
