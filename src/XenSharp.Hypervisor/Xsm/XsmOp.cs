using System.Text;
using XenSharp.Hypervisor.Common;
using XenSharp.Public;
using static XenSharp.Public.FlaskOp;

namespace XenSharp.Hypervisor.Xsm;

/// <summary>
/// __HYPERVISOR_xsm_op with FLASK's sub-operations (xen/xsm/flask/flask_op.c), as libxc's xc_flask_* calls make them:
/// -ENOSYS when FLASK is off (Xen's dummy XSM) or for another interface version; each operation checks its
/// permission on the security server's label (class security) first. Results that carry data are copied back.
/// </summary>
internal static class XsmOp
{
    private delegate long Handler(Vcpu v, Flask f, ref XenFlaskOp op);

    private static readonly Dictionary<uint, Handler> Table = new()
    {
        [FLASK_LOAD] = Load,
        [FLASK_GETENFORCE] = (Vcpu _, Flask f, ref XenFlaskOp _) => f.Enforcing ? 1 : 0,
        [FLASK_SETENFORCE] = SetEnforce,
        [FLASK_CONTEXT_TO_SID] = ContextToSid,
        [FLASK_SID_TO_CONTEXT] = SidToContext,
        [FLASK_ACCESS] = Access,
        [FLASK_CREATE] = (Vcpu v, Flask f, ref XenFlaskOp op) => Transition(v, f, ref op, Av.SecurityComputeCreate, Policydb.AvtabTransition),
        [FLASK_RELABEL] = (Vcpu v, Flask f, ref XenFlaskOp op) => Transition(v, f, ref op, Av.SecurityComputeRelabel, Policydb.AvtabChange),
        [FLASK_MEMBER] = (Vcpu v, Flask f, ref XenFlaskOp op) => Transition(v, f, ref op, Av.SecurityComputeMember, Policydb.AvtabMember),
        [FLASK_POLICYVERS] = (Vcpu _, Flask _, ref XenFlaskOp _) => Policydb.VersionMax,
        [FLASK_GETBOOL] = GetBool,
        [FLASK_SETBOOL] = SetBool,
        [FLASK_COMMITBOOLS] = CommitBools,
        [FLASK_MLS] = (Vcpu _, Flask f, ref XenFlaskOp _) => f.Mls ? 1 : 0,
        [FLASK_GETAVC_THRESHOLD] = (Vcpu _, Flask f, ref XenFlaskOp _) => f.AvcThreshold,
        [FLASK_SETAVC_THRESHOLD] = SetAvcThreshold,
        [FLASK_AVC_HASHSTATS] = (Vcpu _, Flask f, ref XenFlaskOp op) => { op.As<XenFlaskHashStats>() = f.HashStats(); return 0; },
        [FLASK_GET_PEER_SID] = GetPeerSid,
        [FLASK_RELABEL_DOMAIN] = RelabelDomain,
    };

    /// <summary>The operations whose results are copied back to the caller's structure (Xen's FLASK_COPY_OUT).</summary>
    private const ulong CopyOut = 1UL << (int)FLASK_CONTEXT_TO_SID | 1UL << (int)FLASK_SID_TO_CONTEXT | 1UL << (int)FLASK_ACCESS
        | 1UL << (int)FLASK_CREATE | 1UL << (int)FLASK_RELABEL | 1UL << (int)FLASK_USER | 1UL << (int)FLASK_GETBOOL
        | 1UL << (int)FLASK_SETBOOL | 1UL << (int)FLASK_AVC_HASHSTATS | 1UL << (int)FLASK_AVC_CACHESTATS
        | 1UL << (int)FLASK_MEMBER | 1UL << (int)FLASK_GET_PEER_SID;

    private const uint PageSize = 4096;

    public static long Do(Vcpu v, in HypercallArgs a)
    {
        if (v.Domain.Host.Flask is not { } f)
            return -Errno.ENOSYS;
        if (!GuestAccess.Read(v, a.A1, out XenFlaskOp op))
            return -Errno.EFAULT;
        if (op.InterfaceVersion != XEN_FLASK_INTERFACE_VERSION || !Table.TryGetValue(op.Cmd, out var handler))
            return -Errno.ENOSYS;
        long rc = handler(v, f, ref op);
        if (rc >= 0 && (CopyOut >> (int)op.Cmd & 1) != 0 && !GuestAccess.Write(v, a.A1, op))
            return -Errno.EFAULT;
        return rc;
    }

