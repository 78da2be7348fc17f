using System.Text;
using XenSharp.Public;

namespace XenSharp.Hypervisor.Xsm;

/// <summary>An access decision (Xen's av_decision): what is allowed, what to audit, and whether the source type
/// is permissive.</summary>
internal readonly record struct AvDecision(uint Allowed, uint AuditAllow, uint AuditDeny, uint Seqno, bool Permissive);

/// <summary>
/// The security server of one loaded policy (Xen's ss/services.c role): the SID table, contexts to and from text,
/// access decisions over the type-enforcement rules with their attributes, conditional rules and constraints, type
/// transitions, and the booleans. Immutable apart from the SID table and the booleans, both under its lock; a new
/// policy is a new server that carries the old one's SIDs over.
/// </summary>
internal sealed class SecurityServer
{
    private readonly Policydb _p;
    private readonly object _lock = new();
    private readonly Dictionary<uint, SecurityContext> _contexts = [];
    private readonly Dictionary<SecurityContext, uint> _sids = [];
    private uint _nextSid = Flask.SecinitsidNum + 1;
    private readonly (ushort Class, uint Bit)[] _resolved;
    private readonly bool[] _pendingBools;
    private Dictionary<ulong, uint> _condRules = [];

    public SecurityServer(Policydb policy, SecurityServer? previous, uint seqno)
    {
        _p = policy;
        Seqno = seqno;
        System.Runtime.CompilerServices.RuntimeHelpers.RunClassConstructor(typeof(Av).TypeHandle);
        var perms = Perm.Declared;
        _resolved = new (ushort, uint)[perms.Count];
        foreach (var perm in perms)
            _resolved[perm.Id] = policy.ClassesByName.TryGetValue(perm.Class, out var c) && c.Perms.TryGetValue(perm.Name, out int v)
                ? ((ushort)c.Value, 1u << (v - 1))
                : ((ushort)0, 0u);
        foreach (var (sid, ctx) in policy.InitialSids)
        {
            _contexts[sid] = ctx;
            _sids.TryAdd(ctx, sid);
        }
        _pendingBools = (bool[])policy.BoolStates.Clone();
        EvaluateConditionals();
        if (previous is null)
            return;
        // Labels survive a reload under the same SID when the new policy still knows them; otherwise they fall
        // back to the unlabeled context.
        lock (previous._lock)
        {
            foreach (var (sid, ctx) in previous._contexts)
            {
                if (sid <= Flask.SecinitsidNum)
                    continue;
                _nextSid = Math.Max(_nextSid, sid + 1);
                var converted = TryParse(previous.ToText(ctx), out var c) ? c : _contexts[Flask.SecinitsidUnlabeled];
                _contexts[sid] = converted;
                _sids.TryAdd(converted, sid);
            }
        }
    }

    public Policydb Policy => _p;
    public uint Seqno { get; }

    /// <summary>The class value and permission bit of <paramref name="perm"/> in this policy; (0, 0) when the
    /// policy does not declare it.</summary>
    public (ushort Class, uint Bit) Resolve(Perm perm) => _resolved[perm.Id];

    public string ClassName(ushort tclass) => _p.ValidClass(tclass) ? _p.Classes[tclass - 1]!.Name : $"class{tclass}";

    public string? PermName(ushort tclass, int bit) => _p.ValidClass(tclass) ? _p.Classes[tclass - 1]!.PermNames[bit] : null;

    // ---- contexts and SIDs ----

    public bool TryGetContext(uint sid, out SecurityContext ctx)
    {
        lock (_lock)
            return _contexts.TryGetValue(sid, out ctx);
    }

    /// <summary>security_sid_to_context: the context's text, or -EINVAL for an unknown SID.</summary>
    public long SidToContext(uint sid, out string text)
    {
        text = "";
        if (!TryGetContext(sid, out var ctx))
            return -Errno.EINVAL;
        text = ToText(ctx);
        return 0;
    }

