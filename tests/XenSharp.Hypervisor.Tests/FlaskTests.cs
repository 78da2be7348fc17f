using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using XenSharp.Hypervisor.Xsm;
using XenSharp.Public;
using static XenSharp.Public.Domctl;
using static XenSharp.Public.FlaskOp;

namespace XenSharp.Hypervisor.Tests;

/// <summary>Compiles the tests' FLASK policy (policy/flask/xen-abi.te, Xen's classes and permissions, then
/// tests/flask/xensharp-test.te) with Debian's checkpolicy, once per version.</summary>
internal static class TestPolicy
{
    private static readonly Dictionary<string, byte[]> Compiled = [];

    private static string Root
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "XenSharp.slnx")))
                    return dir.FullName;
            throw new FileNotFoundException("the repository root (XenSharp.slnx) is not above the test binaries");
        }
    }

    /// <summary>The whole policy source: Xen's ABI declarations, then the tests' rules.</summary>
    public static string Source =>
        File.ReadAllText(Path.Combine(Root, "policy", "flask", "xen-abi.te")) + File.ReadAllText(Path.Combine(Root, "tests", "flask", "xensharp-test.te"));

    /// <summary>The binary policy checkpolicy writes for Xen, of policy version <paramref name="version"/>.</summary>
    public static byte[] Binary(int version = 30, string? source = null, bool mls = false)
    {
        source ??= Source;
        string key = $"{version}/{mls}/{source}";
        lock (Compiled)
        {
            if (Compiled.TryGetValue(key, out var bytes))
                return bytes;
            string dir = Directory.CreateTempSubdirectory("flask-policy").FullName;
            try
            {
                File.WriteAllText(Path.Combine(dir, "policy.te"), source);
                var psi = new ProcessStartInfo("checkpolicy")
                {
                    RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir,
                };
                foreach (var a in (string[])["-t", "xen", "-c", version.ToString(), "-o", "policy.bin", "policy.te"])
                    psi.ArgumentList.Add(a);
                if (mls)
                    psi.ArgumentList.Insert(0, "-M");
                using var p = Process.Start(psi)!;
                string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
                p.WaitForExit();
                Assert.True(p.ExitCode == 0, $"checkpolicy failed: {output}");
                return Compiled[key] = File.ReadAllBytes(Path.Combine(dir, "policy.bin"));
            }
            finally
            {
                Directory.Delete(dir, recursive: true);
            }
        }
    }
}

/// <summary>
/// FLASK through __HYPERVISOR_xsm_op as Domain-0's programs reach it: loading binary policies that Debian's
/// checkpolicy compiles from the tests' policy, enforcing and permissive mode, labels from contexts and back, the
/// access decisions with attributes and booleans, and the hooks: a domctl the policy denies is allowed and reported in
/// permissive mode and refused with -EACCES when enforcing.
/// </summary>
[Trait("Feature", "XSM & FLASK")]
public sealed unsafe class FlaskTests : IDisposable
{
    private const ulong CallerBase = 0x7f00_0000_0000;
    private const int BufferBytes = 1 << 20;
    private const int OpAt = 0, StringAt = 4096, PolicyAt = 8192;
    private readonly byte* _buffers = (byte*)NativeMemory.AllocZeroed(BufferBytes);
    private XenHypervisor _host = null!;
    private Dom0HypercallContext _dom0 = null!;

    private void Start(FlaskMode mode, byte[]? bootPolicy = null)
    {
        _host = new XenHypervisor(new HypervisorOptions
        {
            MachineMemoryBytes = 256UL << 20, Pcpus = 1, EngineFactory = m => new TestEngine(m), Flask = mode,
            FlaskPolicy = bootPolicy,
        });
        _dom0 = _host.OpenDom0Hypercalls((nint)_buffers, CallerBase, BufferBytes);
    }

    public void Dispose()
    {
        _dom0?.Dispose();
        _host?.Dispose();
        NativeMemory.Free(_buffers);
    }

    private ref T At<T>(int offset) where T : unmanaged => ref *(T*)(_buffers + offset);

    private long Flask(uint cmd, Action<Ptr>? fill = null)
    {
        At<XenFlaskOp>(OpAt) = new XenFlaskOp { Cmd = cmd, InterfaceVersion = XEN_FLASK_INTERFACE_VERSION };
        fill?.Invoke(new Ptr(this));
        return _dom0.Hypercall(Xen.__HYPERVISOR_xsm_op, CallerBase + OpAt);
    }

