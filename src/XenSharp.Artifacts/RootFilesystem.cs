using System.Text;

namespace XenSharp.Artifacts;

/// <summary>
/// Builds a small Debian root file system as an ext4 image from Debian's own packages, without
/// root-only tools or a running Debian: each package is unpacked with dpkg-deb, busybox provides the
/// shell, the core utilities and init, and mke2fs -d writes the staged tree straight into the image.
/// No package's maintainer scripts run, so the packages only those scripts need are left out.
/// </summary>
public static class RootFilesystem
{
    /// <summary>What the image is for: a shell and core utilities with init (busybox), file system
    /// tools (e2fsprogs) and a block I/O load generator (fio).</summary>
    public static readonly string[] Roots = ["busybox-static", "e2fsprogs", "fio"];

    /// <summary>
    /// Dependencies that are not followed, with why: nothing here needs them at run time, and
    /// the check that every ELF file's libraries are present would fail if one were needed.
    /// </summary>
    public static readonly IReadOnlyDictionary<string, string> Skipped = new Dictionary<string, string>
    {
        ["python3"] = "only fio's log and plot helper scripts use it",
        ["init-system-helpers"] = "registers fio's init.d service from a maintainer script",
        ["perl-base"] = "maintainer scripts",
        ["dpkg"] = "maintainer scripts; nothing is installed by dpkg in the image",
        ["debconf"] = "maintainer scripts",
        ["adduser"] = "maintainer scripts",
        ["passwd"] = "maintainer scripts",
        ["tar"] = "maintainer scripts",
        ["install-info"] = "maintainer scripts",
        ["usrmerge"] = "converts an installed system; the image is laid out as the packages say",
        ["usr-is-merged"] = "the same",
        ["mime-support"] = "file type tables no binary here reads",
        ["media-types"] = "the same",
        ["mailcap"] = "the same",
    };