    /// <summary>The context of <paramref name="sid"/> as text, or null.</summary>
    public string? ContextOf(uint sid) => SidToContext(sid, out var text) == 0 ? text : null;

    /// <summary>security_context_to_sid: the SID of a valid context (a new one the first time), or -EINVAL.</summary>
    public long ContextToSid(string text, out uint sid)
    {
        sid = 0;
        if (!TryParse(text, out var ctx))
            return -Errno.EINVAL;
        sid = SidOf(ctx);
        return 0;
    }

    private uint SidOf(SecurityContext ctx)
    {
        lock (_lock)
        {
            if (_sids.TryGetValue(ctx, out uint sid))
                return sid;
            sid = _nextSid++;
            _sids[ctx] = sid;
            _contexts[sid] = ctx;
            return sid;
        }
    }

    private string ToText(SecurityContext c)
    {
        var sb = new StringBuilder();
        sb.Append(_p.UserNames[c.User - 1]).Append(':').Append(_p.RoleNames[c.Role - 1]).Append(':').Append(_p.TypeNames[c.Type - 1]);
        if (c.Mls is not null)
            sb.Append(':').Append(c.Mls);
        return sb.ToString();
    }

    /// <summary>Parses user:role:type[:mls] (a trailing NUL allowed, as the tools send it) and checks it as
    /// policydb_context_isvalid does: the role may have the type and the user the role.</summary>
    private bool TryParse(string text, out SecurityContext ctx)
    {
        ctx = default;
        text = text.TrimEnd('\0');
        var parts = text.Split(':', 4);
        if (parts.Length < 3 || (parts.Length == 4) != _p.Mls)
            return false;
        if (!_p.UsersByName.TryGetValue(parts[0], out int user) || !_p.RolesByName.TryGetValue(parts[1], out int role)
            || !_p.TypesByName.TryGetValue(parts[2], out int type) || _p.TypeIsAttribute[type - 1])
            return false;
        type = Array.IndexOf(_p.TypeNames, _p.TypeNames[type - 1]) + 1; // an alias names its primary type
        if (role != Policydb.ObjectRole && (!_p.RoleTypes[role - 1].Contains(type - 1) || !_p.UserRoles[user - 1].Contains(role - 1)))
            return false;
        string? mls = null;
        if (_p.Mls)
        {
            mls = parts[3];
            foreach (var level in mls.Split('-'))
            {
                var lc = level.Split(':', 2);
                if (!_p.Sensitivities.Contains(lc[0]))
                    return false;
                if (lc.Length == 2)
                    foreach (var cat in lc[1].Split(',', '.'))
                        if (!_p.Categories.Contains(cat))
                            return false;
            }
        }
        ctx = new SecurityContext(user, role, type, mls);
        return true;
    }

    // ---- decisions ----

    /// <summary>security_compute_av: the rules of every attribute of the source against every attribute of the
    /// target, the enabled conditional rules, then the class's constraints.</summary>
    public long ComputeAv(uint ssid, uint tsid, ushort tclass, out AvDecision avd)
    {
        avd = default;
        SecurityContext s, t;
        Dictionary<ulong, uint> cond;
        lock (_lock)
        {
            if (!_contexts.TryGetValue(ssid, out s) || !_contexts.TryGetValue(tsid, out t))
                return -Errno.EINVAL;
            cond = _condRules;
        }
        if (!_p.ValidClass(tclass))
            return _p.AllowUnknown ? Ok(out avd, uint.MaxValue) : Ok(out avd, 0);
        uint allowed = 0, auditAllow = 0, auditDeny = uint.MaxValue;
        foreach (int sa in _p.TypeAttrMap[s.Type - 1].Bits())
            foreach (int ta in _p.TypeAttrMap[t.Type - 1].Bits())
                foreach (var rules in (ReadOnlySpan<Dictionary<ulong, uint>>)[_p.Avtab, cond])
                {
                    if (rules.TryGetValue(AvRule.Pack(sa + 1, ta + 1, tclass, Policydb.AvtabAllowed), out uint a))
                        allowed |= a;
                    if (rules.TryGetValue(AvRule.Pack(sa + 1, ta + 1, tclass, Policydb.AvtabAuditAllow), out uint aa))
                        auditAllow |= aa;
                    if (rules.TryGetValue(AvRule.Pack(sa + 1, ta + 1, tclass, Policydb.AvtabAuditDeny), out uint ad))
                        auditDeny &= ad;
                }
        foreach (var c in _p.Classes[tclass - 1]!.Constraints)
            if ((c.Permissions & allowed) != 0 && !Evaluate(c.Expr, s, t))
                allowed &= ~c.Permissions;
        avd = new AvDecision(allowed, auditAllow, auditDeny, Seqno, _p.PermissiveTypes.Contains(s.Type - 1));
        return 0;

        long Ok(out AvDecision d, uint all)
        {
            d = new AvDecision(all, 0, uint.MaxValue, Seqno, false);
            return 0;
        }
    }

