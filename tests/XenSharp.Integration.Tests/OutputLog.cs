using System.Diagnostics;
using System.Text;

namespace XenSharp.Integration.Tests;

/// <summary>What a program has printed so far, filled by a reader thread, with waits for text that
/// consume the log up to where the text was found.</summary>
public sealed class OutputLog
{
    private readonly StringBuilder _text = new();
    private int _consumed;

    /// <summary>Held while appending, so that a reader can act on what arrived before anyone waits on it.</summary>
    public object Sync => _text;

    public void Append(string s)
    {
        lock (_text)
        {
            _text.Append(s);
            Monitor.PulseAll(_text);
        }
    }

    /// <summary>Wakes waiters, e.g. when the writer is gone.</summary>
    public void Pulse() { lock (_text) Monitor.PulseAll(_text); }

    /// <summary>Waits for <paramref name="text"/> after what earlier waits consumed; returns the log up to and
    /// including it, or null when it did not come within <paramref name="limit"/> or once <paramref name="gone"/>
    /// holds and a second passed without output.</summary>
    public string? TryWaitFor(string text, TimeSpan limit, Func<bool>? gone = null)
    {
        var clock = Stopwatch.StartNew();
        lock (_text)
        {
            while (true)
            {
                string s = _text.ToString();
                int i = s.IndexOf(text, _consumed, StringComparison.Ordinal);
                if (i >= 0)
                {
                    string got = s[_consumed..(i + text.Length)];
                    _consumed = i + text.Length;
                    return got;
                }
                var left = limit - clock.Elapsed;
                if (left <= TimeSpan.Zero) return null;
                bool woken = Monitor.Wait(_text, left < TimeSpan.FromSeconds(1) ? left : TimeSpan.FromSeconds(1));
                if (!woken && gone?.Invoke() == true && _text.Length == s.Length) return null;
            }
        }
    }

    public string Text { get { lock (_text) return _text.ToString(); } }

    public string Tail(int chars = 4000)
    {
        string s = Text;
        return s.Length <= chars ? s : s[^chars..];
    }
}
