using XenSharp.Toolstack.Config;
using XenSharp.Toolstack.Control;
using XenSharp.Xl;

return XlMain.Run(args, FdStream.Writer(1), FdStream.Writer(2));

namespace XenSharp.Xl
{
    internal static class XlMain
    {
        public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
        {
            var ctx = new XlContext(new RunPaths(), stdout, stderr);
            int i = 0;
            // Global options come before the subcommand: xl [-v] [-N] [-f] [-t] [-T] <subcommand> [args].
            for (; i < args.Length && args[i].StartsWith('-') && args[i].Length > 1; i++)
            {
                foreach (char c in args[i][1..])
                {
                    switch (c)
                    {
                        case 'v': ctx.Verbose = true; break;
                        case 'N': ctx.DryRun = true; break;
                        case 'f': ctx.Force = true; break;
                        case 't': case 'T': case 'A': break; // timestamps / autoballoon: nothing to change here
                        case 'h':
                            Help.Print(ctx.Out, null);
                            return 0;
                        default:
                            stderr.WriteLine($"xl: invalid option -- '{c}'");
                            Help.Print(stderr, null);
                            return 1;
                    }
                }
            }
            if (i >= args.Length)
            {
                Help.Print(stderr, null);
                return 1;
            }
            string name = args[i];
            var cmd = CommandTable.Lookup(name);
            if (cmd is null)
            {
                stderr.WriteLine("command not implemented");
                return 1;
            }
            if (ctx.DryRun && !cmd.CanDryRun)
            {
                stderr.WriteLine($"command does not implement -N (dryrun) option");
                return 1;
            }
            using (ctx)
            {
                try
                {
                    var parsed = ParsedArgs.Parse(name, args[(i + 1)..], cmd.Options);
                    if (parsed.Has('h'))
                    {
                        Help.Print(ctx.Out, cmd.Name);
                        return 0;
                    }
                    if (parsed.Operands.Count < cmd.MinOperands)
                    {
                        stderr.WriteLine($"'xl {cmd.Name}' requires at least {cmd.MinOperands} argument{(cmd.MinOperands == 1 ? "" : "s")}.");
                        stderr.WriteLine();
                        Help.Print(stderr, cmd.Name);
                        return 2;
                    }
                    return cmd.Handler(ctx, parsed);
                }
                catch (UsageException e)
                {
                    stderr.WriteLine($"xl {name}: {e.Message}");
                    Help.Print(stderr, cmd.Name);
                    return 2;
                }
                catch (XlConfigException e)
                {
                    stderr.WriteLine(e.Message);
                    return 1;
                }
                catch (ControlException e)
                {
                    stderr.WriteLine(e.Message);
                    return 1;
                }
                catch (IOException e)
                {
                    stderr.WriteLine($"xl: lost the connection to xensharpd: {e.Message}");
                    return 1;
                }
            }
        }
    }

    internal static class Help
    {
        public static void Print(TextWriter w, string? command)
        {
            if (command is null || command == "help")
            {
                w.WriteLine("Usage xl [-vfNtT] <subcommand> [args]");
                w.WriteLine();
                w.WriteLine("xl full list of subcommands:");
                w.WriteLine();
                foreach (var c in CommandTable.Commands)
                {
                    w.Write($" {c.Name,-19} ");
                    if (c.Name.Length > 19) w.Write($"\n {"",-19} ");
                    w.WriteLine(c.Description);
                }
                return;
            }
            var cmd = CommandTable.Lookup(command);
            if (cmd is null)
            {
                w.WriteLine($"command \"{command}\" not implemented");
                return;
            }
            w.WriteLine($"Usage: xl [-v{(cmd.Modifies ? "f" : "")}{(cmd.CanDryRun ? "N" : "")}] {cmd.Name} {cmd.Usage}");
            w.WriteLine();
            w.WriteLine($"{cmd.Description}.");
            w.WriteLine();
            if (cmd.OptionsHelp is not null)
            {
                w.WriteLine("Options:");
                w.WriteLine();
                w.WriteLine(cmd.OptionsHelp);
            }
        }
    }
}