    /// <summary>The op's union, for filling in before a call and reading after.</summary>
    private readonly struct Ptr(FlaskTests t)
    {
        public ref TU U<TU>() where TU : unmanaged => ref t.At<XenFlaskOp>(OpAt).As<TU>();
    }

    private ref XenFlaskOp Op => ref At<XenFlaskOp>(OpAt);

    private long Load(byte[] policy)
    {
        Assert.True(policy.Length < BufferBytes - PolicyAt);
        policy.CopyTo(new Span<byte>(_buffers + PolicyAt, policy.Length));
        return Flask(FLASK_LOAD, p => p.U<XenFlaskLoad>() = new XenFlaskLoad { Buffer = CallerBase + PolicyAt, Size = (uint)policy.Length });
    }

    private long SetEnforce(bool on) => Flask(FLASK_SETENFORCE, p => p.U<uint>() = on ? 1u : 0u);

    private ulong PutString(string s)
    {
        var bytes = Encoding.ASCII.GetBytes(s);
        bytes.CopyTo(new Span<byte>(_buffers + StringAt, bytes.Length));
        return (ulong)bytes.Length;
    }

    private long ContextToSid(string context, out uint sid)
    {
        uint size = (uint)PutString(context);
        long rc = Flask(FLASK_CONTEXT_TO_SID, p => p.U<XenFlaskSidContext>() = new XenFlaskSidContext { Size = size, Context = CallerBase + StringAt });
        sid = Op.As<XenFlaskSidContext>().Sid;
        return rc;
    }

    private string SidToContext(uint sid)
    {
        long rc = Flask(FLASK_SID_TO_CONTEXT, p => p.U<XenFlaskSidContext>() = new XenFlaskSidContext { Sid = sid, Size = 256, Context = CallerBase + StringAt });
        Assert.Equal(0, rc);
        var sc = Op.As<XenFlaskSidContext>();
        return Encoding.ASCII.GetString(_buffers + StringAt, (int)sc.Size).TrimEnd('\0');
    }

    private long Domctl(uint cmd, ushort domid)
    {
        At<XenDomctl>(OpAt) = new XenDomctl { Cmd = cmd, InterfaceVersion = XEN_DOMCTL_INTERFACE_VERSION, Domain = domid };
        return _dom0.Hypercall(Xen.__HYPERVISOR_domctl, CallerBase + OpAt);
    }

    private ushort CreateGuest(uint ssidref) => _host.CreateDomain(new DomainCreateConfig(DomainKind.Pvh, 4096, 1) { Ssidref = ssidref });

    private (uint Allowed, uint Seqno) Access(uint ssid, uint tsid, string tclass)
    {
        uint cls = (uint)Array.IndexOf(Classes, tclass) + 1;
        long rc = Flask(FLASK_ACCESS, p => p.U<XenFlaskAccess>() = new XenFlaskAccess { Ssid = ssid, Tsid = tsid, Tclass = cls, Req = uint.MaxValue });
        Assert.Equal(0, rc);
        var a = Op.As<XenFlaskAccess>();
        return (a.Allowed, a.Seqno);
    }

    /// <summary>Xen 4.17's security_classes in order: the class numbers of the ABI.</summary>
    private static readonly string[] Classes =
        ["xen", "xen2", "domain", "domain2", "hvm", "mmu", "resource", "shadow", "event", "grant", "security", "version", "argo"];

