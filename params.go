package unified

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// This file is the table of the unified_* DSN parameters: their defaults,
// how each is parsed into a Config field and written back (one table drives
// both directions, and the fuzz seeds), and the enums they take.

// ReadFallback says what a ReadOnly statement does when no replica is
// eligible (DSN: unified_read_fallback). The zero value is not a valid
// setting: [ParseConfig] sets FallbackPrimary unless the DSN says otherwise.
type ReadFallback int

const (
	// FallbackPrimary runs the read on the primary, still read-only
	// (DSN spelling "primary", the default).
	FallbackPrimary ReadFallback = iota + 1
	// FallbackError fails the read with ErrNoReplica (DSN spelling "error").
	FallbackError
)

var readFallbackNames = spellings[ReadFallback]{
	FallbackPrimary: "primary",
	FallbackError:   "error",
}

// String returns the DSN spelling ("primary", "error"), or
// "ReadFallback(n)" for a value outside the enum.
func (f ReadFallback) String() string { return readFallbackNames.format(f, "ReadFallback") }

func (f ReadFallback) valid() bool { return readFallbackNames.valid(f) }

// ReplicaPolicy chooses among eligible replicas (DSN: unified_replica_policy).
// The zero value is not a valid setting: [ParseConfig] sets PolicyRoundRobin
// unless the DSN says otherwise.
type ReplicaPolicy int

const (
	// PolicyRoundRobin cycles through the eligible replicas (DSN spelling
	// "round-robin", the default).
	PolicyRoundRobin ReplicaPolicy = iota + 1
	// PolicyRandom picks an eligible replica at random (DSN spelling
	// "random").
	PolicyRandom
	// PolicyLeastRTT picks, round robin, among the near eligible
	// replicas: those whose smoothed probe RTT is within twice the
	// fastest's plus a millisecond. A read session on a replica that is
	// not near (its link became slow, or a read ran there again because it
	// failed on a near one) moves to a near one at its next statement
	// outside a transaction (DSN spelling "least-rtt").
	PolicyLeastRTT
	// PolicyLeastLoaded picks, of two eligible replicas chosen at random,
	// the one with fewer of this Connector's ReadOnly statements in flight,
	// ties by probe RTT: the power of two choices (DSN spelling
	// "least-loaded").
	PolicyLeastLoaded
)

var replicaPolicyNames = spellings[ReplicaPolicy]{
	PolicyRoundRobin:  "round-robin",
	PolicyRandom:      "random",
	PolicyLeastRTT:    "least-rtt",
	PolicyLeastLoaded: "least-loaded",
}

// String returns the DSN spelling ("round-robin", "random", "least-rtt",
// "least-loaded"),
// or "ReplicaPolicy(n)" for a value outside the enum.
func (p ReplicaPolicy) String() string { return replicaPolicyNames.format(p, "ReplicaPolicy") }

func (p ReplicaPolicy) valid() bool { return replicaPolicyNames.valid(p) }

// spellings is the DSN spelling of each value of an enum whose values
// start at 1 (the zero value is "not set"): Mode, ReadFallback and
// ReplicaPolicy.
type spellings[E ~int] []string

func (s spellings[E]) valid(e E) bool { return e > 0 && int(e) < len(s) }

// format returns e's spelling, or "typ(n)" for a value outside the enum.
func (s spellings[E]) format(e E, typ string) string {
	if s.valid(e) {
		return s[e]
	}
	return fmt.Sprintf("%s(%d)", typ, int(e))
}

// parse is the inverse of format.
func (s spellings[E]) parse(word string) (E, bool) {
	for e := E(1); int(e) < len(s); e++ {
		if s[e] == word {
			return e, true
		}
	}
	return 0, false
}

