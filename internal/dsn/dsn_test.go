package dsn

import (
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testPassword is the password of the DSNs in these tests: no error may
// contain it.
const testPassword = "s3cr3t-pw"

// stripUnified is the driver's rule: unified_* in any case, and
// target_session_attrs.
func stripUnified(key string) bool {
	return key == "target_session_attrs" ||
		(len(key) >= len("unified_") && strings.EqualFold(key[:len("unified_")], "unified_"))
}

type splitCase struct {
	name string
	in   string
	want Parts
	// err is a substring of the error; "" means Split succeeds.
	err string
}

// The DSNs of the driver's configuration tables (config_test.go), and the
// cases of the syntax they do not reach.
var splitCases = []splitCase{
	// URLs.
	{
		name: "url single host",
		in:   "postgres://app:s3cr3t-pw@h1:5432/app?sslmode=disable",
		want: Parts{Rest: "postgres://app:s3cr3t-pw@h1:5432/app?sslmode=disable", Ports: []string{"5432"}, Secrets: []string{testPassword}},
	},
	{
		name: "url multi-host with a stripped pair in the middle",
		in:   "postgres://app:s3cr3t-pw@h1:5432,h2:5433/app?sslmode=disable&unified_retry_max=5&application_name=svc",
		want: Parts{
			Rest:     "postgres://app:s3cr3t-pw@h1:5432,h2:5433/app?sslmode=disable&application_name=svc",
			Stripped: []Pair{{"unified_retry_max", "5"}},
			Ports:    []string{"5432", "5433"},
			Secrets:  []string{testPassword},
		},
	},
	{
		name: "url postgresql scheme, only stripped pairs in the query",
		in:   "postgresql://app:s3cr3t-pw@h1,h2,h3/app?unified_read_fallback=error&unified_replica_policy=random",
		want: Parts{
			Rest:     "postgresql://app:s3cr3t-pw@h1,h2,h3/app",
			Stripped: []Pair{{"unified_read_fallback", "error"}, {"unified_replica_policy", "random"}},
			Ports:    []string{"", "", ""},
			Secrets:  []string{testPassword},
		},
	},
	{
		name: "url percent-encoded keys, values and password",
		in:   "postgres://app:s3cr%33t-pw@h1/app?unified%5Fretry_max=%37&unified_health_interval=1%C2%B5s&sslmode=disable",
		want: Parts{
			Rest:     "postgres://app:s3cr%33t-pw@h1/app?sslmode=disable",
			Stripped: []Pair{{"unified_retry_max", "7"}, {"unified_health_interval", "1µs"}},
			Secrets:  []string{"s3cr%33t-pw", testPassword},
		},
	},
	{
		name: "url empty query",
		in:   "postgres://app:s3cr3t-pw@h1/app?",
		want: Parts{Rest: "postgres://app:s3cr3t-pw@h1/app", Secrets: []string{testPassword}},
	},
	{
		name: "url trailing &",
		in:   "postgres://h1/app?a=1&unified_retry_max=2&",
		want: Parts{Rest: "postgres://h1/app?a=1", Stripped: []Pair{{"unified_retry_max", "2"}}},
	},
	{
		name: "url query without path",
		in:   "postgres://app:s3cr3t-pw@h1:6543?unified_max_batch_conns=3&sslmode=disable",
		want: Parts{
			Rest:     "postgres://app:s3cr3t-pw@h1:6543?sslmode=disable",
			Stripped: []Pair{{"unified_max_batch_conns", "3"}},
			Ports:    []string{"6543"},
			Secrets:  []string{testPassword},
		},
	},
	{
		name: "url ipv6 hosts",
		in:   "postgres://app:s3cr3t-pw@[::1]:5432,[fe80::1%25eth0]:5433/app?sslmode=prefer&unified_retry_max=2",
		want: Parts{
			Rest:     "postgres://app:s3cr3t-pw@[::1]:5432,[fe80::1%25eth0]:5433/app?sslmode=prefer",
			Stripped: []Pair{{"unified_retry_max", "2"}},
			Ports:    []string{"5432", "5433"},
			Secrets:  []string{testPassword},
		},
	},
	{
		name: "url ipv6 host holding a '?'",
		in:   "postgres://[::?1]:5432/db?unified_retry_max=1",
		want: Parts{Rest: "postgres://[::?1]:5432/db", Stripped: []Pair{{"unified_retry_max", "1"}}, Ports: []string{"5432"}},
	},
	{
		name: "url unix socket host",
		in:   "postgres://app:s3cr3t-pw@%2Fvar%2Frun%2Fpostgresql:5433/app?unified_default_mode=read-only",
		want: Parts{
			Rest:     "postgres://app:s3cr3t-pw@%2Fvar%2Frun%2Fpostgresql:5433/app",
			Stripped: []Pair{{"unified_default_mode", "read-only"}},
			Ports:    []string{"5433"},
			Secrets:  []string{testPassword},
		},
	},
	{
		name: "url password and host in the query",
		in:   "postgres:///app?host=/tmp&user=app&password=s3cr3t-pw&unified_retry_max=4",
		want: Parts{
			Rest:     "postgres:///app?host=/tmp&user=app&password=s3cr3t-pw",
			Stripped: []Pair{{"unified_retry_max", "4"}},
			Secrets:  []string{testPassword},
		},
	},
	{
		name: "url sslpassword percent-encoded",
		in:   "postgres://h1/app?sslpassword=a%20b",
		want: Parts{Rest: "postgres://h1/app?sslpassword=a%20b", Secrets: []string{"a%20b", "a b"}},
	},
	{
		name: "url target_session_attrs and an upper-case key are stripped",
		in:   "postgres://h1/app?target_session_attrs=standby&UNIFIED_RETRY_MAX=5&sslmode=disable",
		want: Parts{
			Rest:     "postgres://h1/app?sslmode=disable",
			Stripped: []Pair{{"target_session_attrs", "standby"}, {"UNIFIED_RETRY_MAX", "5"}},
		},
	},
	{
		name: "url key that does not decode is kept for pgx to reject",
		in:   "postgres://h1/app?a%zz=1&unified_retry_max=2",
		want: Parts{Rest: "postgres://h1/app?a%zz=1", Stripped: []Pair{{"unified_retry_max", "2"}}},
	},
	{
		name: "url port pair overrides the host list, last one counts",
		in:   "postgres://h1:5432,h2:5433/app?port=6000&port=%36%35%35%33%36",
		want: Parts{Rest: "postgres://h1:5432,h2:5433/app?port=6000&port=%36%35%35%33%36", Ports: []string{"65536"}},
	},
	{
		name: "url ports of some hosts only",
		in:   "postgres://h1,h2:5433,h3/app",
		want: Parts{Rest: "postgres://h1,h2:5433,h3/app", Ports: []string{"", "5433", ""}},
	},
	{
		name: "url empty port is no port setting",
		in:   "postgres://h1:/app",
		want: Parts{Rest: "postgres://h1:/app"},
	},
	{
		name: "url port list that does not decode",
		in:   "postgres://h1:%zz/app",
		want: Parts{Rest: "postgres://h1:%zz/app"},
	},
	{
		name: "url port list decoded as a whole, %2C splits",
		in:   "postgres://h1:%35432%2C5433/app",
		want: Parts{Rest: "postgres://h1:%35432%2C5433/app", Ports: []string{"5432", "5433"}},
	},
	{
		name: "url password with a '/' is taken for a port: the ports are secrets",
		in:   "postgres://u:70000/x@h/db?unified_retry_max=1",
		want: Parts{Rest: "postgres://u:70000/x@h/db", Stripped: []Pair{{"unified_retry_max", "1"}}, Ports: []string{"70000"}, Secrets: []string{"70000"}},
	},
	{
		name: "url an '@' after the host list only in the query",
		in:   "postgres://h1:5432,h2:%35433/db?application_name=a@b",
		want: Parts{Rest: "postgres://h1:5432,h2:%35433/db?application_name=a@b", Ports: []string{"5432", "5433"}, Secrets: []string{"5432", "%35433", "5433"}},
	},
	{
		name: "url unterminated ipv6",
		in:   "postgres://app:s3cr3t-pw@[::1/app?unified_retry_max=5",
		want: Parts{Secrets: []string{testPassword}},
		err:  "unterminated [",
	},
	{
		name: "url NUL byte",
		in:   "postgres://u:s3cr3t-pw@h/db?unified_\x00=1",
		want: Parts{Secrets: []string{testPassword}},
		err:  "forbidden NUL byte at offset 36",
	},
	{name: "keyword/value NUL byte", in: "host=h\x00", err: "forbidden NUL byte at offset 6"},
	{name: "url empty ipv6", in: "postgres://[]/app", err: "empty IPv6 host"},
	{name: "url junk after ipv6", in: "postgres://[::1]x/app", err: "unexpected character at offset 16"},
	{
		name: "url query pair without =",
		in:   "postgres://app:s3cr3t-pw@h1/app?unified_retry_max",
		want: Parts{Secrets: []string{testPassword}},
		err:  "query parameter 1: want exactly one '='",
	},
	{
		name: "url extra = in a stripped value",
		in:   "postgres://h1/app?a=1&unified_retry_max=5=6",
		err:  "query parameter 2: want exactly one '='",
	},
	{name: "url empty query pair", in: "postgres://h1/app?a=1&&b=2", err: "query parameter 2"},
	{
		name: "url bad percent-encoding in a stripped value",
		in:   "postgres://h1/app?unified_retry_max=%zz",
		err:  "query parameter 1: invalid percent-encoding",
	},
	{
		name: "url space in a stripped value",
		in:   "postgres://h1/app?unified_retry_max=1 2",
		err:  "query parameter 1: unexpected space",
	},
	{
		name: "url secrets found after a malformed pair",
		in:   "postgres://h1/app?x&password=s3cr3t-pw",
		want: Parts{Secrets: []string{testPassword}},
		err:  "query parameter 1",
	},

	// Keyword/value text.
	{name: "empty", in: "", want: Parts{}},
	{name: "only white space", in: " \t\n", want: Parts{}},
	{
		name: "keyword/value multi-host",
		in:   "host=h1,h2 port=5432,5433 user=app password=s3cr3t-pw dbname=app sslmode=disable unified_retry_max=5",
		want: Parts{
			Rest:     "host=h1,h2 port=5432,5433 user=app password=s3cr3t-pw dbname=app sslmode=disable",
			Stripped: []Pair{{"unified_retry_max", "5"}},
			Ports:    []string{"5432", "5433"},
			Secrets:  []string{testPassword},
		},
	},
	{
		name: "keyword/value quoting and spaces around =",
		in: "  host = h1\tuser='app' password='s3cr3t-pw' unified_retry_backoff = '10ms..2s' " +
			`application_name='my \'app\'' options=-c\ search_path=x unified_default_mode='read-only'  `,
		want: Parts{
			Rest:     `host = h1 user='app' password='s3cr3t-pw' application_name='my \'app\'' options=-c\ search_path=x`,
			Stripped: []Pair{{"unified_retry_backoff", "10ms..2s"}, {"unified_default_mode", "read-only"}},
			Secrets:  []string{"'s3cr3t-pw'", testPassword},
		},
	},
	{
		name: "keyword/value backslash escapes",
		in:   `host=h1 password=s3cr3t\-pw application_name='a\\b' unified_retry_max=\3`,
		want: Parts{
			Rest:     `host=h1 password=s3cr3t\-pw application_name='a\\b'`,
			Stripped: []Pair{{"unified_retry_max", "3"}},
			Secrets:  []string{`s3cr3t\-pw`, testPassword},
		},
	},
	{
		name: "keyword/value dangling backslash is dropped",
		in:   `host=h1 password=s3cr3t-pw application_name=x\`,
		want: Parts{Rest: `host=h1 password=s3cr3t-pw application_name=x`, Secrets: []string{testPassword}},
	},
	{
		name: "keyword/value escaped backslash at the end is kept",
		in:   `application_name=x\\`,
		want: Parts{Rest: `application_name=x\\`},
	},
	{
		name: "keyword/value empty last value is quoted",
		in:   `host=h1 unified_retry_max=2 application_name=`,
		want: Parts{Rest: `host=h1 application_name=''`, Stripped: []Pair{{"unified_retry_max", "2"}}},
	},
	{
		name: "keyword/value empty stripped value",
		in:   `unified_retry_max='' host=h1`,
		want: Parts{Rest: `host=h1`, Stripped: []Pair{{"unified_retry_max", ""}}},
	},
	{
		name: "keyword/value unix socket and ipv6 hosts",
		in:   "host=/var/run/postgresql,::1,h3 port=5433,5434,5435 sslmode=prefer",
		want: Parts{Rest: "host=/var/run/postgresql,::1,h3 port=5433,5434,5435 sslmode=prefer", Ports: []string{"5433", "5434", "5435"}},
	},
	{
		name: "keyword/value last port counts, quoted and escaped",
		in:   `port=99999 host=h1 port='5432,\ 5433'`,
		want: Parts{Rest: `port=99999 host=h1 port='5432,\ 5433'`, Ports: []string{"5432", " 5433"}},
	},
	{
		name: "keyword/value only stripped pairs",
		in:   "unified_retry_max=4 unified_health_timeout=0.75s",
		want: Parts{Stripped: []Pair{{"unified_retry_max", "4"}, {"unified_health_timeout", "0.75s"}}},
	},
	{
		name: "keyword/value that looks like a url once joined",
		in:   "unified_retry_max=4 postgres://h/x?a=1 host=h1",
		want: Parts{Rest: " postgres://h/x?a=1 host=h1", Stripped: []Pair{{"unified_retry_max", "4"}}},
	},
	{
		name: "keyword/value sslpassword",
		in:   `sslpassword='a b' sslkey=/k`,
		want: Parts{Rest: `sslpassword='a b' sslkey=/k`, Secrets: []string{"'a b'", "a b"}},
	},
	{
		name: "keyword/value unterminated quote",
		in:   "host=h1 password='s3cr3t-pw",
		err:  "unterminated quoted string at offset 17",
	},
	{
		name: "keyword/value unterminated quote in a stripped value",
		in:   "host=h1 password=s3cr3t-pw unified_retry_max='5",
		want: Parts{Secrets: []string{testPassword}},
		err:  "unterminated quoted string at offset 45",
	},
	{
		name: "keyword/value escaped closing quote",
		in:   `application_name='x\'`,
		err:  "unterminated quoted string",
	},
	{
		name: "keyword/value keyword without value",
		in:   "host=h1 password=s3cr3t-pw sslmode",
		want: Parts{Secrets: []string{testPassword}},
		err:  "missing '=' after the keyword at offset 27",
	},
	{name: "keyword/value space in keyword", in: "host=h1 ssl mode=disable", err: "missing '=' after the keyword at offset 8"},
	{name: "keyword/value missing keyword", in: "host=h1 =x", err: "missing keyword before '=' at offset 8"},
}

func TestSplit(t *testing.T) {
	for _, tc := range splitCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Split(tc.in, stripUnified)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				assert.NotContains(t, err.Error(), testPassword)
				assert.Equal(t, tc.want.Secrets, got.Secrets, "secrets found before the error")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			checkReassembly(t, tc.in, got)
		})
	}
}

