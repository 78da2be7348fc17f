using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>A raw disk image holding an ext4 file system made on the host without root (mkfs.ext4 -d): Debian's
/// kernel as /boot/vmlinuz, the shell initramfs as /boot/initrd.img and the given /boot/grub/grub.cfg — what
/// pygrub and GRUB for Xen read from a PV or PVH guest's first disk.</summary>
internal static class GrubBootDisk
{
    /// <summary>Makes <c>DIR/NAME</c>; the grub.cfg's entries name the files as /boot/vmlinuz and /boot/initrd.img,
    /// and <paramref name="extra"/> files (source on the host, name under /boot) beside them.</summary>
    public static string Make(GuestArtifacts store, string dir, string name, string grubCfg, params (string Source, string Target)[] extra)
    {
        string tree = Path.Combine(dir, Path.GetFileNameWithoutExtension(name) + "-tree");
        Directory.CreateDirectory(Path.Combine(tree, "boot", "grub"));
        File.Copy(store.KernelPath, Path.Combine(tree, "boot", "vmlinuz"), overwrite: true);
        File.Copy(store.ShellInitrdPath, Path.Combine(tree, "boot", "initrd.img"), overwrite: true);
        foreach (var (source, target) in extra)
            File.Copy(source, Path.Combine(tree, "boot", target), overwrite: true);
        File.WriteAllText(Path.Combine(tree, "boot", "grub", "grub.cfg"), grubCfg);
        string image = Path.Combine(dir, name);
        LinuxPvDeviceTests.PvDeviceGuest.Tool("mkfs.ext4", "-q", "-F", "-d", tree, image, "32M");
        Directory.Delete(tree, recursive: true);
        return image;
    }
}