// rule is what a valid value is: "must be a, b or c".
func (s spellings[E]) rule() string {
	words := s[1:]
	if len(words) == 1 {
		return "must be " + words[0]
	}
	return "must be " + strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// defaultConfig returns the settings a DSN without unified_* parameters
// gets.
func defaultConfig() Config {
	return Config{
		DefaultMode:         ReadWrite,
		ReadFallback:        FallbackPrimary,
		ReplicaPolicy:       PolicyRoundRobin,
		MaxReplicaLag:       10 * time.Second,
		MaxReplicaLagBytes:  16 << 20,
		HealthInterval:      time.Second,
		HealthTimeout:       500 * time.Millisecond,
		FailoverTimeout:     30 * time.Second,
		RetryMax:            3,
		RetryBackoffInitial: 50 * time.Millisecond,
		RetryBackoffMax:     time.Second,
		BreakerFailures:     5,
		WarmSpares:          1,
		BreakerOpen:         5 * time.Second,
		DNSRefresh:          30 * time.Second,
	}
}

// param is one unified_* DSN parameter: how it is read, written and
// checked. The params slice fixes the order FormatDSN and String use.
type param struct {
	key   string // DSN key
	field string // Config field(s), named in errors about modified Configs
	rule  string // what a valid value is, for error messages
	// set stores the DSN value v in c and reports whether v is valid
	// syntax; ok then checks the range.
	set func(c *Config, v string) bool
	// get is the canonical DSN spelling of c's value.
	get func(c *Config) string
	ok  func(c *Config) bool
}

// Floors of the durations that pace a loop or a wait, where a tiny value
// (a typo: 1ns for 1s) would spin a core or defeat the mechanism: the
// monitor probes every node each health interval; a probe timeout below a
// millisecond fails every probe; a breaker open for less than the floor
// sheds no load; a retry backoff below it does not wait.
const (
	minHealthInterval = 10 * time.Millisecond
	minHealthTimeout  = time.Millisecond
	minBreakerOpen    = 10 * time.Millisecond
	minRetryBackoff   = time.Millisecond
	minDNSRefresh     = time.Second
)

// durationParam is a duration parameter that must be at least minimum
// (0: any duration >= 0).
func durationParam(key, field string, p func(*Config) *time.Duration, minimum time.Duration) param {
	rule := `must be a Go duration >= 0, such as "0s" or "1m30s" (a plain number is not a duration)`
	if minimum > 0 {
		rule = fmt.Sprintf(`must be a Go duration of at least %s, such as "500ms" or "1m30s" (a plain number is not a duration)`, minimum)
	}
	return param{
		key: key, field: field, rule: rule,
		set: func(c *Config, v string) bool {
			d, err := time.ParseDuration(v)
			*p(c) = d
			return err == nil
		},
		get: func(c *Config) string { return p(c).String() },
		ok:  func(c *Config) bool { return *p(c) >= minimum },
	}
}

// enumParam is the param of an enum field spelled by names.
func enumParam[E interface {
	~int
	fmt.Stringer
}](key, field string, names spellings[E], p func(*Config) *E) param {
	return param{
		key: key, field: field, rule: names.rule(),
		set: func(c *Config, v string) bool {
			e, ok := names.parse(v)
			*p(c) = e
			return ok
		},
		get: func(c *Config) string { return (*p(c)).String() },
		ok:  func(c *Config) bool { return names.valid(*p(c)) },
	}
}

func intParam(key, field string, p func(*Config) *int, minimum int) param {
	return param{
		key: key, field: field, rule: fmt.Sprintf("must be an integer >= %d", minimum),
		set: func(c *Config, v string) bool {
			n, err := strconv.Atoi(v)
			*p(c) = n
			return err == nil
		},
		get: func(c *Config) string { return strconv.Itoa(*p(c)) },
		ok:  func(c *Config) bool { return *p(c) >= minimum },
	}
}

var params = []param{
	enumParam("unified_default_mode", "DefaultMode", modeNames, func(c *Config) *Mode { return &c.DefaultMode }),
	enumParam("unified_read_fallback", "ReadFallback", readFallbackNames, func(c *Config) *ReadFallback { return &c.ReadFallback }),
	enumParam("unified_replica_policy", "ReplicaPolicy", replicaPolicyNames, func(c *Config) *ReplicaPolicy { return &c.ReplicaPolicy }),
	durationParam("unified_max_replica_lag", "MaxReplicaLag",
		func(c *Config) *time.Duration { return &c.MaxReplicaLag }, 0),
	{
		key: "unified_max_replica_lag_bytes", field: "MaxReplicaLagBytes",
		rule: "must be an integer >= 0 (WAL bytes)",
		set: func(c *Config, v string) bool {
			n, err := strconv.ParseUint(v, 10, 64)
			c.MaxReplicaLagBytes = n
			return err == nil
		},
		get: func(c *Config) string { return strconv.FormatUint(c.MaxReplicaLagBytes, 10) },
		ok:  func(*Config) bool { return true },
	},
	durationParam("unified_health_interval", "HealthInterval",
		func(c *Config) *time.Duration { return &c.HealthInterval }, minHealthInterval),
	durationParam("unified_health_timeout", "HealthTimeout",
		func(c *Config) *time.Duration { return &c.HealthTimeout }, minHealthTimeout),
	durationParam("unified_failover_timeout", "FailoverTimeout",
		func(c *Config) *time.Duration { return &c.FailoverTimeout }, 0),
	intParam("unified_retry_max", "RetryMax", func(c *Config) *int { return &c.RetryMax }, 1),
	{
		key: "unified_retry_backoff", field: "RetryBackoffInitial, RetryBackoffMax",
		rule: fmt.Sprintf(`must be initial..max, two Go durations with %s <= initial <= max, such as "50ms..1s"`, minRetryBackoff),
		set: func(c *Config, v string) bool {
			lo, hi, found := strings.Cut(v, "..")
			if !found {
				return false
			}
			var err1, err2 error
			c.RetryBackoffInitial, err1 = time.ParseDuration(lo)
			c.RetryBackoffMax, err2 = time.ParseDuration(hi)
			return err1 == nil && err2 == nil
		},
		get: func(c *Config) string {
			return c.RetryBackoffInitial.String() + ".." + c.RetryBackoffMax.String()
		},
		ok: func(c *Config) bool {
			return c.RetryBackoffInitial >= minRetryBackoff && c.RetryBackoffInitial <= c.RetryBackoffMax
		},
	},
	{
		key: "unified_breaker_failures", field: "BreakerFailures",
		rule: "must be an integer between 1 and 4294967295",
		set: func(c *Config, v string) bool {
			n, err := strconv.ParseUint(v, 10, 32)
			c.BreakerFailures = uint32(n)
			return err == nil
		},
		get: func(c *Config) string { return strconv.FormatUint(uint64(c.BreakerFailures), 10) },
		ok:  func(c *Config) bool { return c.BreakerFailures >= 1 },
	},
	durationParam("unified_breaker_open", "BreakerOpen",
		func(c *Config) *time.Duration { return &c.BreakerOpen }, minBreakerOpen),
	intParam("unified_max_batch_conns", "MaxBatchConns", func(c *Config) *int { return &c.MaxBatchConns }, 0),
	intParam("unified_warm_spares", "WarmSpares", func(c *Config) *int { return &c.WarmSpares }, 0),
	intParam("unified_max_open_conns", "MaxOpenConns", func(c *Config) *int { return &c.MaxOpenConns }, 0),
	intParam("unified_max_idle_conns", "MaxIdleConns", func(c *Config) *int { return &c.MaxIdleConns }, 0),
	durationParam("unified_conn_max_lifetime", "ConnMaxLifetime",
		func(c *Config) *time.Duration { return &c.ConnMaxLifetime }, 0),
	durationParam("unified_conn_max_idle_time", "ConnMaxIdleTime",
		func(c *Config) *time.Duration { return &c.ConnMaxIdleTime }, 0),
	{
		key: "unified_dns_refresh", field: "DNSRefresh",
		rule: fmt.Sprintf(`must be 0 (resolve once) or a Go duration of at least %s, such as "30s"`, minDNSRefresh),
		set: func(c *Config, v string) bool {
			d, err := time.ParseDuration(v)
			c.DNSRefresh = d
			return err == nil
		},
		get: func(c *Config) string { return c.DNSRefresh.String() },
		ok:  func(c *Config) bool { return c.DNSRefresh == 0 || c.DNSRefresh >= minDNSRefresh },
	},
	{
		key: "unified_patroni", field: "Patroni",
		rule: `must be comma-separated http:// or https:// URLs of Patroni's REST API, such as "http://db1:8008,http://db2:8008"`,
		set: func(c *Config, v string) bool {
			c.Patroni = nil
			for _, u := range strings.Split(v, ",") {
				if u = strings.TrimSpace(u); u != "" {
					c.Patroni = append(c.Patroni, strings.TrimRight(u, "/"))
				}
			}
			return true
		},
		get: func(c *Config) string { return strings.Join(c.Patroni, ",") },
		ok: func(c *Config) bool {
			for _, u := range c.Patroni {
				if !validRESTURL(u) {
					return false
				}
			}
			return true
		},
	},
}

// redactURLs hides the user information of the URLs in a value: all from
// the first scheme (or the start) to the last "@" becomes "xxxxx", so that
// an error never echoes a password, also one with a comma in it or in a URL
// written without a scheme. A value without "@" is returned as it is.
func redactURLs(v string) string {
	at := strings.LastIndexByte(v, '@')
	if at < 0 {
		return v
	}
	if scheme := strings.Index(v, "://"); scheme >= 0 && scheme < at {
		return v[:scheme+3] + "xxxxx" + v[at:]
	}
	return "xxxxx" + v[at:]
}

// validRESTURL reports whether u is an absolute http or https URL with a
// host and no user information (credentials would end up in logs).
func validRESTURL(u string) bool {
	p, err := url.Parse(u)
	return err == nil && (p.Scheme == "http" || p.Scheme == "https") && p.Host != "" && p.User == nil
}

func lookupParam(key string) (param, bool) {
	for _, p := range params {
		if p.key == key {
			return p, true
		}
	}
	return param{}, false
}

const (
	keyTargetSessionAttrs = "target_session_attrs"
	envTargetSessionAttrs = "PGTARGETSESSIONATTRS"
)

// targetSessionAttrsMode maps a libpq target_session_attrs value to the
// default mode it asks for.
func targetSessionAttrsMode(v string) (Mode, bool) {
	switch v {
	case "read-write", "primary", "any":
		return ReadWrite, true
	case "read-only", "standby", "prefer-standby":
		return ReadOnly, true
	}
	return 0, false
}

// pgxError rewords an error from pgx.ParseConfig without the connection
// string pgx quotes (its redaction is best effort), and withholds it
// entirely if it would still contain one of secrets.
func pgxError(err error, secrets []string) error {
	msg := err.Error()
	if pce, ok := errors.AsType[*pgconn.ParseConfigError](err); ok {
		bare := *pce
		bare.ConnString = ""
		msg = strings.TrimPrefix(bare.Error(), "cannot parse ``: ")
	}
	if revealsSecret(msg, secrets) {
		return errors.New("unified: invalid connection string (details withheld: they would reveal the password)")
	}
	return fmt.Errorf("unified: invalid connection string: %s", msg)
}

func revealsSecret(s string, secrets []string) bool {
	for _, secret := range secrets {
		if secret != "" && strings.Contains(s, secret) {
			return true
		}
	}
	return false
}

// checkPorts checks the port list a DSN gives pgx (dsn.Parts.Ports) before
// pgx does, so that a port out of range is named with its value: pgx's
// "invalid port" names neither. It judges only ports written as digits;
// other text is left to pgx, whose error does not quote it. A port that
// holds a secret is not quoted either: in a URL whose password holds a '/',
// libpq's syntax puts part of the password in the port position, and
// dsn.Split counts such ports among the secrets.
func checkPorts(ports, secrets []string) error {
	for _, p := range ports {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			continue // the default port, or not a number
		}
		if n, err := strconv.ParseUint(p, 10, 16); err == nil && n > 0 {
			continue
		}
		if revealsSecret(p, secrets) {
			return errors.New("unified: invalid port (value withheld: it would reveal the password): " + rulePort)
		}
		return fmt.Errorf("unified: invalid port %q: %s", p, rulePort)
	}
	return nil
}

const rulePort = "must be an integer 1..65535"