    /// <summary>A constraint in postfix order over the source and target contexts (CEXPR_*). MLS comparisons are
    /// not evaluated: XenSharp keeps MLS levels as labels only, so they hold.</summary>
    private bool Evaluate(ConstraintExpr[] expr, SecurityContext s, SecurityContext t)
    {
        Span<bool> stack = stackalloc bool[Flask.CexprMaxDepth];
        int sp = -1;
        foreach (var e in expr)
        {
            switch (e.ExprType)
            {
                case Flask.CexprNot: stack[sp] = !stack[sp]; break;
                case Flask.CexprAnd: sp--; stack[sp] = stack[sp] && stack[sp + 1]; break;
                case Flask.CexprOr: sp--; stack[sp] = stack[sp] || stack[sp + 1]; break;
                case Flask.CexprAttr: stack[++sp] = Attr(e, s, t); break;
                case Flask.CexprNames:
                    var c = (e.Attr & Flask.CexprTarget) != 0 ? t : s;
                    int v = (e.Attr & ~Flask.CexprTarget) switch
                    {
                        Flask.CexprUser => c.User,
                        Flask.CexprRole => c.Role,
                        Flask.CexprType => c.Type,
                        _ => 0,
                    };
                    bool member = v != 0 && e.Names!.Contains(v - 1);
                    stack[++sp] = e.Op == Flask.CexprNeq ? !member : member;
                    break;
            }
        }
        return stack[0];
    }

    private bool Attr(ConstraintExpr e, SecurityContext s, SecurityContext t)
    {
        (int a, int b) = e.Attr switch
        {
            Flask.CexprUser => (s.User, t.User),
            Flask.CexprRole => (s.Role, t.Role),
            Flask.CexprType => (s.Type, t.Type),
            _ => (0, 0), // MLS levels
        };
        if (e.Attr is not (Flask.CexprUser or Flask.CexprRole or Flask.CexprType))
            return true;
        return e.Op switch
        {
            Flask.CexprEq => a == b,
            Flask.CexprNeq => a != b,
            // Role dominance: XenSharp reads no role hierarchy, so a role dominates only itself.
            Flask.CexprDom or Flask.CexprDomby => a == b,
            Flask.CexprIncomp => a != b,
            _ => false,
        };
    }

