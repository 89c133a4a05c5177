package unified

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/unifiedsql/unified/internal/cowmap"
	"github.com/unifiedsql/unified/internal/sqlop"
	"github.com/unifiedsql/unified/internal/topology"
)

// instrumentationName names the meter and the tracer.
const instrumentationName = "github.com/unifiedsql/unified"

// maxOpSets bounds the cached attribute sets of db.client.operation.duration,
// so that a stream of distinct SQLSTATEs cannot grow the cache without limit
// (beyond it the attribute set is built per operation, which allocates).
// Operation names are bounded by sqlop.Names.
const maxOpSets = 1024

// otherValue is the semantic conventions' value for "none of the known
// ones" (error.type, and db.operation.name beyond the cap).
const otherValue = sqlop.Other // the same string

// Attribute keys of the project's own attributes.
const (
	keyMode        = attribute.Key("unified.mode")
	keyRole        = attribute.Key("unified.role")
	keyNode        = attribute.Key("unified.node")
	keyRetryReason = attribute.Key("unified.retry.reason")
	keyWaitSeconds = attribute.Key("unified.failover_wait.duration")
	keySessionWhy  = attribute.Key("unified.session.reason")
)

// Bucket boundaries in seconds: the semantic conventions' advice for
// db.client.operation.duration, and a range for failovers (detection takes
// a probe interval or a statement error, promotion seconds).
var (
	operationBuckets = []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10}
	failoverBuckets  = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
)

// telemetry records the driver's metrics and, when a TracerProvider is set,
// its spans. It is safe for concurrent use. When the MeterProvider records
// nothing (the global provider before the application installs an SDK, or
// a no-op provider) and tracing is off, an operation costs one
// Enabled check and allocates nothing.
type telemetry struct {
	c *Connector

	duration       metric.Float64Histogram // db.client.operation.duration
	retries        metric.Int64Counter
	fallbacks      metric.Int64Counter
	commitUnknowns metric.Int64Counter
	failovers      metric.Int64Counter
	failoverTime   metric.Float64Histogram
	sessionReads   metric.Int64Counter
	discoveryErrs  metric.Int64Counter
	floorWait      metric.Float64Histogram

	conns    metric.Int64Observable // db.client.connection.count, an up-down counter; the others gauges
	nodeUp   metric.Int64Observable
	nodeRole metric.Int64Observable
	lag      metric.Float64ObservableGauge
	lagBytes metric.Int64Observable
	rtt      metric.Float64ObservableGauge
	breaker  metric.Int64Observable
	reg      metric.Registration

	tracer   trace.Tracer // nil: tracing off
	traceSQL bool

	common      []attribute.KeyValue // db.system.name, db.namespace
	retryOpts   [numRetryReasons][]metric.AddOption
	sessionOpts [numSessionReasons][2][]metric.AddOption // by reason, then 0 replica, 1 primary
	names       *sqlop.Names
	opSets      *cowmap.Map[opKey, []metric.RecordOption]
	closeOnce   sync.Once
	roleAttrs   [numSlots][]attribute.KeyValue // unified.role, by slot

	// counts are the Stats counters: the same events as the counters of
	// the same names above, counted whether metrics are on or not.
	counts counts
}

// nodeTelemetry is one node's attributes and physical connection counts.
type nodeTelemetry struct {
	attrs   []attribute.KeyValue // server.address, server.port, unified.node
	observe metric.ObserveOption
	add     []metric.AddOption
	// conn[primary][used] are db.client.connection.count's options: the
	// node's role at collection time (1: primary) and the state (1: used).
	conn [2][2]metric.ObserveOption

	open atomic.Int64 // physical connections open (probe connections excluded)
	used atomic.Int64 // of which a statement or transaction is running on
}

// initNode sets n's attributes and instrument options: server.address and
// server.port (the DSN's host and port), unified.node (the node's name) and,
// for an address a host name resolved to, network.peer.address.
func (t *telemetry) initNode(n *node) {
	nt := &n.tel
	nt.attrs = []attribute.KeyValue{
		semconv.ServerAddressKey.String(n.host),
		semconv.ServerPortKey.Int(n.port),
		keyNode.String(n.name),
	}
	if n.addr != "" {
		nt.attrs = append(nt.attrs, semconv.NetworkPeerAddressKey.String(n.addr))
	}
	set := attribute.NewSet(nt.attrs...)
	nt.observe = metric.WithAttributeSet(set)
	nt.add = []metric.AddOption{metric.WithAttributeSet(set)}
	for p, role := range [...]string{"replica", "primary"} {
		for u, state := range [...]attribute.KeyValue{semconv.DBClientConnectionStateIdle, semconv.DBClientConnectionStateUsed} {
			kv := append(append([]attribute.KeyValue{}, nt.attrs...),
				semconv.DBClientConnectionPoolNameKey.String(n.name), state, keyRole.String(role))
			nt.conn[p][u] = metric.WithAttributeSet(attribute.NewSet(kv...))
		}
	}
}

