package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/sony/gobreaker/v2"

	"github.com/unifiedsql/unified/internal/classify"
	"github.com/unifiedsql/unified/internal/sqlop"
)

// Operation names used in NodeError.Op.
const (
	opConnect  = "connect"
	opExec     = "exec"
	opQuery    = "query"
	opPrepare  = sqlop.Prepare
	opBegin    = sqlop.Begin
	opCommit   = sqlop.Commit
	opRollback = sqlop.Rollback
	opPing     = sqlop.Ping
	opProbe    = "probe"
)

// errLostAfterSend replaces driver.ErrBadConn when the connection broke
// after the request may have reached the server.
var errLostAfterSend = errors.New("connection lost after the request was sent")

// Outcomes fed to a node's breaker: only node faults count as failures;
// the caller's cancellation is excluded from the counts.
var (
	errNodeFault  = errors.New("node fault")
	errNotCounted = errors.New("not counted")
)

// breaker is a node's circuit breaker plus the last node fault, which an
// open breaker reports alongside ErrCircuitOpen.
//
// Statements, dials and health probes all count their connection-class
// failures here. Probes do not ask the breaker for permission (they have
// their own backoff, see monitor), and a probe that succeeds closes an open
// breaker at once by replacing it: a node that answers again, for example a
// replica just promoted, must not stay fenced off for unified_breaker_open.
type breaker struct {
	name    string
	set     gobreaker.Settings
	cb      atomic.Pointer[gobreaker.TwoStepCircuitBreaker[struct{}]]
	lastErr atomic.Pointer[error]
}

func newBreaker(cfg *Config, name string, log *slog.Logger) *breaker {
	b := &breaker{name: name}
	b.set = gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Timeout:     cfg.BreakerOpen,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= cfg.BreakerFailures
		},
		IsExcluded: func(err error) bool { return err == errNotCounted },
		// Runs under gobreaker's lock: it only records.
		OnStateChange: func(name string, from, to gobreaker.State) {
			log.Warn("unified: breaker changed", "node", name, "from", breakerName(from), "to", breakerName(to))
		},
	}
	b.cb.Store(gobreaker.NewTwoStepCircuitBreaker[struct{}](b.set))
	return b
}

func (b *breaker) state() gobreaker.State { return b.cb.Load().State() }

// allow asks the breaker for one request. When it is open the error wraps
// ErrCircuitOpen and the node's last fault.
func (b *breaker) allow(name string) (func(ctx context.Context, err error), error) {
	done, err := b.cb.Load().Allow()
	if err != nil {
		cause := err
		if last := b.lastErr.Load(); last != nil {
			cause = *last
		}
		return nil, &NodeError{Node: name, Op: opConnect, Err: fmt.Errorf("%w: %w", ErrCircuitOpen, cause)}
	}
	return func(ctx context.Context, err error) { done(b.outcome(ctx, err)) }, nil
}

// outcome maps a request's error to what the breaker should count.
func (b *breaker) outcome(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	switch cls := classify.Of(ctx, err); {
	case cls.NodeFault():
		b.lastErr.Store(&err)
		return errNodeFault
	case cls == classify.Canceled:
		return errNotCounted
	default:
		return nil // the node answered: SQL errors say it is alive
	}
}

// record counts a failure seen outside allow (a statement on an
// established connection, a probe).
func (b *breaker) record(ctx context.Context, err error) {
	if !classify.Of(ctx, err).NodeFault() {
		return
	}
	if done, aerr := b.cb.Load().Allow(); aerr == nil {
		done(b.outcome(ctx, err))
	} else {
		b.lastErr.Store(&err)
	}
}

// healthy is called when a probe of the node succeeded: an open or
// half-open breaker is replaced by a closed one.
func (b *breaker) healthy() {
	cur := b.cb.Load()
	if cur.State() == gobreaker.StateClosed {
		return
	}
	if b.cb.CompareAndSwap(cur, gobreaker.NewTwoStepCircuitBreaker[struct{}](b.set)) && b.set.OnStateChange != nil {
		b.set.OnStateChange(b.name, cur.State(), gobreaker.StateClosed)
	}
}

// breakerAllows reports whether node i's breaker lets new work through; the
// router skips nodes whose breaker is open.
func (c *Connector) breakerAllows(i int) bool {
	return c.nodes[i].breaker.state() != gobreaker.StateOpen
}

// run executes fn on the connection the statement's mode routes to: the
// transaction's inside one, else per mode. op names the operation in errors
// and telemetry; query is the SQL text (telemetry takes its first keyword).
func (c *Conn) run(ctx context.Context, op, query string, fn func(*physConn) error) error {
	m := c.mode(ctx)
	if c.tx != nil {
		return c.onTx(ctx, op, query, m, fn)
	}
	if m == Transactional {
		return ErrNotInTransaction
	}
	return c.runRole(ctx, op, query, m, roleOf(m), fn)
}

