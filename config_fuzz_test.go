package unified

import (
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/dsn"
)

// FuzzParseConfig checks, for any input: no panic; every error starts with
// "unified: "; a Config that parses formats back to a DSN that parses to an
// equal Config; a DSN with nothing to strip means to pgx exactly what it
// means to pgx.ParseConfig; and the password never appears in an error or
// in String().
//
// The password check needs inputs where the password is known to be in the
// password position and nowhere else (an input may legitimately echo any
// text in a host name or a bad value). So it is run on two inputs derived
// from the fuzzed one, when that does not contain the password: the fuzzed
// text after a leading password=... pair (keyword/value), and after a
// postgres://u:password@ userinfo (URL). In both, libpq's syntax puts the
// password in the password position whatever follows.
func FuzzParseConfig(f *testing.F) {
	isolateEnv(f)
	for _, tc := range allConfigCases() {
		f.Add(tc.dsn)
	}
	for _, tc := range errorCases {
		f.Add(tc.dsn)
	}
	for _, s := range dsn.SyntaxCorners {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, dsn string) {
		if touchesDevices(dsn) {
			t.Skip("file names under /dev, /proc or /sys could block or exhaust memory when pgx reads them")
		}
		checkRoundTrip(t, dsn)
		checkSameAsPgx(t, dsn)
		if strings.Contains(dsn, testPassword) {
			return
		}
		checkNoPassword(t, "password="+testPassword+" "+dsn)
		checkNoPassword(t, "postgres://u:"+testPassword+"@"+urlAfterScheme(dsn))
	})
}

// urlAfterScheme is s without a URL's scheme (all of s if it has none).
func urlAfterScheme(s string) string {
	after, _ := dsn.CutScheme(s)
	return after
}

// checkRoundTrip parses dsn and, if it is valid, checks
// ParseConfig(FormatDSN()) is equal.
func checkRoundTrip(t *testing.T, dsn string) *Config {
	t.Helper()
	c, err := ParseConfig(dsn)
	if err != nil {
		msg := err.Error()
		if !strings.HasPrefix(msg, "unified: ") {
			t.Fatalf("ParseConfig(%q): error %q does not start with unified: ", dsn, msg)
		}
		if strings.Contains(msg, "cannot separate the unified_* parameters") {
			t.Fatalf("ParseConfig(%q): the splitter rejects what pgx accepts", dsn)
		}
		return nil
	}
	if len(c.Nodes()) == 0 {
		t.Fatalf("ParseConfig(%q): no nodes", dsn)
	}
	_ = c.String()
	formatted := c.FormatDSN()
	back, err := ParseConfig(formatted)
	if err != nil {
		t.Fatalf("ParseConfig(%q) = %v, but ParseConfig(FormatDSN() = %q) fails: %v", dsn, c, formatted, err)
	}
	requireSameConfig(t, c, back)
	if again := back.FormatDSN(); again != formatted {
		t.Fatalf("FormatDSN not stable: %q then %q", formatted, again)
	}
	return c
}

func checkNoPassword(t *testing.T, dsn string) {
	t.Helper()
	c, err := ParseConfig(dsn)
	if err != nil {
		if strings.Contains(err.Error(), testPassword) {
			t.Fatalf("ParseConfig(%q): error contains the password: %v", dsn, err)
		}
		return
	}
	if s := c.String(); strings.Contains(s, testPassword) {
		t.Fatalf("ParseConfig(%q).String() contains the password: %s", dsn, s)
	}
	checkRoundTrip(t, dsn)
}

// touchesDevices reports whether dsn may name a file under /dev, /proc or
// /sys once percent-decoded and unescaped (sslrootcert=/dev/zero makes pgx
// read forever).
func touchesDevices(dsn string) bool {
	s := strings.ReplaceAll(dsn, `\`, "")
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if c, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(c))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	d := b.String()
	return strings.Contains(d, "/dev") || strings.Contains(d, "/proc") || strings.Contains(d, "/sys")
}

// checkSameAsPgx checks that the splitter is transparent: a DSN without
// unified_* or target_session_attrs is accepted or rejected as pgx does,
// and parses to the same settings.
func checkSameAsPgx(t *testing.T, connString string) {
	t.Helper()
	if sp, err := dsn.Split(connString, strippedKey); err == nil && len(sp.Stripped) > 0 {
		return
	}
	want, wantErr := pgx.ParseConfig(connString)
	c, err := ParseConfig(connString)
	switch {
	case wantErr != nil && err == nil:
		t.Fatalf("ParseConfig(%q) accepts what pgx rejects: %v", connString, wantErr)
	case wantErr == nil && err != nil:
		if !strings.Contains(err.Error(), "given twice") {
			t.Fatalf("ParseConfig(%q) rejects what pgx accepts: %v", connString, err)
		}
	case err == nil:
		require.Equal(t, viewConn(want), viewConn(c.pgx), "ParseConfig(%q)", connString)
	}
}
