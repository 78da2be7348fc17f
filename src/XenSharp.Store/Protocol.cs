using System.Buffers.Text;
using System.Text;

namespace XenSharp.Store;

/// <summary>The wire protocol: one request in, one reply (and perhaps watch events) out.</summary>
internal sealed partial class XenStoreEngine
{
    private readonly byte[] _reply = new byte[XsWire.PayloadMax];
    private static ReadOnlySpan<byte> Ok => "OK\0"u8;

    /// <summary>Handles one complete request. The caller guarantees payload.Length == header.Len
    /// and that it is at most XENSTORE_PAYLOAD_MAX.</summary>
    public void Process(Connection c, in XsdSockmsg h, ReadOnlySpan<byte> payload)
    {
        lock (Lock) ProcessLocked(c, h, payload);
    }

    public void ProcessLocked(Connection c, in XsdSockmsg h, ReadOnlySpan<byte> payload)
    {
        {
            if (c.Closed) return;
            XsError e;
            int len;
            try
            {
                e = Dispatch(c, h, payload, out len);
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                // A defect must cost one request, not the daemon.
                Console.Error.WriteLine($"xenstored: {(XsType)h.Type} from domain {c.DomId} failed: {ex}");
                e = XsError.EIO;
                len = 0;
                pendingWatch = null;
            }
            if (c.Closed) return;
            if (e == XsError.None)
                c.Send((XsType)h.Type, h.ReqId, h.TxId, _reply.AsSpan(0, len));
            else
                c.Send(XsType.Error, h.ReqId, h.TxId, XsWire.ErrorName(e));
            if (e == XsError.None && pendingWatch is { } w)
            {
                pendingWatch = null;
                Watches.Send(w, w.Path);
            }
        }
    }

    // A new watch's initial event goes out right after the reply to XS_WATCH.
    private Watch? pendingWatch;

