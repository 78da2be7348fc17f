using System.Text;

namespace XenSharp.Toolstack.Config;

/// <summary>
/// Reads xl.cfg text: <c>KEY = VALUE</c> or <c>KEY += VALUE</c> settings separated by newlines or
/// semicolons; values are quoted strings (single or double, C escapes), bare numbers (decimal, 0-octal,
/// 0x-hex) or lists <c>[ v, v, ]</c> that may nest, span lines and end with a comma; <c>#</c> starts a
/// comment. A later setting of the same key replaces an earlier one.
/// </summary>
public static class XlConfigParser
{
    public static XlConfig Parse(string text, string file)
    {
        var config = new XlConfig(file);
        ParseInto(config, text, file);
        return config;
    }

    public static XlConfig ParseFile(string path, string? reportName = null)
    {
        string text;
        try { text = UserFile.ReadAllText(path); }
        catch (UserFileException e)
        {
            throw new XlConfigException($"Failed to read config file: {reportName ?? path}: {e.Reason}");
        }
        var config = Parse(text, reportName ?? path);
        config.Directory = Path.GetDirectoryName(Path.GetFullPath(path));
        return config;
    }

    /// <summary>Adds the settings of <paramref name="text"/> to <paramref name="config"/> (the way xl
    /// appends command-line <c>key=value</c> overrides to the file's text).</summary>
    public static void ParseInto(XlConfig config, string text, string file)
    {
        var p = new Parser(text, file);
        p.Run(config);
    }

    private enum Tok { Id, Number, String, Eq, PlusEq, LBracket, RBracket, Comma, Semi, Newline, End }

    private sealed class Parser(string text, string file)
    {
        private int _pos;
        private int _line = 1;
        private Tok _tok;
        private string _text = "";
        private int _tokLine;
        private bool _quoted;

        public void Run(XlConfig config)
        {
            Next();
            while (_tok != Tok.End)
            {
                if (_tok is Tok.Newline or Tok.Semi) { Next(); continue; }
                if (_tok != Tok.Id) throw Error();
                string key = _text;
                int line = _tokLine;
                Next();
                bool append;
                if (_tok == Tok.Eq) append = false;
                else if (_tok == Tok.PlusEq) append = true;
                else throw Error();
                Next();
                var value = ParseValue();
                if (_tok is not (Tok.Newline or Tok.Semi or Tok.End)) throw Error();
                if (append) config.Append(new ConfigSetting(key, value, file, line));
                else config.Set(new ConfigSetting(key, value, file, line));
            }
        }

        private ConfigValue ParseValue()
        {
            switch (_tok)
            {
                case Tok.String:
                case Tok.Number:
                {
                    var v = ConfigValue.String(_text, _tokLine, _quoted);
                    Next();
                    return v;
                }
                case Tok.LBracket:
                {
                    int line = _tokLine;
                    var items = new List<ConfigValue>();
                    NextSkippingNewlines();
                    while (_tok != Tok.RBracket)
                    {
                        items.Add(ParseValue());
                        SkipNewlines();
                        if (_tok == Tok.Comma) { NextSkippingNewlines(); continue; }
                        if (_tok != Tok.RBracket) throw Error();
                    }
                    Next();
                    return ConfigValue.List(items, line);
                }
                default:
                    throw Error();
            }
        }

        private void SkipNewlines() { while (_tok == Tok.Newline) Next(); }
        private void NextSkippingNewlines() { Next(); SkipNewlines(); }

        private XlConfigException Error(string what = "syntax error")
        {
            string near = _tok switch
            {
                Tok.End => "end of file",
                Tok.Newline => "newline",
                Tok.String => (_quoted ? "\"" + _text + "\"" : _text),
                _ => _text,
            };
            return XlConfigException.At(file, _tokLine, $"config parsing error near `{near}': {what}");
        }