// TestSplitStripsNothingElse: with a strip that takes nothing, a URL is
// left as it is but for an empty query or a trailing '&'.
func TestSplitStripsNothingElse(t *testing.T) {
	none := func(string) bool { return false }
	for _, tc := range splitCases {
		if tc.err != "" {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			got, err := Split(tc.in, none)
			require.NoError(t, err)
			assert.Empty(t, got.Stripped)
			if IsURL(tc.in) {
				want := strings.TrimSuffix(strings.TrimSuffix(tc.in, "&"), "?")
				assert.Equal(t, want, got.Rest, "only an empty query or a trailing & goes")
			}
		})
	}
}

func TestSplitCallsStripWithDecodedKeys(t *testing.T) {
	var keys []string
	_, err := Split("postgres://h/db?a%5Fb=1&c=2", func(k string) bool { keys = append(keys, k); return false })
	require.NoError(t, err)
	assert.Equal(t, []string{"a_b", "c"}, keys)
}

func TestIsURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"postgres://h", true},
		{"postgresql://", true},
		{"postgres:/h", false},
		{"POSTGRES://h", false},
		{" postgres://h", false},
		{"host=h", false},
		{"", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			assert.Equal(t, tc.want, IsURL(tc.in))
		})
	}
}

func TestCutScheme(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"postgres://u@h/db", "u@h/db", true},
		{"postgresql://h", "h", true},
		{"postgres://", "", true},
		{"host=h", "host=h", false},
		{"postgresql:/h", "postgresql:/h", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, ok := CutScheme(tc.in)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.ok, ok)
		})
	}
}

