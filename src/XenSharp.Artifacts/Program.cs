using Spectre.Console;
using XenSharp.Artifacts;

// xensharp-artifacts: fetches and prepares the Debian guest artifacts used by the demo, the tests
// and the benchmarks.
//   fetch [--quiet-if-cached]              download and prepare everything that is missing
//   path ARTIFACT                          print where an artifact lives: kernel, initrd, busybox,
//                                          modules, initrd-disk, rootfs-raw, rootfs-qcow2
//   initramfs --init FILE --out FILE       build an initramfs with busybox, the Xen modules and FILE as /init
var store = new GuestArtifacts();
try
{
    switch (args.FirstOrDefault())
    {
        case "fetch":
            if (store.IsCached)
            {
                if (!args.Contains("--quiet-if-cached"))
                    Console.WriteLine($"cached in {store.DebianDir} (kernel {store.KernelVersion})");
                return 0;
            }
            store.EnsureDebian(step => AnsiConsole.MarkupLineInterpolated($"[grey]artifacts:[/] {step}"));
            Console.WriteLine($"ready in {store.DebianDir} (kernel {store.KernelVersion})");
            return 0;
        case "path" when args.Length == 2:
            Console.WriteLine(args[1] switch
            {
                "kernel" => store.KernelPath,
                "initrd" => store.ShellInitrdPath,
                "busybox" => store.BusyboxPath,
                "modules" => store.ModulesDir,
                "initrd-disk" => store.DiskInitrdPath,
                "rootfs-raw" => store.RootfsRawPath,
                "rootfs-qcow2" => store.RootfsQcow2Path,
                var other => throw new ArtifactException($"unknown artifact '{other}'"),
            });
            return 0;
        case "initramfs":
            var init = Option("--init");
            var output = Option("--out");
            store.EnsureDebian();
            store.BuildInitramfs(output, File.ReadAllText(init), GuestArtifacts.XenModules);
            return 0;
        default:
            Console.Error.WriteLine("usage: xensharp-artifacts fetch [--quiet-if-cached] | path kernel|initrd|busybox|modules|initrd-disk|rootfs-raw|rootfs-qcow2 | initramfs --init FILE --out FILE");
            return 2;
    }
}
catch (ArtifactException e)
{
    Console.Error.WriteLine($"xensharp-artifacts: {e.Message}");
    return 1;
}

string Option(string name)
{
    var i = Array.IndexOf(args, name);
    if (i < 0 || i + 1 >= args.Length)
        throw new ArtifactException($"{name} FILE is required");
    return args[i + 1];
}