    /// <summary>security_transition_sid (and member/change by <paramref name="specified"/>): the label a new object
    /// of <paramref name="tclass"/> gets — a domain keeps the source's role and type, anything else takes object_r
    /// and the target's type — unless a type rule says otherwise.</summary>
    public long ComputeSid(uint ssid, uint tsid, ushort tclass, int specified, out uint newSid)
    {
        newSid = 0;
        SecurityContext s, t;
        Dictionary<ulong, uint> cond;
        lock (_lock)
        {
            if (!_contexts.TryGetValue(ssid, out s) || !_contexts.TryGetValue(tsid, out t))
                return -Errno.EINVAL;
            cond = _condRules;
        }
        bool isDomain = _p.ValidClass(tclass) && _p.Classes[tclass - 1]!.Name == "domain";
        int user = specified == Policydb.AvtabMember ? t.User : s.User;
        int role = isDomain ? s.Role : Policydb.ObjectRole;
        int type = isDomain ? s.Type : t.Type;
        ulong key = AvRule.Pack(s.Type, t.Type, tclass, specified);
        if (_p.Avtab.TryGetValue(key, out uint newType) || cond.TryGetValue(key, out newType))
            type = (int)newType;
        if (isDomain && specified == Policydb.AvtabTransition)
            foreach (var (r, ty, nr) in _p.RoleTransitions)
                if (r == s.Role && ty == t.Type)
                {
                    role = nr;
                    break;
                }
        var ctx = new SecurityContext(user, role, type, s.Mls);
        if (role != Policydb.ObjectRole && (!_p.RoleTypes[role - 1].Contains(type - 1) || !_p.UserRoles[user - 1].Contains(role - 1)))
            return -Errno.EACCES;
        newSid = SidOf(ctx);
        return 0;
    }

    // ---- booleans ----

    public int BoolCount => _p.BoolNames.Length;

    public int BoolByName(string name) => Array.IndexOf(_p.BoolNames, name);

    public string BoolName(int id) => _p.BoolNames[id] ?? "";

    public (bool Current, bool Pending) GetBool(int id)
    {
        lock (_lock)
            return (_p.BoolStates[id], _pendingBools[id]);
    }

    /// <summary>Sets a boolean's pending value, and with <paramref name="commit"/> makes every pending value current.</summary>
    public void SetBool(int id, bool value, bool commit)
    {
        lock (_lock)
        {
            _pendingBools[id] = value;
            if (commit)
                CommitBoolsLocked();
        }
    }

    public void CommitBools()
    {
        lock (_lock)
            CommitBoolsLocked();
    }

    private void CommitBoolsLocked()
    {
        Array.Copy(_pendingBools, _p.BoolStates, _pendingBools.Length);
        EvaluateConditionals();
    }

    /// <summary>Rebuilds the enabled conditional rules from the current booleans (Xen's evaluate_cond_node).</summary>
    private void EvaluateConditionals()
    {
        var enabled = new Dictionary<ulong, uint>();
        foreach (var node in _p.Conditionals)
        {
            int state = EvaluateCond(node.Expr);
            if (state < 0)
                continue; // a malformed expression enables neither list, as in Xen
            foreach (var rule in state == 1 ? node.WhenTrue : node.WhenFalse)
                enabled[rule.Key] = enabled.TryGetValue(rule.Key, out uint old) && (rule.Specified & Policydb.AvtabAv) != 0
                    ? ((rule.Specified & Policydb.AvtabAuditDeny) != 0 ? old & rule.Data : old | rule.Data)
                    : rule.Data;
        }
        _condRules = enabled;
    }

    private int EvaluateCond((uint Type, uint Bool)[] expr)
    {
        Span<bool> stack = stackalloc bool[Flask.CondExprMaxDepth];
        int sp = -1;
        foreach (var (type, b) in expr)
        {
            if (type == Flask.CondBool)
            {
                if (sp == stack.Length - 1)
                    return -1;
                stack[++sp] = _p.BoolStates[b - 1];
                continue;
            }
            if (type == Flask.CondNot)
            {
                if (sp < 0) return -1;
                stack[sp] = !stack[sp];
                continue;
            }
            if (sp < 1)
                return -1;
            sp--;
            stack[sp] = type switch
            {
                Flask.CondOr => stack[sp] | stack[sp + 1],
                Flask.CondAnd => stack[sp] & stack[sp + 1],
                Flask.CondXor => stack[sp] ^ stack[sp + 1],
                Flask.CondEq => stack[sp] == stack[sp + 1],
                _ => stack[sp] != stack[sp + 1],
            };
        }
        return sp == 0 ? (stack[0] ? 1 : 0) : -1;
    }
}