// admitBatch takes a Batch bulkhead token, waiting within ctx. The returned
// release gives it back; it is a no-op when there is no bulkhead or the
// mode is not Batch.
func (c *Connector) admitBatch(ctx context.Context, m Mode) (release func(), err error) {
	if m != Batch || c.batch == nil {
		return func() {}, nil
	}
	select {
	case c.batch <- struct{}{}:
		return func() { <-c.batch }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("unified: waiting for a batch slot (unified_max_batch_conns=%d): %w", cap(c.batch), ctx.Err())
	}
}

// runAny is run for operations allowed outside a transaction in every mode
// (Prepare, Ping).
func (c *Conn) runAny(ctx context.Context, op, query string, fn func(*physConn) error) error {
	m := c.mode(ctx)
	if c.tx != nil {
		return c.onTx(ctx, op, query, m, fn)
	}
	return c.runRole(ctx, op, query, m, roleOf(m), fn)
}

// onTx runs fn on the transaction's connection: no retry, no re-routing
// (invariant 2). A statement inside a transaction commits nothing, so its
// failure is never "outcome unknown"; only COMMIT can be.
func (c *Conn) onTx(ctx context.Context, op, query string, m Mode, fn func(*physConn) error) error {
	rec := c.c.tel.begin(ctx, op, query, m)
	pc := c.tx.pc
	openBefore := !pc.broken()
	err := fn(pc)
	if err != nil {
		err = c.fail(ctx, op, pc, err, false, mayHaveSent(openBefore, pc, err))
	}
	rec.end(ctx, pc.node, roleOfConn(c, pc), err)
	return err
}

// runRole runs fn on role r's connection with the retry rules of DESIGN.md
// §4: a failed attempt is retried (up to unified_retry_max attempts, with
// jittered exponential backoff, within ctx) only when nothing reached the
// server, or when it is a read outside a transaction that lost its
// connection, which is re-run on another node. Everything else is returned
// as is, classified: a write whose connection broke after it was sent
// wraps ErrCommitUnknown.
func (c *Conn) runRole(ctx context.Context, op, query string, m Mode, r role, fn func(*physConn) error) error {
	rec := c.c.tel.begin(ctx, op, query, m)
	pc, err := c.attempts(ctx, op, m, r, &rec, fn)
	var n *node
	if pc != nil {
		n = pc.node
	}
	rec.end(ctx, n, r, err)
	return err
}

// attempts is runRole's retry loop; it returns the physical connection of
// the last attempt (nil if none was reached) and the caller's error.
//
// A write that found the primary gone before anything was sent (a refused
// dial, a dead pooled connection, an open breaker) is not an attempt: it
// waits for the monitor to confirm the primary or find the new one, within
// ctx and unified_failover_timeout, and then goes out. Other failures that
// sent nothing, and reads that lost their connection, are attempts: up to
// unified_retry_max with jittered exponential backoff. Batch statements are
// never retried (DESIGN.md §3): bulk jobs own their retry policy, and a
// bulkhead slot must not be held through backoff.
func (c *Conn) attempts(ctx context.Context, op string, m Mode, r role, rec *opRecord, fn func(*physConn) error) (*physConn, error) {
	exclude := -1
	var bo *backoff.ExponentialBackOff
	var waitingSince time.Time
	for attempt := 1; ; {
		pc, err := c.physFor(ctx, r, exclude, rec)
		var n *node
		sentAnything := false
		if err == nil {
			openBefore := !pc.broken()
			// "used" is only visible to a metrics collection that runs
			// during the statement: no shared-counter traffic without one.
			if rec.metrics {
				c.c.tel.physUsed(pc.node)
			}
			err = fn(pc)
			if rec.metrics {
				c.c.tel.physIdle(pc.node)
			}
			if pc.sock != nil {
				pc.lastUsed = time.Now()
			}
			if err == nil {
				return pc, nil
			}
			if errors.Is(err, driver.ErrSkip) {
				return pc, err
			}
			sentAnything = mayHaveSent(openBefore, pc, err)
			n = pc.node
		} else {
			var ne *NodeError
			if !errors.As(err, &ne) || ne.Op != opConnect {
				return nil, err // ErrNoPrimary, ErrNoReplica, closed connector: final
			}
			n = c.c.nodes[c.c.nodeIndex(ne.Node)]
		}
		cls := classify.Of(ctx, err)
		if pc != nil {
			if pc.broken() || cls == classify.Connection || cls == classify.AdminShutdown {
				if c.phys[r] == pc {
					c.drop(r)
				}
			}
			n.breaker.record(ctx, err)
		}
		notSent := pc == nil || !sentAnything // a failed dial sent nothing
		lostPrimary := r == rolePrimary && c.c.mon != nil && (cls.LostPrimary() || errors.Is(err, ErrCircuitOpen))
		if lostPrimary {
			c.c.mon.suspectPrimary()
		}
		readFailover := r == roleReader && (cls == classify.Connection || cls == classify.AdminShutdown || cls == classify.TooManyConnections || errors.Is(err, ErrCircuitOpen))
		reason := ""
		var wait time.Duration
		switch {
		case cls == classify.Canceled || cls == classify.Auth || m == Batch:
		case lostPrimary && notSent:
			if waitingSince.IsZero() {
				waitingSince = time.Now()
			}
			if time.Since(waitingSince) < c.c.cfg.FailoverTimeout {
				reason, wait = "failover", 4*failoverProbeInterval
			}
		case attempt >= c.c.cfg.RetryMax:
		case readFailover:
			reason, exclude = "read_failover", n.index
		case notSent && !errors.Is(err, ErrCircuitOpen):
			reason = "not_sent"
		}
		if reason != "" {
			if reason != "failover" {
				attempt++
				if bo == nil {
					bo = c.c.newBackoff()
				}
				wait = bo.NextBackOff()
			}
			if c.c.pause(ctx, wait) == nil {
				c.c.counters.retries.Add(1)
				rec.retry(reason)
				continue
			}
		}
		if pc == nil {
			return nil, err
		}
		return pc, c.fail(ctx, op, pc, err, r == rolePrimary && !pc.readOnly && (op == opExec || op == opQuery), sentAnything)
	}
}

