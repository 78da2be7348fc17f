using System.Text;
using XenSharp.Hypervisor.Common;
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

    [Fact]
    public void HugeWritesArriveInBoundedPiecesAndFaultAtTheEndOfRam()
    {
        var g = new Guest(_host, ramMiB: 4);
        int len = 3 * ConsoleIo.BytesPerCall + 100;
        var text = Enumerable.Range(0, len).Select(i => (byte)('a' + i % 26)).ToArray();
        _host.WriteGuestMemory(g.Id, 0x100000, text);
        long seen = 0;
        using var sub = _host.SubscribeConsole(g.Id, b => Interlocked.Add(ref seen, b.Length));

        // Each invocation copies at most BytesPerCall bytes, then the guest re-issues the call for the rest.
        var v = g.Vcpu();
        v.Continuation = null;
        Assert.Equal(0, Hypercall.Dispatch(v, Xen.__HYPERVISOR_console_io, new HypercallArgs(Xen.CONSOLEIO_write, (ulong)len, 0x100000)));
        Assert.Equal(new HypercallArgs(Xen.CONSOLEIO_write, (ulong)(len - ConsoleIo.BytesPerCall), 0x100000 + (ulong)ConsoleIo.BytesPerCall), v.Continuation);
        Assert.Equal(ConsoleIo.BytesPerCall, Interlocked.Read(ref seen));
        Assert.Equal(0, g.CallToCompletion(Xen.__HYPERVISOR_console_io, Xen.CONSOLEIO_write, (ulong)(len - ConsoleIo.BytesPerCall),
            0x100000 + (ulong)ConsoleIo.BytesPerCall, out int pieces));
        Assert.Equal(3, pieces);
        Assert.Equal(len, Interlocked.Read(ref seen));
        Assert.Equal(text[^100..], _host.ReadConsoleHistory(g.Id)[^100..]);

        // A 4 GiB count (the ABI's unsigned int; higher bits are ignored) runs until it leaves the guest's RAM.
        Assert.Equal(-Errno.EFAULT, g.CallToCompletion(Xen.__HYPERVISOR_console_io, Xen.CONSOLEIO_write, 0xFFFF_FFFF_FFFF_FFFF, 0x100000, out pieces));
        Assert.Equal((4 * 1024 * 1024 - 0x100000) / ConsoleIo.BytesPerCall + 1, pieces);
        Assert.True(_host.ReadConsoleHistory(g.Id).Length <= 16 * 1024);
    }

    [Fact]
    public void AContinuationRewindsTheVmcallWithUpdatedArguments()
    {
        var g = new Guest(_host, vcpus: 1);
        var cpu = g.Cpu();
        int len = ConsoleIo.BytesPerCall + 5;
        _host.WriteGuestMemory(g.Id, 0x100000, Enumerable.Repeat((byte)'x', len).ToArray());
        cpu.Regs.Rax = Xen.__HYPERVISOR_console_io;
        cpu.Regs.Rdi = Xen.CONSOLEIO_write;
        cpu.Regs.Rsi = (ulong)len;
        cpu.Regs.Rdx = 0x100000;
        cpu.Regs.Rip = 0x5003;
        X86.VmExit.DoHypercall(g.Vcpu(), cpu);
        Assert.Equal(0x5000UL, cpu.Regs.Rip);
        Assert.Equal((ulong)Xen.__HYPERVISOR_console_io, cpu.Regs.Rax);
        Assert.Equal(5UL, cpu.Regs.Rsi);
        Assert.Equal(0x100000UL + (ulong)ConsoleIo.BytesPerCall, cpu.Regs.Rdx);
        cpu.Regs.Rip = 0x5003;
        X86.VmExit.DoHypercall(g.Vcpu(), cpu);
        Assert.Equal(0x5003UL, cpu.Regs.Rip);
        Assert.Equal(0UL, cpu.Regs.Rax);
        Assert.Equal(len, _host.ReadConsoleHistory(g.Id).Length);
    }

    [Fact]
    public void AContinuationInsideAMulticallResumesAtItsEntry()
    {
        var g = new Guest(_host);
        int len = ConsoleIo.BytesPerCall + 9;
        _host.WriteGuestMemory(g.Id, 0x100000, Enumerable.Repeat((byte)'m', len).ToArray());
        // Two entries: a long console write, then a short one.
        const ulong list = Guest.Scratch + 0x1000;
        var first = new MulticallEntry { Op = Xen.__HYPERVISOR_console_io };
        unsafe
        {
            first.Args[0] = Xen.CONSOLEIO_write;
            first.Args[1] = (ulong)len;
            first.Args[2] = 0x100000;
        }
        var second = first;
        unsafe
        {
            second.Args[1] = 3;
        }
        g.Write(list, first);
        g.Write(list + 64, second);

        var v = g.Vcpu();
        v.Continuation = null;
        Assert.Equal(0, Hypercall.Dispatch(v, Xen.__HYPERVISOR_multicall, new HypercallArgs(list, 2)));
        // The batch yields at its first entry, whose arguments now describe the rest of the write.
        Assert.Equal(new HypercallArgs(list, 2), v.Continuation);
        var resumed = g.Read<MulticallEntry>(list);
        unsafe
        {
            Assert.Equal((ulong)(len - ConsoleIo.BytesPerCall), resumed.Args[1]);
            Assert.Equal(0x100000UL + (ulong)ConsoleIo.BytesPerCall, resumed.Args[2]);
        }
        Assert.Equal(0, g.CallToCompletion(Xen.__HYPERVISOR_multicall, list, 2, 0, out int pieces));
        Assert.Equal(1, pieces);
        Assert.Equal(len + 3, _host.ReadConsoleHistory(g.Id).Length);
        Assert.Equal(0UL, g.Read<MulticallEntry>(list).Result);
        Assert.Equal(0UL, g.Read<MulticallEntry>(list + 64).Result);
    }
}
