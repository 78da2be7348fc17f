using XenSharp.Artifacts;

namespace XenSharp.Integration.Tests;

/// <summary>Bootable CD images made by <c>grub-mkrescue</c> (grub-pc-bin or grub-efi-amd64-bin, xorriso and mtools;
/// scripts/install-deps.sh installs them), as an HVM guest's <c>hdc</c>.</summary>
internal static class GrubRescueImage
{
    /// <summary>Debian's kernel and the shell initramfs as <c>DIR/debian.iso</c>, made by scripts/make-debian-iso.sh
    /// (the image examples/debian-hvm.cfg boots): GRUB and Linux on the first serial port, no menu.</summary>
    public static string Debian(GuestArtifacts store, string dir)
    {
        Assert.True(store.IsCached, $"run 'xensharp-artifacts fetch' first: nothing complete in {store.DebianDir}");
        string iso = Path.Combine(dir, "debian.iso");
        var made = Tool.Run(Repository.PathOf("scripts", "make-debian-iso.sh"), iso);
        Assert.True(made.Code == 0 && File.Exists(iso), $"make-debian-iso.sh: {made.Output}");
        return iso;
    }

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