// mayHaveSent reports whether a failed call on pc may have reached the
// server. pgx's own answer (pgconn.SafeToRetry, which pgx stdlib turns into
// driver.ErrBadConn) cannot be taken alone: pgx v5.12 reports a connection
// that broke while reading the reply to a simple-protocol query (every
// COMMIT) as "conn closed", which claims to be safe to retry. So a
// connection that was open before the call and is closed after it counts as
// "may have sent", whatever the error says.
func mayHaveSent(openBefore bool, pc *physConn, err error) bool {
	if !classify.NotSent(err) {
		return true
	}
	return openBefore && pc.broken()
}

// fail turns a node's error into the error the caller sees: a NodeError
// naming node and operation, wrapping ErrCommitUnknown when mayHaveWritten
// and the connection broke after the statement was sent (invariant 4).
// driver.ErrBadConn stays visible only when nothing reached the server
// (pgx returns it only then), so database/sql retries only such statements.
//
// sent is whether the failed call may have reached the server (see
// mayHaveSent).
func (c *Conn) fail(ctx context.Context, op string, pc *physConn, err error, mayHaveWritten, sent bool) error {
	if errors.Is(err, driver.ErrSkip) {
		return err
	}
	if pc == nil {
		return err
	}
	cls := classify.Of(ctx, err)
	broke := cls == classify.Connection || cls == classify.AdminShutdown || pc.broken()
	if broke && !pc.closed && c.phys[roleOfConn(c, pc)] == pc {
		c.drop(roleOfConn(c, pc))
	}
	if sent && errors.Is(err, driver.ErrBadConn) {
		// pgx said "bad connection" for a request that may have reached
		// the server: database/sql must not re-run it (invariant 3).
		err = errLostAfterSend
	}
	if mayHaveWritten && broke && sent {
		c.c.counters.commitUnknown.Add(1)
		return &NodeError{Node: pc.node.name, Op: op, Err: fmt.Errorf("%w: %w", ErrCommitUnknown, err)}
	}
	return &NodeError{Node: pc.node.name, Op: op, Err: err}
}

// roleOfConn returns the role slot holding pc (rolePrimary if none does).
func roleOfConn(c *Conn, pc *physConn) role {
	if c.phys[roleReader] == pc {
		return roleReader
	}
	return rolePrimary
}

func (c *Connector) nodeIndex(name string) int {
	for _, n := range c.nodes {
		if n.name == name {
			return n.index
		}
	}
	return -1
}

func (c *Connector) newBackoff() *backoff.ExponentialBackOff {
	return &backoff.ExponentialBackOff{
		InitialInterval:     c.cfg.RetryBackoffInitial,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         c.cfg.RetryBackoffMax,
	}
}

// pause waits d before a retry, cut short when the monitor publishes a new
// topology (the retry should see it at once), and fails when ctx ends.
func (c *Connector) pause(ctx context.Context, d time.Duration) error {
	var published <-chan struct{}
	if c.mon != nil {
		c.mon.mu.Lock()
		published = c.mon.published
		c.mon.mu.Unlock()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-published:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.closed:
		return errors.New("unified: connector is closed")
	}
	return nil
}
