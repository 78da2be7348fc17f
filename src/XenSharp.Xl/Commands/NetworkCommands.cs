using System.Globalization;
using XenSharp.Public;
using XenSharp.Toolstack.Control;

namespace XenSharp.Xl.Commands;

internal static class NetworkCommands
{
    /// <summary>xl's network-list heading: Idx, BE, Mac Addr., handle, state, evt-ch, tx-/rx-ring-ref, BE-path.</summary>
    private const string Heading = "{0,-3} {1,-2} {2,-17} {3,-6} {4,-5} {5,-6} {6,5}/{7,-5} {8,-30}";
    /// <summary>A row: the MAC is followed directly by the right-aligned handle, as xl prints it.</summary>
    private const string Row = "{0,-3} {1,-2} {2}{3,6} {4,5} {5,6} {6,5}/{7,-11} {8,-30}";

    /// <summary>xl network-attach: the spec's items, as separate arguments or one, form one vif specification.</summary>
    public static int Attach(XlContext ctx, ParsedArgs a)
    {
        string spec = string.Join(',', a.Operands.Skip(1));
        ctx.Daemon.Send(new NetworkAttachRequest(a.Operands[0], spec));
        return 0;
    }

    /// <summary>xl network-detach: by device number, or by MAC when the argument has a colon.</summary>
    public static int Detach(XlContext ctx, ParsedArgs a)
    {
        try { ctx.Daemon.Send(new NetworkDetachRequest(a.Operands[0], a.Operands[1])); }
        catch (ControlException e) when (e.Errno == Errno.ENODEV)
        {
            ctx.Err.WriteLine($"Unknown device {a.Operands[1]}.");
            return 1;
        }
        return 0;
    }

    /// <summary>xl network-list: one table over the named domains; a name that is no domain is reported and skipped.</summary>
    public static int List(XlContext ctx, ParsedArgs a)
    {
        ctx.Out.WriteLine(string.Format(CultureInfo.InvariantCulture, Heading,
            "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path"));
        foreach (string domain in a.Operands)
        {
            IReadOnlyList<NicInfoEntry> nics;
            try { nics = ctx.Daemon.Send(new NetworkListRequest(domain)); }
            catch (ControlException e) when (e.Errno == Errno.EINVAL)
            {
                ctx.Err.WriteLine($"{domain} is an invalid domain identifier");
                continue;
            }
            foreach (var n in nics)
                ctx.Out.WriteLine(string.Format(CultureInfo.InvariantCulture, Row,
                    n.Devid, n.BackendId, n.Mac, n.Devid, n.State, n.EventChannel, n.TxRingRef, n.RxRingRef, n.BackendPath));
        }
        return 0;
    }
}
