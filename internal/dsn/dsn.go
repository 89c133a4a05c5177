// Package dsn is a lexer for libpq connection strings, in both of libpq's
// syntaxes: a URL (postgres://user:pw@h1:5432,h2/db?key=value&...) and
// keyword/value text (host=h1,h2 key=value key='quoted value' ...). It takes
// chosen key/value pairs out of a connection string ([Split]) and puts pairs
// back in ([AppendParams]), so that a driver can carry settings of its own in
// the same string as pgx's.
//
// It follows libpq's syntax (which pgx's parser matches) only as far as
// needed to find the pairs, and leaves every other byte alone, so that the
// text it returns means to pgx exactly what the input meant, less the pairs
// taken out. It is a lexer only: it checks no key or value beyond the
// syntax that delimits pairs, knows no defaults, and reads no environment
// variable or file. pgx parses the rest.
//
// It knows three keys by name, to report what the caller needs before pgx
// sees the text: password and sslpassword, whose values it reports as
// secrets to keep out of error messages, and port, whose list it reports
// as pgx will read it ([Parts.Ports]: the last port given counts). Other
// duplicate keys it leaves to pgx and the caller.
//
// All functions are pure and safe for concurrent use.
package dsn

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Pair is one key/value pair, decoded: percent-decoded in a URL, unquoted
// and unescaped in keyword/value text.
type Pair struct{ Key, Value string }

// Parts is a connection string taken apart by [Split].
type Parts struct {
	// Rest is the connection string without the stripped pairs, in the
	// syntax it was written in. In a URL every other byte is kept (the
	// query's remaining pairs verbatim, in order; no '?' when none is
	// left). In keyword/value text the remaining pairs keep their text and
	// are re-joined by single spaces, an empty value at the end is written
	// '', a '\' that escapes the end of the text is dropped (libpq ignores
	// it too), and a result that would start like a URL gets a leading
	// space. Rest is a valid base for [AppendParams].
	Rest string
	// Stripped holds the pairs taken out, in the order written, decoded.
	Stripped []Pair
	// Ports is the port list pgx will read from Rest, split at commas,
	// decoded, in host order; an empty element means the default port. In
	// a URL it is the host list's ports (one element per host, empty where
	// a host has none), unless the query has a port pair; in keyword/value
	// text, the value of the port pair. When a key is given more than once
	// the last one counts, as in pgx. Ports is nil when the text gives no
	// port (pgx then takes PGPORT, a service file or 5432) or when the port
	// text does not percent-decode (pgx rejects the URL).
	Ports []string
	// Secrets holds every password and sslpassword value found, both as
	// written and decoded, to keep out of error messages. It also holds
	// the ports of a URL's host list when the URL has no userinfo but an
	// '@' after the host list: libpq's syntax takes a password that holds
	// a '/' (postgres://user:pa/ss@host) for a host and a port. It is
	// filled even when Split fails, as far as the text was read.
	Secrets []string
}

// Split takes the pairs whose key strip reports true out of s, a URL when
// it starts with postgres:// or postgresql:// ([IsURL]), keyword/value text
// otherwise. strip sees each key decoded and may be called more than once
// per key. Split fails when s does not lex into pairs (a syntax error that
// pgx reports too, as it does a NUL byte anywhere); its error names what
// and where, never the text, so it cannot contain a password. Of the Parts
// returned with an error only Secrets is filled, as far as s was read.
func Split(s string, strip func(key string) bool) (Parts, error) {
	var p Parts
	var err error
	if IsURL(s) {
		p, err = splitURL(s, strip)
	} else {
		p, err = splitKeywordValue(s, strip)
	}
	if i := strings.IndexByte(s, 0); err == nil && i >= 0 {
		// As in pgx: libpq cannot see one, and a NUL in a stripped pair
		// could not be written back.
		err = fmt.Errorf("forbidden NUL byte at offset %d", i)
	}
	if err != nil {
		return Parts{Secrets: p.Secrets}, err
	}
	return p, nil
}

