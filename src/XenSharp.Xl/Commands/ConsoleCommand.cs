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
        using var terminal = RawTerminal.Enter();
        try
        {
            var stdout = new FdStream(1);
            var output = Task.Run(async () =>
            {
                var buf = new byte[4096];
                int n;
                while ((n = await stream.ReadAsync(buf)) > 0) stdout.Write(buf, 0, n);
            });
            var input = Task.Factory.StartNew(() =>
            {
                var stdin = new FdStream(0);
                var buf = new byte[1024];
                int n;
                while ((n = stdin.Read(buf)) > 0)
                {
                    int detach = Array.IndexOf(buf, DetachKey, 0, n);
                    if (detach >= 0)
                    {
                        if (detach > 0) stream.Write(buf.AsSpan(0, detach));
                        return;
                    }
                    stream.Write(buf.AsSpan(0, n));
                }
                // End of input (not a terminal): keep showing output until the console closes.
                output.Wait();
            }, TaskCreationOptions.LongRunning);
            Task.WaitAny(output, input);
        }
        catch (IOException) { }
        return 0;
    }
}
