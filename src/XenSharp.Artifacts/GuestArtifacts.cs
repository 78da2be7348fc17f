using System.IO.Compression;
using System.Text;

namespace XenSharp.Artifacts;

/// <summary>
/// The one place that fetches and prepares real guests: Debian's current linux-image-amd64 kernel,
/// the Xen front-end modules it needs and busybox-static, made into initramfs images. Everything is
/// cached under ~/.cache/xensharp and reused offline.
/// </summary>
public sealed class GuestArtifacts
{
    /// <summary>Front-end drivers that Debian builds as modules; the rest of Xen support is built in.</summary>
    public static readonly string[] XenModules = ["xen-blkfront", "xen-netfront"];

    public GuestArtifacts(string? cacheDir = null) => CacheDir = cacheDir ?? DefaultCacheDir;

    public static string DefaultCacheDir
    {
        get
        {
            var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            var root = string.IsNullOrEmpty(xdg)
                ? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache")
                : xdg;
            return Path.Combine(root, "xensharp");
        }
    }

    public string CacheDir { get; }
    public string DebianDir => Path.Combine(CacheDir, "debian");
    public string KernelPath => Path.Combine(DebianDir, "vmlinuz");
    public string KernelVersionPath => Path.Combine(DebianDir, "kernel-version");
    public string BusyboxPath => Path.Combine(DebianDir, "busybox");
    public string ModulesDir => Path.Combine(DebianDir, "modules");
    /// <summary>An initramfs whose init starts an interactive shell on the console.</summary>
    public string ShellInitrdPath => Path.Combine(DebianDir, "initrd-shell.img");

    /// <summary>The init script the cached <see cref="ShellInitrdPath"/> was built with.</summary>
    private string ShellInitCopyPath => ShellInitrdPath + ".init";

    public bool IsCached => PackagesCached && ShellInitrdCurrent;

    private bool PackagesCached =>
        File.Exists(KernelPath) && File.Exists(BusyboxPath) &&
        XenModules.All(m => File.Exists(Path.Combine(ModulesDir, m + ".ko")));

    /// <summary>An image built from an older init is rebuilt, without fetching anything.</summary>
    private bool ShellInitrdCurrent =>
        File.Exists(ShellInitrdPath) && File.Exists(ShellInitCopyPath) && File.ReadAllText(ShellInitCopyPath) == ShellInit;

    public string KernelVersion => File.Exists(KernelVersionPath) ? File.ReadAllText(KernelVersionPath).Trim() : "";

    /// <summary>Fetches what is missing. <paramref name="progress"/> hears each step.</summary>
    public void EnsureDebian(Action<string>? progress = null)
    {
        if (IsCached) return;
        if (!PackagesCached) FetchPackages(progress);
        progress?.Invoke("building initrd-shell.img");
        BuildInitramfs(ShellInitrdPath, ShellInit, XenModules);
        File.WriteAllText(ShellInitCopyPath, ShellInit);
    }

    private void FetchPackages(Action<string>? progress)
    {
        var downloads = Path.Combine(CacheDir, "downloads");
        var staging = Path.Combine(CacheDir, "staging");
        if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
        Directory.CreateDirectory(DebianDir);

        progress?.Invoke("resolving linux-image-amd64");
        var kernelPackage = DebianPackages.ResolveDependency("linux-image-amd64", "linux-image-");
        progress?.Invoke($"downloading {kernelPackage}");
        var kernelDeb = DebianPackages.Download(kernelPackage, downloads);
        progress?.Invoke($"unpacking {Path.GetFileName(kernelDeb)}");
        DebianPackages.Extract(kernelDeb, staging);

        var version = kernelPackage["linux-image-".Length..];
        var vmlinuz = Path.Combine(staging, "boot", $"vmlinuz-{version}");
        if (!File.Exists(vmlinuz))
            throw new ArtifactException($"{kernelDeb} holds no boot/vmlinuz-{version}");
        Directory.CreateDirectory(ModulesDir);
        var moduleRoot = Path.Combine(staging, "lib", "modules", version, "kernel");
        foreach (var module in XenModules)
        {
            var found = Directory.GetFiles(moduleRoot, module + ".ko*", SearchOption.AllDirectories).FirstOrDefault()
                ?? throw new ArtifactException($"{kernelPackage} has no module {module}");
            File.Copy(found, Path.Combine(ModulesDir, module + ".ko"), overwrite: true);
        }

        progress?.Invoke("downloading busybox-static");
        var busyboxDeb = DebianPackages.Download("busybox-static", downloads);
        DebianPackages.Extract(busyboxDeb, staging);
        File.Copy(Path.Combine(staging, "bin", "busybox"), BusyboxPath, overwrite: true);

        File.Copy(vmlinuz, KernelPath, overwrite: true);
        File.WriteAllText(KernelVersionPath, DebianPackages.Version(kernelPackage) + " " + version + "\n");
        Directory.Delete(staging, recursive: true);
    }

    /// <summary>The init of <see cref="ShellInitrdPath"/>: mounts the pseudo file systems, loads
    /// the Xen front-ends, then gives the console an interactive shell.</summary>
    public const string ShellInit = """
        #!/bin/busybox sh
        /bin/busybox --install -s /bin
        mkdir -p /proc /sys /dev /tmp /root
        mount -t proc proc /proc
        mount -t sysfs sysfs /sys
        mount -t devtmpfs devtmpfs /dev
        for m in /lib/modules/*.ko; do insmod "$m" 2>/dev/null; done
        [ -d /sys/hypervisor ] && mount -t xenfs xenfs /proc/xen 2>/dev/null
        # xl shutdown makes the kernel run /sbin/poweroff; this init is no busybox init to signal.
        echo "/bin/poweroff -f" > /proc/sys/kernel/poweroff_cmd
        echo "init: $(uname -sr) up; hypervisor: $(cat /sys/hypervisor/type 2>/dev/null)"
        export PS1='~ # ' HOME=/root
        while true; do setsid cttyhack sh -l; done
        """;

    /// <summary>Builds a gzip-compressed newc initramfs with busybox, the given modules and init.</summary>
    public void BuildInitramfs(string outputPath, string initScript, IEnumerable<string> modules)
    {
        if (!File.Exists(BusyboxPath))
            throw new ArtifactException($"{BusyboxPath} is missing; run the fetch first");
        var tmp = outputPath + ".tmp";
        using (var file = File.Create(tmp))
        using (var gz = new GZipStream(file, CompressionLevel.Optimal))
        using (var cpio = new CpioWriter(gz))
        {
            foreach (var dir in new[] { "bin", "sbin", "dev", "proc", "sys", "tmp", "root", "etc", "lib", "lib/modules", "usr", "usr/bin", "usr/sbin" })
                cpio.AddDirectory(dir);
            cpio.AddCharDevice("dev/console", 5, 1);
            cpio.AddFile("bin/busybox", File.ReadAllBytes(BusyboxPath), 0x1ED);
            cpio.AddSymlink("bin/sh", "busybox");
            cpio.AddFile("init", Encoding.UTF8.GetBytes(initScript.ReplaceLineEndings("\n") + "\n"), 0x1ED);
            foreach (var module in modules)
                cpio.AddFile($"lib/modules/{module}.ko", File.ReadAllBytes(Path.Combine(ModulesDir, module + ".ko")));
        }
        File.Move(tmp, outputPath, overwrite: true);
    }
}