// IsURL reports whether s is a connection URL: libpq's (and pgx's) test,
// the postgres:// or postgresql:// prefix.
func IsURL(s string) bool {
	_, ok := CutScheme(s)
	return ok
}

// CutScheme returns a connection URL without its postgres:// or
// postgresql:// prefix, and whether s had one.
func CutScheme(s string) (rest string, ok bool) {
	if rest, ok := strings.CutPrefix(s, "postgresql://"); ok {
		return rest, true
	}
	return strings.CutPrefix(s, "postgres://")
}

// AppendParams appends pairs to base in base's own syntax: to a URL's
// query, percent-encoded, or as keyword/value pairs, each value quoted
// when it needs to be. base must be a Parts.Rest (or text that ends, like
// one, neither in a '\' that escapes the end nor in an empty unquoted
// value, which would swallow the first pair appended); keys must be valid
// keys of that syntax (in keyword/value text: no white space or '='). So
// Split(AppendParams(p.Rest, p.Stripped), strip) gives p back, for the
// strip that made p.
func AppendParams(base string, pairs []Pair) string {
	if len(pairs) == 0 {
		return base
	}
	var b strings.Builder
	b.WriteString(base)
	if IsURL(base) {
		switch u, _ := layOutURL(base); {
		case u.query < 0:
			b.WriteByte('?')
		case u.query < len(base)-1:
			b.WriteByte('&')
		}
		for i, kv := range pairs {
			if i > 0 {
				b.WriteByte('&')
			}
			b.WriteString(uriEscape(kv.Key))
			b.WriteByte('=')
			b.WriteString(uriEscape(kv.Value))
		}
		return b.String()
	}
	for _, kv := range pairs {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(kv.Key)
		b.WriteByte('=')
		b.WriteString(quoteKV(kv.Value))
	}
	return b.String()
}

// isSecretKey reports whether key's value is a secret.
func isSecretKey(key string) bool { return key == "password" || key == "sslpassword" }

// keyPort is the key of the port list (pgx has no alias for it).
const keyPort = "port"

// addSecret records a secret as written and, when that differs, as
// decoded.
func (p *Parts) addSecret(raw, decoded string) {
	p.Secrets = append(p.Secrets, raw)
	if decoded != raw {
		p.Secrets = append(p.Secrets, decoded)
	}
}

// addURLSecret records a secret written in a URL.
func (p *Parts) addURLSecret(raw string) {
	decoded, err := uriDecode(raw)
	if err != nil {
		decoded = raw
	}
	p.addSecret(raw, decoded)
}

// splitURL splits a connection URL on its raw query: '&'-separated
// key=value pairs, percent-decoded as libpq does.
func splitURL(s string, strip func(string) bool) (Parts, error) {
	var p Parts
	u, err := layOutURL(s)
	if u.hasPassword {
		p.addURLSecret(u.password)
	}
	if err != nil {
		return p, err
	}
	if u.portsMayHidePassword {
		for _, raw := range strings.Split(u.ports, ",") {
			if raw != "" {
				p.addURLSecret(raw)
			}
		}
	}
	if u.hasPorts {
		if ports, err := uriDecode(u.ports); err == nil {
			p.Ports = strings.Split(ports, ",")
		}
	}
	if u.query < 0 {
		p.Rest = s
		return p, nil
	}
	var kept []string
	var splitErr error // the first malformed pair; the scan goes on for secrets
	// As in libpq, each pair may be followed by '&': a trailing '&' is
	// accepted, an empty pair is not.
	for n, query := 1, s[u.query+1:]; query != ""; n++ {
		pair, next, _ := strings.Cut(query, "&")
		query = next
		rawKey, rawValue, found := strings.Cut(pair, "=")
		if !found || strings.Contains(rawValue, "=") {
			if splitErr == nil {
				splitErr = fmt.Errorf("query parameter %d: want exactly one '=' in key=value", n)
			}
			continue
		}
		key, err := uriDecode(rawKey)
		if err != nil {
			// Not stripped whatever it is; pgx rejects it.
			kept = append(kept, pair)
			continue
		}
		if isSecretKey(key) {
			p.addURLSecret(rawValue)
		}
		if !strip(key) {
			kept = append(kept, pair)
			if key == keyPort {
				p.Ports = nil
				if ports, err := uriDecode(rawValue); err == nil {
					p.Ports = strings.Split(ports, ",")
				}
			}
			continue
		}
		value, err := uriDecode(rawValue)
		if err != nil {
			if splitErr == nil {
				splitErr = fmt.Errorf("query parameter %d: %w", n, err)
			}
			continue
		}
		p.Stripped = append(p.Stripped, Pair{key, value})
	}
	if splitErr != nil {
		return p, splitErr
	}
	p.Rest = s[:u.query]
	if len(kept) > 0 {
		p.Rest += "?" + strings.Join(kept, "&")
	}
	return p, nil
}

