using System.Text.Json.Serialization;
using XenSharp.Toolstack.Control;
using XenSharp.Toolstack.Lifecycle;

namespace XenSharp.Toolstack.Tests.Lifecycle;

/// <summary>The daemon's request table answers exactly the requests the control protocol declares.</summary>
public sealed class RequestTableTests
{
    [Fact]
    public void EveryDeclaredRequestHasAHandlerAndEveryHandlerADeclaredRequest()
    {
        var declared = typeof(ControlRequest).GetCustomAttributes(typeof(JsonDerivedTypeAttribute), false)
            .Select(a => ((JsonDerivedTypeAttribute)a).DerivedType).OrderBy(t => t.Name).ToList();
        Assert.True(declared.Count > 20);
        Assert.Equal(declared, Host.HandledRequests.OrderBy(t => t.Name));
        Assert.Equal(declared.Count, ControlJson.Ops.Count);
    }

    [Theory]
    [InlineData("{\"op\":\"no-such-op\"}", "no-such-op")]
    [InlineData("{\"op\":\"List\",\"domains\":[],\"long\":false}", "List")]
    public void AWellFormedRequestWithAnUnknownOpIsUnknownNotMalformed(string line, string op)
    {
        var e = Assert.Throws<UnknownRequestException>(() => ControlJson.ReadRequest(line));
        Assert.Equal(op, e.Op);
    }

    [Theory]
    [InlineData("[1]")]
    [InlineData("{\"domains\":[],\"op\":\"list\"}")]
    [InlineData("{\"op\":7}")]
    public void OtherBadRequestsStayMalformed(string line)
    {
        var e = Assert.ThrowsAny<System.Text.Json.JsonException>(() => ControlJson.ReadRequest(line));
        Assert.IsNotType<UnknownRequestException>(e);
    }
}