    [Fact, Trait("Feature", "FLASK default policy")]
    public void TheBuiltInPolicyLoadsAtStartAndGivesDomainsTheirSelfLabels()
    {
        Start(FlaskMode.Enforcing, DefaultPolicy.Binary);
        Assert.Contains("Flask:  Starting in enforcing mode.", _host.ReadDmesg());
        Assert.DoesNotContain("Policy loaded", _host.ReadDmesg());
        Assert.Equal(1, Flask(FLASK_GETENFORCE));
        Assert.Equal("system_u:system_r:domU_t", SidToContext(SECINITSID_DOMU));
        Assert.Equal("system_u:system_r:dm_dom_t", SidToContext(SECINITSID_DOMDM));

        // A domain acts on itself under its label's _self type; Domain-0, a single domain, under its own.
        ushort domid = CreateGuest(SECINITSID_DOMU);
        var d = _host.Services.FindDomain(domid)!;
        Assert.Equal("system_u:system_r:domU_t_self", SidToContext(d.SelfSsid));
        Assert.Equal(0u, _host.Services.Dom0.SelfSsid);
        Assert.Equal(0, ContextToSid("system_u:system_r:isolated_domU_t", out uint isolated));
        Assert.Equal(0, ContextToSid("system_u:system_r:nomigrate_t", out uint nomigrate));

        // Grants between guests (class grant: map_read map_write unmap transfer setup copy query): domU_t with domU_t,
        // not with isolated_domU_t; Domain-0 reads a domU_t guest's memory (class mmu: map_read first) but not a
        // nomigrate_t guest's, and may create neither directly as nomigrate_t (class domain: create is bit 4).
        const uint grantCopy = 1u << 5, mmuMapRead = 1u << 0, domainCreate = 1u << 4;
        Assert.NotEqual(0u, Access(SECINITSID_DOMU, SECINITSID_DOMU, "grant").Allowed & grantCopy);
        Assert.Equal(0u, Access(SECINITSID_DOMU, isolated, "grant").Allowed & grantCopy);
        Assert.Equal(0u, Access(isolated, SECINITSID_DOMU, "grant").Allowed & grantCopy);
        Assert.NotEqual(0u, Access(Xsm.Flask.SecinitsidDom0, SECINITSID_DOMU, "mmu").Allowed & mmuMapRead);
        Assert.Equal(0u, Access(Xsm.Flask.SecinitsidDom0, nomigrate, "mmu").Allowed & mmuMapRead);
        Assert.Equal(0u, Access(Xsm.Flask.SecinitsidDom0, nomigrate, "domain").Allowed & domainCreate);
        Assert.NotEqual(0u, Access(Xsm.Flask.SecinitsidDom0, SECINITSID_DOMU, "domain").Allowed & domainCreate);
        Assert.Equal(Errno.EACCES, Assert.Throws<HypervisorException>(() => CreateGuest(nomigrate)).Errno);
    }

    [Fact]
    public void WithFlaskOffXsmOpIsNotImplementedAndDomainsCarryNoLabel()
    {
        Start(FlaskMode.Disabled);
        Assert.Equal(-Errno.ENOSYS, Flask(FLASK_GETENFORCE));
        Assert.Equal(-Errno.ENOSYS, Load(TestPolicy.Binary()));
        ushort domid = CreateGuest(ssidref: 42);
        Assert.Equal(0, Domctl(XEN_DOMCTL_getdomaininfo, domid));
        Assert.Equal(0u, At<XenDomctl>(OpAt).As<XenDomctlGetdomaininfo>().Ssidref);
        Assert.Equal(0, Domctl(XEN_DOMCTL_pausedomain, domid));
        Assert.Equal(-Errno.ENOSYS, _host.FlaskContextToSid("system_u:system_r:domU_t", out _));
    }

    [Fact]
    public void PermissiveReportsADenialThatEnforcingRefuses()
    {
        Start(FlaskMode.Permissive);
        Assert.Equal(0, Flask(FLASK_GETENFORCE));
        Assert.Equal(0, Load(TestPolicy.Binary()));
        Assert.Contains("Flask: Policy loaded, continuing in permissive mode.", _host.ReadDmesg());

        Assert.Equal(0, ContextToSid("system_u:system_r:locked_t", out uint locked));
        Assert.Equal("system_u:system_r:locked_t", SidToContext(locked));
        Assert.Equal("system_u:system_r:dom0_t", SidToContext(Xsm.Flask.SecinitsidDom0));
        ushort domid = CreateGuest(locked);
        Assert.Equal(0, Domctl(XEN_DOMCTL_getdomaininfo, domid));
        Assert.Equal(locked, At<XenDomctl>(OpAt).As<XenDomctlGetdomaininfo>().Ssidref);

        // Permissive: the pause happens, and Xen's audit line says what enforcing would refuse — once.
        Assert.Equal(0, Domctl(XEN_DOMCTL_pausedomain, domid));
        Assert.Equal(0, Domctl(XEN_DOMCTL_unpausedomain, domid));
        Assert.Equal(0, Domctl(XEN_DOMCTL_pausedomain, domid));
        string denial = $"avc:  denied  {{ pause }} for source=d0 target=d{domid} scontext=system_u:system_r:dom0_t "
            + "tcontext=system_u:system_r:locked_t tclass=domain";
        Assert.Single(_host.ReadDmesg().Split('\n'), l => l.Contains(denial));

        Assert.Equal(0, SetEnforce(true));
        Assert.Equal(1, Flask(FLASK_GETENFORCE));
        Assert.Equal(0, Domctl(XEN_DOMCTL_unpausedomain, domid));
        Assert.Equal(-Errno.EACCES, Domctl(XEN_DOMCTL_pausedomain, domid));
        Assert.Equal(2, _host.ReadDmesg().Split('\n').Count(l => l.Contains(denial)));

        // A domU_t guest may be paused: the denial is the policy's, not a blanket one.
        Assert.Equal(0, ContextToSid("system_u:system_r:domU_t", out uint domU));
        ushort other = CreateGuest(domU);
        Assert.Equal(0, Domctl(XEN_DOMCTL_pausedomain, other));

        Assert.Equal(0, SetEnforce(false));
        Assert.Equal(0, Domctl(XEN_DOMCTL_pausedomain, domid));
    }

