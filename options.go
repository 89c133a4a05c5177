package unified

import (
	"context"
	"database/sql/driver"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Option configures what a DSN cannot hold. Options are applied by
// [NewConnector], [OpenDB] and [Register].
type Option func(*options) error

type options struct {
	meterProvider  metric.MeterProvider // nil: the global provider
	tracerProvider trace.TracerProvider // nil: no traces
	traceSQL       bool                 // record SQL text in spans
	logger         *slog.Logger
	nodeConnectors map[string]driver.Connector
	staticPrimary  string
	static         bool
	lookup         func(ctx context.Context, host string) ([]string, error)
	beforeConnect  func(ctx context.Context, cfg *pgx.ConnConfig) error
}

func buildOptions(opts []Option) (options, error) {
	var o options
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return options{}, err
		}
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// WithLogger sets the logger for topology changes, failovers, node state
// and breaker transitions. Default: discard. Passwords are never logged.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		o.logger = l
		return nil
	}
}

// WithNodeConnector makes the node named name ("host:port" as listed in the
// DSN, see [Config.Nodes]) use c for its physical connections instead of
// pgx. Any database/sql driver's Connector works (go-sqlmock in tests, a
// pgx connector with hooks). The health monitor probes through c as well,
// unless [WithStaticPrimary] is given. A name that is not a node of the
// Config is an error at NewConnector.
//
// A read that falls back to the primary must not write, whatever the
// driver: a read connection opened through c to the primary runs
// "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY" right after the
// dial, unless c is a [ReadOnlyConnector], which opens such sessions its
// own way.
func WithNodeConnector(name string, c driver.Connector) Option {
	return func(o *options) error {
		if c == nil {
			return fmt.Errorf("unified: WithNodeConnector %q: nil connector", name)
		}
		if o.nodeConnectors == nil {
			o.nodeConnectors = make(map[string]driver.Connector)
		}
		o.nodeConnectors[name] = c
		return nil
	}
}

// ReadOnlyConnector is a node connector (see [WithNodeConnector]) that
// opens read-only sessions itself, for example a pgx connector whose
// config sets default_transaction_read_only=on. unified uses
// ConnectReadOnly for every read connection to the node and sends nothing
// of its own on it.
type ReadOnlyConnector interface {
	driver.Connector
	ConnectReadOnly(ctx context.Context) (driver.Conn, error)
}

// readOnlyConnector adapts a ReadOnlyConnector's ConnectReadOnly to a
// driver.Connector.
type readOnlyConnector struct{ ReadOnlyConnector }

func (r readOnlyConnector) Connect(ctx context.Context) (driver.Conn, error) {
	return r.ConnectReadOnly(ctx)
}

// WithStaticPrimary fixes the roles instead of discovering them: the node
// named name is the primary and every other node a healthy replica with no
// lag. No health probe is ever sent, so no background query reaches a node.
// It is meant for tests with mocked nodes (package unifiedtest uses it) and
// for setups where roles are managed outside the database. Failover is off
// in this mode. A name that is not a node of the Config is an error at
// NewConnector.
func WithStaticPrimary(name string) Option {
	return func(o *options) error {
		o.static = true
		o.staticPrimary = name
		return nil
	}
}

// WithBeforeConnect sets a function called before every physical and
// every health-probe connection to a node, with a shallow copy of the pgx
// configuration that connection will use: set its Password (or any other
// field) to rotate credentials without reopening the *sql.DB (Vault, cloud
// IAM tokens). It runs on the dialing goroutine, within the dial's context;
// it must be safe for concurrent use.
//
// A hook that returns an error fails that dial with it (wrapped in a
// *NodeError for the node). It does not count against the node's circuit
// breaker (the node did nothing wrong) unless the error wraps
// [ErrNodeFault]. The password the hook set is replaced by "xxxxx" in the
// error's message. Hosts with a WithNodeConnector connector do not call it.
func WithBeforeConnect(hook func(ctx context.Context, cfg *pgx.ConnConfig) error) Option {
	return func(o *options) error {
		if hook == nil {
			return fmt.Errorf("unified: WithBeforeConnect: nil function")
		}
		o.beforeConnect = hook
		return nil
	}
}

// WithLookupFunc sets how the DSN's host names are resolved into nodes
// (default: net.DefaultResolver.LookupHost). Every address a name resolves
// to is a node of its own, named "host/address:port"; IP addresses, Unix
// sockets and hosts with a WithNodeConnector connector are not resolved.
// For service discovery that is not DNS, and for tests.
func WithLookupFunc(lookup func(ctx context.Context, host string) (addrs []string, err error)) Option {
	return func(o *options) error {
		if lookup == nil {
			return fmt.Errorf("unified: WithLookupFunc: nil function")
		}
		o.lookup = lookup
		return nil
	}
}

// WithMeterProvider sets the OpenTelemetry MeterProvider for the driver's
// metrics. Default: the global provider (otel.GetMeterProvider()), which
// records nothing until the application installs one.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) error {
		o.meterProvider = mp
		return nil
	}
}

// WithTracerProvider turns on tracing: one client span per statement and
// transaction operation. Default: off (no spans at all, not even through the
// global provider).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) error {
		o.tracerProvider = tp
		return nil
	}
}

// WithSQLInSpans records the SQL text of each statement in its span
// (db.query.text). Off by default; parameters are never recorded.
func WithSQLInSpans() Option {
	return func(o *options) error {
		o.traceSQL = true
		return nil
	}
}
