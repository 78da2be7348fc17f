namespace XenSharp.Toolstack.Builder;

/// <summary>A kernel, ramdisk or layout the builder cannot use; the message is for the user.</summary>
public sealed class DomainBuildException(string message, Exception? inner = null) : Exception(message, inner);