// urlLayout is where the parts of a connection URL are.
type urlLayout struct {
	password    string // raw, when hasPassword
	hasPassword bool
	ports       string // the host list's raw ports, comma-joined, when hasPorts
	hasPorts    bool
	query       int // index of the '?' that starts the query; -1: none
	// portsMayHidePassword: no userinfo, but an '@' after the host list.
	portsMayHidePassword bool
}

// layOutURL walks a connection URL as libpq does: userinfo (everything
// before an '@' that comes before the first '/'), then a comma-separated
// list of host[:port] (an IPv6 host in brackets may contain '?'), then an
// optional /dbname, then the query. It fails on a structure libpq rejects;
// password is set even then.
func layOutURL(s string) (urlLayout, error) {
	u := urlLayout{query: -1}
	p, _ := CutScheme(s)
	userinfo := false
	if i := strings.IndexAny(p, "@/"); i >= 0 && p[i] == '@' {
		_, u.password, u.hasPassword = strings.Cut(p[:i], ":")
		p = p[i+1:]
		userinfo = true
	}
	// As in libpq, every ',' adds an element to the port list, so hosts
	// and ports stay aligned: h1,h2:5433 has the ports ",5433".
	var ports strings.Builder
	for {
		if strings.HasPrefix(p, "[") {
			end := strings.IndexByte(p, ']')
			if end < 0 {
				return u, errors.New("unterminated [ of an IPv6 host")
			}
			if end == 1 {
				return u, errors.New("empty IPv6 host []")
			}
			p = p[end+1:]
			if p != "" && !strings.ContainsRune(":/?,", rune(p[0])) {
				return u, fmt.Errorf("unexpected character at offset %d, after an IPv6 host", len(s)-len(p))
			}
		} else if i := strings.IndexAny(p, ":/?,"); i >= 0 {
			p = p[i:]
		} else {
			p = ""
		}
		if strings.HasPrefix(p, ":") {
			end := strings.IndexAny(p, "/?,")
			if end < 0 {
				end = len(p)
			}
			ports.WriteString(p[1:end])
			p = p[end:]
		}
		if !strings.HasPrefix(p, ",") {
			break
		}
		ports.WriteByte(',')
		p = p[1:]
	}
	// As in pgx, a list with nothing in it ("h:") is no port setting.
	u.ports, u.hasPorts = ports.String(), ports.Len() > 0
	u.portsMayHidePassword = !userinfo && strings.Contains(p, "@")
	if strings.HasPrefix(p, "/") {
		if i := strings.IndexByte(p, '?'); i >= 0 {
			p = p[i:]
		} else {
			p = ""
		}
	}
	if strings.HasPrefix(p, "?") {
		u.query = len(s) - len(p)
	}
	return u, nil
}

