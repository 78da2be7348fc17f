using System.Collections.Concurrent;
using System.Diagnostics;
using XenSharp.Hypervisor;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Tests.Backends;

/// <summary>
/// A running guest's console notifications arrive on its pCPU thread (named pcpuN); the console's log is
/// written on the console backend's I/O thread, so a slow disk never holds a vCPU.
/// </summary>
public sealed class ConsoleIoThreadTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("xs-console-io").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void TheLogIsWrittenOnTheBackendThreadNotTheGuestsPcpu()
    {
        string elf = BuildConsoleEcho();
        using var xs = new XenStored();
        using var hv = new XenHypervisorPlatform(new XenHypervisor(new HypervisorOptions { MachineMemoryBytes = 128UL << 20, Pcpus = 1 }));
        using var host = new Host(hv, xs, new RunPaths(Path.Combine(_dir, "run")));
        var r = host.Handle(new CreateRequest($"name=\"echo\"\ntype=\"pvh\"\nkernel=\"{elf}\"\nmemory=16\n",
            Path.Combine(_dir, "echo.cfg"), _dir, [], Paused: true));
        Assert.True(r.Ok, r.Error);
        var created = System.Text.Json.JsonSerializer.Deserialize<CreateResult>(r.Result!.Value, ControlJson.Options)!;
        var console = host.Find(created.DomId)!.Console!;
        var writers = new ConcurrentQueue<string?>();
        console.LogWritten = () => writers.Enqueue(Thread.CurrentThread.Name);
        Assert.True(host.Handle(new UnpauseRequest(created.DomId.ToString())).Ok);

        string log = new RunPaths(Path.Combine(_dir, "run")).ConsoleLog("echo");
        string Log() { try { using var f = new FileStream(log, FileMode.Open, FileAccess.Read, FileShare.ReadWrite); return new StreamReader(f).ReadToEnd(); } catch (FileNotFoundException) { return ""; } }
        Wait.Until(() => Log().Contains("hello from the console ring"));
        Assert.Contains("hello from the console ring", Log());
        // Keystrokes come back as echoes, each one a notification from the guest's vCPU.
        Assert.Equal(2, console.WriteInput("ab"u8));
        Wait.Until(() => Log().Contains("<a<b"));
        Assert.Contains("<a<b", Log());

        Assert.NotEmpty(writers);
        Assert.All(writers, name => Assert.Equal("backend-console", name));

        // 'q': the guest says bye and powers off at once; its last line is in the log all the same.
        Assert.Equal(1, console.WriteInput("q"u8));
        Wait.Until(() => !host.DomainIds.Contains(created.DomId));
        Assert.DoesNotContain(created.DomId, host.DomainIds);
        Assert.EndsWith("bye\r\n", Log());
    }

    private string BuildConsoleEcho()
    {
        string elf = Path.Combine(_dir, "console-echo.elf");
        var psi = new ProcessStartInfo("gcc") { RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "-m32", "-O2", "-ffreestanding", "-fno-pic", "-fno-stack-protector", "-nostdlib", "-static", "-no-pie",
                     "-Wl,-Ttext-segment=0x100000", "-Wl,--build-id=none", "-Wl,-e,_start", "-o", elf,
                     Path.Combine(AppContext.BaseDirectory, "Guests", "console-echo.c") })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, "gcc failed: " + err);
        return elf;
    }
}