func TestAppendParams(t *testing.T) {
	for _, tc := range []struct {
		name  string
		base  string
		pairs []Pair
		want  string
	}{
		{"no pairs", "host=h1", nil, "host=h1"},
		{"no pairs, url", "postgres://h1/db?", nil, "postgres://h1/db?"},
		{"url starts the query", "postgres://h1/db", []Pair{{"a", "1"}, {"b", "2"}}, "postgres://h1/db?a=1&b=2"},
		{"url query without path", "postgres://h1:5432", []Pair{{"a", "1"}}, "postgres://h1:5432?a=1"},
		{"url extends the query", "postgres://h1/db?x=1", []Pair{{"a", "1"}}, "postgres://h1/db?x=1&a=1"},
		{"url after an empty query", "postgres://h1/db?", []Pair{{"a", "1"}}, "postgres://h1/db?a=1"},
		{"url ipv6 host holding a '?'", "postgres://[::?]/db", []Pair{{"a", "1"}}, "postgres://[::?]/db?a=1"},
		{
			"url percent-encodes", "postgres://h1",
			[]Pair{{"unified_retry_backoff", "1.5µs..1s"}, {"k&=", "a b+c%"}},
			"postgres://h1?unified_retry_backoff=1.5%C2%B5s..1s&k%26%3D=a%20b%2Bc%25",
		},
		{"keyword/value into nothing", "", []Pair{{"a", "1"}, {"b", "2"}}, "a=1 b=2"},
		{"keyword/value", "host=h1", []Pair{{"a", "1"}}, "host=h1 a=1"},
		{
			"keyword/value quotes", "host=h1",
			[]Pair{{"e", ""}, {"s", "a b"}, {"q", `it's\`}, {"t", "a\tb"}, {"plain", "x..y"}},
			`host=h1 e='' s='a b' q='it\'s\\' t='a` + "\t" + `b' plain=x..y`,
		},
		{"keyword/value after a leading space", " postgres://h/x?a=1", []Pair{{"a", "1"}}, " postgres://h/x?a=1 a=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, AppendParams(tc.base, tc.pairs))
		})
	}
}

// checkReassembly checks what Split promises of p, the split of in: Rest
// splits again to itself with nothing to strip and the same ports, and
// AppendParams(Rest, Stripped) splits back to p.
func checkReassembly(t testing.TB, in string, p Parts) {
	t.Helper()
	again, err := Split(p.Rest, stripUnified)
	if err != nil {
		t.Fatalf("Split(%q).Rest = %q does not split: %v", in, p.Rest, err)
	}
	if again.Rest != p.Rest || len(again.Stripped) != 0 || !slices.Equal(again.Ports, p.Ports) {
		t.Fatalf("Split(%q).Rest = %q splits to %+v", in, p.Rest, again)
	}
	joined := AppendParams(p.Rest, p.Stripped)
	back, err := Split(joined, stripUnified)
	if err != nil {
		t.Fatalf("Split(%q): AppendParams gives %q, which does not split: %v", in, joined, err)
	}
	if back.Rest != p.Rest || !slices.Equal(back.Stripped, p.Stripped) || !slices.Equal(back.Ports, p.Ports) {
		t.Fatalf("Split(%q) = %+v; AppendParams gives %q, which splits to %+v", in, p, joined, back)
	}
}