    [Fact]
    public void EnforcingRefusesToCreateADomainUnderALabelDomain0MayNotCreate()
    {
        Start(FlaskMode.Enforcing);
        Assert.Equal(1, Flask(FLASK_GETENFORCE));
        // Before a policy is loaded everything is allowed, as in Xen.
        Assert.Equal(0, Domctl(XEN_DOMCTL_getdomaininfo, 0));
        Assert.Equal(0, Load(TestPolicy.Binary()));
        Assert.Equal(0, ContextToSid("system_u:system_r:xen_t", out uint xen));
        var e = Assert.Throws<HypervisorException>(() => CreateGuest(xen));
        Assert.Equal(Errno.EACCES, e.Errno);
        Assert.Contains("avc:  denied  { create } for current=d0 scontext=system_u:system_r:dom0_t tcontext=system_u:system_r:xen_t tclass=domain",
            _host.ReadDmesg());
        Assert.Equal(-Errno.EINVAL, ContextToSid("system_u:system_r:no_such_t", out _));
        Assert.Equal(-Errno.EINVAL, ContextToSid("system_u:object_r", out _));
        Assert.Equal(-Errno.EINVAL, ContextToSid("system_u:system_r:domain_type", out _)); // an attribute is no label
        Assert.NotEqual(0, CreateGuest(0)); // unlabeled_t: allowed
    }

    [Fact]
    public void AccessDecisionsFollowAttributesAndBooleans()
    {
        Start(FlaskMode.Enforcing);
        Assert.Equal(0, Load(TestPolicy.Binary()));
        Assert.Equal(0, ContextToSid("system_u:system_r:domU_t", out uint domU));
        Assert.Equal(0, ContextToSid("system_u:system_r:locked_t", out uint locked));
        uint dom0 = Xsm.Flask.SecinitsidDom0;

        // Through the domain_type attribute and self, every guest may use grants of its own type, but not another's.
        Assert.Equal(0x7fu, Access(domU, domU, "grant").Allowed & 0x7f); // "*" grants all 32 bits
        Assert.Equal(0u, Access(domU, locked, "grant").Allowed);
        // dom0_t's rule with a complement: all of domain but pause (bit 1).
        var (allowed, seqno) = Access(dom0, locked, "domain");
        Assert.Equal(0u, allowed & 2);
        Assert.NotEqual(0u, allowed & 4);

        // guest_grants, declared false: read it by name, set it pending, then commit.
        uint nameLen = (uint)PutString("guest_grants");
        Assert.Equal(0, Flask(FLASK_GETBOOL, p => p.U<XenFlaskBoolean>() = new XenFlaskBoolean { BoolId = uint.MaxValue, Size = nameLen, Name = CallerBase + StringAt }));
        var b = Op.As<XenFlaskBoolean>();
        Assert.Equal(0u, b.BoolId);
        Assert.Equal(0, b.Enforcing);
        var boolOp = new XenFlaskBoolean { BoolId = 0, NewValue = 1, Commit = 0 };
        Assert.Equal(0, Flask(FLASK_SETBOOL, p => p.U<XenFlaskBoolean>() = boolOp));
        Assert.Equal(0, (int)Op.As<XenFlaskBoolean>().Enforcing);
        Assert.Equal(1, (int)Op.As<XenFlaskBoolean>().Pending);
        Assert.Equal(0u, Access(domU, locked, "grant").Allowed); // unchanged until committed
        Assert.Equal(0, Flask(FLASK_COMMITBOOLS));
        Assert.Equal(0x7fu, Access(domU, locked, "grant").Allowed & 0x7f); // "*" grants all 32 bits
        Assert.Equal(0u, Access(locked, domU, "grant").Allowed); // the rule's source is domU_t only

        // A reload keeps the SIDs domains carry and starts a new sequence.
        Assert.Equal(0, Load(TestPolicy.Binary()));
        Assert.Equal("system_u:system_r:locked_t", SidToContext(locked));
        Assert.True(Access(dom0, locked, "domain").Seqno > seqno);
        Assert.Equal(30, Flask(FLASK_POLICYVERS));
        Assert.Equal(0, Flask(FLASK_MLS));
    }