    /// <summary>Documentation and service glue that a root file system for tests does not use.</summary>
    private static readonly string[] Pruned =
        ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
         "usr/share/bug", "usr/share/bash-completion", "etc/init.d", "etc/cron.d", "lib/systemd", "usr/lib/systemd"];

    /// <summary>Where the dynamic linker and ceph's RUNPATH look for libraries.</summary>
    private static readonly string[] LibraryDirs = ["lib", "lib64", "usr/lib"];

    public const string Prompt = "debian-disk # ";

    /// <summary>busybox init's table: one setup script, a respawning shell on the console, and a
    /// clean unmount when xl shutdown (the kernel's poweroff) or Ctrl-Alt-Del asks.</summary>
    public const string Inittab = """
        ::sysinit:/etc/init.d/rcS
        ::respawn:/bin/cttyhack /bin/sh -l
        ::ctrlaltdel:/sbin/reboot
        ::shutdown:/bin/sync
        ::shutdown:/bin/mount -o remount,ro /
        ::shutdown:/bin/umount -a -r
        """;

    public const string Rcs = """
        #!/bin/sh
        mount -t proc proc /proc
        mount -t sysfs sysfs /sys
        grep -q ' /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
        mkdir -p /dev/pts /dev/shm
        mount -t devpts devpts /dev/pts
        mount -o remount,rw /
        mount -t tmpfs tmpfs /run
        mount -t tmpfs tmpfs /tmp
        [ -d /proc/xen ] && mount -t xenfs xenfs /proc/xen 2>/dev/null
        hostname -F /etc/hostname
        echo "init: $(uname -sr) up; root $(awk '$2 == "/" { print $1, $3, substr($4, 1, 2) }' /proc/mounts)"
        """;

    public static readonly string Profile = $"""
        export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        export HOME=/root
        export PS1='{Prompt}'
        """;

    public const string Fstab = """
        # <file system> <mount point> <type> <options> <dump> <pass>
        /dev/root / ext4 defaults 0 1
        proc /proc proc defaults 0 0
        """;

    public const string Passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    public const string Group = "root:x:0:\nnogroup:x:65534:\n";

    /// <summary>Everything that decides the image's content besides the package versions: the cached
    /// image is rebuilt when this changes.</summary>
    public static string Recipe => string.Join("\n---\n",
        string.Join(' ', Roots), string.Join(' ', Skipped.Keys), string.Join(' ', Pruned),
        Inittab, Rcs, Profile, Fstab, Passwd, Group);

    /// <summary>Stages the packages' files and the image's own files in <paramref name="staging"/>.</summary>
    public static IReadOnlyList<string> Stage(string staging, string downloads, Action<string>? progress)
    {
        progress?.Invoke($"resolving the dependencies of {string.Join(", ", Roots)}");
        var packages = DebianPackages.Closure(Roots, Skipped.Keys.ToHashSet());
        progress?.Invoke($"downloading {packages.Count} packages");
        var debs = DebianPackages.DownloadAll(packages, downloads);
        progress?.Invoke("unpacking them");
        if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
        foreach (var deb in debs) DebianPackages.Extract(deb, staging);
        foreach (var dir in Pruned)
            if (Directory.Exists(Path.Combine(staging, dir))) Directory.Delete(Path.Combine(staging, dir), recursive: true);

        LinkBusyboxApplets(staging);
        foreach (var dir in new[] { "proc", "sys", "dev", "tmp", "run", "root", "mnt", "var/tmp", "etc/init.d" })
            Directory.CreateDirectory(Path.Combine(staging, dir));
        Write(staging, "etc/inittab", Inittab);
        Write(staging, "etc/init.d/rcS", Rcs, executable: true);
        Write(staging, "etc/profile", Profile);
        Write(staging, "etc/fstab", Fstab);
        Write(staging, "etc/passwd", Passwd);
        Write(staging, "etc/group", Group);
        Write(staging, "etc/hostname", "debian-disk\n");
        CheckLibraries(staging);
        return packages;
    }

    /// <summary>Every busybox applet a package does not already provide, as a link to busybox.</summary>
    private static void LinkBusyboxApplets(string staging)
    {
        var busybox = Path.Combine(staging, "bin", "busybox");
        if (!File.Exists(busybox)) throw new ArtifactException("busybox-static holds no bin/busybox");
        var applets = DebianPackages.Run(busybox, "--list-full", staging).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        string[] binDirs = ["bin", "sbin", "usr/bin", "usr/sbin"];
        foreach (var applet in applets)
        {
            var name = Path.GetFileName(applet);
            if (binDirs.Any(d => Path.Exists(Path.Combine(staging, d, name)))) continue;
            var link = Path.Combine(staging, applet);
            Directory.CreateDirectory(Path.GetDirectoryName(link)!);
            File.CreateSymbolicLink(link, "/bin/busybox");
        }
    }

    /// <summary>Fails the build when an ELF file needs a shared library that no staged package holds,
    /// which is what leaving a dependency out would break.</summary>
    private static void CheckLibraries(string staging)
    {
        var present = new HashSet<string>();
        var files = new List<string>();
        foreach (var root in LibraryDirs.Select(d => Path.Combine(staging, d)).Where(Directory.Exists))
            foreach (var f in Directory.EnumerateFileSystemEntries(root, "*", SearchOption.AllDirectories))
                present.Add(Path.GetFileName(f));
        foreach (var f in Directory.EnumerateFiles(staging, "*", SearchOption.AllDirectories))
            if (new FileInfo(f).LinkTarget is null) files.Add(f);
        var missing = new List<string>();
        foreach (var f in files)
            foreach (var soname in ElfFile.Needed(f))
                if (!present.Contains(soname))
                    missing.Add($"{Path.GetRelativePath(staging, f)} needs {soname}");
        if (missing.Count > 0)
            throw new ArtifactException("the root file system lacks libraries: " + string.Join("; ", missing.Distinct().Take(10)));
    }

    /// <summary>An ext4 image of <paramref name="staging"/> with room to spare for test files. mke2fs
    /// copies the staged files' owners, so a build by root (as ./test runs it) gives root-owned
    /// files; a build by another user owns them by that uid, which only matters to permission checks.</summary>
    public static void MakeImage(string staging, string rawPath, string qcow2Path)
    {
        long bytes = 0;
        foreach (var f in Directory.EnumerateFiles(staging, "*", SearchOption.AllDirectories))
            bytes += (new FileInfo(f).Length + 4095) / 4096 * 4096;
        var mib = (bytes * 5 / 4 + (96L << 20) + (1 << 20) - 1) >> 20;
        var tmpRaw = rawPath + ".tmp";
        var tmpQcow2 = qcow2Path + ".tmp";
        File.Delete(tmpRaw);
        DebianPackages.Run("mke2fs", $"-q -t ext4 -L debian-root -E root_owner=0:0 -d {staging} -F {tmpRaw} {mib}M",
            Path.GetDirectoryName(rawPath)!);
        DebianPackages.Run("qemu-img", $"convert -O qcow2 {tmpRaw} {tmpQcow2}", Path.GetDirectoryName(rawPath)!);
        File.Move(tmpRaw, rawPath, overwrite: true);
        File.Move(tmpQcow2, qcow2Path, overwrite: true);
    }

    private static void Write(string staging, string path, string text, bool executable = false)
    {
        var full = Path.Combine(staging, path);
        File.WriteAllText(full, text.ReplaceLineEndings("\n").TrimEnd('\n') + "\n", new UTF8Encoding(false));
        if (executable)
            File.SetUnixFileMode(full, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute |
                UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
    }
}
