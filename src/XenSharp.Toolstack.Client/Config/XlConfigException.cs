namespace XenSharp.Toolstack.Config;

/// <summary>A configuration that cannot be used. The message already names the file and the line
/// ("FILE:LINE: ...") the way xl reports it.</summary>
public sealed class XlConfigException(string message) : Exception(message)
{
    public static XlConfigException At(string file, int line, string what) => new($"{file}:{line}: {what}");
}
