package unified

import (
	"fmt"
	"maps"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testPassword is the password of every DSN in these tests: no error and no
// String() may contain it.
const testPassword = "s3cr3t-pw"

// pgEnv lists the environment variables pgx reads.
var pgEnv = []string{
	"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
	"PGAPPNAME", "PGCONNECT_TIMEOUT", "PGSSLMODE", "PGSSLKEY", "PGSSLCERT",
	"PGSSLCERTMODE", "PGSSLSNI", "PGSSLROOTCERT", "PGSSLPASSWORD",
	"PGSSLNEGOTIATION", "PGTARGETSESSIONATTRS", "PGSERVICE", "PGSERVICEFILE",
	"PGTZ", "PGOPTIONS", "PGMINPROTOCOLVERSION", "PGMAXPROTOCOLVERSION",
	"PGCHANNELBINDING", "PGREQUIREAUTH",
}

type setenver interface {
	Setenv(key, value string)
	TempDir() string
}

// isolateEnv unsets every PG* variable and points HOME at an empty
// directory (no .pgpass, service file or client certificates) for the
// duration of t.
func isolateEnv(t setenver) {
	for _, k := range pgEnv {
		t.Setenv(k, "") // restores the old value at cleanup
		os.Unsetenv(k)
	}
	t.Setenv("HOME", t.TempDir())
}

// conf returns the default settings changed by fns.
func conf(fns ...func(*Config)) Config {
	c := defaultConfig()
	for _, fn := range fns {
		fn(&c)
	}
	return c
}

// allSet changes every unified_* setting from its default; allSetURL and
// allSetKV are the same settings in DSN syntax.
func allSet(c *Config) {
	c.DefaultMode = Batch
	c.ReadFallback = FallbackError
	c.ReplicaPolicy = PolicyLeastRTT
	c.MaxReplicaLag = 0
	c.MaxReplicaLagBytes = 1 << 40
	c.HealthInterval = 250 * time.Millisecond
	c.HealthTimeout = 2 * time.Second
	c.FailoverTimeout = 90 * time.Second
	c.RetryMax = 7
	c.RetryBackoffInitial = 10 * time.Millisecond
	c.RetryBackoffMax = 10 * time.Millisecond
	c.BreakerFailures = 4294967295
	c.BreakerOpen = 1500 * time.Millisecond
	c.MaxBatchConns = 4
	c.WarmSpares = 3
	c.MaxOpenConns = 50
	c.MaxIdleConns = 25
	c.ConnMaxLifetime = time.Hour
	c.ConnMaxIdleTime = 5 * time.Minute
	c.DNSRefresh = 2 * time.Minute
	c.Patroni = []string{"http://db1:8008", "https://db2:8008"}
}

var allSetPairs = []string{
	"unified_default_mode=batch",
	"unified_read_fallback=error",
	"unified_replica_policy=least-rtt",
	"unified_max_replica_lag=0s",
	"unified_max_replica_lag_bytes=1099511627776",
	"unified_health_interval=250ms",
	"unified_health_timeout=2s",
	"unified_failover_timeout=1m30s",
	"unified_retry_max=7",
	"unified_retry_backoff=10ms..10ms",
	"unified_breaker_failures=4294967295",
	"unified_breaker_open=1.5s",
	"unified_max_batch_conns=4",
	"unified_warm_spares=3",
	"unified_max_open_conns=50",
	"unified_max_idle_conns=25",
	"unified_conn_max_lifetime=1h0m0s",
	"unified_conn_max_idle_time=5m0s",
	"unified_dns_refresh=2m0s",
	"unified_patroni=http://db1:8008,https://db2:8008",
}

type configCase struct {
	name string
	dsn  string
	env  map[string]string // set on top of isolateEnv
	want Config            // exported fields
	// rest is the expected connString.
	rest string
	// nodes are the expected nodes: "name variants", variants being the
	// TLS use of each connection attempt ("tls", "plain"). nil: not checked.
	nodes []string
	// user and database are checked when not empty.
	user, database string
	// runtime holds expected RuntimeParams entries.
	runtime map[string]string
}

var configCases = []configCase{
	{
		name:  "url single host",
		dsn:   "postgres://app:s3cr3t-pw@h1:5432/app?sslmode=disable",
		want:  conf(),
		rest:  "postgres://app:s3cr3t-pw@h1:5432/app?sslmode=disable",
		nodes: []string{"h1:5432 plain"},
		user:  "app", database: "app",
	},
	{
		name:    "url multi-host with unified parameter in the middle",
		dsn:     "postgres://app:s3cr3t-pw@h1:5432,h2:5433/app?sslmode=disable&unified_retry_max=5&application_name=svc",
		want:    conf(func(c *Config) { c.RetryMax = 5 }),
		rest:    "postgres://app:s3cr3t-pw@h1:5432,h2:5433/app?sslmode=disable&application_name=svc",
		nodes:   []string{"h1:5432 plain", "h2:5433 plain"},
		user:    "app",
		runtime: map[string]string{"application_name": "svc"},
	},
	{
		name:  "url postgresql scheme, only unified parameters in the query",
		dsn:   "postgresql://app:s3cr3t-pw@h1,h2,h3/app?unified_read_fallback=error&unified_replica_policy=random",
		want:  conf(func(c *Config) { c.ReadFallback = FallbackError; c.ReplicaPolicy = PolicyRandom }),
		rest:  "postgresql://app:s3cr3t-pw@h1,h2,h3/app",
		nodes: []string{"h1:5432 tls,plain", "h2:5432 tls,plain", "h3:5432 tls,plain"},
	},
	{
		name:  "url every parameter",
		dsn:   "postgres://app:s3cr3t-pw@h1:5432,h2:5432/app?sslmode=require&" + strings.Join(allSetPairs, "&"),
		want:  conf(allSet),
		rest:  "postgres://app:s3cr3t-pw@h1:5432,h2:5432/app?sslmode=require",
		nodes: []string{"h1:5432 tls", "h2:5432 tls"},
	},
	{
		name:  "url percent-encoded keys and values",
		dsn:   "postgres://app:s3cr%33t-pw@h1/app?unified%5Fretry_max=%37&unified_conn_max_idle_time=1%C2%B5s&sslmode=disable",
		want:  conf(func(c *Config) { c.RetryMax = 7; c.ConnMaxIdleTime = time.Microsecond }),
		rest:  "postgres://app:s3cr%33t-pw@h1/app?sslmode=disable",
		nodes: []string{"h1:5432 plain"},
	},
	{
		name:  "url empty query",
		dsn:   "postgres://app:s3cr3t-pw@h1/app?",
		want:  conf(),
		rest:  "postgres://app:s3cr3t-pw@h1/app",
		nodes: []string{"h1:5432 tls,plain"},
	},
	{
		name:  "url query without path",
		dsn:   "postgres://app:s3cr3t-pw@h1:6543?unified_max_batch_conns=3&sslmode=disable",
		want:  conf(func(c *Config) { c.MaxBatchConns = 3 }),
		rest:  "postgres://app:s3cr3t-pw@h1:6543?sslmode=disable",
		nodes: []string{"h1:6543 plain"},
	},
	{
		name:  "url ipv6 hosts with sslmode=prefer",
		dsn:   "postgres://app:s3cr3t-pw@[::1]:5432,[fe80::1%25eth0]:5433/app?sslmode=prefer&unified_retry_max=2",
		want:  conf(func(c *Config) { c.RetryMax = 2 }),
		rest:  "postgres://app:s3cr3t-pw@[::1]:5432,[fe80::1%25eth0]:5433/app?sslmode=prefer",
		nodes: []string{"[::1]:5432 tls,plain", "[fe80::1%eth0]:5433 tls,plain"},
	},
	{
		name:  "url unix socket host",
		dsn:   "postgres://app:s3cr3t-pw@%2Fvar%2Frun%2Fpostgresql:5433/app?unified_default_mode=read-only",
		want:  conf(func(c *Config) { c.DefaultMode = ReadOnly }),
		rest:  "postgres://app:s3cr3t-pw@%2Fvar%2Frun%2Fpostgresql:5433/app",
		nodes: []string{"/var/run/postgresql:5433 plain"},
	},
	{
		name:  "url unix socket host in the query",
		dsn:   "postgres:///app?host=/tmp&user=app&password=s3cr3t-pw&unified_retry_max=4",
		want:  conf(func(c *Config) { c.RetryMax = 4 }),
		rest:  "postgres:///app?host=/tmp&user=app&password=s3cr3t-pw",
		nodes: []string{"/tmp:5432 plain"},
		user:  "app", database: "app",
	},
	{
		name:  "url sslmode=allow",
		dsn:   "postgres://app:s3cr3t-pw@h1,h2/app?sslmode=allow",
		want:  conf(),
		rest:  "postgres://app:s3cr3t-pw@h1,h2/app?sslmode=allow",
		nodes: []string{"h1:5432 plain,tls", "h2:5432 plain,tls"},
	},
	{
		name:  "url password with query-like characters",
		dsn:   "postgres://app:s3cr3t-pw@h1/app?unified_retry_max=9&options=-c%20statement_timeout%3D5s",
		want:  conf(func(c *Config) { c.RetryMax = 9 }),
		rest:  "postgres://app:s3cr3t-pw@h1/app?options=-c%20statement_timeout%3D5s",
		nodes: []string{"h1:5432 tls,plain"}, runtime: map[string]string{"options": "-c statement_timeout=5s"},
	},
	{
		name:  "keyword/value multi-host",
		dsn:   "host=h1,h2 port=5432,5433 user=app password=s3cr3t-pw dbname=app sslmode=disable unified_retry_max=5",
		want:  conf(func(c *Config) { c.RetryMax = 5 }),
		rest:  "host=h1,h2 port=5432,5433 user=app password=s3cr3t-pw dbname=app sslmode=disable",
		nodes: []string{"h1:5432 plain", "h2:5433 plain"},
		user:  "app", database: "app",
	},
	{
		name:  "keyword/value every parameter",
		dsn:   "host=h1 user=app password=s3cr3t-pw sslmode=verify-full " + strings.Join(allSetPairs, " "),
		want:  conf(allSet),
		rest:  "host=h1 user=app password=s3cr3t-pw sslmode=verify-full",
		nodes: []string{"h1:5432 tls"},
	},
	{
		name: "keyword/value quoting and spaces around =",
		dsn: "  host = h1\tuser='app' password='s3cr3t-pw' unified_retry_backoff = '10ms..2s' " +
			`application_name='my \'app\'' options=-c\ search_path=x unified_default_mode='read-only'  `,
		want: conf(func(c *Config) {
			c.RetryBackoffInitial, c.RetryBackoffMax = 10*time.Millisecond, 2*time.Second
			c.DefaultMode = ReadOnly
		}),
		rest:    `host = h1 user='app' password='s3cr3t-pw' application_name='my \'app\'' options=-c\ search_path=x`,
		nodes:   []string{"h1:5432 tls,plain"},
		user:    "app",
		runtime: map[string]string{"application_name": "my 'app'", "options": "-c search_path=x"},
	},
	{
		name:    "keyword/value backslash escapes",
		dsn:     `host=h1 password=s3cr3t\-pw application_name='a\\b' unified_retry_max=\3`,
		want:    conf(func(c *Config) { c.RetryMax = 3 }),
		rest:    `host=h1 password=s3cr3t\-pw application_name='a\\b'`,
		nodes:   []string{"h1:5432 tls,plain"},
		runtime: map[string]string{"application_name": `a\b`},
	},
	{
		name:    "keyword/value dangling backslash and empty last value",
		dsn:     `host=h1 password=s3cr3t-pw application_name=x\`,
		want:    conf(),
		rest:    `host=h1 password=s3cr3t-pw application_name=x`,
		nodes:   []string{"h1:5432 tls,plain"},
		runtime: map[string]string{"application_name": "x"},
	},
	{
		name:    "keyword/value empty last value",
		dsn:     `host=h1 password=s3cr3t-pw unified_retry_max=2 application_name=`,
		want:    conf(func(c *Config) { c.RetryMax = 2 }),
		rest:    `host=h1 password=s3cr3t-pw application_name=''`,
		runtime: map[string]string{"application_name": ""},
	},
	{
		name:  "keyword/value unix socket and ipv6 hosts",
		dsn:   "host=/var/run/postgresql,::1,h3 port=5433,5434,5435 password=s3cr3t-pw sslmode=prefer",
		want:  conf(),
		rest:  "host=/var/run/postgresql,::1,h3 port=5433,5434,5435 password=s3cr3t-pw sslmode=prefer",
		nodes: []string{"/var/run/postgresql:5433 plain", "[::1]:5434 tls,plain", "h3:5435 tls,plain"},
	},
	{
		name:  "keyword/value same host, different ports",
		dsn:   "host=h1,h1 port=5432,5433 password=s3cr3t-pw",
		want:  conf(),
		rest:  "host=h1,h1 port=5432,5433 password=s3cr3t-pw",
		nodes: []string{"h1:5432 tls,plain", "h1:5433 tls,plain"},
	},
	{
		name: "keyword/value only unified parameters",
		dsn:  "unified_retry_max=4 unified_health_timeout=0.75s",
		want: conf(func(c *Config) { c.RetryMax = 4; c.HealthTimeout = 750 * time.Millisecond }),
		rest: "",
	},
	{
		name: "keyword/value that looks like a url once joined",
		dsn:  "unified_retry_max=4 postgres://h/x?a=1 host=h1 password=s3cr3t-pw",
		want: conf(func(c *Config) { c.RetryMax = 4 }),
		rest: " postgres://h/x?a=1 host=h1 password=s3cr3t-pw",
	},
	{
		name:  "empty dsn with PGHOST",
		dsn:   "",
		env:   map[string]string{"PGHOST": "envhost", "PGPASSWORD": testPassword},
		want:  conf(),
		rest:  "",
		nodes: []string{"envhost:5432 tls,plain"},
	},
	{
		name: "health timeout above interval allowed, zero lag and failover",
		dsn:  "host=h1 password=s3cr3t-pw unified_health_interval=100ms unified_health_timeout=1s unified_max_replica_lag=0s unified_failover_timeout=0",
		want: conf(func(c *Config) {
			c.HealthInterval, c.HealthTimeout = 100*time.Millisecond, time.Second
			c.MaxReplicaLag, c.FailoverTimeout = 0, 0
		}),
		rest: "host=h1 password=s3cr3t-pw",
	},
	{
		name:  "ports at the ends of the range, with leading zeros",
		dsn:   "host=h1,h2,h3 port=1,65535,005432 password=s3cr3t-pw",
		want:  conf(),
		rest:  "host=h1,h2,h3 port=1,65535,005432 password=s3cr3t-pw",
		nodes: []string{"h1:1 tls,plain", "h2:65535 tls,plain", "h3:5432 tls,plain"},
	},
	{
		name:  "keyword/value: the last port counts",
		dsn:   "host=h1 port=99999 password=s3cr3t-pw port=5433",
		want:  conf(),
		rest:  "host=h1 port=99999 password=s3cr3t-pw port=5433",
		nodes: []string{"h1:5433 tls,plain"},
	},
	{
		name:  "url: the port parameter overrides the host list's",
		dsn:   "postgres://app:s3cr3t-pw@h1:99999/app?port=5433&sslmode=disable",
		want:  conf(),
		rest:  "postgres://app:s3cr3t-pw@h1:99999/app?port=5433&sslmode=disable",
		nodes: []string{"h1:5433 plain"},
	},
	{
		name: "lag bytes 0 turns the byte bound off",
		dsn:  "host=h1 password=s3cr3t-pw unified_max_replica_lag_bytes=0",
		want: conf(func(c *Config) { c.MaxReplicaLagBytes = 0 }),
		rest: "host=h1 password=s3cr3t-pw",
	},
	{
		name: "duration floors are allowed",
		dsn:  "host=h1 password=s3cr3t-pw unified_health_interval=10ms unified_health_timeout=1ms unified_breaker_open=10ms unified_retry_backoff=1ms..1ms",
		want: conf(func(c *Config) {
			c.HealthInterval, c.HealthTimeout, c.BreakerOpen = 10*time.Millisecond, time.Millisecond, 10*time.Millisecond
			c.RetryBackoffInitial, c.RetryBackoffMax = time.Millisecond, time.Millisecond
		}),
		rest: "host=h1 password=s3cr3t-pw",
	},
	{
		name: "no floor where a tiny value spins nothing",
		dsn:  "host=h1 password=s3cr3t-pw unified_max_replica_lag=1ns unified_failover_timeout=1ns unified_conn_max_lifetime=1ns unified_conn_max_idle_time=1ns",
		want: conf(func(c *Config) {
			c.MaxReplicaLag, c.FailoverTimeout, c.ConnMaxLifetime, c.ConnMaxIdleTime = 1, 1, 1, 1
		}),
		rest: "host=h1 password=s3cr3t-pw",
	},
}

// targetSessionAttrsCases: the libpq values and the default mode each
// gives, in both syntaxes, plus the precedence rules.
func targetSessionAttrsCases() []configCase {
	var cases []configCase
	for _, tc := range []struct {
		value string
		mode  Mode
	}{
		{"read-write", ReadWrite}, {"primary", ReadWrite}, {"any", ReadWrite},
		{"read-only", ReadOnly}, {"standby", ReadOnly}, {"prefer-standby", ReadOnly},
	} {
		want := conf(func(c *Config) { c.DefaultMode = tc.mode })
		cases = append(cases,
			configCase{
				name: "target_session_attrs url " + tc.value,
				dsn:  "postgres://app:s3cr3t-pw@h1,h2/app?target_session_attrs=" + tc.value + "&sslmode=disable",
				want: want, rest: "postgres://app:s3cr3t-pw@h1,h2/app?sslmode=disable",
				nodes: []string{"h1:5432 plain", "h2:5432 plain"},
			},
			configCase{
				name: "target_session_attrs keyword/value " + tc.value,
				dsn:  "host=h1 target_session_attrs=" + tc.value + " password=s3cr3t-pw",
				want: want, rest: "host=h1 password=s3cr3t-pw",
			},
			configCase{
				name: "PGTARGETSESSIONATTRS " + tc.value,
				dsn:  "host=h1 password=s3cr3t-pw",
				env:  map[string]string{"PGTARGETSESSIONATTRS": tc.value},
				want: want, rest: "host=h1 password=s3cr3t-pw",
			},
		)
	}
	return append(cases,
		configCase{
			name: "unified_default_mode wins over target_session_attrs",
			dsn:  "host=h1 password=s3cr3t-pw target_session_attrs=standby unified_default_mode=transactional",
			want: conf(func(c *Config) { c.DefaultMode = Transactional }),
			rest: "host=h1 password=s3cr3t-pw",
		},
		configCase{
			name: "target_session_attrs in the dsn wins over PGTARGETSESSIONATTRS, even an invalid one",
			dsn:  "host=h1 password=s3cr3t-pw target_session_attrs=read-write",
			env:  map[string]string{"PGTARGETSESSIONATTRS": "bogus"},
			want: conf(),
			rest: "host=h1 password=s3cr3t-pw",
		},
		configCase{
			name: "PGTARGETSESSIONATTRS is not read when unified_default_mode is given",
			dsn:  "host=h1 password=s3cr3t-pw unified_default_mode=read-only",
			env:  map[string]string{"PGTARGETSESSIONATTRS": "bogus"},
			want: conf(func(c *Config) { c.DefaultMode = ReadOnly }),
			rest: "host=h1 password=s3cr3t-pw",
		},
		configCase{
			name: "unified_default_mode wins over PGTARGETSESSIONATTRS",
			dsn:  "host=h1 password=s3cr3t-pw unified_default_mode=read-write",
			env:  map[string]string{"PGTARGETSESSIONATTRS": "standby"},
			want: conf(),
			rest: "host=h1 password=s3cr3t-pw",
		},
	)
}

func allConfigCases() []configCase {
	return append(append([]configCase(nil), configCases...), targetSessionAttrsCases()...)
}

// nodeSummaries describes nodes as configCase.nodes does.
func nodeSummaries(nodes []NodeConfig) []string {
	var out []string
	for _, n := range nodes {
		var vs []string
		cc := n.ConnConfig
		for _, tls := range append([]bool{cc.TLSConfig != nil}, fallbackTLS(cc)...) {
			if tls {
				vs = append(vs, "tls")
			} else {
				vs = append(vs, "plain")
			}
		}
		out = append(out, n.Name+" "+strings.Join(vs, ","))
	}
	return out
}

func fallbackTLS(cc *pgx.ConnConfig) []bool {
	var out []bool
	for _, f := range cc.Fallbacks {
		out = append(out, f.TLSConfig != nil)
	}
	return out
}

// exported returns c's exported fields, for comparison.
func exported(c *Config) Config {
	e := *c
	e.connString, e.pgx, e.modeGiven = "", nil, false
	return e
}

// connView is the part of a pgx.ConnConfig that configuration decides and
// that can be compared (ConnConfig holds funcs).
type connView struct {
	Host, User, Password, Database string
	Port                           uint16
	RuntimeParams                  map[string]string
	TLS                            bool
	ConnectTimeout                 time.Duration
	Fallbacks                      []string
	ValidateConnect                bool
}

func viewConn(cc *pgx.ConnConfig) connView {
	v := connView{
		Host: cc.Host, Port: cc.Port, User: cc.User, Password: cc.Password, Database: cc.Database,
		RuntimeParams: cc.RuntimeParams, TLS: cc.TLSConfig != nil, ConnectTimeout: cc.ConnectTimeout,
		ValidateConnect: cc.ValidateConnect != nil,
	}
	for _, f := range cc.Fallbacks {
		v.Fallbacks = append(v.Fallbacks, fmt.Sprintf("%s:%d tls=%v", f.Host, f.Port, f.TLSConfig != nil))
	}
	return v
}

// requireSameConfig fails unless got equals want: exported fields,
// connString, pgx's settings and the node list.
func requireSameConfig(t testing.TB, want, got *Config) {
	t.Helper()
	require.Equal(t, exported(want), exported(got), "exported fields")
	require.Equal(t, want.connString, got.connString, "connString")
	require.Equal(t, viewConn(want.pgx), viewConn(got.pgx), "pgx config")
	wn, gn := want.Nodes(), got.Nodes()
	require.Len(t, gn, len(wn), "nodes")
	for i := range wn {
		require.Equal(t, wn[i].Name, gn[i].Name)
		require.Equal(t, viewConn(wn[i].ConnConfig), viewConn(gn[i].ConnConfig), "node %s", wn[i].Name)
	}
}

func TestParseConfig(t *testing.T) {
	for _, tc := range allConfigCases() {
		t.Run(tc.name, func(t *testing.T) {
			isolateEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := ParseConfig(tc.dsn)
			require.NoError(t, err)

			assert.Equal(t, tc.want, exported(c))
			assert.Equal(t, tc.rest, c.connString)
			assert.Nil(t, c.pgx.ValidateConnect, "target_session_attrs must not reach pgx")
			if tc.nodes != nil {
				assert.Equal(t, tc.nodes, nodeSummaries(c.Nodes()))
			}
			if tc.user != "" {
				assert.Equal(t, tc.user, c.pgx.User)
			}
			if tc.database != "" {
				assert.Equal(t, tc.database, c.pgx.Database)
			}
			if strings.Contains(tc.dsn+tc.env["PGPASSWORD"], "pw") {
				assert.Equal(t, testPassword, c.pgx.Password)
			}
			for k, v := range tc.runtime {
				assert.Equal(t, v, c.pgx.RuntimeParams[k], "runtime param %s", k)
			}
			for k := range c.pgx.RuntimeParams {
				assert.False(t, strippedKey(k), "runtime param %s reached pgx", k)
			}
			assert.NotContains(t, c.String(), testPassword)

			// The other direction: FormatDSN is the inverse of ParseConfig.
			dsn := c.FormatDSN()
			back, err := ParseConfig(dsn)
			require.NoError(t, err, "ParseConfig(%q)", dsn)
			requireSameConfig(t, c, back)
			assert.Equal(t, dsn, back.FormatDSN(), "FormatDSN is stable")
		})
	}
}

func TestFormatDSN(t *testing.T) {
	isolateEnv(t)
	tests := []struct {
		name string
		dsn  string
		edit func(*Config)
		want string
	}{
		{
			name: "defaults are not written",
			dsn:  "postgres://app:s3cr3t-pw@h1/app?unified_retry_max=3&unified_replica_policy=round-robin",
			want: "postgres://app:s3cr3t-pw@h1/app",
		},
		{
			name: "url: appended to the query in the fixed order",
			dsn:  "postgres://app:s3cr3t-pw@h1/app?unified_retry_max=5&sslmode=disable&target_session_attrs=standby",
			want: "postgres://app:s3cr3t-pw@h1/app?sslmode=disable&unified_default_mode=read-only&unified_retry_max=5",
		},
		{
			name: "url: starts the query",
			dsn:  "postgres://app:s3cr3t-pw@h1/app",
			edit: func(c *Config) { c.ConnMaxIdleTime = 90 * time.Second; c.DefaultMode = Batch },
			want: "postgres://app:s3cr3t-pw@h1/app?unified_default_mode=batch&unified_conn_max_idle_time=1m30s",
		},
		{
			name: "url: every setting",
			dsn:  "postgres://app:s3cr3t-pw@h1",
			edit: allSet,
			// A URL's query escapes what the Patroni URLs hold.
			want: "postgres://app:s3cr3t-pw@h1?" + strings.Replace(strings.Join(allSetPairs, "&"),
				"http://db1:8008,https://db2:8008", "http%3A%2F%2Fdb1%3A8008%2Chttps%3A%2F%2Fdb2%3A8008", 1),
		},
		{
			name: "keyword/value: every setting",
			dsn:  "host=h1 password=s3cr3t-pw",
			edit: allSet,
			want: "host=h1 password=s3cr3t-pw " + strings.Join(allSetPairs, " "),
		},
		{
			name: "the byte bound's default is 16 MiB, 0 is written",
			dsn:  "postgres://h1?unified_max_replica_lag_bytes=16777216",
			edit: func(c *Config) {
				if c.MaxReplicaLagBytes != 16<<20 {
					t.Errorf("MaxReplicaLagBytes = %d", c.MaxReplicaLagBytes)
				}
				c.MaxReplicaLagBytes = 0
			},
			want: "postgres://h1?unified_max_replica_lag_bytes=0",
		},
		{
			name: "keyword/value: only unified",
			dsn:  "unified_max_open_conns=10",
			want: "unified_max_open_conns=10",
		},
		{
			name: "non-ascii duration is percent-encoded",
			dsn:  "postgres://h1",
			edit: func(c *Config) { c.ConnMaxLifetime = 1500 * time.Nanosecond },
			want: "postgres://h1?unified_conn_max_lifetime=1.5%C2%B5s",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig(tt.dsn)
			require.NoError(t, err)
			if tt.edit != nil {
				tt.edit(c)
			}
			require.NoError(t, c.validate())
			got := c.FormatDSN()
			assert.Equal(t, tt.want, got)
			back, err := ParseConfig(got)
			require.NoError(t, err)
			requireSameConfig(t, c, back)
		})
	}
}

// TestFormatDSNWritesReadWriteUnderPGTARGETSESSIONATTRS: FormatDSN depends
// on the Config alone, not on the environment; a mode that the DSN or
// PGTARGETSESSIONATTRS decided is written, even read-write, so that the
// variable cannot change it on the way back.
func TestFormatDSNWritesReadWriteUnderPGTARGETSESSIONATTRS(t *testing.T) {
	for _, tc := range []struct {
		name, env, dsn string
		edit           func(*Config)
		want           string
	}{
		{
			name: "mode from the variable, edited to read-write",
			env:  "standby", dsn: "host=h1",
			edit: func(c *Config) { c.DefaultMode = ReadWrite },
			want: "host=h1 unified_default_mode=read-write",
		},
		{name: "read-only from the variable", env: "standby", dsn: "host=h1", want: "host=h1 unified_default_mode=read-only"},
		{name: "read-write from the variable", env: "primary", dsn: "host=h1", want: "host=h1 unified_default_mode=read-write"},
		{name: "read-write from the dsn", dsn: "host=h1 unified_default_mode=read-write", want: "host=h1 unified_default_mode=read-write"},
		{name: "read-write from target_session_attrs", dsn: "host=h1 target_session_attrs=any", want: "host=h1 unified_default_mode=read-write"},
		{name: "empty target_session_attrs shadows the variable", env: "standby", dsn: "host=h1 target_session_attrs=''", want: "host=h1 unified_default_mode=read-write"},
		{name: "mode not given", dsn: "host=h1", want: "host=h1"},
		{name: "mode not given, edited", dsn: "host=h1", edit: func(c *Config) { c.DefaultMode = Batch }, want: "host=h1 unified_default_mode=batch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolateEnv(t)
			if tc.env != "" {
				t.Setenv("PGTARGETSESSIONATTRS", tc.env)
			}
			c, err := ParseConfig(tc.dsn)
			require.NoError(t, err)
			if tc.edit != nil {
				tc.edit(c)
			}
			got := c.FormatDSN()
			assert.Equal(t, tc.want, got)
			back, err := ParseConfig(got)
			require.NoError(t, err)
			requireSameConfig(t, c, back)

			// The same output, and the same round trip, with the variable
			// set otherwise or not at all.
			for _, env := range []string{"", "standby", "read-write"} {
				t.Setenv("PGTARGETSESSIONATTRS", env)
				assert.Equal(t, got, c.FormatDSN(), "PGTARGETSESSIONATTRS=%q", env)
				if tc.want != "host=h1" { // a DSN without a mode follows the variable, as libpq's does
					back, err := ParseConfig(got)
					require.NoError(t, err)
					requireSameConfig(t, c, back)
				}
			}
		})
	}
}

type errorCase struct {
	name string
	dsn  string
	// want are substrings of the error.
	want []string
	env  map[string]string
}

var errorCases = []errorCase{
	{"dns refresh below its floor", "postgres://app:s3cr3t-pw@h1/app?unified_dns_refresh=10ms", []string{`unified_dns_refresh "10ms"`, "at least 1s"}, nil},
	{"patroni URL without a scheme", "postgres://app:s3cr3t-pw@h1/app?unified_patroni=db1:8008", []string{`unified_patroni "db1:8008"`, "http://"}, nil},
	{"patroni URL with credentials", "host=h1 password=s3cr3t-pw unified_patroni=http://u:pw@db1:8008", []string{`unified_patroni "http://xxxxx@db1:8008"`}, nil},
	{"patroni URL with a comma in its password", "host=h1 unified_patroni=http://app:s3cr3t,pw@db1:8008", []string{`unified_patroni "http://xxxxx@db1:8008"`}, nil},
	{"patroni URL with credentials and no scheme", "host=h1 unified_patroni=app:s3cr3t@db1:8008", []string{`unified_patroni "xxxxx@db1:8008"`}, nil},
	{"unknown key url", "postgres://app:s3cr3t-pw@h1/app?unified_retry=5", []string{`unknown parameter "unified_retry"`}, nil},
	{"unknown key keyword/value", "host=h1 password=s3cr3t-pw unified_bogus=1", []string{`"unified_bogus"`}, nil},
	{"upper-case key", "host=h1 password=s3cr3t-pw UNIFIED_RETRY_MAX=5", []string{`unknown parameter "UNIFIED_RETRY_MAX" (keys are case-sensitive: unified_retry_max)`}, nil},
	{"key given twice", "postgres://app:s3cr3t-pw@h1/app?unified_retry_max=5&unified_retry_max=6", []string{"unified_retry_max given twice"}, nil},
	{"target_session_attrs twice", "host=h1 password=s3cr3t-pw target_session_attrs=any target_session_attrs=standby", []string{"target_session_attrs given twice"}, nil},
	{"bad target_session_attrs", "host=h1 password=s3cr3t-pw target_session_attrs=replica", []string{`target_session_attrs "replica"`}, nil},
	{"bad PGTARGETSESSIONATTRS", "host=h1 password=s3cr3t-pw", []string{`target_session_attrs "replica" (from PGTARGETSESSIONATTRS)`}, map[string]string{"PGTARGETSESSIONATTRS": "replica"}},
	{"bad target_session_attrs beside unified_default_mode", "host=h1 password=s3cr3t-pw target_session_attrs=bogus unified_default_mode=batch", []string{`target_session_attrs "bogus"`}, nil},
	{"bad default_mode", "host=h1 password=s3cr3t-pw unified_default_mode=readonly", []string{`unified_default_mode "readonly"`, "read-write, read-only, batch or transactional"}, nil},
	{"upper-case value", "host=h1 password=s3cr3t-pw unified_default_mode=READ-ONLY", []string{`unified_default_mode "READ-ONLY"`}, nil},
	{"bad read_fallback", "host=h1 password=s3cr3t-pw unified_read_fallback=replica", []string{`unified_read_fallback "replica"`, "primary or error"}, nil},
	{"bad replica_policy", "host=h1 password=s3cr3t-pw unified_replica_policy=fastest", []string{`unified_replica_policy "fastest"`}, nil},
	{"plain number duration", "host=h1 password=s3cr3t-pw unified_max_replica_lag=10", []string{`unified_max_replica_lag "10"`, "Go duration"}, nil},
	{"negative lag", "host=h1 password=s3cr3t-pw unified_max_replica_lag=-1s", []string{`unified_max_replica_lag "-1s"`, ">= 0"}, nil},
	{"bad lag bytes", "host=h1 password=s3cr3t-pw unified_max_replica_lag_bytes=-1", []string{`unified_max_replica_lag_bytes "-1"`}, nil},
	{"lag bytes as size", "host=h1 password=s3cr3t-pw unified_max_replica_lag_bytes=16MB", []string{`unified_max_replica_lag_bytes "16MB"`}, nil},
	{"zero health interval", "host=h1 password=s3cr3t-pw unified_health_interval=0s", []string{`unified_health_interval "0s"`, "at least 10ms"}, nil},
	{"health interval below its floor", "host=h1 password=s3cr3t-pw unified_health_interval=1ns", []string{`unified: invalid unified_health_interval "1ns": must be a Go duration of at least 10ms`}, nil},
	{"health interval just below its floor", "postgres://app:s3cr3t-pw@h1/app?unified_health_interval=9.999ms", []string{`unified_health_interval "9.999ms"`, "at least 10ms"}, nil},
	{"health timeout below its floor", "host=h1 password=s3cr3t-pw unified_health_timeout=999us", []string{`unified_health_timeout "999us"`, "at least 1ms"}, nil},
	{"breaker open below its floor", "host=h1 password=s3cr3t-pw unified_breaker_open=9ms", []string{`unified_breaker_open "9ms"`, "at least 10ms"}, nil},
	{"backoff below its floor", "host=h1 password=s3cr3t-pw unified_retry_backoff=1ns..1s", []string{`unified_retry_backoff "1ns..1s"`, "1ms <= initial <= max"}, nil},
	{"bad health timeout", "host=h1 password=s3cr3t-pw unified_health_timeout=500", []string{`unified_health_timeout "500"`, "a plain number is not a duration"}, nil},
	{"negative failover timeout", "host=h1 password=s3cr3t-pw unified_failover_timeout=-5s", []string{`unified_failover_timeout "-5s"`}, nil},
	{"retry_max abc", "postgres://app:s3cr3t-pw@h1/app?unified_retry_max=abc", []string{`invalid unified_retry_max "abc": must be an integer >= 1`}, nil},
	{"retry_max zero", "host=h1 password=s3cr3t-pw unified_retry_max=0", []string{`unified_retry_max "0"`, ">= 1"}, nil},
	{"retry_max overflow", "host=h1 password=s3cr3t-pw unified_retry_max=99999999999999999999", []string{`unified_retry_max "99999999999999999999"`}, nil},
	{"backoff without ..", "host=h1 password=s3cr3t-pw unified_retry_backoff=50ms", []string{`unified_retry_backoff "50ms"`, "initial..max"}, nil},
	{"backoff inverted", "host=h1 password=s3cr3t-pw unified_retry_backoff=2s..1s", []string{`unified_retry_backoff "2s..1s"`, "initial <= max"}, nil},
	{"backoff zero", "host=h1 password=s3cr3t-pw unified_retry_backoff=0s..1s", []string{`unified_retry_backoff "0s..1s"`}, nil},
	{"backoff three parts", "host=h1 password=s3cr3t-pw unified_retry_backoff=1s..2s..3s", []string{`unified_retry_backoff "1s..2s..3s"`}, nil},
	{"breaker zero", "host=h1 password=s3cr3t-pw unified_breaker_failures=0", []string{`unified_breaker_failures "0"`}, nil},
	{"breaker overflow", "host=h1 password=s3cr3t-pw unified_breaker_failures=4294967296", []string{`unified_breaker_failures "4294967296"`}, nil},
	{"breaker open zero", "host=h1 password=s3cr3t-pw unified_breaker_open=0", []string{`unified_breaker_open "0"`}, nil},
	{"negative batch conns", "host=h1 password=s3cr3t-pw unified_max_batch_conns=-1", []string{`unified_max_batch_conns "-1"`, ">= 0"}, nil},
	{"negative warm spares", "host=h1 password=s3cr3t-pw unified_warm_spares=-1", []string{`unified_warm_spares "-1"`, ">= 0"}, nil},
	{"negative open conns", "host=h1 password=s3cr3t-pw unified_max_open_conns=-1", []string{`unified_max_open_conns "-1"`}, nil},
	{"bad idle conns", "host=h1 password=s3cr3t-pw unified_max_idle_conns=lots", []string{`unified_max_idle_conns "lots"`}, nil},
	{"bad lifetime", "host=h1 password=s3cr3t-pw unified_conn_max_lifetime=1d", []string{`unified_conn_max_lifetime "1d"`}, nil},
	{"negative idle time", "host=h1 password=s3cr3t-pw unified_conn_max_idle_time=-1m", []string{`unified_conn_max_idle_time "-1m"`}, nil},
	{"empty value", "host=h1 password=s3cr3t-pw unified_retry_max=''", []string{`unified_retry_max ""`}, nil},
	{"duplicate host", "host=h1,h2,h1 password=s3cr3t-pw", []string{`host "h1:5432" given twice`}, nil},
	{"duplicate host url default port", "postgres://app:s3cr3t-pw@h1:5432,h1/app", []string{`host "h1:5432" given twice`}, nil},
	{"duplicate host sslmode=disable", "host=h1,h1 password=s3cr3t-pw sslmode=disable", []string{`host "h1:5432" given twice`}, nil},
	{"url port out of range", "postgres://app:s3cr3t-pw@h1:65536/app", []string{`unified: invalid port "65536": must be an integer 1..65535`}, nil},
	{"url port zero", "postgres://app:s3cr3t-pw@h1:0/app", []string{`invalid port "0"`}, nil},
	{"url second host's port", "postgres://app:s3cr3t-pw@h1:5432,h2:70000/app", []string{`invalid port "70000"`}, nil},
	{"url percent-encoded port", "postgres://app:s3cr3t-pw@h1:%36%35%35%33%36/app", []string{`invalid port "65536"`}, nil},
	{"url port parameter", "postgres://app:s3cr3t-pw@h1/app?port=65536", []string{`invalid port "65536"`}, nil},
	{"url port parameter wins", "postgres://app:s3cr3t-pw@h1:5432/app?port=0", []string{`invalid port "0"`}, nil},
	{"keyword/value port list", "host=h1,h2 port=5432,99999 password=s3cr3t-pw", []string{`invalid port "99999"`}, nil},
	{"keyword/value last port", "host=h1 port=5432 password=s3cr3t-pw port='0'", []string{`invalid port "0"`}, nil},
	{"huge port", "host=h1 port=99999999999999999999 password=s3cr3t-pw", []string{`invalid port "99999999999999999999"`}, nil},
	{"port that is the password", "host=h1 port=77777 password=77777", []string{"unified: invalid port (value withheld: it would reveal the password): must be an integer 1..65535"}, nil},
	{"url password with a '/' taken for a port", "postgres://app:70000/s3cr3t-pw@h1/app", []string{"unified: invalid port (value withheld: it would reveal the password)"}, nil},
	// Errors from pgx's parser.
	{"bad port", "postgres://app:s3cr3t-pw@h1:notaport/app", []string{"invalid connection string", "invalid port"}, nil},
	{"bad sslmode", "host=h1 password=s3cr3t-pw sslmode=sometimes", []string{"invalid connection string", "sslmode is invalid"}, nil},
	{"unterminated quote", "host=h1 password='s3cr3t-pw", []string{"invalid connection string", "unterminated quoted string"}, nil},
	{"unterminated quote in a unified value", "host=h1 password=s3cr3t-pw unified_retry_max='5", []string{"invalid connection string", "unterminated quoted string"}, nil},
	{"pgx redaction miss: spaces around =", "host=h1 password = s3cr3t-pw port=abc", []string{"invalid port"}, nil},
	{"pgx redaction miss: escaped space", `host=h1 password=s3cr3t-pw\ x port=abc`, []string{"invalid port"}, nil},
	{"bad percent-encoding in password", "postgres://app:s3cr3t-pw%zz@h1/app", []string{"invalid connection string"}, nil},
	{"unterminated ipv6", "postgres://app:s3cr3t-pw@[::1/app?unified_retry_max=5", []string{"invalid connection string"}, nil},
	{"query pair without =", "postgres://app:s3cr3t-pw@h1/app?unified_retry_max", []string{"invalid connection string"}, nil},
	{"extra = in a unified value", "postgres://app:s3cr3t-pw@h1/app?unified_retry_max=5=6", []string{"invalid connection string"}, nil},
	{"bad percent-encoding in a unified value", "postgres://app:s3cr3t-pw@h1/app?unified_retry_max=%zz", []string{"invalid connection string"}, nil},
	{"keyword without value", "host=h1 password=s3cr3t-pw sslmode", []string{"invalid connection string"}, nil},
	{"space in keyword", "host=h1 password=s3cr3t-pw ssl mode=disable", []string{"invalid connection string"}, nil},
	{"bad pgx option", "host=h1 password=s3cr3t-pw default_query_exec_mode=fast", []string{"invalid connection string", "default_query_exec_mode"}, nil},
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			isolateEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := ParseConfig(tc.dsn)
			require.Error(t, err)
			require.Nil(t, c)
			msg := err.Error()
			assert.True(t, strings.HasPrefix(msg, "unified: "), "error %q does not start with unified: ", msg)
			for _, w := range tc.want {
				assert.Contains(t, msg, w)
			}
			assert.NotContains(t, msg, testPassword)
			assert.NotContains(t, msg, "s3cr3t")
		})
	}
}

// TestPgxErrorRedaction shows why ParseConfig rewords pgx's errors: pgx's
// own redaction misses some spellings of a password.
func TestPgxErrorRedaction(t *testing.T) {
	isolateEnv(t)
	dsn := "host=h1 password = s3cr3t-pw port=abc"
	_, pgxErr := pgx.ParseConfig(dsn)
	require.Error(t, pgxErr)
	if strings.Contains(pgxErr.Error(), testPassword) {
		t.Logf("pgx's own error leaks the password: %v", pgxErr)
	}
	_, err := ParseConfig(dsn)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), testPassword)

	// A message that would still contain a secret is withheld.
	err = pgxError(fmt.Errorf("boom near %s", testPassword), []string{testPassword})
	assert.Equal(t, "unified: invalid connection string (details withheld: they would reveal the password)", err.Error())
}

func TestValidate(t *testing.T) {
	isolateEnv(t)
	base, err := ParseConfig("postgres://app:s3cr3t-pw@h1,h2/app")
	require.NoError(t, err)
	require.NoError(t, base.validate())

	assert.EqualError(t, (&Config{}).validate(), "unified: config not created by ParseConfig")
	zero := defaultConfig()
	assert.EqualError(t, zero.validate(), "unified: config not created by ParseConfig")

	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"zero mode", func(c *Config) { c.DefaultMode = 0 }, `unified: invalid unified_default_mode "Mode(0)" (Config.DefaultMode)`},
		{"mode out of range", func(c *Config) { c.DefaultMode = 9 }, `unified_default_mode "Mode(9)"`},
		{"zero fallback", func(c *Config) { c.ReadFallback = 0 }, `unified_read_fallback "ReadFallback(0)" (Config.ReadFallback)`},
		{"bad policy", func(c *Config) { c.ReplicaPolicy = 5 }, `unified_replica_policy "ReplicaPolicy(5)"`},
		{"negative lag", func(c *Config) { c.MaxReplicaLag = -time.Second }, `unified_max_replica_lag "-1s" (Config.MaxReplicaLag)`},
		{"zero interval", func(c *Config) { c.HealthInterval = 0 }, `unified_health_interval "0s"`},
		{"interval below its floor", func(c *Config) { c.HealthInterval = time.Millisecond }, `unified_health_interval "1ms" (Config.HealthInterval): must be a Go duration of at least 10ms`},
		{"zero timeout", func(c *Config) { c.HealthTimeout = 0 }, `unified_health_timeout "0s"`},
		{"timeout below its floor", func(c *Config) { c.HealthTimeout = time.Microsecond }, `unified_health_timeout "1µs" (Config.HealthTimeout): must be a Go duration of at least 1ms`},
		{"negative failover", func(c *Config) { c.FailoverTimeout = -1 }, `unified_failover_timeout "-1ns"`},
		{"zero retries", func(c *Config) { c.RetryMax = 0 }, `unified_retry_max "0" (Config.RetryMax): must be an integer >= 1`},
		{"inverted backoff", func(c *Config) { c.RetryBackoffMax = time.Millisecond }, `unified_retry_backoff "50ms..1ms" (Config.RetryBackoffInitial, RetryBackoffMax)`},
		{"zero backoff", func(c *Config) { c.RetryBackoffInitial = 0 }, `unified_retry_backoff "0s..1s"`},
		{"backoff below its floor", func(c *Config) { c.RetryBackoffInitial = time.Microsecond }, `unified_retry_backoff "1µs..1s"`},
		{"zero breaker", func(c *Config) { c.BreakerFailures = 0 }, `unified_breaker_failures "0"`},
		{"zero breaker open", func(c *Config) { c.BreakerOpen = 0 }, `unified_breaker_open "0s"`},
		{"breaker open below its floor", func(c *Config) { c.BreakerOpen = time.Millisecond }, `unified_breaker_open "1ms" (Config.BreakerOpen): must be a Go duration of at least 10ms`},
		{"negative batch", func(c *Config) { c.MaxBatchConns = -1 }, `unified_max_batch_conns "-1"`},
		{"negative warm spares", func(c *Config) { c.WarmSpares = -1 }, `unified_warm_spares "-1"`},
		{"negative open", func(c *Config) { c.MaxOpenConns = -1 }, `unified_max_open_conns "-1"`},
		{"negative idle", func(c *Config) { c.MaxIdleConns = -2 }, `unified_max_idle_conns "-2"`},
		{"negative lifetime", func(c *Config) { c.ConnMaxLifetime = -time.Minute }, `unified_conn_max_lifetime "-1m0s"`},
		{"negative idle time", func(c *Config) { c.ConnMaxIdleTime = -time.Minute }, `unified_conn_max_idle_time "-1m0s"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base.Copy()
			tt.edit(c)
			err := c.validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.NotContains(t, err.Error(), testPassword)
		})
	}

	// Allowed edge values.
	c := base.Copy()
	c.HealthTimeout = 10 * c.HealthInterval
	c.MaxReplicaLag, c.FailoverTimeout, c.ConnMaxLifetime, c.ConnMaxIdleTime = 0, 0, 0, 0
	c.RetryMax, c.BreakerFailures = 1, 1
	c.RetryBackoffInitial, c.RetryBackoffMax = time.Millisecond, time.Millisecond
	assert.NoError(t, c.validate())
	c.HealthInterval, c.HealthTimeout, c.BreakerOpen = 10*time.Millisecond, time.Millisecond, 10*time.Millisecond
	assert.NoError(t, c.validate())
}

