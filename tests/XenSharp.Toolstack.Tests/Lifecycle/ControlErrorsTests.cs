using XenSharp.Hypervisor;
using XenSharp.Store;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;

namespace XenSharp.Toolstack.Tests.Lifecycle;

/// <summary>The control boundary's exception → errno map: every failure has an answer and an errno.</summary>
public sealed class ControlErrorsTests
{
    public static TheoryData<Exception, int, string> Failures => new()
    {
        { new ControlException("domain with name \"a\" already exists.", 0), 0, "domain with name \"a\" already exists." },
        { new HypervisorException("no domain 7", 3), 3, "no domain 7" },
        { new XenStoreException(XsError.E2BIG, "/local/domain/1/name"), 7, "xenstore: E2BIG on /local/domain/1/name" },
        { new OutOfMemoryException("cannot populate gfn 3ffe"), 12, "cannot populate gfn 3ffe: Cannot allocate memory" },
        { new PathTooLongException("The path is too long."), 36, "The path is too long: File name too long" },
        { new UnauthorizedAccessException("denied"), 13, "denied: Permission denied" },
        { new IOException("disk gone"), 5, "disk gone: Input/output error" },
        { new InvalidOperationException("a bug"), 5, "xensharpd: internal error: a bug: Input/output error" },
    };

    [Theory, MemberData(nameof(Failures))]
    public void EachFailureIsAnsweredWithItsReasonAndErrno(Exception e, int errno, string message)
    {
        var f = ControlErrors.Map(e);
        Assert.NotNull(f);
        Assert.Equal(errno, f.Value.Errno);
        Assert.Equal(message, f.Value.Message);
    }

    [Fact]
    public void OnlyTheDaemonStoppingIsNotAnswered() =>
        Assert.Null(ControlErrors.Map(new OperationCanceledException()));
}
