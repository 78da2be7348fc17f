namespace XenSharp.Hypervisor.Xsm;

/// <summary>
/// XenSharp's built-in FLASK policy, as Xen built with XSM_FLASK_POLICY carries one: policy/flask/xen-default.te after
/// Xen 4.17's classes and permissions (policy/flask/xen-abi.te), compiled by Debian's checkpolicy when this assembly is
/// built. The daemon loads it when FLASK starts (<see cref="HypervisorOptions.FlaskPolicy"/>); flask-loadpolicy
/// replaces it.
/// </summary>
public static class DefaultPolicy
{
    private static readonly Lazy<byte[]> Compiled = new(() =>
    {
        using var s = typeof(DefaultPolicy).Assembly.GetManifestResourceStream("XenSharp.Hypervisor.Xsm.xen-default.pol")
            ?? throw new InvalidOperationException("the built-in FLASK policy is missing from the assembly");
        var bytes = new byte[s.Length];
        s.ReadExactly(bytes);
        return bytes;
    });

    /// <summary>The policy binary (policy version 30).</summary>
    public static byte[] Binary => Compiled.Value;
}
