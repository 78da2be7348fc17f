using System.IO.Compression;
using System.Text;

namespace XenSharp.Artifacts;

/// <summary>
/// The one place that fetches and prepares real guests: Debian's current linux-image-amd64 kernel,
/// the Xen front-end modules it needs and busybox-static, made into initramfs images, and a Debian
/// root file system image with the initramfs that mounts it. Everything is cached under
/// ~/.cache/xensharp and reused offline.
/// </summary>
public sealed class GuestArtifacts
{
    /// <summary>Front-end drivers that Debian builds as modules; the rest of Xen support is built in.</summary>
    public static readonly string[] XenModules = ["xen-blkfront", "xen-netfront"];

    /// <summary>
    /// What the disk initramfs loads, in load order, to mount an ext4 root from a Xen (xen-blkfront)
    /// or virtio (virtio_blk, for booting the same image under QEMU) disk: Debian builds all of them
    /// as modules. ext4 asks for crc32c without naming it as a dependency, so it is listed here.
    /// </summary>
    public static readonly string[] DiskModules =
        ["xen-blkfront", "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
         "virtio_blk", "crc16", "mbcache", "jbd2", "crc32c_generic", "ext4"];

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

    /// <summary>An initramfs whose init loads the disk and ext4 modules, mounts the root= device and
    /// switches to it.</summary>
    public string DiskInitrdPath => Path.Combine(DebianDir, "initrd-disk.img");
    /// <summary>The Debian root file system, as a raw ext4 image and as a qcow2 copy of it.</summary>
    public string RootfsRawPath => Path.Combine(DebianDir, "rootfs.raw");
    public string RootfsQcow2Path => Path.Combine(DebianDir, "rootfs.qcow2");
    /// <summary>The recipe the cached images were built from, then the packages, one a line.</summary>
    public string RootfsStampPath => Path.Combine(DebianDir, "rootfs.stamp");

    /// <summary>The init script the cached <see cref="ShellInitrdPath"/> was built with.</summary>
    private string ShellInitCopyPath => ShellInitrdPath + ".init";
    private string DiskInitCopyPath => DiskInitrdPath + ".init";

    public bool IsCached => PackagesCached && ShellInitrdCurrent && DiskInitrdCurrent && RootfsCurrent;

    private bool PackagesCached =>
        File.Exists(KernelPath) && File.Exists(BusyboxPath) &&
        XenModules.Concat(DiskModules).All(m => File.Exists(Path.Combine(ModulesDir, m + ".ko")));

    private bool DiskInitrdCurrent =>
        File.Exists(DiskInitrdPath) && File.Exists(DiskInitCopyPath) && File.ReadAllText(DiskInitCopyPath) == DiskInit;

    private bool RootfsCurrent =>
        File.Exists(RootfsRawPath) && File.Exists(RootfsQcow2Path) && File.Exists(RootfsStampPath) &&
        File.ReadAllText(RootfsStampPath).StartsWith(RootFilesystem.Recipe + "\n---\n");

    /// <summary>The packages the cached root file system was built from.</summary>
    public IReadOnlyList<string> RootfsPackages => File.Exists(RootfsStampPath)
        ? File.ReadAllText(RootfsStampPath).Split("\n---\n").Last().Split('\n', StringSplitOptions.RemoveEmptyEntries)
        : [];

    /// <summary>An image built from an older init is rebuilt, without fetching anything.</summary>
    private bool ShellInitrdCurrent =>
        File.Exists(ShellInitrdPath) && File.Exists(ShellInitCopyPath) && File.ReadAllText(ShellInitCopyPath) == ShellInit;

    public string KernelVersion => File.Exists(KernelVersionPath) ? File.ReadAllText(KernelVersionPath).Trim() : "";

