using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Lifecycle;

/// <summary>xl console: the attach answer, then the guest's console streamed over the control connection.</summary>
public sealed partial class Host
{
    private ConsoleAttachResult ConsoleTarget(ConsoleAttachRequest r)
    {
        var d = Resolve(r.Domain);
        if (d.Console is null) throw new ControlException($"domain {d.DomId} has no console");
        if (d.Console.HasClient) throw new ControlException($"the console of domain {d.DomId} is already attached");
        return new ConsoleAttachResult(d.DomId, d.Config.Name);
    }

    /// <summary>After a successful attach answer, the connection is the console's: output flows to
    /// <paramref name="client"/>, its bytes go to the guest; returns when either side closes.
    /// <paramref name="unpause"/> lets a domain created paused for this console run once it is attached.</summary>
    public async Task RunConsoleAsync(uint domId, Stream client, bool unpause, CancellationToken ct)
    {
        Domain? d;
        lock (_lock) _domains.TryGetValue(domId, out d);
        var backend = d?.Console;
        bool attached = backend is not null && backend.Attach(client);
        // Unpaused even when another reader won the console: the domain must not wait for this one.
        if (unpause && d is not null)
            try { d.Hv.Unpause(); } catch (XenSharp.Hypervisor.HypervisorException) { } // destroyed meanwhile
        if (!attached) return;
        try
        {
            var buf = new byte[1024];
            while (!ct.IsCancellationRequested)
            {
                int n = await client.ReadAsync(buf, ct).ConfigureAwait(false);
                if (n == 0) break;
                int off = 0;
                while (off < n)
                {
                    int w = backend.WriteInput(buf.AsSpan(off, n - off));
                    if (w == 0)
                    {
                        lock (_lock) if (d!.Destroyed) return;
                        await Task.Delay(10, ct).ConfigureAwait(false);
                    }
                    off += w;
                }
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException) { }
        finally { backend!.Detach(client); }
    }
}
