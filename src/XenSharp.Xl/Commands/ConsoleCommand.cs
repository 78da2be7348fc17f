using System.Diagnostics;
using XenSharp.Toolstack.Control;

namespace XenSharp.Xl.Commands;

/// <summary>xl console: the terminal becomes the domain's console until Ctrl-] (the role of xenconsole).</summary>
internal static class ConsoleCommand
{
    private const byte DetachKey = 0x1d; // Ctrl-]

    public static int Run(XlContext ctx, ParsedArgs a)
    {
        string? type = a.Value('t');
        if (type is not null and not "pv")
        {
            ctx.Err.WriteLine($"console type \"{type}\" is not supported; only pv consoles exist");
            return 1;
        }
        if (a.Value('n') is { } n && n != "0")
        {
            ctx.Err.WriteLine($"console {n} does not exist");
            return 1;
        }
        return Attach(ctx, a.Operands[0]);
    }

    public static int Attach(XlContext ctx, string domain, bool unpause = false)
    {
        using var client = ctx.Connect();
        // The daemon unpauses only after attaching: unpausing from here raced the attach, and a guest
        // that finished first took its output with it.
        client.Send(new ConsoleAttachRequest(domain, unpause));
        var stream = client.Stream;
        string? saved = Console.IsInputRedirected ? null : Stty("-g");
        if (saved is not null) Stty("raw -echo");
        try
        {
            var stdout = Console.OpenStandardOutput();
            var output = Task.Run(async () =>
            {
                var buf = new byte[4096];
                int n;
                while ((n = await stream.ReadAsync(buf)) > 0)
                {
                    await stdout.WriteAsync(buf.AsMemory(0, n));
                    await stdout.FlushAsync();
                }
            });
            var input = Task.Run(async () =>
            {
                var stdin = Console.OpenStandardInput();
                var buf = new byte[1024];
                int n;
                while ((n = await stdin.ReadAsync(buf)) > 0)
                {
                    int detach = Array.IndexOf(buf, DetachKey, 0, n);
                    if (detach >= 0)
                    {
                        if (detach > 0) await stream.WriteAsync(buf.AsMemory(0, detach));
                        return;
                    }
                    await stream.WriteAsync(buf.AsMemory(0, n));
                }
                // End of input (not a terminal): keep showing output until the console closes.
                await output;
            });
            Task.WaitAny(output, input);
        }
        catch (IOException) { }
        finally
        {
            if (saved is not null) Stty(saved);
        }
        return 0;
    }

    private static string? Stty(string args)
    {
        try
        {
            var psi = new ProcessStartInfo("/bin/sh", ["-c", $"stty {args} < /dev/tty"])
            { RedirectStandardOutput = true, UseShellExecute = false };
            using var p = Process.Start(psi)!;
            string o = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 ? o : null;
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            return null;
        }
    }
}
