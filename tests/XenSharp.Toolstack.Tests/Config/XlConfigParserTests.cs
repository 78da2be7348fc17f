using XenSharp.Toolstack.Config;

namespace XenSharp.Toolstack.Tests.Config;

public class XlConfigParserTests
{
    [Fact]
    public void NewlineAndSemicolonSeparatedPairsFromTheManual()
    {
        var a = XlConfigParser.Parse("name=\"h0\"\ntype=\"hvm\"\n", "a.cfg");
        var b = XlConfigParser.Parse("name=\"h0\"; type=\"hvm\"", "b.cfg");
        Assert.Equal("h0", a.GetString("name"));
        Assert.Equal("hvm", a.GetString("type"));
        Assert.Equal("h0", b.GetString("name"));
        Assert.Equal("hvm", b.GetString("type"));
    }

    [Theory]
    [InlineData("memory = 512", 512)]
    [InlineData("memory = 0x200", 512)]
    [InlineData("memory = 01000", 512)]
    [InlineData("memory = \"512\"", 512)]
    [InlineData("memory=-1", -1)]
    public void NumbersAreDecimalOctalOrHex(string text, long expected)
    {
        Assert.Equal(expected, XlConfigParser.Parse(text, "n.cfg").GetLong("memory"));
    }

    [Fact]
    public void BooleansAreNumbersZeroFalseAnythingElseTrue()
    {
        var c = XlConfigParser.Parse("pvshim=0\nacpi=1\nhpet=7\n", "b.cfg");
        Assert.False(c.GetBool("pvshim"));
        Assert.True(c.GetBool("acpi"));
        Assert.True(c.GetBool("hpet"));
    }

    [Fact]
    public void StringsTakeEitherQuoteAndCEscapes()
    {
        var c = XlConfigParser.Parse("a='single \"q\"'\nb=\"tab\\there\\n\\x41\\101\\\\\"\n", "s.cfg");
        Assert.Equal("single \"q\"", c.GetString("a"));
        Assert.Equal("tab\there\nAA\\", c.GetString("b"));
    }

    [Fact]
    public void ListsNestSpanLinesAndAllowTrailingComma()
    {
        const string text = """
            # the vnuma example of the xl.cfg manual
            vnuma = [ ["pnode=0","size=512","vcpus=0-4","vdistances=10,20"],
                      ["pnode=1","size=512","vcpus=5-9","vdistances=20,10"], ]
            cpus = ["2", "3-8,^5"]
            disk = [ 'format=raw, vdev=xvda, access=rw, target=/dev/vg/guest' ]
            empty = []
            """;
        var c = XlConfigParser.Parse(text, "l.cfg");
        var vnuma = c.GetList("vnuma")!;
        Assert.Equal(2, vnuma.Count);
        Assert.Equal("vdistances=20,10", vnuma[1].Items![3].Atom);
        Assert.Equal(["2", "3-8,^5"], c.GetStringList("cpus")!);
        Assert.Equal("format=raw, vdev=xvda, access=rw, target=/dev/vg/guest", c.GetStringList("disk")![0]);
        Assert.Empty(c.GetList("empty")!);
        Assert.Equal(4, c.Find("cpus")!.Line);
    }

    [Fact]
    public void CommentsRunToTheEndOfTheLine()
    {
        var c = XlConfigParser.Parse("# header\nname = \"x#y\" # trailing\n\n   # indented\nvcpus = 2#x\n", "c.cfg");
        Assert.Equal("x#y", c.GetString("name"));
        Assert.Equal(2, c.GetLong("vcpus"));
    }

    [Fact]
    public void LaterSettingWinsAndPlusEqualsAppends()
    {
        var c = XlConfigParser.Parse("memory=128\nmemory=256\nextra=\"a\"\nextra+=\" b\"\nvif=['x']\nvif+=['y']\n", "p.cfg");
        Assert.Equal(256, c.GetLong("memory"));
        Assert.Equal(2, c.Find("memory")!.Line);
        Assert.Equal("a b", c.GetString("extra"));
        Assert.Equal(["x", "y"], c.GetStringList("vif")!);
    }

    [Fact]
    public void CommandLineOverridesReplaceFileSettings()
    {
        var c = XlConfigParser.Parse("name=\"a\"\nmemory=128\n", "o.cfg");
        XlConfigParser.ParseInto(c, "memory=512", "command line");
        Assert.Equal(512, c.GetLong("memory"));
        Assert.Equal("a", c.GetString("name"));
    }

    [Theory]
    [InlineData("name=\"a\"\nmemory = = 3\n", "bad.cfg:2: config parsing error near `=': syntax error")]
    [InlineData("name=\"a\"\n\nvcpus 2\n", "bad.cfg:3: config parsing error near `2': syntax error")]
    [InlineData("a=\"open\n", "bad.cfg:1: config parsing error near `\"open': unterminated string")]
    [InlineData("a=[1,\n2\nb=3\n", "bad.cfg:3: config parsing error near `b': syntax error")]
    [InlineData("x=1 2\n", "bad.cfg:1: config parsing error near `2': syntax error")]
    [InlineData("a=1\n$=2\n", "bad.cfg:2: config parsing error near `$': syntax error")]
    [InlineData("a=[1\n", "bad.cfg:2: config parsing error near `end of file': syntax error")]
    [InlineData("a=\n", "bad.cfg:1: config parsing error near `newline': syntax error")]
    public void SyntaxErrorsNameFileAndLine(string text, string message)
    {
        var e = Assert.Throws<XlConfigException>(() => XlConfigParser.Parse(text, "bad.cfg"));
        Assert.Equal(message, e.Message);
    }

    [Fact]
    public void TypeErrorsNameFileAndLine()
    {
        var c = XlConfigParser.Parse("\nmemory=\"lots\"\nname=[\"a\"]\n", "t.cfg");
        Assert.Equal("t.cfg:2: parameter `memory' is not a valid number: `lots'",
            Assert.Throws<XlConfigException>(() => c.GetLong("memory")).Message);
        Assert.Equal("t.cfg:3: parameter `name' is a list but should be a single value",
            Assert.Throws<XlConfigException>(() => c.GetString("name")).Message);
    }

    [Fact]
    public void MissingFileIsReported()
    {
        var e = Assert.Throws<XlConfigException>(() => XlConfigParser.ParseFile("/nonexistent/dir/guest.cfg"));
        Assert.Equal("Failed to read config file: /nonexistent/dir/guest.cfg: No such file or directory", e.Message);
    }
}