func TestCopyIsIndependent(t *testing.T) {
	isolateEnv(t)
	orig, err := ParseConfig("postgres://app:s3cr3t-pw@h1,h2/app?application_name=a&sslmode=require&unified_retry_max=5")
	require.NoError(t, err)
	want := orig.FormatDSN()
	wantView := viewConn(orig.pgx)
	wantView.RuntimeParams = maps.Clone(wantView.RuntimeParams)
	serverName := orig.pgx.TLSConfig.ServerName

	cp := orig.Copy()
	requireSameConfig(t, orig, cp)
	cp.RetryMax = 9
	cp.DefaultMode = ReadOnly
	cp.pgx.RuntimeParams["application_name"] = "changed"
	cp.pgx.Host = "elsewhere"
	cp.pgx.TLSConfig.ServerName = "changed"
	cp.pgx.Fallbacks[0].Host = "changed"
	cp.connString = "host=changed"

	assert.Equal(t, want, orig.FormatDSN())
	assert.Equal(t, wantView, viewConn(orig.pgx))
	assert.Equal(t, serverName, orig.pgx.TLSConfig.ServerName)
	assert.Equal(t, 5, orig.RetryMax)

	// Nodes are deep copies too.
	nodes := orig.Nodes()
	nodes[0].ConnConfig.RuntimeParams["application_name"] = "changed"
	nodes[0].ConnConfig.TLSConfig.ServerName = "changed"
	assert.Equal(t, "a", orig.pgx.RuntimeParams["application_name"])
	assert.Equal(t, serverName, orig.pgx.TLSConfig.ServerName)
	assert.Equal(t, "a", orig.Nodes()[0].ConnConfig.RuntimeParams["application_name"])

	// A copy of a Config not made by ParseConfig does not panic.
	assert.Nil(t, (&Config{}).Copy().pgx)
}

