using System.Text;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Xsm;

/// <summary>
/// FLASK, Xen's XSM module (xen/xsm/flask): the loaded policy's security server, the enforcing switch, the access
/// vector cache and its audit messages, and the label of each domain. It exists only when the host enables it
/// (<see cref="HypervisorOptions.Flask"/>, Xen's <c>flask=</c> boot option); otherwise Xen's dummy XSM rules alone
/// apply and every hook is one null test. Before a policy is loaded everything is allowed, as in Xen.
/// </summary>
internal sealed class Flask
{
    // xen/xsm/flask/policy/initial_sids, numbered from 1.
    public const uint SecinitsidXenboot = 1, SecinitsidXen = 2, SecinitsidDom0 = 3, SecinitsidDomio = 4, SecinitsidDomxen = 5,
        SecinitsidUnlabeled = 6, SecinitsidSecurity = 7, SecinitsidIoport = 8, SecinitsidIomem = 9, SecinitsidIrq = 10,
        SecinitsidDevice = 11, SecinitsidDomU = 12, SecinitsidDomDM = 13, SecinitsidNum = 13;
    private static readonly string[] InitialSidNames =
        ["", "xenboot", "xen", "dom0", "domio", "domxen", "unlabeled", "security", "ioport", "iomem", "irq", "device", "domU", "domDM"];

    // Constraint and conditional expressions (ss/constraint.h, ss/conditional.h).
    public const uint CexprNot = 1, CexprAnd = 2, CexprOr = 3, CexprAttr = 4, CexprNames = 5;
    public const uint CexprUser = 1, CexprRole = 2, CexprType = 4, CexprTarget = 8, CexprXtarget = 16;
    public const uint CexprEq = 1, CexprNeq = 2, CexprDom = 3, CexprDomby = 4, CexprIncomp = 5;
    public const int CexprMaxDepth = 5, CondExprMaxDepth = 10;
    public const uint CondBool = 1, CondNot = 2, CondOr = 3, CondAnd = 4, CondXor = 5, CondEq = 6, CondNeq = 7;

    /// <summary>The largest policy FLASK_LOAD takes (Xen's MAX_POLICY_SIZE).</summary>
    public const uint MaxPolicySize = 0x4000000;
    private const int AvcCacheSlots = 512;

    private readonly HostServices _host;
    private readonly object _avcLock = new();
    private readonly Dictionary<(uint Ssid, uint Tsid, ushort Class), AvDecision> _avc = [];
    private volatile SecurityServer? _ss;
    private volatile bool _enforcing;
    private uint _seqno;

    public Flask(HostServices host, FlaskMode mode, byte[]? policy = null)
    {
        _host = host;
        _enforcing = mode is FlaskMode.Enforcing or FlaskMode.Late;
        host.Dom0.Ssid = SecinitsidDom0;
        // flask_init: the boot policy, unless the policy is to come later; enforcing without one cannot start.
        long rc = policy is null || mode == FlaskMode.Late ? -Errno.ENOENT : Load(policy, boot: true);
        if (rc < 0 && mode == FlaskMode.Enforcing && policy is not null)
            throw new InvalidOperationException("Unable to load FLASK policy");
        host.Log(rc < 0 ? "Flask:  Access controls disabled until policy is loaded."
            : $"Flask:  Starting in {(_enforcing ? "enforcing" : "permissive")} mode.");
    }

    public bool Enforcing => _enforcing;
    public bool PolicyLoaded => _ss is not null;
    public bool Mls => _ss?.Policy.Mls ?? false;
    public uint AvcThreshold { get; set; } = AvcCacheSlots;

    /// <summary>The label a domain runs with (Xen's domain_sid).</summary>
    public static uint SidOf(Domain d) => d.Ssid != 0 ? d.Ssid : SecinitsidUnlabeled;

    /// <summary>The label <paramref name="source"/> sees <paramref name="target"/> under (Xen's domain_target_sid): its
    /// own self label when acting on itself, else the target's label.</summary>
    public static uint TargetSidOf(Domain source, Domain target) =>
        source == target && source.SelfSsid != 0 ? source.SelfSsid : SidOf(target);

    // ---- policy and state ----

    /// <summary>FLASK_LOAD: parses <paramref name="policy"/> and makes it current; the old SIDs keep their labels.
    /// <paramref name="boot"/>: the policy loaded at start, which <c>flask_init</c> reports instead.</summary>
    public long Load(ReadOnlySpan<byte> policy, bool boot = false)
    {
        Policydb db;
        try
        {
            db = Policydb.Read(policy);
        }
        catch (PolicyFormatException e)
        {
            _host.Log($"Flask: policy rejected: {e.Message}");
            return -Errno.EINVAL;
        }
        lock (_avcLock)
        {
            bool reload = _ss is not null;
            _ss = new SecurityServer(db, _ss, ++_seqno);
            _avc.Clear();
            if (!reload && !boot)
                _host.Log($"Flask: Policy loaded, continuing in {(_enforcing ? "enforcing" : "permissive")} mode.");
        }
        return 0;
    }