    /// <summary>domain_has_security: the caller's permission on the security server (SECINITSID_SECURITY).</summary>
    private static long HasSecurity(Vcpu v, Flask f, Perm perm) => f.CurrentHasPerm(v.Domain, Flask.SecinitsidSecurity, perm);

    private static long Load(Vcpu v, Flask f, ref XenFlaskOp op)
    {
        long rc = HasSecurity(v, f, Av.SecurityLoadPolicy);
        if (rc < 0)
            return rc;
        var load = op.As<XenFlaskLoad>();
        if (load.Size > Flask.MaxPolicySize)
            return -Errno.EINVAL;
        var buffer = new byte[load.Size];
        if (!GuestAccess.CopyFrom(v, load.Buffer, buffer))
            return -Errno.EFAULT;
        return f.Load(buffer);
    }

    private static long SetEnforce(Vcpu v, Flask f, ref XenFlaskOp op)
    {
        bool enforce = BitConverter.ToUInt32(Bytes(ref op, 4)) != 0;
        if (enforce == f.Enforcing)
            return 0;
        long rc = HasSecurity(v, f, Av.SecuritySetenforce);
        if (rc < 0)
            return rc;
        f.SetEnforcing(enforce);
        return 0;
    }

    private static long ContextToSid(Vcpu v, Flask f, ref XenFlaskOp op)
    {
        long rc = HasSecurity(v, f, Av.SecurityCheckContext);
        if (rc < 0)
            return rc;
        ref var sc = ref op.As<XenFlaskSidContext>();
        rc = ReadString(v, sc.Context, sc.Size, out string text);
        if (rc < 0)
            return rc;
        rc = f.ContextToSid(text, out uint sid);
        if (rc < 0)
            return rc;
        sc.Sid = sid;
        return 0;
    }

    private static long SidToContext(Vcpu v, Flask f, ref XenFlaskOp op)
    {
        long rc = HasSecurity(v, f, Av.SecurityCheckContext);
        if (rc < 0)
            return rc;
        ref var sc = ref op.As<XenFlaskSidContext>();
        rc = f.SidToContext(sc.Sid, out string text);
        if (rc < 0)
            return rc;
        // Xen counts and copies the terminating NUL.
        byte[] bytes = Encoding.ASCII.GetBytes(text + "\0");
        rc = bytes.Length > sc.Size ? -Errno.ERANGE : 0;
        sc.Size = (uint)bytes.Length;
        if (rc == 0 && !GuestAccess.CopyTo(v, sc.Context, bytes))
            return -Errno.EFAULT;
        return rc;
    }

    private static long Access(Vcpu v, Flask f, ref XenFlaskOp op)
    {
        long rc = HasSecurity(v, f, Av.SecurityComputeAv);
        if (rc < 0)
            return rc;
        ref var acc = ref op.As<XenFlaskAccess>();
        if (f.Server is not { } ss)
        {
            acc.Allowed = uint.MaxValue;
            acc.AuditAllow = 0;
            acc.AuditDeny = uint.MaxValue;
            acc.Seqno = 0;
            return 0;
        }
        if (acc.Tclass > ushort.MaxValue)
            return -Errno.EINVAL;
        rc = ss.ComputeAv(acc.Ssid, acc.Tsid, (ushort)acc.Tclass, out var avd);
        if (rc < 0)
            return rc;
        acc.Allowed = avd.Allowed;
        acc.AuditAllow = avd.AuditAllow;
        acc.AuditDeny = avd.AuditDeny;
        acc.Seqno = avd.Seqno;
        return 0;
    }

    private static long Transition(Vcpu v, Flask f, ref XenFlaskOp op, Perm perm, int specified)
    {
        long rc = HasSecurity(v, f, perm);
        if (rc < 0)
            return rc;
        ref var t = ref op.As<XenFlaskTransition>();
        if (t.Tclass > ushort.MaxValue)
            return -Errno.EINVAL;
        rc = f.Server is { } ss ? ss.ComputeSid(t.Ssid, t.Tsid, (ushort)t.Tclass, specified, out uint sid)
            : f.TransitionSid(t.Ssid, t.Tsid, (ushort)t.Tclass, specified, out sid);
        if (rc < 0)
            return rc;
        t.Newsid = sid;
        return 0;
    }

    /// <summary>A boolean named by id, or by name when the id is -1 (the id is then filled in).</summary>
    private static long ResolveBool(Vcpu v, SecurityServer ss, ref XenFlaskBoolean b)
    {
        if (b.BoolId != uint.MaxValue)
            return b.BoolId < ss.BoolCount ? 0 : -Errno.ENOENT;
        long rc = ReadString(v, b.Name, b.Size, out string name);
        if (rc < 0)
            return rc;
        int id = ss.BoolByName(name);
        b.BoolId = (uint)id;
        b.Size = 0;
        return id < 0 ? -Errno.ENOENT : 0;
    }