    private XsError Dispatch(Connection c, in XsdSockmsg h, ReadOnlySpan<byte> p, out int len)
    {
        len = 0;
        var type = (XsType)h.Type;
        Transaction? tx = null;
        switch (type)
        {
            case XsType.Read: case XsType.Write: case XsType.Mkdir: case XsType.Rm:
            case XsType.Directory: case XsType.DirectoryPart: case XsType.GetPerms: case XsType.SetPerms:
                if (h.TxId != 0 && !c.Transactions.TryGetValue(h.TxId, out tx)) return XsError.ENOENT;
                break;
        }

        XsError e;
        string path;
        Node? node;
        switch (type)
        {
            case XsType.Read:
                if ((e = PathArg(c, p, out path)) != XsError.None) return e;
                if ((e = Nodes.Lookup(c, path, XsPerm.Read, tx, out node)) != XsError.None) return e;
                if (node!.Value.Length > _reply.Length) return XsError.E2BIG;
                node.Value.CopyTo(_reply, 0);
                len = node.Value.Length;
                return XsError.None;

            case XsType.Write:
            {
                int nul = p.IndexOf((byte)0);
                if (nul < 0) return XsError.EINVAL;
                if ((e = Paths.Canonicalize(c, p[..nul], Quotas.MaxRelativePathLength, out path)) != XsError.None) return e;
                if ((e = Nodes.Write(c, path, p[(nul + 1)..], tx)) != XsError.None) return e;
                return Reply(Ok, out len);
            }

            case XsType.Mkdir:
                if ((e = PathArg(c, p, out path)) != XsError.None) return e;
                if ((e = Nodes.Mkdir(c, path, tx)) != XsError.None) return e;
                return Reply(Ok, out len);

            case XsType.Rm:
                if ((e = PathArg(c, p, out path)) != XsError.None) return e;
                if ((e = Nodes.Rm(c, path, tx)) != XsError.None) return e;
                return Reply(Ok, out len);

            case XsType.Directory:
                if ((e = PathArg(c, p, out path)) != XsError.None) return e;
                if ((e = Nodes.Lookup(c, path, XsPerm.Read, tx, out node)) != XsError.None) return e;
                foreach (string name in node!.Children)
                {
                    if (len + name.Length + 1 > _reply.Length) return XsError.E2BIG;
                    len += Encoding.ASCII.GetBytes(name, _reply.AsSpan(len));
                    _reply[len++] = 0;
                }
                return XsError.None;

            case XsType.DirectoryPart:
                return DirectoryPart(c, p, tx, out len);

            case XsType.GetPerms:
                if ((e = PathArg(c, p, out path)) != XsError.None) return e;
                if ((e = Nodes.Lookup(c, path, XsPerm.Read, tx, out node)) != XsError.None) return e;
                foreach (XsPermission perm in node!.Perms)
                {
                    if (len + 8 > _reply.Length) return XsError.E2BIG;
                    _reply[len++] = (byte)XsPermission.Letter(perm.Perm);
                    Utf8Formatter.TryFormat(perm.DomId, _reply.AsSpan(len), out int w);
                    len += w;
                    _reply[len++] = 0;
                }
                return XsError.None;

            case XsType.SetPerms:
            {
                int nul = p.IndexOf((byte)0);
                if (nul < 0) return XsError.EINVAL;
                if ((e = Paths.Canonicalize(c, p[..nul], Quotas.MaxRelativePathLength, out path)) != XsError.None) return e;
                var perms = new List<XsPermission>();
                ReadOnlySpan<byte> rest = p[(nul + 1)..];
                while (rest.Length > 0)
                {
                    int end = rest.IndexOf((byte)0);
                    if (end < 0) return XsError.EINVAL;
                    if (!TryParsePerm(rest[..end], out XsPermission perm)) return XsError.EINVAL;
                    perms.Add(perm);
                    rest = rest[(end + 1)..];
                }
                if (perms.Count == 0) return XsError.EINVAL;
                if ((e = Nodes.SetPerms(c, path, perms.ToArray(), tx)) != XsError.None) return e;
                return Reply(Ok, out len);
            }

            case XsType.Watch:
            case XsType.Unwatch:
                return WatchOp(c, type, p, out len);

            case XsType.TransactionStart:
            {
                if (h.TxId != 0) return XsError.EBUSY;
                if ((e = TransactionStart(c, out uint id)) != XsError.None) return e;
                Utf8Formatter.TryFormat(id, _reply, out len);
                _reply[len++] = 0;
                return XsError.None;
            }

            case XsType.TransactionEnd:
            {
                if (!OneArg(p, out ReadOnlySpan<byte> arg)) return XsError.EINVAL;
                bool commit;
                if (arg.SequenceEqual("T"u8)) commit = true;
                else if (arg.SequenceEqual("F"u8)) commit = false;
                else return XsError.EINVAL;
                if ((e = TransactionEnd(c, h.TxId, commit)) != XsError.None) return e;
                return Reply(Ok, out len);
            }

            case XsType.Introduce:
            {
                if (!c.Privileged) return XsError.EACCES;
                Span<Range> args = stackalloc Range[4];
                int n = SplitArgs(p, args);
                if (n < 3 || !ParseUInt(p[args[0]], out uint dom) || !ulong.TryParse(Encoding.ASCII.GetString(p[args[1]]), out ulong mfn)
                    || !ParseUInt(p[args[2]], out uint port))
                    return XsError.EINVAL;
                if ((e = Introduce(dom, mfn, port, null, out _)) != XsError.None) return e;
                return Reply(Ok, out len);
            }

            case XsType.Release:
            case XsType.Resume:
            {
                if (!c.Privileged) return XsError.EACCES;
                if (!OneArg(p, out ReadOnlySpan<byte> arg) || !ParseUInt(arg, out uint dom)) return XsError.EINVAL;
                if (type == XsType.Release)
                {
                    if ((e = Release(dom)) != XsError.None) return e;
                }
                else if (!Domains.IsIntroduced(dom) || dom == 0) return XsError.ENOENT;
                return Reply(Ok, out len);
            }

            case XsType.IsDomainIntroduced:
            {
                if (!c.Privileged) return XsError.EACCES;
                if (!OneArg(p, out ReadOnlySpan<byte> arg) || !ParseUInt(arg, out uint dom)) return XsError.EINVAL;
                return Reply(Domains.IsIntroduced(dom) ? "T\0"u8 : "F\0"u8, out len);
            }

            case XsType.GetDomainPath:
            {
                if (!OneArg(p, out ReadOnlySpan<byte> arg) || !ParseUInt(arg, out uint dom)) return XsError.EINVAL;
                len = Encoding.ASCII.GetBytes(Connection.DomainPathOf(dom), _reply);
                _reply[len++] = 0;
                return XsError.None;
            }

            case XsType.SetTarget:
            {
                if (!c.Privileged) return XsError.EACCES;
                Span<Range> args = stackalloc Range[3];
                if (SplitArgs(p, args) != 2 || !ParseUInt(p[args[0]], out uint dom) || !ParseUInt(p[args[1]], out uint target))
                    return XsError.EINVAL;
                if ((e = SetTarget(dom, target)) != XsError.None) return e;
                return Reply(Ok, out len);
            }

            case XsType.ResetWatches:
                Watches.RemoveAll(c);
                c.Transactions.Clear();
                return Reply(Ok, out len);

            case XsType.Control:
                return Control(c, p, out len);

            default:
                return XsError.EINVAL;
        }
    }

