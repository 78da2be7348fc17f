using XenSharp.Hypervisor.Xsm;
using XenSharp.Public;

namespace XenSharp.Hypervisor;

public sealed partial class XenHypervisor
{
    /// <summary>Whether FLASK is on (<see cref="HypervisorOptions.Flask"/>).</summary>
    public bool FlaskEnabled => Services.Flask is not null;

    /// <summary>FLASK_CONTEXT_TO_SID for the toolstack (xl.cfg <c>seclabel=</c>): 0 with the SID, -EINVAL for a
    /// context the policy does not accept, -ENOSYS with FLASK off (libxl then warns and goes on unlabeled).</summary>
    public long FlaskContextToSid(string context, out uint sid)
    {
        sid = 0;
        if (Services.Flask is not { } f)
            return -Errno.ENOSYS;
        long rc = f.CurrentHasPerm(Dom0, Flask.SecinitsidSecurity, Av.SecurityCheckContext);
        return rc < 0 ? rc : f.ContextToSid(context, out sid);
    }

    /// <summary>FLASK_SID_TO_CONTEXT: the label's text, or null (FLASK off, or no such SID).</summary>
    public string? FlaskSidToContext(uint sid) =>
        Services.Flask is { } f && f.SidToContext(sid, out string text) == 0 ? text : null;

    /// <summary>FLASK_RELABEL_DOMAIN by Domain-0 (xl.cfg <c>init_seclabel=</c>: built under one label, run under
    /// another). 0 or -errno.</summary>
    public long FlaskRelabelDomain(ushort domid, uint sid)
    {
        if (Services.Flask is not { } f)
            return -Errno.ENOSYS;
        var d = FindDomain(domid);
        return d is null ? -Errno.ESRCH : f.Relabel(Dom0, d, sid, self: false);
    }
}