// uriDecode percent-decodes a URL component as libpq does: leading and
// trailing spaces dropped, interior spaces and %00 rejected, '+' literal.
// Its errors do not quote raw.
func uriDecode(raw string) (string, error) {
	s := strings.Trim(raw, " ")
	if strings.Contains(s, " ") {
		return "", errors.New("unexpected space (write %20)")
	}
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", errors.New("invalid percent-encoding")
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 || hi<<4|lo == 0 {
			return "", errors.New("invalid percent-encoding")
		}
		b.WriteByte(hi<<4 | lo)
		i += 2
	}
	return b.String(), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// uriEscape is url.QueryEscape with a space as %20: libpq does not decode
// '+' to a space.
func uriEscape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

const kvSpace = " \t\n\r\v\f"

func isKVSpace(c byte) bool { return strings.IndexByte(kvSpace, c) >= 0 }

// splitKeywordValue tokenizes libpq keyword/value text: key = value pairs
// separated by white space, white space allowed around '=', a value either
// unquoted (up to white space) or in single quotes, '\' escaping the next
// character in both.
func splitKeywordValue(s string, strip func(string) bool) (Parts, error) {
	var p Parts
	var kept []string
	i := skipKVSpace(s, 0)
	for i < len(s) {
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return p, fmt.Errorf("missing '=' after the keyword at offset %d", i)
		}
		eq += i
		key := strings.TrimRight(s[i:eq], kvSpace)
		if key == "" {
			return p, fmt.Errorf("missing keyword before '=' at offset %d", eq)
		}
		if strings.ContainsAny(key, kvSpace) {
			return p, fmt.Errorf("missing '=' after the keyword at offset %d", i)
		}
		j := skipKVSpace(s, eq+1)
		var rawValue string // the value as written, quotes included
		end := j
		switch {
		case j == len(s):
		case s[j] != '\'':
			for end < len(s) && !isKVSpace(s[end]) {
				if s[end] == '\\' {
					end++
				}
				end++
			}
			end = min(end, len(s))
			rawValue = s[j:end]
			if danglingEscape(rawValue) {
				// A '\' at the very end escapes the end of the string:
				// libpq drops it. Drop it from the text too, or a pair
				// appended after it would be escaped into the value.
				rawValue = rawValue[:len(rawValue)-1]
			}
		default:
			end = j + 1
			for ; end < len(s) && s[end] != '\''; end++ {
				if s[end] == '\\' {
					end++
				}
			}
			if end >= len(s) {
				return p, fmt.Errorf("unterminated quoted string at offset %d", j)
			}
			end++
			rawValue = s[j:end]
		}
		value := unescapeKV(rawValue)
		if strings.HasPrefix(rawValue, "'") {
			value = unescapeKV(rawValue[1 : len(rawValue)-1])
		}
		if isSecretKey(key) {
			p.addSecret(rawValue, value)
		}
		if strip(key) {
			p.Stripped = append(p.Stripped, Pair{key, value})
		} else {
			if key == keyPort {
				p.Ports = strings.Split(value, ",")
			}
			if rawValue == "" {
				// An empty value at the end: quote it, or a pair appended
				// after it would become its value.
				rawValue = "''"
			}
			kept = append(kept, s[i:j]+rawValue)
		}
		i = skipKVSpace(s, end)
	}
	p.Rest = strings.Join(kept, " ")
	if IsURL(p.Rest) {
		// Keyword/value text must not turn into a URL once re-joined.
		p.Rest = " " + p.Rest
	}
	return p, nil
}

func skipKVSpace(s string, i int) int {
	for i < len(s) && isKVSpace(s[i]) {
		i++
	}
	return i
}

// danglingEscape reports whether an unquoted value ends in a '\' that
// escapes nothing (an odd run of trailing backslashes).
func danglingEscape(raw string) bool {
	n := 0
	for n < len(raw) && raw[len(raw)-1-n] == '\\' {
		n++
	}
	return n%2 == 1
}

// unescapeKV drops each '\' and keeps the character after it.
func unescapeKV(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			if i == len(s) {
				break
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// quoteKV quotes a keyword/value value when it is empty or holds white
// space, a quote or a backslash.
func quoteKV(s string) string {
	if s != "" && !strings.ContainsAny(s, kvSpace+`'\`) {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(s) + "'"
}