func TestNodes(t *testing.T) {
	isolateEnv(t)
	c, err := ParseConfig("postgres://app:s3cr3t-pw@h1:5432,[::1]:5433,h3/app?sslmode=prefer&connect_timeout=3&target_session_attrs=read-write")
	require.NoError(t, err)
	nodes := c.Nodes()
	require.Len(t, nodes, 3)
	for i, want := range []struct {
		name string
		host string
		port uint16
	}{{"h1:5432", "h1", 5432}, {"[::1]:5433", "::1", 5433}, {"h3:5432", "h3", 5432}} {
		n := nodes[i]
		cc := n.ConnConfig
		assert.Equal(t, want.name, n.Name)
		assert.Equal(t, want.host, cc.Host)
		assert.Equal(t, want.port, cc.Port)
		assert.NotNil(t, cc.TLSConfig, "prefer: TLS first")
		require.Len(t, cc.Fallbacks, 1)
		assert.Equal(t, want.host, cc.Fallbacks[0].Host)
		assert.Equal(t, want.port, cc.Fallbacks[0].Port)
		assert.Nil(t, cc.Fallbacks[0].TLSConfig, "prefer: plain second")
		assert.Nil(t, cc.ValidateConnect)
		assert.Equal(t, "app", cc.User)
		assert.Equal(t, testPassword, cc.Password)
		assert.Equal(t, 3*time.Second, cc.ConnectTimeout)
	}
	// sslmode=verify-full names each host's own server.
	c, err = ParseConfig("host=a.example,b.example sslmode=verify-full")
	require.NoError(t, err)
	for _, n := range c.Nodes() {
		assert.Equal(t, n.ConnConfig.Host, n.ConnConfig.TLSConfig.ServerName)
	}
	assert.Nil(t, (&Config{}).Nodes())
}

