using System.Buffers.Binary;
using System.Text;
using XenSharp.Backends.Xenbus;
using XenSharp.Dom0;
using XenSharp.Hypervisor;
using XenSharp.Public.Io;
using XenSharp.Store;
using XenSharp.Toolstack.Lifecycle;
using static XenSharp.Public.GrantTable;

namespace XenSharp.Toolstack.Tests.Backends;

/// <summary>
/// The xenbus handshake of a backend against the real xenstored and the real hypervisor: the test plays a
/// domain's frontend (hvc_xen's secondary console) through that domain's real grant table, event channels and
/// memory, and the console backend serves it. Whatever the frontend does wrong ends that device with an
/// error node, never the daemon.
/// </summary>
public sealed class XenbusBackendTests : IDisposable
{
    private const ulong RingGfn = 0x100;
    private readonly XenHypervisor _hv = new(new HypervisorOptions { MachineMemoryBytes = 64UL << 20, Pcpus = 1 });
    private readonly XenStored _xs = new();
    private readonly string _dir = Directory.CreateTempSubdirectory("xs-backends").FullName;
    private readonly BackendRegistry _backends;
    private readonly ushort _dom;

    public XenbusBackendTests()
    {
        _dom = _hv.CreateDomain(new XenSharp.Hypervisor.DomainCreateConfig(XenSharp.Hypervisor.DomainKind.Pvh, 16 * 1024, 1));
        _hv.PopulatePhysmap(_dom, RingGfn, 4);
        _backends = new BackendRegistry(_hv.Dom0Services, _xs, new BackendOptions { ConsoleLogPath = (d, i) => Path.Combine(_dir, $"d{d}-{i}.log") });
    }

    public void Dispose()
    {
        _backends.Dispose();
        _xs.Dispose();
        _hv.Dispose();
        Directory.Delete(_dir, true);
    }

    private DeviceAddress AddConsole(int devId)
    {
        var a = new DeviceAddress(DeviceKinds.Console, _dom, devId);
        DeviceLayout.Write(_xs, a, new Dictionary<string, string> { ["name"] = $"serial{devId}", ["protocol"] = "vt100" }, null);
        return a;
    }

    private XenbusState BackendState(DeviceAddress a) => (XenbusState)int.Parse(_xs.Read($"{a.BackendPath}/state") ?? "0");

    private void WaitFor(DeviceAddress a, XenbusState s)
    {
        Wait.Until(() => BackendState(a) == s);
        Assert.Equal(s, BackendState(a));
    }

    private void Frontend(DeviceAddress a, XenbusState s) => _xs.Write($"{a.FrontendPath}/state", ((int)s).ToString());

    /// <summary>What hvc_xen does to connect: grant the ring page to Domain-0, offer a port, publish both, Initialised.</summary>
    private (uint Gref, uint Port) FrontendConnects(DeviceAddress a, uint gref = 8, ulong gfn = RingGfn, bool grant = true, uint? port = null)
    {
        if (grant) _hv.SeedGrantEntry(_dom, gref, GTF_permit_access, 0, (uint)gfn);
        uint p = port ?? _hv.Dom0Services.AllocUnboundEventChannel(_dom);
        _xs.Write($"{a.FrontendPath}/ring-ref", gref.ToString());
        _xs.Write($"{a.FrontendPath}/port", p.ToString());
        Frontend(a, XenbusState.Initialised);
        return (gref, p);
    }

    /// <summary>Output placed in the frontend's out ring (xencons_interface) before it connects.</summary>
    private void GuestOutput(string text, ulong gfn = RingGfn, uint? prodOverride = null)
    {
        byte[] b = Encoding.ASCII.GetBytes(text);
        _hv.WriteGuestMemory(_dom, gfn * 4096 + XenconsInterface.OffsetOut, b);
        var prod = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(prod, prodOverride ?? (uint)b.Length);
        _hv.WriteGuestMemory(_dom, gfn * 4096 + XenconsInterface.OffsetOutProd, prod);
    }