    /// <summary>FLASK_SETENFORCE after its permission check; turning enforcement on forgets the grants that
    /// permissive mode cached.</summary>
    public void SetEnforcing(bool on)
    {
        lock (_avcLock)
        {
            _enforcing = on;
            if (on)
                _avc.Clear();
        }
    }

    public SecurityServer? Server => _ss;

    /// <summary>Forgets every cached decision (a boolean changed).</summary>
    public void FlushCache()
    {
        lock (_avcLock)
            _avc.Clear();
    }

    public XenFlaskHashStats HashStats()
    {
        lock (_avcLock)
        {
            var chains = _avc.Keys.GroupBy(k => (int)((k.Ssid ^ (k.Tsid << 2) ^ ((uint)k.Class << 4)) & (AvcCacheSlots - 1)))
                .Select(g => g.Count()).ToArray();
            return new XenFlaskHashStats
            {
                Entries = (uint)_avc.Count, BucketsUsed = (uint)chains.Length, BucketsTotal = AvcCacheSlots,
                MaxChainLen = chains.Length == 0 ? 0u : (uint)chains.Max(),
            };
        }
    }

    /// <summary>security_context_to_sid; before a policy is loaded the initial SIDs' names stand for themselves.</summary>
    public long ContextToSid(string text, out uint sid)
    {
        if (_ss is { } ss)
            return ss.ContextToSid(text, out sid);
        int i = Array.IndexOf(InitialSidNames, text.TrimEnd('\0'), 1);
        sid = i > 0 ? (uint)i : SecinitsidXen;
        return 0;
    }

    public long SidToContext(uint sid, out string text)
    {
        if (_ss is { } ss)
            return ss.SidToContext(sid, out text);
        text = sid is > 0 and <= SecinitsidNum ? InitialSidNames[sid] : "";
        return text.Length > 0 ? 0 : -Errno.EINVAL;
    }

    /// <summary>security_transition_sid for class <paramref name="tclass"/>; without a policy a domain keeps the
    /// source's SID and anything else takes the target's.</summary>
    public long TransitionSid(uint ssid, uint tsid, ushort tclass, int specified, out uint newSid)
    {
        if (_ss is { } ss)
            return ss.ComputeSid(ssid, tsid, tclass, specified, out newSid);
        newSid = tclass == 3 ? ssid : tsid; // SECCLASS_DOMAIN
        return 0;
    }

    // ---- decisions ----

    /// <summary>domain_has_perm: may <paramref name="source"/> do <paramref name="perm"/> to <paramref name="target"/>?
    /// 0, or -EACCES when enforcing and the policy says no.</summary>
    public long DomainHasPerm(Domain source, Domain target, Perm perm, Perm? also = null) =>
        HasPerm(SidOf(source), TargetSidOf(source, target), perm, source, target, also: also);

    /// <summary>avc_has_perm for an object of SID <paramref name="tsid"/> that is no domain (Xen, the security
    /// server, an event channel); the audit line names the caller as current.</summary>
    public long CurrentHasPerm(Domain current, uint tsid, Perm perm) => HasPerm(SidOf(current), tsid, perm, current, null, asCurrent: true);

    /// <summary>avc_has_perm: <paramref name="perm"/> (and <paramref name="also"/>, of the same class) of
    /// <paramref name="ssid"/> over <paramref name="tsid"/>, reported in the audit line as from <paramref name="sdom"/>
    /// to <paramref name="tdom"/>.</summary>
    public long HasPerm(uint ssid, uint tsid, Perm perm, Domain? sdom, Domain? tdom, bool asCurrent = false, Perm? also = null)
    {
        var ss = _ss;
        if (ss is null)
            return 0;
        var (tclass, bit) = ss.Resolve(perm);
        if (also is not null && ss.Resolve(also) is var (alsoClass, alsoBit) && alsoClass == tclass)
            bit |= alsoBit;
        if (bit == 0)
        {
            // The policy does not declare this permission: its handle_unknown setting decides.
            if (ss.Policy.AllowUnknown || !_enforcing)
                return 0;
            _host.Log($"Flask: permission {perm} is not in the policy; denied");
            return -Errno.EACCES;
        }
        AvDecision avd;
        lock (_avcLock)
        {
            if (!_avc.TryGetValue((ssid, tsid, tclass), out avd))
            {
                if (ss.ComputeAv(ssid, tsid, tclass, out avd) < 0)
                    avd = new AvDecision(0, 0, uint.MaxValue, ss.Seqno, false);
                if (_avc.Count >= AvcThreshold)
                    _avc.Clear(); // reclaim: the cache never outgrows its threshold
                _avc[(ssid, tsid, tclass)] = avd;
            }
        }
        long rc = 0;
        uint denied = bit & ~avd.Allowed;
        if (denied != 0)
        {
            if (!_enforcing || avd.Permissive)
            {
                // Permissive: allowed, and remembered as allowed so that it is reported once.
                lock (_avcLock)
                    if (_avc.TryGetValue((ssid, tsid, tclass), out var cached) && cached.Seqno == avd.Seqno)
                        _avc[(ssid, tsid, tclass)] = cached with { Allowed = cached.Allowed | denied };
            }
            else
                rc = -Errno.EACCES;
            if ((denied & avd.AuditDeny) != 0)
                Audit(ss, ssid, tsid, tclass, denied, true, sdom, tdom, asCurrent);
        }
        else if ((bit & avd.AuditAllow) != 0)
            Audit(ss, ssid, tsid, tclass, bit, false, sdom, tdom, asCurrent);
        return rc;
    }

