package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/unifiedsql/unified/internal/classify"
)

// This file is the I/O loop of one operation: get the connection, run,
// classify once, decide (outcome.go), apply. It gathers facts and carries
// out verdicts; it takes no decision of its own.

// attempt is the state of one operation across its attempts.
type attempt struct {
	rec  *opRecord
	want readWant // what a read asks of its replica
	// waitUntil is when the operation stops waiting for a primary: set the
	// first time it waits, unified_failover_timeout later (each operation
	// waits that long from when it started waiting, not from the loss).
	waitUntil time.Time
	// exclude and tries carry over to a read run again from its rows
	// (rows.failed): the node that failed it, and the attempts made so far,
	// which unified_retry_max bounds together. run leaves in tries the
	// attempts it made.
	exclude *node
	tries   int
}

// waitDeadline returns waitUntil, setting it on the first call.
func (a *attempt) waitDeadline(c *Connector) time.Time {
	if a.waitUntil.IsZero() {
		a.waitUntil = time.Now().Add(c.cfg.FailoverTimeout)
	}
	return a.waitUntil
}

// run executes fn on the connection for slot sl with the retry rules of
// decide; it returns the physical connection of the last attempt (nil if
// none was reached) and the caller's error.
func (c *Conn) run(ctx context.Context, op opKind, m Mode, sl slot, a *attempt, fn func(*physConn) error) (*physConn, error) {
	exclude := a.exclude
	var bo *backoff.ExponentialBackOff
	for n := a.tries + 1; ; {
		a.tries = n
		f := facts{op: op, slot: sl, mode: m, attempt: n, retryMax: c.c.cfg.RetryMax}
		pc, err := c.physFor(ctx, sl, exclude, a)
		var nd *node
		if err != nil {
			var ne *NodeError
			if !errors.As(err, &ne) || ne.Op != opConnect.String() {
				return nil, err // finished (ErrBadConn), ErrNoPrimary, ErrNoReplica, ErrClosed: final
			}
			nd = c.c.viewNow().named(ne.Node)
			f.noConn, f.breakerOpen = true, errors.Is(err, ErrCircuitOpen)
			var hook *hookError
			if f.class = classOf(ctx, err); f.class == classify.Other && !errors.As(err, &hook) {
				f.class = classify.Connection // a dial the monitor or Close interrupted
			}
		} else {
			nd = pc.node
			f.used, f.readOnly, f.busy = pc.used, pc.readOnly, pc.busy()
			if err = c.call(pc, a.rec, op, fn); err == nil || errors.Is(err, driver.ErrSkip) {
				return pc, err
			}
			f.class, f.sent, f.broke = classOf(ctx, err), sentOf(err), pc.broken()
			if pc.prepFailed {
				f.op = opPrepare // a statement's lazy preparation failed: nothing ran
			}
		}
		f.static = c.c.mon == nil
		f.mayWait = !f.static && (a.waitUntil.IsZero() || time.Now().Before(a.waitUntil))
		v := decide(f)
		c.apply(ctx, v, f, pc, nd, err)
		if v.retry != noRetry {
			var wait time.Duration
			if v.retry == retryFailover {
				a.waitDeadline(c.c)
				wait = 4 * failoverProbeInterval // cut short by the next publication
			} else {
				n++
				if bo == nil {
					bo = c.c.newBackoff()
				}
				wait = bo.NextBackOff()
			}
			if v.exclude && nd != nil {
				exclude = nd
			}
			if c.c.pause(ctx, wait) == nil {
				a.rec.retry(v.retry)
				continue
			}
		}
		return pc, c.shape(v.report, f, nd, err)
	}
}

// sentOf reports whether a failed call may have reached the server: pgx
// (v5.13 and later, jackc/pgx#2700) marks what provably did not as safe to
// retry, and drivers return driver.ErrBadConn only then.
func sentOf(err error) bool { return !classify.NotSent(err) }

