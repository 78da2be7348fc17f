using System.Globalization;
using XenSharp.Toolstack.Control;

namespace XenSharp.Toolstack.Config;

/// <summary>
/// Xen's virtual block device numbers (docs/misc/vbd-interface.txt): the number a vdev name (xvda, hdc1,
/// sdb, d3p2) stands for, which is the device's id in xenstore and blkfront's <c>virtual-device</c>.
/// </summary>
public static class VbdNumber
{
    private const int XvdMajor = 202, HdMajor0 = 3, HdMajor2 = 22, SdMajor = 8;
    private const int Extended = 1 << 28;

    /// <summary>The device number of <paramref name="vdev"/>; a name Xen's scheme cannot encode is a <see cref="ControlException"/>.</summary>
    public static int Parse(string vdev) => TryParse(vdev, out int n) ? n : throw new ControlException($"invalid vdev `{vdev}'");

    public static bool TryParse(string vdev, out int number)
    {
        number = 0;
        if (vdev.Length > 1 && vdev[0] == 'd' && char.IsAsciiDigit(vdev[1]))
        {
            // dN or dNpM: the extended scheme directly.
            int p = vdev.IndexOf('p');
            string ds = p < 0 ? vdev[1..] : vdev[1..p];
            string ps = p < 0 ? "0" : vdev[(p + 1)..];
            if (!Number(ds, out int d) || !Number(ps, out int part) || d >= 1 << 20 || part > 255) return false;
            number = Extended | d << 8 | part;
            return true;
        }
        foreach (string prefix in new[] { "xvd", "hd", "sd" })
        {
            if (!vdev.StartsWith(prefix, StringComparison.Ordinal)) continue;
            int i = prefix.Length;
            int disk = -1;
            while (i < vdev.Length && vdev[i] is >= 'a' and <= 'z')
            {
                // Letters count bijectively in base 26: a = 0, z = 25, aa = 26.
                disk = (disk + 1) * 26 + (vdev[i] - 'a');
                if (disk >= 1 << 20) return false;
                i++;
            }
            if (disk < 0) return false;
            int part = 0;
            if (i < vdev.Length && !Number(vdev[i..], out part)) return false;
            switch (prefix)
            {
                case "xvd" when disk < 16 && part < 16:
                    number = XvdMajor << 8 | disk << 4 | part;
                    return true;
                case "xvd" when part <= 255:
                    number = Extended | disk << 8 | part;
                    return true;
                case "hd" when disk < 4 && part < 64:
                    number = (disk < 2 ? HdMajor0 : HdMajor2) << 8 | (disk & 1) << 6 | part;
                    return true;
                case "sd" when disk < 16 && part < 16:
                    number = SdMajor << 8 | disk << 4 | part;
                    return true;
                default:
                    return false;
            }
        }
        return false;
    }

    private static bool Number(string s, out int n)
    {
        n = 0;
        // No leading zeros, as the scheme writes partition and disk numbers.
        if (s.Length == 0 || s.Length > 7 || (s.Length > 1 && s[0] == '0')) return false;
        return int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out n);
    }
}