func newTelemetry(c *Connector, o options) (*telemetry, error) {
	t := &telemetry{c: c, traceSQL: o.traceSQL, names: sqlop.NewNames(),
		opSets: cowmap.New[opKey, []metric.RecordOption](maxOpSets)}
	t.common = []attribute.KeyValue{semconv.DBSystemNamePostgreSQL}
	if c.cfg.pgx != nil && c.cfg.pgx.Database != "" {
		t.common = append(t.common, semconv.DBNamespaceKey.String(c.cfg.pgx.Database))
	}
	for sl := range numSlots {
		t.roleAttrs[sl] = []attribute.KeyValue{keyRole.String(sl.String())}
	}

	for why := range numSessionReasons {
		for p, role := range [...]string{"replica", "primary"} {
			t.sessionOpts[why][p] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(keyRole.String(role), keySessionWhy.String(why.String())))}
		}
	}
	for reason := retryNotSent; reason < numRetryReasons; reason++ {
		t.retryOpts[reason] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(keyRetryReason.String(reason.String())))}
	}

	if o.tracerProvider != nil {
		t.tracer = o.tracerProvider.Tracer(instrumentationName, trace.WithSchemaURL(semconv.SchemaURL))
	}
	mp := o.meterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if err := t.instruments(mp.Meter(instrumentationName, metric.WithSchemaURL(semconv.SchemaURL))); err != nil {
		return nil, fmt.Errorf("unified: telemetry: %w", err)
	}
	return t, nil
}