    private static long GetBool(Vcpu v, Flask f, ref XenFlaskOp op)
    {
        if (f.Server is not { } ss)
            return -Errno.ENOENT;
        ref var b = ref op.As<XenFlaskBoolean>();
        long rc = ResolveBool(v, ss, ref b);
        if (rc < 0)
            return rc;
        var (current, pending) = ss.GetBool((int)b.BoolId);
        b.Enforcing = (byte)(current ? 1 : 0);
        b.Pending = (byte)(pending ? 1 : 0);
        if (b.Size != 0)
        {
            byte[] name = Encoding.ASCII.GetBytes(ss.BoolName((int)b.BoolId));
            rc = name.Length > b.Size ? -Errno.ERANGE : 0;
            b.Size = (uint)name.Length;
            if (rc == 0 && !GuestAccess.CopyTo(v, b.Name, name))
                return -Errno.EFAULT;
        }
        return rc;
    }

    private static long SetBool(Vcpu v, Flask f, ref XenFlaskOp op)
    {
        long rc = HasSecurity(v, f, Av.SecuritySetbool);
        if (rc < 0)
            return rc;
        if (f.Server is not { } ss)
            return -Errno.ENOENT;
        ref var b = ref op.As<XenFlaskBoolean>();
        rc = ResolveBool(v, ss, ref b);
        if (rc < 0)
            return rc;
        bool value = b.NewValue != 0;
        ss.SetBool((int)b.BoolId, value, b.Commit != 0);
        var (current, pending) = ss.GetBool((int)b.BoolId);
        b.Enforcing = (byte)(current ? 1 : 0);
        b.Pending = (byte)(pending ? 1 : 0);
        if (b.Commit != 0)
            f.FlushCache();
        return 0;
    }

    private static long CommitBools(Vcpu v, Flask f, ref XenFlaskOp op)
    {
        long rc = HasSecurity(v, f, Av.SecuritySetbool);
        if (rc < 0)
            return rc;
        f.Server?.CommitBools();
        f.FlushCache();
        return 0;
    }

    private static long SetAvcThreshold(Vcpu v, Flask f, ref XenFlaskOp op)
    {
        uint threshold = BitConverter.ToUInt32(Bytes(ref op, 4));
        if (threshold == f.AvcThreshold)
            return 0;
        long rc = HasSecurity(v, f, Av.SecuritySetsecparam);
        if (rc < 0)
            return rc;
        f.AvcThreshold = threshold;
        return 0;
    }

    private static long GetPeerSid(Vcpu v, Flask f, ref XenFlaskOp op)
    {
        ref var p = ref op.As<XenFlaskPeersid>();
        ushort? peer = null;
        lock (v.Domain.Lock)
            if (v.Domain.Evtchn.Get(p.Evtchn) is { State: EvtchnState.Interdomain } c)
                peer = c.RemoteDom;
        if (peer is not ushort id || v.Domain.Host.FindDomain(id) is not { } remote)
            return -Errno.EINVAL;
        p.Sid = Flask.SidOf(remote);
        return 0;
    }

    private static long RelabelDomain(Vcpu v, Flask f, ref XenFlaskOp op)
    {
        var r = op.As<XenFlaskRelabel>();
        bool self = r.Domid == Xen.DOMID_SELF;
        var d = self ? v.Domain : r.Domid < Xen.DOMID_FIRST_RESERVED ? v.Domain.Host.FindDomain((ushort)r.Domid) : null;
        if (d is null)
            return -Errno.ESRCH;
        return f.Relabel(v.Domain, d, r.Sid, self);
    }

    private static ReadOnlySpan<byte> Bytes(ref XenFlaskOp op, int length) =>
        System.Runtime.InteropServices.MemoryMarshal.CreateReadOnlySpan(ref op.As<byte>(), length);

    /// <summary>safe_copy_string_from_guest: at most a page, up to its first NUL.</summary>
    private static long ReadString(Vcpu v, ulong address, uint size, out string text)
    {
        text = "";
        if (size > PageSize)
            return -Errno.ENOBUFS;
        var bytes = new byte[size];
        if (!GuestAccess.CopyFrom(v, address, bytes))
            return -Errno.EFAULT;
        int nul = Array.IndexOf(bytes, (byte)0);
        text = Encoding.ASCII.GetString(bytes, 0, nul < 0 ? bytes.Length : nul);
        return 0;
    }
}
