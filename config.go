package unified

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/unifiedsql/unified/internal/dsn"
)

// Config is a parsed unified DSN: pgx's connection settings for every host,
// plus the unified_* settings. Make one with [ParseConfig]; the zero value is
// not usable (no hosts), and [NewConnector] rejects it. The exported fields
// may be changed between ParseConfig and NewConnector; NewConnector checks
// them again with the rules ParseConfig applies to the DSN. A Config must not
// be modified after it has been passed to [NewConnector], [OpenDB] or
// [Register]; use [Config.Copy].
//
// Each field names its DSN parameter; the DSN spellings, defaults and
// validity rules are listed at [ParseConfig]. The methods only read the
// Config: they are safe for concurrent use while nobody modifies it.
type Config struct {
	// DefaultMode is the mode of statements whose context carries none
	// (unified_default_mode, or target_session_attrs). Default ReadWrite.
	// Must be one of the four modes: the zero Mode is not accepted here.
	DefaultMode Mode
	// ReadFallback: what a read does when no replica is eligible
	// (unified_read_fallback). Default FallbackPrimary.
	ReadFallback ReadFallback
	// ReplicaPolicy: how a replica is chosen among the eligible ones
	// (unified_replica_policy). Default PolicyRoundRobin.
	ReplicaPolicy ReplicaPolicy
	// MaxReplicaLag: a replica further behind than this (time) is not used
	// for reads (unified_max_replica_lag). Default 10s; 0 turns the bound
	// off; negative is invalid.
	MaxReplicaLag time.Duration
	// MaxReplicaLagBytes: the same bound in WAL bytes
	// (unified_max_replica_lag_bytes). Default 16 MiB (16777216); 0 turns
	// the bound off. It is on by default because MaxReplicaLag alone cannot
	// judge a replica in a new process: the time lag is read off the
	// primary's WAL positions this process has sampled, so for a replica
	// behind the oldest sample (a new process, a new primary) it is only a
	// lower bound, the samples' span, while the byte lag is exact from the
	// first probe. A primary that writes WAL faster than 16 MiB per
	// replication delay (bulk loads) pushes healthy replicas past it: raise
	// it, or set 0 and rely on the time bound.
	MaxReplicaLagBytes uint64
	// HealthInterval: probe period per node (unified_health_interval).
	// Default 1s; must be >= 10ms, so that a typo cannot make the monitor
	// spin.
	HealthInterval time.Duration
	// HealthTimeout: one probe's deadline (unified_health_timeout). Default
	// 500ms; must be >= 1ms. A timeout longer than HealthInterval is allowed,
	// not an error: a node's next probe waits for its previous one, so a
	// node that answers slowly is simply probed less often.
	HealthTimeout time.Duration
	// FailoverTimeout: how long a write waits for a new primary before
	// ErrNoPrimary (unified_failover_timeout), always bounded by the
	// caller's context as well. Default 30s; 0 means do not wait: a write
	// that finds no primary fails at once; negative is invalid.
	FailoverTimeout time.Duration
	// RetryMax: attempts (the first one included) for a retryable
	// operation (unified_retry_max). Default 3; must be >= 1 (1 = no retry).
	RetryMax int
	// RetryBackoffInitial and RetryBackoffMax bound the jittered
	// exponential backoff between attempts (unified_retry_backoff, written
	// "initial..max"). Default 50ms and 1s; must be
	// 1ms <= RetryBackoffInitial <= RetryBackoffMax.
	RetryBackoffInitial time.Duration
	RetryBackoffMax     time.Duration
	// BreakerFailures: consecutive connection-class failures that open a
	// node's breaker (unified_breaker_failures). Default 5; must be >= 1.
	BreakerFailures uint32
	// BreakerOpen: how long a breaker stays open before one half-open
	// probe (unified_breaker_open). Default 5s; must be >= 10ms.
	BreakerOpen time.Duration
	// MaxBatchConns: bulkhead for Batch mode, the most connections Batch
	// work may use at once, so that bulk work cannot take every connection
	// (unified_max_batch_conns). Default 0 (no limit); negative is invalid.
	MaxBatchConns int
	// WarmSpares: idle read-write sessions kept open to each replica, taken
	// by the first writes after the replica is promoted, so that they do
	// not wait for a dial (unified_warm_spares; see the README's failover
	// section). Default 1; 0 keeps none; negative is invalid. They are
	// connections the server counts: WarmSpares × replicas per process.
	WarmSpares int
	// Pool settings (unified_max_open_conns, unified_max_idle_conns,
	// unified_conn_max_lifetime, unified_conn_max_idle_time), applied by
	// [OpenDB] with the matching db.Set* call. 0 leaves database/sql's
	// default (unlimited open, 2 idle, no lifetime or idle-time limit);
	// negative is invalid. With sql.Open, database/sql owns the pool: these
	// fields are ignored and the caller uses db.Set* itself.
	MaxOpenConns    int
	MaxIdleConns    int
	ConnMaxLifetime time.Duration
	ConnMaxIdleTime time.Duration
	// DNSRefresh: how often every host name of the DSN (and of Patroni's
	// members) is resolved again (unified_dns_refresh), with 10 % jitter,
	// and soon after a node of it fails a probe. Default 30s; 0 resolves
	// once, at the first connection; otherwise at least 1s.
	DNSRefresh time.Duration
	// Patroni: Patroni REST API base URLs (unified_patroni, comma
	// separated, such as "http://db1:8008,http://db2:8008"). When set, the
	// members of GET /cluster join the DSN's hosts, with the DSN's
	// credentials and TLS settings. Roles still come from the nodes
	// themselves.
	Patroni []string

	// connString is the DSN without unified_* and target_session_attrs, in
	// the syntax the user wrote it (URL or keyword/value): the other pairs
	// keep their text; keyword/value pairs are re-joined by single spaces.
	connString string
	// pgx is pgx's parse of connString: Host/Port plus Fallbacks for every
	// host, ValidateConnect cleared.
	pgx *pgx.ConnConfig
	// modeGiven: when ParseConfig ran, the DSN (unified_default_mode or
	// target_session_attrs) or PGTARGETSESSIONATTRS decided DefaultMode,
	// so FormatDSN writes it even when it is the default: re-parsed, the
	// DSN must not fall back to the environment variable.
	modeGiven bool
}