func TestEnumStrings(t *testing.T) {
	for _, f := range []ReadFallback{FallbackPrimary, FallbackError} {
		got, ok := readFallbackNames.parse(f.String())
		assert.True(t, ok)
		assert.Equal(t, f, got)
	}
	for _, p := range []ReplicaPolicy{PolicyRoundRobin, PolicyRandom, PolicyLeastRTT} {
		got, ok := replicaPolicyNames.parse(p.String())
		assert.True(t, ok)
		assert.Equal(t, p, got)
	}
	assert.Equal(t, "primary", FallbackPrimary.String())
	assert.Equal(t, "error", FallbackError.String())
	assert.Equal(t, "round-robin", PolicyRoundRobin.String())
	assert.Equal(t, "random", PolicyRandom.String())
	assert.Equal(t, "least-rtt", PolicyLeastRTT.String())
	assert.Equal(t, "least-loaded", PolicyLeastLoaded.String())
	ll, llok := replicaPolicyNames.parse("least-loaded")
	assert.True(t, llok)
	assert.Equal(t, PolicyLeastLoaded, ll)
	assert.Equal(t, "ReadFallback(0)", ReadFallback(0).String())
	assert.Equal(t, "ReplicaPolicy(7)", ReplicaPolicy(7).String())
	_, ok := readFallbackNames.parse("ReadFallback(0)")
	assert.False(t, ok)
	_, ok = replicaPolicyNames.parse("")
	assert.False(t, ok)
	_, ok = modeNames.parse("Mode(0)")
	assert.False(t, ok)
	m, ok := modeNames.parse("transactional")
	assert.True(t, ok)
	assert.Equal(t, Transactional, m)
	// The rules in ParseConfig's errors, made from the spellings.
	assert.Equal(t, "must be read-write, read-only, batch or transactional", modeNames.rule())
	assert.Equal(t, "must be primary or error", readFallbackNames.rule())
	assert.Equal(t, "must be round-robin, random, least-rtt or least-loaded", replicaPolicyNames.rule())
}

