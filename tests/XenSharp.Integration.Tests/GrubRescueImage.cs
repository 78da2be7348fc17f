using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>Bootable CD images made by <c>grub-mkrescue</c> (grub-pc-bin or grub-efi-amd64-bin, xorriso and mtools;
/// scripts/install-deps.sh installs them), as an HVM guest's <c>hdc</c>.</summary>
internal static class GrubRescueImage
{
    /// <summary>GRUB and Linux on the first serial port; the menu's only entry boots /vmlinuz with /initrd.img.</summary>
    public const string DebianGrubCfg = """
        serial --unit=0 --speed=115200
        terminal_input serial console
        terminal_output serial console
        set timeout=0
        menuentry "Debian" {
          echo "grub: loading Linux"
          linux /vmlinuz console=ttyS0,115200
          initrd /initrd.img
        }
        """;

    /// <summary>Debian's kernel and the shell initramfs behind <see cref="DebianGrubCfg"/>, as <c>DIR/debian.iso</c>.</summary>
    public static string Debian(GuestArtifacts store, string dir) =>
        Make(dir, "debian.iso", DebianGrubCfg, (store.KernelPath, "vmlinuz"), (store.ShellInitrdPath, "initrd.img"));

    /// <summary>Makes <c>DIR/NAME</c> from <paramref name="grubCfg"/> as boot/grub/grub.cfg and the files given
    /// (source on the host, name in the image); fails the test when grub-mkrescue does.</summary>
    public static string Make(string dir, string name, string grubCfg, params (string Source, string Target)[] files)
    {
        string tree = Path.Combine(dir, Path.GetFileNameWithoutExtension(name) + ".tree");
        Directory.CreateDirectory(Path.Combine(tree, "boot", "grub"));
        foreach (var (source, target) in files)
            File.Copy(source, Path.Combine(tree, target), overwrite: true);
        File.WriteAllText(Path.Combine(tree, "boot", "grub", "grub.cfg"), grubCfg);
        string iso = Path.Combine(dir, name);
        var made = Tool.Run("grub-mkrescue", "-o", iso, tree);
        Assert.True(made.Code == 0 && File.Exists(iso), $"grub-mkrescue: {made.Output}");
        Directory.Delete(tree, recursive: true);
        return iso;
    }
}
