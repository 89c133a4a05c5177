package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"
)

// This file routes: mode -> slot -> node -> physical connection. The
// choices (is this connection still allowed, which replica) are pure
// functions of the topology snapshot; physFor applies them.

// slotFor is the slot a statement in mode m uses outside a transaction.
func slotFor(m Mode) slot {
	if m == ReadOnly {
		return slotRead
	}
	return slotPrimary
}

// errFinished is what a call on a finished logical connection gets, before
// anything is sent: its primary session is gone (DESIGN.md §2).
var errFinished = driver.ErrBadConn

// physFor returns the physical connection for slot sl, opening or replacing
// it as the topology requires. exclude is a node that just failed this
// statement (nil: none); reads avoid it.
//
// The primary slot: a session that has served a statement is never
// replaced. While the snapshot names its node the primary it is returned
// (after a look at its socket when idle); while no primary is known it
// waits for one, and keeps the session if its node is elected again. When
// the session is broken, or another node is the primary, the logical
// connection is finished: driver.ErrBadConn before anything is sent. An
// unused slot waits for a primary and dials it.
func (c *Conn) physFor(ctx context.Context, sl slot, exclude *node, a *attempt) (*physConn, error) {
	if c.finished {
		return nil, errFinished
	}
	if sl.read() {
		return c.readConn(ctx, exclude, a)
	}
	for {
		v := c.c.viewNow()
		primary := v.writable()
		pc := c.phys[slotPrimary]
		if pc != nil && pc.used {
			switch {
			case !pc.fit():
				return nil, c.finish()
			case primary == pc.node:
				return pc, nil
			case primary != nil:
				return nil, c.finish() // another node is the primary: invariants 1 and 9
			}
		} else if pc != nil {
			if pc.fit() && primary == pc.node {
				return pc, nil
			}
			c.drop(slotPrimary) // unused: it may be dialed again
		}
		if primary == nil {
			if _, err := c.c.waitPrimary(ctx, a); err != nil {
				return nil, err
			}
			continue // look again: the used session's node may be back
		}
		pc, err := c.c.dialPrimary(ctx, primary)
		if err != nil {
			return nil, err
		}
		// Checked again after the dial, before the first byte: the node
		// may have lost the role meanwhile (invariant 1).
		if c.c.viewNow().writable() != primary {
			pc.close()
			continue
		}
		c.phys[slotPrimary] = pc
		return pc, nil
	}
}

// finish marks the logical connection finished: its primary session is
// gone. Every later call gets driver.ErrBadConn; database/sql discards it.
func (c *Conn) finish() error {
	c.finished = true
	for sl := range numSlots {
		c.drop(sl)
	}
	return errFinished
}

// readOnlySession is what a fallback read connection on the primary runs
// right after the dial when its node's connector cannot be told
// default_transaction_read_only (WithNodeConnector), so that a read that
// falls back to the primary cannot write, whatever the driver. (A replica
// refuses writes by itself.)
const readOnlySession = "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"

// dial opens a physical connection to n for slot sl, through n's breaker,
// bounded by the dial timeout (the DSN's connect_timeout, else twice
// unified_health_timeout), and interrupted when the node loses the role the
// slot needs or the Connector closes. A read connection is read-only: pgx
// connections by default_transaction_read_only, and a fallback read
// connection on the primary through a WithNodeConnector connector by
// readOnlySession (unless the connector is a ReadOnlyConnector).
func (c *Connector) dial(ctx context.Context, n *node, sl slot) (*physConn, error) {
	done, err := n.breaker.allow(n.name)
	if err != nil {
		return nil, err
	}
	connector := n.rw
	if sl.read() {
		connector = n.ro
	}
	dctx, cancel := context.WithTimeout(ctx, c.dialTimeout(n))
	stop := n.dialing(sl, cancel)
	dc, err := connector.Connect(dctx)
	stop()
	interrupted := ctx.Err() == nil && errors.Is(dctx.Err(), context.Canceled)
	cancel()
	if err == nil && c.isClosed() {
		_ = dc.Close()
		err = ErrClosed
	}
	if err != nil {
		if interrupted {
			// Interrupted by the monitor or Close, not by the caller.
			err = fmt.Errorf("%w: %w", errDialInterrupted, err)
		}
		done(ctx, err)
		return nil, &NodeError{Node: n.name, Op: opConnect.String(), Err: err}
	}
	done(ctx, nil)
	pc := newPhysConn(c.tel, n, sl, sl.read(), dc)
	if sl == slotPrimary && pc.standby() {
		// PostgreSQL 14+ says at connect time, without a query, that the
		// node is in recovery: the topology is behind (a switchover).
		pc.close()
		if c.mon != nil {
			c.mon.suspectPrimary()
		}
		return nil, &NodeError{Node: n.name, Op: opConnect.String(), Err: errStandby}
	}
	if sl == slotFallback && n.custom {
		if err := pc.setReadOnly(ctx); err != nil {
			pc.close()
			return nil, &NodeError{Node: n.name, Op: opConnect.String(), Err: err}
		}
	}
	return pc, nil
}

// errStandby: a node dialed as the primary said in_hot_standby=on.
var errStandby = errors.New("the node is a standby (in_hot_standby=on)")

// errDialInterrupted: the health monitor stopped a dial to a node that lost
// its role, or the Connector was closed.
var errDialInterrupted = errors.New("dial interrupted: the node lost its role or the connector closed")

// dialTimeout bounds one dial: the DSN's connect_timeout, else twice the
// health timeout, so that a hung host (TCP open, nothing answering) cannot
// hold a statement past the time the monitor takes to see it.
func (c *Connector) dialTimeout(n *node) time.Duration {
	if n.connectTimeout > 0 {
		return n.connectTimeout
	}
	return 2 * c.cfg.HealthTimeout
}

// setReadOnly makes a session read-only for any driver.
func (pc *physConn) setReadOnly(ctx context.Context) error {
	if pc.execer != nil {
		_, err := pc.execer.ExecContext(ctx, readOnlySession, nil)
		return err
	}
	st, err := pc.prepare(ctx, readOnlySession)
	if err != nil {
		return err
	}
	defer st.Close()
	if e, ok := st.(driver.StmtExecContext); ok {
		_, err = e.ExecContext(ctx, nil)
		return err
	}
	_, err = st.Exec(nil) //nolint:staticcheck // the node driver has no StmtExecContext
	return err
}

// admitBatch takes a Batch bulkhead token, waiting within ctx. release
// gives it back; it is nil when no token is needed (no bulkhead, another
// mode).
func (c *Connector) admitBatch(ctx context.Context, m Mode) (release func(), err error) {
	if m != Batch || c.batch == nil {
		return nil, nil
	}
	select {
	case c.batch <- struct{}{}:
		return c.releaseBatch, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("unified: waiting for a batch slot (unified_max_batch_conns=%d): %w", cap(c.batch), ctx.Err())
	}
}

func (c *Connector) releaseBatch() { <-c.batch }