// instruments creates the instruments and registers the one callback that
// observes the asynchronous ones.
func (t *telemetry) instruments(m metric.Meter) error {
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	hists := []struct {
		dst              *metric.Float64Histogram
		name, unit, desc string
		bounds           []float64
	}{
		{&t.duration, "db.client.operation.duration", "s", "Duration of database client operations.", operationBuckets},
		{&t.floorWait, "unified.session.floor_wait", "s", "Time a session read spent looking at a replica's replay position before it ran.", operationBuckets},
		{&t.failoverTime, "unified.failover.duration", "s", "Time from the loss of the primary to the new primary being in use.", failoverBuckets},
	}
	for _, h := range hists {
		var err error
		*h.dst, err = m.Float64Histogram(h.name, metric.WithUnit(h.unit), metric.WithDescription(h.desc),
			metric.WithExplicitBucketBoundaries(h.bounds...))
		check(err)
	}
	counters := []struct {
		dst              *metric.Int64Counter
		name, unit, desc string
	}{
		{&t.sessionReads, "unified.session.read", "{operation}", "ReadOnly operations with a session floor, by where they ran (unified.role) and why (unified.session.reason)."},
		{&t.discoveryErrs, "unified.discovery.errors", "{error}", "Host names that did not resolve, and reads of Patroni's member list that failed; the last known members are kept."},
		{&t.retries, "unified.retry.count", "{retry}", "Attempts made again: operations re-sent after a failure that provably did not reach the server, reads re-run on another node, and each look again for a new primary by a waiting write."},
		{&t.fallbacks, "unified.read.fallback", "{operation}", "Read-only operations served by the primary because no replica was eligible."},
		{&t.commitUnknowns, "unified.commit_unknown.count", "{operation}", "Operations that returned ErrCommitUnknown: the connection broke after a COMMIT or an autocommit write was sent."},
		{&t.failovers, "unified.failover.count", "{failover}", "Primary changes: a new node became the primary after the previous one was lost."},
	}
	for _, c := range counters {
		var err error
		*c.dst, err = m.Int64Counter(c.name, metric.WithUnit(c.unit), metric.WithDescription(c.desc))
		check(err)
	}
	// Asynchronous: observed by observe. An empty unit is none.
	ints := []struct {
		dst              *metric.Int64Observable
		name, unit, desc string
		updown           bool
	}{
		{&t.conns, "db.client.connection.count", "{connection}", "Physical connections per node, by state: used while a statement or transaction runs on it.", true},
		{&t.nodeUp, "unified.node.up", "", "1 when the node's last health probe succeeded, else 0.", false},
		{&t.nodeRole, "unified.node.role", "", "The node's role: 1 primary (writes go there), 2 replica, 3 fenced (claims primary, gets no writes), 0 unknown.", false},
		{&t.lagBytes, "unified.replica.lag_bytes", "By", "WAL bytes between the primary's position and the replica's replay position.", false},
		{&t.breaker, "unified.breaker.state", "", "The node's circuit breaker: 0 closed, 1 half-open, 2 open.", false},
	}
	for _, g := range ints {
		var err error
		if g.updown {
			*g.dst, err = m.Int64ObservableUpDownCounter(g.name, metric.WithUnit(g.unit), metric.WithDescription(g.desc))
		} else {
			*g.dst, err = m.Int64ObservableGauge(g.name, metric.WithUnit(g.unit), metric.WithDescription(g.desc))
		}
		check(err)
	}
	floats := []struct {
		dst              *metric.Float64ObservableGauge
		name, unit, desc string
	}{
		{&t.lag, "unified.replica.lag", "s", "How long ago the primary was at the replica's replay position."},
		{&t.rtt, "unified.node.rtt", "s", "Round-trip time of the node's last successful health probe."},
	}
	for _, g := range floats {
		var err error
		*g.dst, err = m.Float64ObservableGauge(g.name, metric.WithUnit(g.unit), metric.WithDescription(g.desc))
		check(err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var err error
	t.reg, err = m.RegisterCallback(t.observe, t.conns, t.nodeUp, t.nodeRole, t.lag, t.lagBytes, t.rtt, t.breaker)
	return err
}

// observe reports the asynchronous instruments from the current topology
// snapshot and the breakers. It runs on the metric reader's goroutine.
func (t *telemetry) observe(_ context.Context, o metric.Observer) error {
	v := t.c.viewNow()
	for i, n := range v.allNodes() {
		nt := &n.tel
		tn := &v.s.Nodes[i]
		reachable := tn.State != topology.StateDown && tn.State != topology.StateUnknown
		primary := v.s.Primary == i

		o.ObserveInt64(t.nodeUp, b2i(reachable), nt.observe)
		o.ObserveInt64(t.nodeRole, nodeRoleValue(tn, primary), nt.observe)
		o.ObserveInt64(t.breaker, breakerValue(n.breaker.state()), nt.observe)
		if reachable {
			o.ObserveFloat64(t.rtt, tn.RTT.Seconds(), nt.observe)
			if tn.Role == topology.RoleReplica {
				o.ObserveFloat64(t.lag, tn.Lag.Seconds(), nt.observe)
				o.ObserveInt64(t.lagBytes, int64(min(tn.LagBytes, 1<<63-1)), nt.observe)
			}
		}
		open, used := nt.open.Load(), nt.used.Load()
		used = min(max(used, 0), max(open, 0)) // the two loads are not one snapshot
		p := b2i(primary)
		o.ObserveInt64(t.conns, used, nt.conn[p][1])
		o.ObserveInt64(t.conns, max(open, 0)-used, nt.conn[p][0])
	}
	return nil
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func nodeRoleValue(n *topology.Node, primary bool) int64 {
	switch {
	case primary:
		return 1
	case n == nil:
		return 0
	case n.State == topology.StateFenced:
		return 3 // claims primary but lost the election
	case n.Role == topology.RoleReplica:
		return 2
	}
	return 0 // never probed, or a lost primary that has not answered since
}

func breakerValue(s gobreaker.State) int64 {
	switch s {
	case gobreaker.StateClosed:
		return 0
	case gobreaker.StateHalfOpen:
		return 1
	}
	return 2
}

// close unregisters the asynchronous instruments' callback. It is
// idempotent.
func (t *telemetry) close() error {
	var err error
	t.closeOnce.Do(func() {
		if t.reg != nil {
			err = t.reg.Unregister()
		}
	})
	return err
}

// failover records a completed failover: d from primary loss to new
// primary in use.
func (t *telemetry) failover(d time.Duration) {
	if t == nil {
		return
	}
	t.counts.failovers.Add(1)
	ctx := context.Background()
	t.failovers.Add(ctx, 1)
	t.failoverTime.Record(ctx, d.Seconds())
}

// commitUnknown counts an error returned wrapping ErrCommitUnknown, for n
// (nil: no node known).
func (t *telemetry) commitUnknown(n *node) {
	if t == nil {
		return
	}
	t.counts.commitUnknown.Add(1)
	var opts []metric.AddOption
	if n != nil {
		opts = n.tel.add
	}
	t.commitUnknowns.Add(context.Background(), 1, opts...)
}

// connCount moves n's physical connection counts: open (+1 at dial, -1 at
// close; probe connections are not counted) and used (+1 while a statement
// or a transaction runs on one, -1 after).
func (t *telemetry) connCount(n *node, open, used int64) {
	if t == nil || n == nil {
		return
	}
	nt := &n.tel
	if open != 0 {
		nt.open.Add(open)
	}
	if used != 0 {
		nt.used.Add(used)
	}
}

// counts are the Connector's Stats counters, kept by the telemetry that
// also exports them as metrics.
type counts struct {
	failovers     atomic.Uint64 // = unified.failover.count
	retries       atomic.Uint64 // = unified.retry.count
	commitUnknown atomic.Uint64 // = unified.commit_unknown.count
	readFallbacks atomic.Uint64 // = unified.read.fallback
	// sessionReads[0] replica, [1] primary: = unified.session.read
	sessionReads    [2]atomic.Uint64
	discoveryErrors atomic.Uint64 // = unified.discovery.errors
}

// discoveryError counts a failed lookup of a host name or of Patroni's
// member list.
func (t *telemetry) discoveryError() {
	if t == nil {
		return
	}
	t.counts.discoveryErrors.Add(1)
	t.discoveryErrs.Add(context.Background(), 1)
}