// call runs fn on pc and notes its use.
func (c *Conn) call(pc *physConn, rec *opRecord, op opKind, fn func(*physConn) error) error {
	// "used" is only visible to a metrics collection that runs during the
	// statement: no shared-counter traffic without one.
	if rec.metrics {
		c.c.tel.connCount(pc.node, 0, 1)
	}
	// Inside a transaction the connection is already active (BeginTx
	// counted it until the transaction ends): no second count.
	own := c.tx == nil || c.tx.pc != pc
	if own {
		pc.active.Add(1)
	}
	pc.callStart.Store(c.c.clock.Load())
	load := c.c.countLoad && pc.slot.read()
	if load {
		pc.node.inflight.Add(1)
	}
	err := fn(pc)
	if load {
		pc.node.inflight.Add(-1)
	}
	pc.callStart.Store(0)
	if own {
		pc.active.Add(-1)
	}
	if err != nil {
		pe, prep := err.(prepareError)
		if pc.prepFailed = prep; prep {
			err = pe.err
		}
		if cause := pc.interrupted.Load(); cause != nil {
			err = fmt.Errorf("%w: %w", *cause, err) // the classes are the error's
		}
	}
	if rec.metrics {
		c.c.tel.connCount(pc.node, 0, -1)
	}
	if pc.sock != nil || pc.slot == slotFallback {
		pc.lastUsed = time.Now()
	}
	// Used: the session may hold the user's state from now on. Also when
	// the server ran the statement and answered an error: a statement of
	// several may have run its first ones ("SELECT pg_advisory_lock(1);
	// SELECT 1/0" holds the lock), so the session is never swapped later.
	if op != opPing && (err == nil || sentOf(err) && !op.effectFree() && !pc.prepFailed) {
		pc.used = true
	}
	if !pc.sawPromotion && pc.promoted() && c.c.mon != nil {
		// The replica was promoted: the next probe round confirms it now,
		// not a health interval later.
		pc.sawPromotion = true
		c.c.mon.suspectPrimary()
	}
	return err
}

// apply carries out a verdict's side effects: the breaker's count, the
// connection given up, the monitor told.
func (c *Conn) apply(ctx context.Context, v verdict, f facts, pc *physConn, n *node, err error) {
	if pc != nil && n != nil && !f.busy {
		n.breaker.record(ctx, err)
	}
	switch {
	case v.finish:
		c.finish()
	case v.discard && pc != nil && c.phys[pc.slot] == pc:
		c.drop(pc.slot)
	}
	if v.suspect && c.c.mon != nil {
		c.c.mon.suspectPrimary()
	}
}

// errLostAfterSend replaces driver.ErrBadConn when the connection broke
// after the request may have reached the server: database/sql must not run
// it again (invariant 3).
var errLostAfterSend = errors.New("connection lost after the request was sent")

// errLostNotRetried replaces driver.ErrBadConn in a NodeError or
// ErrNoPrimary when nothing was sent but the verdict is not to send it
// again (Batch, a wait for a primary that is over, attempts spent):
// database/sql would run it again.
var errLostNotRetried = errors.New("connection lost before the request was sent")

// shape turns a node driver's error into the caller's, as the report says.
func (c *Conn) shape(r report, f facts, n *node, err error) error {
	if r != reportBadConn && errors.Is(err, driver.ErrBadConn) {
		switch {
		case f.sent:
			err = errLostAfterSend
		case r == reportNodeError || r == reportNoPrimary:
			err = fmt.Errorf("%w (%v)", errLostNotRetried, err)
		}
	}
	name := ""
	if n != nil {
		name = n.name
	}
	switch r {
	case reportBadConn:
		return driver.ErrBadConn
	case reportCommitUnknown:
		c.c.tel.commitUnknown(n)
		return &NodeError{Node: name, Op: f.op.String(), Err: fmt.Errorf("%w: %w", ErrCommitUnknown, err)}
	case reportNoPrimary:
		return fmt.Errorf("%w: %w", ErrNoPrimary, err)
	case reportNodeError:
		var ne *NodeError
		if errors.As(err, &ne) {
			return err // a dial's error names its node already
		}
		return &NodeError{Node: name, Op: f.op.String(), Err: err}
	default:
		return err
	}
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
// topology (the retry should see it at once); it fails when ctx ends or
// the Connector closes.
func (c *Connector) pause(ctx context.Context, d time.Duration) error {
	var published <-chan struct{}
	if c.mon != nil {
		published = c.mon.publication()
	}
	return c.waitPublished(ctx, published, time.Now().Add(d))
}