// NodeConfig is one host of a Config.
type NodeConfig struct {
	// Name is "host:port", unique in a Config: net.JoinHostPort for a TCP
	// host (so "[::1]:5432" for IPv6), and the socket directory, a colon
	// and the port for a Unix socket ("/var/run/postgresql:5432").
	Name string
	// ConnConfig connects to this host only: Host, Port and TLSConfig are
	// the host's first TLS variant, Fallbacks hold only the other TLS
	// variants of the same host:port (sslmode=prefer/allow), and
	// ValidateConnect is nil. It is a deep copy the caller may modify.
	ConnConfig *pgx.ConnConfig
}

// ParseConfig parses a DSN: a pgx/libpq connection string, either a URL
// (postgres://app:pw@db1:5432,db2:5432/app?sslmode=require&unified_retry_max=5)
// or keyword/value (host=db1,db2 port=5432,5432 user=app unified_retry_max=5),
// with any number of hosts, plus unified_* parameters.
//
// The unified_* parameters and target_session_attrs are taken out of the
// text first; everything else is parsed by pgx.ParseConfig exactly as pgx
// would (including the PG* environment variables, .pgpass and service
// files), so pgx's rules, defaults and sslmode handling apply unchanged.
// The parameters, their defaults and their valid values:
//
//	unified_default_mode           read-write | read-only | batch | transactional (read-write)
//	unified_read_fallback          primary | error (primary)
//	unified_replica_policy         round-robin | random | least-rtt | least-loaded (round-robin)
//	unified_max_replica_lag        duration >= 0, 0 = off (10s)
//	unified_max_replica_lag_bytes  integer >= 0, 0 = off (16777216, 16 MiB)
//	unified_health_interval        duration >= 10ms (1s)
//	unified_health_timeout         duration >= 1ms (500ms)
//	unified_failover_timeout       duration >= 0 (30s)
//	unified_retry_max              integer >= 1 (3)
//	unified_retry_backoff          initial..max, durations, 1ms <= initial <= max (50ms..1s)
//	unified_breaker_failures       integer 1..4294967295 (5)
//	unified_breaker_open           duration >= 10ms (5s)
//	unified_max_batch_conns        integer >= 0, 0 = no limit (0)
//	unified_warm_spares            integer >= 0, per replica (1)
//	unified_max_open_conns         integer >= 0, 0 = database/sql's default (0)
//	unified_max_idle_conns         integer >= 0, 0 = database/sql's default (0)
//	unified_conn_max_lifetime      duration >= 0, 0 = database/sql's default (0)
//	unified_conn_max_idle_time     duration >= 0, 0 = database/sql's default (0)
//	unified_dns_refresh            duration, 0 = resolve once, else >= 1s (30s)
//	unified_patroni                comma-separated http(s) Patroni REST base URLs, no credentials (none)
//
// Durations use Go syntax ([time.ParseDuration]: "500ms", "1m30s"); a plain
// number other than 0 is not a duration. The floors of the health interval
// and timeout, the breaker's open time and the initial backoff keep a typo
// (1ns for 1s) from spinning a core or turning the mechanism off: the
// monitor probes every node each interval, and a breaker or backoff of
// nanoseconds sheds no load. A value below its floor is an error naming
// the key, the value and the floor.
//
// Keys are case-sensitive and lowercase, as in libpq; any other key that
// starts with "unified_" in any case is an error naming it, and so is a
// unified_* key or target_session_attrs given twice (libpq would keep the
// last). In a URL, keys and values are percent-decoded as libpq does.
//
// The byte bound is on by default because the time bound cannot judge a
// replica in a new process: until this process has sampled the primary's
// WAL positions for as long as a replica is behind, that replica's time lag
// is only known to be at least the samples' span, while its byte lag is
// exact from the first probe ([Config.MaxReplicaLagBytes]).
//
// target_session_attrs sets the default mode: read-write, primary and any
// mean ReadWrite; read-only, standby and prefer-standby mean ReadOnly; any
// other value is an error. It is never passed to pgx: routing, not a check
// at connect time, decides which node a statement runs on. When both
// unified_default_mode and target_session_attrs are given,
// unified_default_mode wins (target_session_attrs must still be valid).
// When the DSN has neither, the PGTARGETSESSIONATTRS environment variable
// is read instead, as libpq would: here, once; the Config and
// [Config.FormatDSN] never read it again. A target_session_attrs in a
// service file is ignored.
//
// Every host:port must be distinct: a host listed twice is an error. Each
// becomes one node ([Config.Nodes]). A port in the DSN (in a URL's host
// list or its port parameter, or keyword/value port=) must be 1..65535;
// one out of range is an error naming it.
//
// Errors start with "unified: " and name the offending key and value. They
// never contain the password: errors from pgx's parser are re-worded
// without the connection string, and withheld entirely should they still
// contain it.
func ParseConfig(connString string) (*Config, error) {
	sp, err := dsn.Split(connString, strippedKey)
	if err != nil {
		// The text does not even split into pairs: let pgx, which owns the
		// syntax, say what is wrong with it.
		if _, err := pgx.ParseConfig(connString); err != nil {
			return nil, pgxError(err, sp.Secrets)
		}
		return nil, fmt.Errorf("unified: invalid connection string: cannot separate the unified_* parameters: %v", err)
	}

	c := defaultConfig()
	seen := make(map[string]bool, len(sp.Stripped))
	tsa, tsaFromEnv := "", false
	for _, kv := range sp.Stripped {
		if seen[kv.Key] {
			return nil, fmt.Errorf("unified: parameter %s given twice", kv.Key)
		}
		seen[kv.Key] = true
		if kv.Key == keyTargetSessionAttrs {
			tsa = kv.Value
			continue
		}
		p, known := lookupParam(kv.Key)
		if !known {
			if p, ok := lookupParam(strings.ToLower(kv.Key)); ok {
				return nil, fmt.Errorf("unified: unknown parameter %q (keys are case-sensitive: %s)", kv.Key, p.key)
			}
			return nil, fmt.Errorf("unified: unknown parameter %q", kv.Key)
		}
		if !p.set(&c, kv.Value) || !p.ok(&c) {
			return nil, fmt.Errorf("unified: invalid %s %q: %s", p.key, redactURLs(kv.Value), p.rule)
		}
	}
	if !seen[keyTargetSessionAttrs] && !seen["unified_default_mode"] {
		tsa, tsaFromEnv = os.Getenv(envTargetSessionAttrs), true
	}
	c.modeGiven = !tsaFromEnv || tsa != ""
	if tsa != "" {
		m, ok := targetSessionAttrsMode(tsa)
		if !ok {
			from := ""
			if tsaFromEnv {
				from = " (from " + envTargetSessionAttrs + ")"
			}
			return nil, fmt.Errorf("unified: invalid %s %q%s: must be read-write, primary, any, read-only, standby or prefer-standby",
				keyTargetSessionAttrs, tsa, from)
		}
		if !seen["unified_default_mode"] {
			c.DefaultMode = m
		}
	}
	if err := checkPorts(sp.Ports, sp.Secrets); err != nil {
		return nil, err
	}

	// target_session_attrs=any keeps pgx from applying (or rejecting) one
	// from the environment or a service file: the default mode took it.
	pc, err := pgx.ParseConfig(dsn.AppendParams(sp.Rest, []dsn.Pair{{Key: keyTargetSessionAttrs, Value: "any"}}))
	if err != nil {
		return nil, pgxError(err, sp.Secrets)
	}
	pc.ValidateConnect = nil
	c.connString = sp.Rest
	c.pgx = pc
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// validate checks a Config made by ParseConfig, possibly modified since,
// with the rules ParseConfig applies to the DSN. NewConnector calls it.
func (c *Config) validate() error {
	if c.pgx == nil {
		return errors.New("unified: config not created by ParseConfig")
	}
	for _, p := range params {
		if !p.ok(c) {
			return fmt.Errorf("unified: invalid %s %q (Config.%s): %s", p.key, redactURLs(p.get(c)), p.field, p.rule)
		}
	}
	_, err := nodeGroups(c.pgx)
	return err
}

// Copy returns a deep copy of c that is safe to modify (pgx's
// ConnConfig.Copy: TLS configs are cloned).
func (c *Config) Copy() *Config {
	cp := *c
	if c.pgx != nil {
		cp.pgx = c.pgx.Copy()
	}
	cp.Patroni = slices.Clone(c.Patroni)
	return &cp
}

// FormatDSN returns a DSN that ParseConfig turns back into a Config equal
// to c, in the environment c was parsed in (pgx reads PG* variables and
// .pgpass for the connection string): the connection string as written
// (without unified_* and target_session_attrs), followed by every unified_*
// setting that differs from its default, in the order ParseConfig
// documents, in the DSN's own syntax. It depends on c alone, never on the
// environment, so equal Configs format alike anywhere ([Register] compares
// them so). DefaultMode is written as unified_default_mode (never as
// target_session_attrs), and written even when it is read-write if the
// parsed DSN or PGTARGETSESSIONATTRS decided it, so that the variable
// cannot change it when the result is parsed. The result contains the
// password if the DSN did: treat it as a secret; use [Config.String] to
// log a Config.
func (c *Config) FormatDSN() string {
	def := defaultConfig()
	var pairs []dsn.Pair
	for _, p := range params {
		v := p.get(c)
		if v != p.get(&def) || (p.key == "unified_default_mode" && c.modeGiven) {
			pairs = append(pairs, dsn.Pair{Key: p.key, Value: v})
		}
	}
	return dsn.AppendParams(c.connString, pairs)
}

// String describes c on one line for logs: hosts, user, database and
// every unified_* setting. It never contains the password: neither the
// connection string nor pgx's runtime parameters are printed, and a host,
// user or database name that contains the password is shown as
// "[redacted]". String has a value receiver so that printing a Config
// value with %v or %+v cannot print its fields either.
func (c Config) String() string {
	password := ""
	if c.pgx != nil {
		password = c.pgx.Password
	}
	show := func(s string) string {
		if password != "" && strings.Contains(s, password) {
			return "[redacted]"
		}
		if s == "" || strings.ContainsAny(s, " \t\n\r\v\f\"") {
			return strconv.Quote(s)
		}
		return s
	}
	var b strings.Builder
	b.WriteString("unified: hosts=[")
	if c.pgx != nil {
		groups, _ := nodeGroups(c.pgx)
		for i, g := range groups {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(show(g.name))
		}
		b.WriteString("] user=")
		b.WriteString(show(c.pgx.User))
		b.WriteString(" database=")
		b.WriteString(show(c.pgx.Database))
	} else {
		b.WriteString("] (config not created by ParseConfig)")
	}
	for _, p := range params {
		b.WriteByte(' ')
		b.WriteString(strings.TrimPrefix(p.key, "unified_"))
		b.WriteByte('=')
		b.WriteString(p.get(&c))
	}
	return b.String()
}

// GoString is String, so that %#v does not print the connection string.
func (c Config) GoString() string { return c.String() }

// Nodes returns one NodeConfig per host of the DSN, in DSN order, each with
// its own deep copy of the connection settings. It returns nil for a Config
// not made by ParseConfig.
func (c *Config) Nodes() []NodeConfig {
	if c.pgx == nil {
		return nil
	}
	groups, err := nodeGroups(c.pgx)
	if err != nil {
		return nil
	}
	nodes := make([]NodeConfig, len(groups))
	for i, g := range groups {
		cc := c.pgx.Copy()
		first := g.variants[0]
		cc.Host, cc.Port, cc.TLSConfig = first.Host, first.Port, first.TLSConfig.Clone()
		cc.Fallbacks = make([]*pgconn.FallbackConfig, 0, len(g.variants)-1)
		for _, v := range g.variants[1:] {
			cc.Fallbacks = append(cc.Fallbacks, &pgconn.FallbackConfig{Host: v.Host, Port: v.Port, TLSConfig: v.TLSConfig.Clone()})
		}
		cc.ValidateConnect = nil
		nodes[i] = NodeConfig{Name: g.name, ConnConfig: cc}
	}
	return nodes
}

// nodeGroup is one host:port of a pgx config with its TLS variants.
type nodeGroup struct {
	name     string
	variants []pgconn.FallbackConfig
}

// nodeGroups splits pgx's flat list of connection attempts (Host/Port then
// Fallbacks) into hosts. pgx lists each host once per TLS variant, the
// variants of one host consecutive and differing in whether TLS is used
// (sslmode=prefer: TLS then plain; allow: plain then TLS). So a variant
// joins the previous host when host, port match and its TLS use is not
// already in that host; otherwise it starts a host, and a host:port seen
// before is an error.
func nodeGroups(pc *pgx.ConnConfig) ([]nodeGroup, error) {
	all := make([]pgconn.FallbackConfig, 0, 1+len(pc.Fallbacks))
	all = append(all, pgconn.FallbackConfig{Host: pc.Host, Port: pc.Port, TLSConfig: pc.TLSConfig})
	for _, f := range pc.Fallbacks {
		all = append(all, *f)
	}
	var groups []nodeGroup
	seen := make(map[string]bool)
	for _, v := range all {
		if n := len(groups); n > 0 {
			last := &groups[n-1]
			lv := last.variants[0]
			if lv.Host == v.Host && lv.Port == v.Port && !hasTLSUse(last.variants, v.TLSConfig != nil) {
				last.variants = append(last.variants, v)
				continue
			}
		}
		name := nodeName(v.Host, v.Port)
		if seen[name] {
			return nil, fmt.Errorf("unified: invalid host list: host %q given twice", name)
		}
		seen[name] = true
		groups = append(groups, nodeGroup{name: name, variants: []pgconn.FallbackConfig{v}})
	}
	return groups, nil
}

func hasTLSUse(vs []pgconn.FallbackConfig, tls bool) bool {
	for _, v := range vs {
		if (v.TLSConfig != nil) == tls {
			return true
		}
	}
	return false
}

// nodeName is "host:port"; for a Unix socket directory (pgx: a host that
// is an absolute path) it is the directory, a colon and the port.
func nodeName(host string, port uint16) string {
	p := strconv.Itoa(int(port))
	if network, _ := pgconn.NetworkAddress(host, port); network == "unix" {
		return host + ":" + p
	}
	return net.JoinHostPort(host, p)
}

// strippedKey reports whether key is taken out of the DSN before pgx sees
// it. Keys are case-sensitive, but UNIFIED_X is taken too, to be rejected as
// unknown rather than sent to the server as a run-time parameter.
func strippedKey(key string) bool {
	return key == keyTargetSessionAttrs ||
		(len(key) >= len("unified_") && strings.EqualFold(key[:len("unified_")], "unified_"))
}
