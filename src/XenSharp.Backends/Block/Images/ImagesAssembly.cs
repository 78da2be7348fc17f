using System.Runtime.CompilerServices;

[assembly: InternalsVisibleTo("XenSharp.Backends.Tests")]