func TestString(t *testing.T) {
	isolateEnv(t)
	c, err := ParseConfig("postgres://app:s3cr3t-pw@h1:5432,h2:5433/app?sslmode=disable&unified_retry_max=5")
	require.NoError(t, err)
	assert.Equal(t, "unified: hosts=[h1:5432 h2:5433] user=app database=app default_mode=read-write "+
		"read_fallback=primary replica_policy=round-robin max_replica_lag=10s max_replica_lag_bytes=16777216 "+
		"health_interval=1s health_timeout=500ms failover_timeout=30s retry_max=5 retry_backoff=50ms..1s "+
		"breaker_failures=5 breaker_open=5s max_batch_conns=0 warm_spares=1 max_open_conns=0 max_idle_conns=0 "+
		"conn_max_lifetime=0s conn_max_idle_time=0s dns_refresh=30s patroni=", c.String())

	for _, dsn := range []string{
		// In the URL, as a query password, in run-time parameters.
		"postgres://app:s3cr3t-pw@h1/app",
		"postgres://app@h1/app?password=s3cr3t-pw&application_name=s3cr3t-pw",
		"host=h1 user=app password=s3cr3t-pw options='-c app.secret=s3cr3t-pw' search_path=s3cr3t-pw",
		// The password as user, database or host name.
		"host=h1 user=s3cr3t-pw password=s3cr3t-pw dbname=xs3cr3t-pwx",
		"host=s3cr3t-pw password=s3cr3t-pw",
	} {
		c, err := ParseConfig(dsn)
		require.NoError(t, err, dsn)
		for _, s := range []string{
			c.String(),
			fmt.Sprint(c), fmt.Sprint(*c),
			fmt.Sprintf("%+v", c), fmt.Sprintf("%+v", *c),
			fmt.Sprintf("%#v", c), fmt.Sprintf("%#v", *c),
			fmt.Sprintf("%s", c), fmt.Sprintf("%v", []*Config{c}),
		} {
			assert.NotContains(t, s, testPassword, dsn)
		}
	}

	assert.Contains(t, (&Config{}).String(), "config not created by ParseConfig")
}
