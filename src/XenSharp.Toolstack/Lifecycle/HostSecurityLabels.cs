using XenSharp.Public;
using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Platform;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>
/// The FLASK labels of xl.cfg, as libxl applies them: a domain is created under <c>init_seclabel</c> if given, else
/// <c>seclabel</c>, and with both it takes <c>seclabel</c> once built, before it first runs. A label the policy
/// refuses fails the creation; with FLASK off the labels are ignored with a warning, as libxl does when xsm_op
/// answers ENOSYS.
/// </summary>
public sealed partial class Host
{
    /// <summary>The label a domain is created under; without one in its configuration, the initial SID domU (the
    /// policy's default guest label), as libxl gives it when FLASK is on.</summary>
    private uint CreateSsidref(DomainConfig c) =>
        c.InitSeclabel is { } init ? Sid(init, "init_seclabel") : c.Seclabel is { } label ? Sid(label, "seclabel")
        : _hv.FlaskEnabled ? FlaskOp.SECINITSID_DOMU : 0;

    private uint Sid(string label, string key)
    {
        long rc = _hv.FlaskContextToSid(label, out uint sid);
        if (rc == -Errno.ENOSYS)
            return 0;
        if (rc < 0)
            throw new ControlException($"Invalid {key}: {label}: {ErrnoText.Describe((int)-rc)}", (int)-rc);
        return sid;
    }

    /// <summary>With both labels, the domain leaves its build label for the one it runs under (FLASK_RELABEL_DOMAIN).</summary>
    private void ApplyExecLabel(Domain dom)
    {
        if (dom.Config.InitSeclabel is null || dom.Config.Seclabel is not { } exec || Sid(exec, "seclabel") is not (> 0 and var sid))
            return;
        long rc = _hv.FlaskRelabelDomain(dom.DomId, sid);
        if (rc < 0)
            throw new ControlException($"cannot relabel domain {dom.DomId} to {exec}: {ErrnoText.Describe((int)-rc)}", (int)-rc);
    }

    private IEnumerable<string> SecurityLabelWarnings(DomainConfig c) =>
        !_hv.FlaskEnabled && (c.Seclabel ?? c.InitSeclabel) is not null ? ["XSM Disabled: seclabel not supported"] : [];
}