    private uint GuestWord(int offset, ulong gfn = RingGfn)
    {
        var w = new byte[4];
        _hv.ReadGuestMemory(_dom, gfn * 4096 + (ulong)offset, w);
        return BinaryPrimitives.ReadUInt32LittleEndian(w);
    }

    private string? ErrorNode(DeviceAddress a) => _xs.Read($"{a.ErrorPath}/error");

    [Fact]
    public void TheBackendWaitsForTheFrontendThenConnectsAndServesItsRing()
    {
        GuestOutput("hello from hvc1\n");
        var a = AddConsole(1);
        WaitFor(a, XenbusState.InitWait);
        Assert.Equal("1", _xs.Read($"{a.FrontendPath}/state"));
        FrontendConnects(a);
        WaitFor(a, XenbusState.Connected);
        string log = Path.Combine(_dir, $"d{_dom}-1.log");
        Wait.Until(() => File.Exists(log) && File.ReadAllText(log).Length > 0);
        Assert.Equal("hello from hvc1\n", File.ReadAllText(log));
        Assert.Equal(16u, GuestWord(XenconsInterface.OffsetOutCons));
        Assert.Null(ErrorNode(a));
        Assert.NotNull(_backends.Find(a));
    }

    /// <summary>A reference beyond the frontend's grant table (Xen: GNTST_bad_gntref) and one inside it that grants
    /// nothing to Domain-0 (Xen: GNTST_general_error, "bad flags or dom") each end the device with that status.</summary>
    [Theory]
    [InlineData(100_000u, GNTST_bad_gntref)]
    [InlineData(77u, GNTST_general_error)]
    public void ARingRefThatWasNotGrantedEndsTheDeviceWithTheGrantTablesStatus(uint gref, short status)
    {
        // The real grant table says so first-hand.
        Assert.Equal(status, _hv.Dom0Services.MapGrantRef(_dom, gref, readOnly: false, out _));
        var a = AddConsole(1);
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a, gref: gref, grant: false);
        WaitFor(a, XenbusState.Closing);
        Assert.Equal($"{-status} mapping in shared page {gref} from domain {_dom}", ErrorNode(a));
        // The frontend sees Closing and closes its end; the backend follows.
        Frontend(a, XenbusState.Closed);
        WaitFor(a, XenbusState.Closed);
    }

    [Fact]
    public void GarbageInTheRingEndsThatDeviceAndTheOthersGoOn()
    {
        GuestOutput("junk", prodOverride: 5000); // out_prod 5000 ahead of out_cons 0 in a 2048-byte ring
        var bad = AddConsole(1);
        WaitFor(bad, XenbusState.InitWait);
        FrontendConnects(bad);
        WaitFor(bad, XenbusState.Closing);
        Assert.StartsWith($"{XenSharp.Public.Errno.EBADMSG} the frontend's output producer ran beyond the ring", ErrorNode(bad));

        // Another console of the same guest, on another page, connects and works.
        _hv.PopulatePhysmap(_dom, 0x200, 1);
        var good = AddConsole(2);
        WaitFor(good, XenbusState.InitWait);
        FrontendConnects(good, gref: 9, gfn: 0x200);
        WaitFor(good, XenbusState.Connected);
        Assert.Null(ErrorNode(good));
    }

    [Fact]
    public void APortThatWasNotOfferedEndsTheDevice()
    {
        var a = AddConsole(1);
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a, port: 999);
        WaitFor(a, XenbusState.Closing);
        Assert.Equal($"{XenSharp.Public.Errno.EINVAL} binding event channel 999 of domain {_dom}", ErrorNode(a));
    }

    [Fact]
    public void GarbageKeysEndTheDevice()
    {
        var a = AddConsole(1);
        WaitFor(a, XenbusState.InitWait);
        _xs.Write($"{a.FrontendPath}/ring-ref", "eight");
        _xs.Write($"{a.FrontendPath}/port", "1");
        Frontend(a, XenbusState.Initialised);
        WaitFor(a, XenbusState.Closing);
        Assert.Equal($"{XenSharp.Public.Errno.EINVAL} parsing {a.FrontendPath}/ring-ref", ErrorNode(a));
    }

    [Fact]
    public void AFrontendThatClosesMidRequestClosesTheDeviceWhichThenReconnects()
    {
        var a = AddConsole(1);
        WaitFor(a, XenbusState.InitWait);
        var (_, port) = FrontendConnects(a);
        WaitFor(a, XenbusState.Connected);
        // Output produced and never signalled, then the frontend goes away.
        GuestOutput("half a li");
        Frontend(a, XenbusState.Closing);
        WaitFor(a, XenbusState.Closing);
        Frontend(a, XenbusState.Closed);
        WaitFor(a, XenbusState.Closed);
        Assert.Null(ErrorNode(a));

        // The backend let go of the port and the grant: the driver comes back and connects again on the same ones.
        Frontend(a, XenbusState.Initialising);
        WaitFor(a, XenbusState.InitWait);
        FrontendConnects(a, grant: false, port: port);
        WaitFor(a, XenbusState.Connected);
        Assert.Null(ErrorNode(a));
    }

    [Fact]
    public void RemovingTheBackendDirectoryRemovesTheDevice()
    {
        var a = AddConsole(3);
        WaitFor(a, XenbusState.InitWait);
        Assert.NotNull(_backends.Find(a));
        _xs.Rm(a.BackendPath);
        Wait.Until(() => _backends.Find(a) is null);
        Assert.Null(_backends.Find(a));
    }

    [Fact]
    public void ADomainsDevicesLetGoOfItsPortsAndGrantsBeforeItIsDestroyed()
    {
        var a = AddConsole(1);
        WaitFor(a, XenbusState.InitWait);
        var (gref, port) = FrontendConnects(a);
        WaitFor(a, XenbusState.Connected);
        _backends.RemoveDevicesOf(_dom);
        Assert.Null(_backends.Find(a));
        // The guest's port is unbound again (Domain-0 closed its end), and its grant maps as before.
        Assert.Equal(0, _hv.Dom0Services.BindInterdomain(_dom, port, () => { }, out uint local));
        _hv.Dom0Services.Unbind(local);
        Assert.Equal(GNTST_okay, _hv.Dom0Services.MapGrantRef(_dom, gref, readOnly: false, out var map));
        Assert.Equal(GNTST_okay, _hv.Dom0Services.UnmapGrantRef(map.Handle));
    }

    [Fact]
    public void OnlyKindsWithABackendAreServed()
    {
        Assert.True(BackendRegistry.IsServed(DeviceKinds.Console));
        Assert.True(BackendRegistry.IsServed(DeviceKinds.Vbd));
        Assert.True(BackendRegistry.IsServed(DeviceKinds.Vif));
        foreach (string kind in new[] { DeviceKinds.Vkbd, DeviceKinds.Vfb, DeviceKinds.NineP })
        {
            Assert.True(DeviceKinds.IsKnown(kind));
            Assert.False(BackendRegistry.IsServed(kind));
        }
    }

    [Fact]
    public void TheDeviceDirectoriesAreLaidOutAsLibxlWritesThem()
    {
        var a = AddConsole(1);
        Assert.Equal($"/local/domain/0/backend/console/{_dom}/1", _xs.Read($"{a.FrontendPath}/backend"));
        Assert.Equal("0", _xs.Read($"{a.FrontendPath}/backend-id"));
        Assert.Equal($"/local/domain/{_dom}/device/console/1", _xs.Read($"{a.BackendPath}/frontend"));
        Assert.Equal(_dom.ToString(), _xs.Read($"{a.BackendPath}/frontend-id"));
        Assert.Equal("1", _xs.Read($"{a.BackendPath}/online"));
        Assert.Equal("serial1", _xs.Read($"{a.BackendPath}/name"));
        var fe = _xs.GetPerms(a.FrontendPath)!;
        Assert.Equal((uint)_dom, fe[0].DomId);
        var be = _xs.GetPerms(a.BackendPath)!;
        Assert.Equal(0u, be[0].DomId);
        Assert.Equal((uint)_dom, be[1].DomId);
        Assert.Equal(XsPerm.Read, be[1].Perm);
    }
}