    private XsError Reply(ReadOnlySpan<byte> text, out int len)
    {
        text.CopyTo(_reply);
        len = text.Length;
        return XsError.None;
    }

    private XsError PathArg(Connection c, ReadOnlySpan<byte> p, out string path)
    {
        path = "";
        if (!OneArg(p, out ReadOnlySpan<byte> arg)) return XsError.EINVAL;
        return Paths.Canonicalize(c, arg, Quotas.MaxRelativePathLength, out path);
    }

    /// <summary>Exactly one nul-terminated string filling the payload, as Xen requires.</summary>
    private static bool OneArg(ReadOnlySpan<byte> p, out ReadOnlySpan<byte> arg)
    {
        arg = default;
        if (p.Length == 0 || p[^1] != 0) return false;
        arg = p[..^1];
        return arg.IndexOf((byte)0) < 0;
    }

    /// <summary>Splits nul-terminated strings; returns how many there were, or -1 if more than fit
    /// or the last one lacks its nul.</summary>
    private static int SplitArgs(ReadOnlySpan<byte> p, Span<Range> args)
    {
        int n = 0, start = 0;
        while (start < p.Length)
        {
            int end = p[start..].IndexOf((byte)0);
            if (end < 0 || n == args.Length) return -1;
            args[n++] = new Range(start, start + end);
            start += end + 1;
        }
        return n;
    }

    private static bool ParseUInt(ReadOnlySpan<byte> s, out uint v) =>
        Utf8Parser.TryParse(s, out v, out int used) && used == s.Length && s.Length > 0;

    private static bool TryParsePerm(ReadOnlySpan<byte> s, out XsPermission perm)
    {
        perm = default;
        if (s.Length < 2 || s.Length > 8) return false;
        Span<char> chars = stackalloc char[s.Length];
        for (int i = 0; i < s.Length; i++) chars[i] = (char)s[i];
        return XsPermission.TryParse(chars, out perm);
    }

