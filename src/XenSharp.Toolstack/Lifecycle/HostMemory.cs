namespace XenSharp.Toolstack.Lifecycle;

/// <summary>Facts about the host from /proc, for Domain-0 and xl info.</summary>
internal static class HostMemory
{
    public readonly record struct Memory(long TotalKb, long AvailableKb);

    public static Memory Read()
    {
        long total = 0, avail = 0;
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                if (line.StartsWith("MemTotal:")) total = Kb(line);
                else if (line.StartsWith("MemAvailable:")) avail = Kb(line);
            }
        }
        catch (IOException) { }
        return new Memory(total, avail);
    }

    private static long Kb(string line) =>
        long.TryParse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], out long v) ? v : 0;

    public static double UptimeSeconds()
    {
        try { return double.Parse(File.ReadAllText("/proc/uptime").Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture); }
        catch (Exception e) when (e is IOException or FormatException) { return Environment.TickCount64 / 1000.0; }
    }

    public static int CpuMhz()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("cpu MHz") && double.TryParse(line[(line.IndexOf(':') + 1)..], System.Globalization.CultureInfo.InvariantCulture, out double mhz))
                    return (int)mhz;
        }
        catch (IOException) { }
        return 0;
    }

    public static (string Release, string Version) Uname()
    {
        string Read(string p) { try { return File.ReadAllText(p).Trim(); } catch (IOException) { return ""; } }
        return (Read("/proc/sys/kernel/osrelease"), Read("/proc/sys/kernel/version"));
    }
}
