namespace XenSharp.Integration.Tests;

/// <summary>Locates the repository the tests were built from.</summary>
internal static class Repository
{
    public static string Root { get; } = Find();

    private static string Find()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "XenSharp.slnx")))
                return dir.FullName;
        throw new InvalidOperationException($"no XenSharp.slnx above {AppContext.BaseDirectory}");
    }

    public static string PathOf(params string[] parts) => Path.Combine([Root, .. parts]);
}