    private XsError DirectoryPart(Connection c, ReadOnlySpan<byte> p, Transaction? tx, out int len)
    {
        len = 0;
        Span<Range> args = stackalloc Range[3];
        if (SplitArgs(p, args) != 2 || !ParseUInt(p[args[1]], out uint offset)) return XsError.EINVAL;
        XsError e = Paths.Canonicalize(c, p[args[0]], Quotas.MaxRelativePathLength, out string path);
        if (e != XsError.None) return e;
        if ((e = Nodes.Lookup(c, path, XsPerm.Read, tx, out Node? node)) != XsError.None) return e;
        // Reply: the node's generation, then as many names (from byte offset `offset` of the full
        // listing) as fit; an extra nul marks the end of the listing.
        Utf8Formatter.TryFormat(node!.Generation, _reply, out len);
        _reply[len++] = 0;
        long pos = 0;
        foreach (string name in node.Children)
        {
            long next = pos + name.Length + 1;
            if (pos >= offset)
            {
                if (len + name.Length + 1 + 1 > _reply.Length) return XsError.None;
                len += Encoding.ASCII.GetBytes(name, _reply.AsSpan(len));
                _reply[len++] = 0;
            }
            else if (next > offset) return XsError.EINVAL; // offset not at a name boundary
            pos = next;
        }
        if (offset > pos) return XsError.EINVAL;
        _reply[len++] = 0;
        return XsError.None;
    }

    private XsError WatchOp(Connection c, XsType type, ReadOnlySpan<byte> p, out int len)
    {
        len = 0;
        Span<Range> args = stackalloc Range[3];
        if (SplitArgs(p, args) != 2) return XsError.EINVAL;
        ReadOnlySpan<byte> rawPath = p[args[0]];
        string path;
        int strip = 0;
        if (rawPath.Length > 0 && rawPath[0] == '@')
        {
            if (rawPath.Length > XsWire.RelPathMax) return XsError.EINVAL;
            path = Encoding.ASCII.GetString(rawPath);
        }
        else
        {
            XsError e = Paths.Canonicalize(c, rawPath, Quotas.MaxRelativePathLength, out path);
            if (e != XsError.None) return e;
            if (rawPath[0] != '/') strip = c.DomainPath.Length + 1;
        }
        ReadOnlySpan<byte> tokenBytes = p[args[1]];
        string token = Encoding.Latin1.GetString(tokenBytes);
        if (type == XsType.Watch)
        {
            XsError e = Watches.Add(c, path, token, tokenBytes.ToArray(), strip, Quotas.WatchesPerDomain, out Watch? w);
            if (e != XsError.None) return e;
            pendingWatch = w;
        }
        else
        {
            XsError e = Watches.Remove(c, path, token);
            if (e != XsError.None) return e;
        }
        return Reply(Ok, out len);
    }

    private XsError Control(Connection c, ReadOnlySpan<byte> p, out int len)
    {
        len = 0;
        if (!c.Privileged) return XsError.EACCES;
        Span<Range> args = stackalloc Range[4];
        int n = SplitArgs(p, args);
        if (n < 1) return XsError.EINVAL;
        string cmd = Encoding.ASCII.GetString(p[args[0]]);
        switch (cmd)
        {
            case "check":
            case "log":
                return Reply(Ok, out len);
            case "print":
                if (n < 2) return XsError.EINVAL;
                Console.Error.WriteLine("xenstored: " + Encoding.ASCII.GetString(p[args[1]]));
                return Reply(Ok, out len);
            case "quota":
            {
                string text =
                    $"Nodes per Domain: {Quotas.NodesPerDomain}\nEntry size: {Quotas.MaxEntrySize}\n" +
                    $"Watches per Domain: {Quotas.WatchesPerDomain}\nTransactions per Domain: {Quotas.TransactionsPerDomain}\n" +
                    $"Outstanding requests: {Quotas.OutstandingRequests}\nPath length: {Quotas.MaxRelativePathLength}\n" +
                    $"Permissions per node: {Quotas.PermissionsPerNode}\n";
                len = Encoding.ASCII.GetBytes(text, _reply);
                _reply[len++] = 0;
                return XsError.None;
            }
            case "help":
                return Reply("check\nlog\nprint <string>\nquota\nhelp\n\0"u8, out len);
            default:
                return XsError.EINVAL;
        }
    }
}
