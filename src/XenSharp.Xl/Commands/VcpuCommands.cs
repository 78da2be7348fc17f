using XenSharp.Toolstack.Control;

namespace XenSharp.Xl.Commands;

internal static class VcpuCommands
{
    public static int List(XlContext ctx, ParsedArgs a)
    {
        Formats.VcpuList(ctx.Out, ctx.Daemon.Send(new VcpuListRequest(a.Operands)));
        return 0;
    }

    public static int Pin(XlContext ctx, ParsedArgs a)
    {
        string dom = a.Operands[0];
        int vcpu;
        if (a.Operands[1] == "all") vcpu = -1;
        else if (!int.TryParse(a.Operands[1], out vcpu) || vcpu < 0)
        {
            ctx.Err.WriteLine($"Invalid vcpu `{a.Operands[1]}'");
            return 1;
        }
        string? hard = a.Operands[2];
        string? soft = a.Operands.Count > 3 ? a.Operands[3] : null;
        if (ctx.DryRun) return 0;
        ctx.Daemon.Send(new VcpuPinRequest(dom, vcpu, hard == "-" ? null : hard, soft is null or "-" ? null : soft));
        return 0;
    }

    public static int Set(XlContext ctx, ParsedArgs a)
    {
        if (!int.TryParse(a.Operands[1], out int n) || n < 1)
        {
            ctx.Err.WriteLine($"Invalid vCPUs count: {a.Operands[1]}");
            return 1;
        }
        ctx.Daemon.Send(new VcpuSetRequest(a.Operands[0], n, a.Has('i')));
        return 0;
    }
}