    /// <summary>Fetches what is missing. <paramref name="progress"/> hears each step.</summary>
    public void EnsureDebian(Action<string>? progress = null)
    {
        if (IsCached) return;
        // New packages (a newer kernel's modules) make both initramfs images stale.
        var fetched = !PackagesCached;
        if (fetched) FetchPackages(progress);
        if (fetched || !ShellInitrdCurrent)
        {
            progress?.Invoke("building initrd-shell.img");
            BuildInitramfs(ShellInitrdPath, ShellInit, XenModules);
            File.WriteAllText(ShellInitCopyPath, ShellInit);
        }
        if (fetched || !DiskInitrdCurrent)
        {
            progress?.Invoke("building initrd-disk.img");
            BuildInitramfs(DiskInitrdPath, DiskInit, DiskModules);
            File.WriteAllText(DiskInitCopyPath, DiskInit);
        }
        if (!RootfsCurrent) BuildRootfs(progress);
    }

    private void BuildRootfs(Action<string>? progress)
    {
        var staging = Path.Combine(CacheDir, "rootfs-staging");
        var packages = RootFilesystem.Stage(staging, Path.Combine(CacheDir, "downloads"), progress);
        progress?.Invoke("making rootfs.raw (ext4) and rootfs.qcow2");
        File.Delete(RootfsStampPath);
        RootFilesystem.MakeImage(staging, RootfsRawPath, RootfsQcow2Path);
        File.WriteAllText(RootfsStampPath, RootFilesystem.Recipe + "\n---\n" + string.Join('\n', packages) + "\n");
        Directory.Delete(staging, recursive: true);
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
        foreach (var module in XenModules.Concat(DiskModules).Distinct())
        {
            var found = Directory.GetFiles(moduleRoot, module + ".ko*", SearchOption.AllDirectories).FirstOrDefault()
                ?? throw new ArtifactException($"{kernelPackage} has no module {module}");
            File.Copy(found, Path.Combine(ModulesDir, module + ".ko"), overwrite: true);
        }
        CheckLoadOrder(DiskModules);

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

    /// <summary>Fails when a module would be loaded before a module it depends on, or without it.</summary>
    private void CheckLoadOrder(string[] modules)
    {
        for (var i = 0; i < modules.Length; i++)
            foreach (var dep in ElfFile.ModuleDepends(Path.Combine(ModulesDir, modules[i] + ".ko")))
                if (Array.IndexOf(modules, dep, 0, i) < 0)
                    throw new ArtifactException($"{modules[i]} depends on {dep}, which the disk initramfs does not load before it");
    }

    /// <summary>
    /// The init of <see cref="DiskInitrdPath"/>: loads the disk and ext4 modules, waits for the
    /// device named by root= on the kernel command line, mounts it and hands over to its
    /// /sbin/init (or init=). A root that does not come up leaves a rescue shell.
    /// </summary>
    public static readonly string DiskInit = $$"""
        #!/bin/busybox sh
        /bin/busybox --install -s /bin
        mkdir -p /proc /sys /dev /newroot
        mount -t proc proc /proc
        mount -t sysfs sysfs /sys
        mount -t devtmpfs devtmpfs /dev
        # Each machine has one kind of disk: the other front-end refuses to load ("No such device").
        failed=
        for m in {{string.Join(' ', DiskModules)}}; do
            insmod /lib/modules/$m.ko 2>/dev/null || failed="$failed $m"
        done
        root=; rootfstype=ext4; init=/sbin/init
        for arg in $(cat /proc/cmdline); do
            case "$arg" in
                root=*) root=${arg#root=} ;;
                rootfstype=*) rootfstype=${arg#rootfstype=} ;;
                init=*) init=${arg#init=} ;;
            esac
        done
        rescue() { echo "initrd: $1 (modules not loaded:$failed); rescue shell"; export PS1='initrd # '; exec setsid cttyhack sh; }
        [ -n "$root" ] || rescue "no root= on the kernel command line"
        # Disks are probed asynchronously (xenbus, PCI): wait up to 30 s for the device.
        n=0
        while [ ! -b "$root" ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
        [ -b "$root" ] || rescue "$root did not appear"
        mount -t "$rootfstype" -o ro "$root" /newroot || rescue "cannot mount $root"
        [ -x "/newroot$init" ] || [ -L "/newroot$init" ] || rescue "$root has no $init"
        echo "initrd: switching to $root"
        umount /sys /proc
        mount --move /dev /newroot/dev
        exec switch_root /newroot "$init"
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
