using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

// bench-console: times a guest through its console, the same way for every peer.
//   bench-console --prompt REGEX [--setup TEXT --setup-result REGEX] [--send TEXT --result REGEX] [--timeout S] -- COMMAND ARGS...
// starts COMMAND, waits until its output matches --prompt (prints "boot SECONDS"), then optionally
// types the untimed --setup TEXT and waits for --setup-result, then optionally types TEXT and waits
// for --result (prints "command SECONDS" and the matched text), then kills it.
string? prompt = null, send = null, result = null, setup = null, setupResult = null;
double timeout = 300;
int i = 0;
for (; i < args.Length && args[i] != "--"; i++)
{
    switch (args[i])
    {
        case "--prompt": prompt = args[++i]; break;
        case "--send": send = args[++i]; break;
        case "--result": result = args[++i]; break;
        case "--setup": setup = args[++i]; break;
        case "--setup-result": setupResult = args[++i]; break;
        case "--timeout": timeout = double.Parse(args[++i]); break;
        default: Console.Error.WriteLine($"bench-console: unknown option {args[i]}"); return 2;
    }
}
if (prompt is null || i + 1 >= args.Length)
{
    Console.Error.WriteLine("usage: bench-console --prompt REGEX [--setup TEXT --setup-result REGEX] [--send TEXT --result REGEX] [--timeout S] -- COMMAND ARGS...");
    return 2;
}

var psi = new ProcessStartInfo(args[i + 1])
{
    RedirectStandardInput = true,
    RedirectStandardOutput = true,
    RedirectStandardError = true,
};
foreach (var a in args[(i + 2)..]) psi.ArgumentList.Add(a);
var clock = Stopwatch.StartNew();
using var p = Process.Start(psi)!;
var output = new StringBuilder();
var changed = new SemaphoreSlim(0);
_ = Pump(p.StandardOutput);
_ = Pump(p.StandardError);

try
{
    var bootMatch = await WaitFor(new Regex(prompt), 0);
    if (bootMatch is null) return Fail("no prompt");
    double boot = clock.Elapsed.TotalSeconds;
    Console.WriteLine($"boot {boot:F2}");
    if (setup is not null && setupResult is not null)
    {
        int from = output.Length;
        await p.StandardInput.WriteAsync(setup.Replace("\\n", "\n"));
        await p.StandardInput.FlushAsync();
        if (await WaitFor(new Regex(setupResult), from) is null) return Fail("no setup result");
    }
    if (send is not null && result is not null)
    {
        int from = output.Length;
        var start = clock.Elapsed;
        await p.StandardInput.WriteAsync(send.Replace("\\n", "\n"));
        await p.StandardInput.FlushAsync();
        var m = await WaitFor(new Regex(result), from);
        if (m is null) return Fail("no result");
        Console.WriteLine($"command {(clock.Elapsed - start).TotalSeconds:F2} {m.Value.Trim()}");
    }
    return 0;
}
finally
{
    try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
}

int Fail(string what)
{
    Console.Error.WriteLine($"bench-console: {what} within {timeout}s; last output:");
    lock (output) Console.Error.WriteLine(output.ToString()[Math.Max(0, output.Length - 2000)..]);
    return 1;
}

async Task<Match?> WaitFor(Regex re, int from)
{
    while (clock.Elapsed.TotalSeconds < timeout)
    {
        lock (output)
        {
            var m = re.Match(output.ToString(), from);
            if (m.Success) return m;
        }
        if (p.HasExited && !await changed.WaitAsync(100)) return null;
        await changed.WaitAsync(200);
    }
    return null;
}

async Task Pump(StreamReader reader)
{
    var buf = new char[4096];
    int n;
    while ((n = await reader.ReadAsync(buf)) > 0)
    {
        lock (output) output.Append(buf, 0, n);
        changed.Release();
    }
}