        private void Next()
        {
            // Blanks and comments.
            while (_pos < text.Length)
            {
                char c = text[_pos];
                if (c is ' ' or '\t' or '\r') { _pos++; continue; }
                if (c == '#') { while (_pos < text.Length && text[_pos] != '\n') _pos++; continue; }
                break;
            }
            _tokLine = _line;
            _quoted = false;
            if (_pos >= text.Length) { _tok = Tok.End; _text = ""; return; }
            char ch = text[_pos];
            switch (ch)
            {
                case '\n': _pos++; _line++; _tok = Tok.Newline; _text = "\\n"; return;
                case '=': _pos++; _tok = Tok.Eq; _text = "="; return;
                case '[': _pos++; _tok = Tok.LBracket; _text = "["; return;
                case ']': _pos++; _tok = Tok.RBracket; _text = "]"; return;
                case ',': _pos++; _tok = Tok.Comma; _text = ","; return;
                case ';': _pos++; _tok = Tok.Semi; _text = ";"; return;
                case '+' when _pos + 1 < text.Length && text[_pos + 1] == '=':
                    _pos += 2; _tok = Tok.PlusEq; _text = "+="; return;
                case '"' or '\'':
                    LexString(ch);
                    return;
            }
            if (char.IsAsciiLetter(ch) || ch == '_')
            {
                int start = _pos;
                while (_pos < text.Length && (char.IsAsciiLetterOrDigit(text[_pos]) || text[_pos] is '_' or '.')) _pos++;
                _tok = Tok.Id; _text = text[start.._pos];
                return;
            }
            if (char.IsAsciiDigit(ch) || (ch == '-' && _pos + 1 < text.Length && char.IsAsciiDigit(text[_pos + 1])))
            {
                int start = _pos++;
                while (_pos < text.Length && (char.IsAsciiLetterOrDigit(text[_pos]) || text[_pos] is '_' or '.')) _pos++;
                _tok = Tok.Number; _text = text[start.._pos];
                return;
            }
            _tok = Tok.Id; _text = ch.ToString();
            throw Error();
        }

        private void LexString(char quote)
        {
            int startLine = _line;
            var sb = new StringBuilder();
            _pos++;
            while (true)
            {
                if (_pos >= text.Length || text[_pos] == '\n')
                {
                    _tok = Tok.String; _text = quote + sb.ToString(); _tokLine = startLine;
                    throw XlConfigException.At(file, startLine, $"config parsing error near `{quote}{sb}': unterminated string");
                }
                char c = text[_pos++];
                if (c == quote) break;
                if (c != '\\') { sb.Append(c); continue; }
                if (_pos >= text.Length) continue;
                char e = text[_pos++];
                switch (e)
                {
                    case 'n': sb.Append('\n'); break;
                    case 't': sb.Append('\t'); break;
                    case 'r': sb.Append('\r'); break;
                    case 'a': sb.Append('\a'); break;
                    case 'b': sb.Append('\b'); break;
                    case 'f': sb.Append('\f'); break;
                    case 'v': sb.Append('\v'); break;
                    case 'x':
                    {
                        int v = 0, n = 0;
                        while (n < 2 && _pos < text.Length && char.IsAsciiHexDigit(text[_pos]))
                        { v = v * 16 + Convert.ToInt32(text[_pos].ToString(), 16); _pos++; n++; }
                        if (n == 0)
                            throw XlConfigException.At(file, _line, "config parsing error near `\\x': invalid escape sequence");
                        sb.Append((char)v);
                        break;
                    }
                    case >= '0' and <= '7':
                    {
                        int v = e - '0', n = 1;
                        while (n < 3 && _pos < text.Length && text[_pos] is >= '0' and <= '7')
                        { v = v * 8 + (text[_pos] - '0'); _pos++; n++; }
                        sb.Append((char)v);
                        break;
                    }
                    default: sb.Append(e); break; // \\ \" \' and any other escaped character stand for themselves
                }
            }
            _tok = Tok.String; _text = sb.ToString(); _quoted = true; _tokLine = startLine;
        }
    }
}