    [Fact]
    public void TheHooksCheckGrantsEventChannelsAndForeignMemory()
    {
        Start(FlaskMode.Enforcing);
        Assert.Equal(0, Load(TestPolicy.Binary()));
        Assert.Equal(0, ContextToSid("system_u:system_r:domU_t", out uint domUSid));
        Assert.Equal(0, ContextToSid("system_u:system_r:locked_t", out uint lockedSid));
        var host = _host.Services;
        var a = host.FindDomain(CreateGuest(domUSid))!;
        var b = host.FindDomain(CreateGuest(domUSid))!;
        var locked = host.FindDomain(CreateGuest(lockedSid))!;

        Assert.Equal(-Errno.EACCES, XsmHooks.GrantMap(a, locked, readOnly: true));
        Assert.Equal(0, XsmHooks.GrantMap(a, b, readOnly: false)); // both domU_t: self
        Assert.Equal(0, XsmHooks.GrantMap(host.Dom0, locked, readOnly: false)); // a backend maps a locked guest's grants
        Assert.Equal(-Errno.EACCES, XsmHooks.GrantCopy(locked, a));
        Assert.Equal(0, XsmHooks.GrantCopy(a, a));
        Assert.Equal(0, XsmHooks.EvtchnInterdomain(a, host.Dom0));
        Assert.Equal(0, XsmHooks.EvtchnUnbound(a, a, host.Dom0.DomainId));
        Assert.Equal(-Errno.EPERM, XsmHooks.EvtchnUnbound(a, a, 999));
        Assert.Equal(0, XsmHooks.EvtchnSend(a, b));
        Assert.Equal(-Errno.EACCES, XsmHooks.MemoryForeign(a, locked, physmap: true));
        Assert.Equal(0, XsmHooks.MapForeign(host.Dom0, a, writable: true));

        // Refused through the real handler too: an event channel between guests of two types, under a policy without
        // event rules between types.
        string noEvents = TestPolicy.Source.Replace("allow domain_type domain_type:event *;", "");
        Assert.Equal(0, Load(TestPolicy.Binary(source: noEvents)));
        Assert.Equal(-Errno.EACCES, XsmHooks.EvtchnUnbound(locked, locked, a.DomainId));
        Assert.Equal(0, locked.Evtchn.AllocUnbound(a.DomainId, out uint port));
        Assert.Equal(-Errno.EACCES, a.Evtchn.BindInterdomain(locked, port, out _));
        Assert.Equal(0, b.Evtchn.AllocUnbound(a.DomainId, out port));
        Assert.Equal(0, a.Evtchn.BindInterdomain(b, port, out _));
        Assert.Contains("avc:  denied  { create } for source=d", _host.ReadDmesg());
    }

    [Theory]
    [InlineData(24)]
    [InlineData(30)]
    public void PoliciesOfBothVersionsCheckpolicyWritesForXenLoad(int version)
    {
        Start(FlaskMode.Enforcing);
        Assert.Equal(0, Load(TestPolicy.Binary(version)));
        Assert.Equal(0, ContextToSid("system_u:system_r:locked_t", out uint locked));
        ushort domid = CreateGuest(locked);
        Assert.Equal(-Errno.EACCES, Domctl(XEN_DOMCTL_pausedomain, domid));
    }

    [Fact]
    public void BrokenPoliciesAreRefusedAndTheOldOneStays()
    {
        Start(FlaskMode.Enforcing);
        var good = TestPolicy.Binary();
        Assert.Equal(0, Load(good));
        Assert.Equal(0, ContextToSid("system_u:system_r:locked_t", out uint locked));
        var random = new Random(23);
        for (int cut = 0; cut < good.Length; cut += 97)
            Assert.Equal(-Errno.EINVAL, Load(good[..cut]));
        for (int i = 0; i < 200; i++)
        {
            var bad = (byte[])good.Clone();
            for (int j = 0; j < 4; j++)
                bad[random.Next(16, bad.Length)] ^= (byte)(1 << random.Next(8));
            long rc = Load(bad);
            Assert.True(rc is 0 or -Errno.EINVAL, $"load returned {rc}");
            if (rc == 0)
                Assert.Equal(0, Load(good));
        }
        Assert.Equal(-Errno.EINVAL, Load(Encoding.ASCII.GetBytes("not a policy at all")));
        Assert.Equal("system_u:system_r:locked_t", SidToContext(locked));
        Assert.Equal(-Errno.EACCES, Domctl(XEN_DOMCTL_pausedomain, CreateGuest(locked)));
    }
}