    /// <summary>avc_audit: one console line in Xen's words, e.g.
    /// <c>avc:  denied  { pause } for source=d0 target=d3 scontext=… tcontext=… tclass=domain</c>.</summary>
    private void Audit(SecurityServer ss, uint ssid, uint tsid, ushort tclass, uint perms, bool denied, Domain? sdom, Domain? tdom, bool asCurrent)
    {
        var sb = new StringBuilder("avc:  ").Append(denied ? "denied " : "granted ").Append(" {");
        for (int i = 0; i < 32; i++)
            if ((perms >> i & 1) != 0)
                sb.Append(' ').Append(ss.PermName(tclass, i) ?? $"0x{1u << i:x}");
        sb.Append(" } for ");
        if (asCurrent && sdom is not null)
            sb.Append("current=d").Append(sdom.DomainId).Append(' ');
        else
        {
            if (sdom is not null)
                sb.Append("source=d").Append(sdom.DomainId).Append(' ');
            if (tdom is not null && tdom != sdom)
                sb.Append("target=d").Append(tdom.DomainId).Append(' ');
        }
        sb.Append(ss.ContextOf(ssid) is { } sc ? $"scontext={sc}" : $"ssid={ssid}");
        sb.Append(ss.ContextOf(tsid) is { } tc ? $" tcontext={tc}" : $" tsid={tsid}");
        sb.Append(" tclass=").Append(ss.ClassName(tclass));
        _host.Log(sb.ToString());
    }

    // ---- domains ----

    /// <summary>flask_domain_create: may the creator (Domain-0) create a domain labelled <paramref name="ssidref"/>
    /// (0: unlabeled)? Returns 0 or -EACCES; the label is set by <see cref="Label"/> once the domain exists.</summary>
    public long CheckCreate(Domain creator, uint ssidref)
    {
        uint sid = ssidref != 0 ? ssidref : SecinitsidUnlabeled;
        if (sid == SecinitsidDom0)
            return -Errno.EINVAL; // dom0_t is a singleton label, as Xen enforces
        return HasPerm(SidOf(creator), sid, Av.DomainCreate, creator, null, asCurrent: true);
    }

    /// <summary>Sets <paramref name="d"/>'s label and the self label that the policy's transition of the label over
    /// itself in class domain gives it (the label itself when the policy has no such rule, or no policy is loaded).</summary>
    public void Label(Domain d, uint ssidref)
    {
        d.Ssid = ssidref != 0 ? ssidref : SecinitsidUnlabeled;
        d.SelfSsid = d.Ssid;
        if (_ss is { } ss && ss.Resolve(Av.DomainCreate) is var (domainClass, _) && domainClass != 0
            && TransitionSid(d.Ssid, d.Ssid, domainClass, Policydb.AvtabTransition, out uint self) >= 0)
            d.SelfSsid = self;
    }

    /// <summary>FLASK_RELABEL_DOMAIN: relabelfrom/relabelto by the caller (relabelself for itself) and the
    /// domain's transition to the new label.</summary>
    public long Relabel(Domain caller, Domain d, uint sid, bool self)
    {
        long rc = self
            ? HasPerm(SidOf(d), sid, Av.Domain2Relabelself, caller, d)
            : HasPerm(SidOf(caller), SidOf(d), Av.Domain2Relabelfrom, caller, d) is var from && from < 0
                ? from
                : HasPerm(SidOf(caller), sid, Av.Domain2Relabelto, caller, d);
        if (rc < 0)
            return rc;
        if (_ss is { } ss && !ss.TryGetContext(sid, out _))
            return -Errno.EINVAL;
        rc = HasPerm(SidOf(d), sid, Av.DomainTransition, caller, d);
        if (rc < 0)
            return rc;
        Label(d, sid);
        return 0;
    }
}

/// <summary>FLASK's mode at start, as Xen's <c>flask=</c> boot option: off (Xen's dummy XSM), permissive (denials are
/// only reported), enforcing, or late (enforcing, with no policy loaded at start: one is loaded later).</summary>
public enum FlaskMode { Disabled, Permissive, Enforcing, Late }

/// <summary>Parses the value of Xen's <c>flask=</c> boot option.</summary>
public static class FlaskModes
{
    /// <summary>disabled, permissive, enforcing or late (null or empty: disabled); false for anything else.</summary>
    public static bool TryParse(string? value, out FlaskMode mode)
    {
        mode = FlaskMode.Disabled;
        switch (value)
        {
            case null or "" or "disabled": return true;
            case "permissive": mode = FlaskMode.Permissive; return true;
            case "enforcing": mode = FlaskMode.Enforcing; return true;
            case "late": mode = FlaskMode.Late; return true;
            default: return false;
        }
    }
}
