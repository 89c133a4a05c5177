package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/unifiedsql/unified/internal/topology"
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
// statement (-1: none); reads avoid it.
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
	if sl == slotRead {
		return c.readConn(ctx, exclude)
	}
	for {
		v := c.c.viewNow()
		primary := v.primary()
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
		pc, err := c.c.dial(ctx, primary, slotPrimary, false)
		if err != nil {
			return nil, err
		}
		// Checked again after the dial, before the first byte: the node
		// may have lost the role meanwhile (invariant 1).
		if c.c.viewNow().primary() != primary {
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
	c.drop(slotPrimary)
	c.drop(slotRead)
	return errFinished
}

// readConn returns the read slot's connection, replacing it when its node
// may no longer serve reads (readStale), just failed this statement, or the
// replicas were rebalanced since it was chosen and the policy now picks
// another node (rebalance).
func (c *Conn) readConn(ctx context.Context, exclude *node) (*physConn, error) {
	v := c.c.viewNow()
	var n *node
	fallback := false
	if pc := c.phys[slotRead]; pc != nil {
		if pc.node != exclude && pc.fit() && !c.c.readStale(pc, v) {
			if n = c.c.rebalance(pc, v); n == nil {
				return pc, nil
			}
		}
		c.drop(slotRead)
	}
	if n == nil {
		var err error
		if n, fallback, err = c.c.readNode(ctx, exclude); err != nil {
			return nil, err
		}
	}
	pc, err := c.c.dial(ctx, n, slotRead, fallback)
	if err != nil {
		return nil, err
	}
	pc.balance = c.c.balance.Load()
	c.phys[slotRead] = pc
	return pc, nil
}

// readStale reports whether a read connection may no longer serve reads
// under v: its replica is no longer eligible, or it is a fallback on the
// primary while a replica is eligible again.
func (c *Connector) readStale(pc *physConn, v *view) bool {
	if v == nil {
		return false
	}
	if pc.node == v.primary() {
		// A fallback read connection on the primary: keep it only while no
		// replica is eligible.
		return pickReplica(v.s, PolicyRoundRobin, 0, c.breakerAllows(v)) >= 0
	}
	return !replicaEligible(v.s, v.index(pc.node))
}

// rebalance returns the node a read connection chosen before a replica
// became eligible should move to, nil to stay: the policy, asked again,
// picks another node. It moves read sessions onto a replica that rejoined
// (its node caught up again, or an old primary came back as a replica)
// within a health interval or two, at a statement boundary outside a
// transaction; the primary session is never touched for this.
func (c *Connector) rebalance(pc *physConn, v *view) *node {
	gen := c.balance.Load()
	if pc.balance == gen || v == nil {
		return nil
	}
	pc.balance = gen
	if i := pickReplica(v.s, c.cfg.ReplicaPolicy, c.cursor(), c.breakerAllows(v)); i >= 0 && v.nodes[i] != pc.node {
		return v.nodes[i]
	}
	return nil
}

// cursor is the replica policy's next cursor: the round-robin counter, or
// a random number for PolicyRandom.
func (c *Connector) cursor() uint64 {
	if c.cfg.ReplicaPolicy == PolicyRandom {
		return rand.Uint64()
	}
	return c.rr.Add(1)
}

// breakerAllows returns the filter of the nodes of v whose breaker lets new
// work through.
func (c *Connector) breakerAllows(v *view) func(i int) bool {
	return func(i int) bool { return v.nodes[i].breaker.allows() }
}

// readNode picks the node for a new read connection: an eligible replica,
// else the primary (fallback; unified_read_fallback=primary), or
// ErrNoReplica.
func (c *Connector) readNode(ctx context.Context, exclude *node) (n *node, fallback bool, err error) {
	v := c.viewNow()
	if v == nil && c.mon != nil {
		if v, err = c.mon.waitElected(ctx); err != nil {
			return nil, false, err
		}
	}
	allows := c.breakerAllows(v)
	allowed := func(i int) bool { return v.nodes[i] != exclude && allows(i) }
	cursor := c.cursor()
	if i := pickReplica(v.s, c.cfg.ReplicaPolicy, cursor, allowed); i >= 0 {
		return v.nodes[i], false, nil
	}
	if exclude != nil {
		// The node that just failed this read is the only eligible one:
		// try it again rather than fall back (or fail) for a blip.
		if i := pickReplica(v.s, c.cfg.ReplicaPolicy, cursor, allows); i >= 0 {
			return v.nodes[i], false, nil
		}
	}
	if c.cfg.ReadFallback == FallbackError {
		return nil, false, ErrNoReplica
	}
	if v, err = c.waitPrimary(ctx, nil); err != nil {
		return nil, false, err
	}
	return v.primary(), true, nil
}

// replicaEligible reports whether node i of s may serve reads: a replica
// that is up (not down, not lagging past the bounds, not on another
// lineage).
func replicaEligible(s *topology.Snapshot, i int) bool {
	if s == nil || i < 0 || i >= len(s.Nodes) {
		return false
	}
	n := &s.Nodes[i]
	return n.Role == topology.RoleReplica && n.State == topology.StateUp
}

// pickReplica chooses the replica for a new read connection, or -1 when none
// is eligible. It is pure: cursor is the round-robin counter (or a random
// number for PolicyRandom), allowed filters nodes further (breaker state,
// nodes that just failed this statement; nil allows all).
func pickReplica(s *topology.Snapshot, policy ReplicaPolicy, cursor uint64, allowed func(i int) bool) int {
	if s == nil {
		return -1
	}
	var eligible [8]int
	idx := eligible[:0]
	for i := range s.Nodes {
		if replicaEligible(s, i) && (allowed == nil || allowed(i)) {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return -1
	}
	switch policy {
	case PolicyLeastRTT:
		best := idx[0]
		for _, i := range idx[1:] {
			if s.Nodes[i].RTT < s.Nodes[best].RTT {
				best = i
			}
		}
		return best
	default: // PolicyRoundRobin, PolicyRandom: the caller supplies the cursor
		return idx[cursor%uint64(len(idx))]
	}
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
func (c *Connector) dial(ctx context.Context, n *node, sl slot, fallback bool) (*physConn, error) {
	done, err := n.breaker.allow(n.name)
	if err != nil {
		return nil, err
	}
	connector := n.rw
	if sl == slotRead {
		connector = n.ro
	}
	dctx, cancel := context.WithTimeout(ctx, c.dialTimeout(n))
	stop := n.dialing(sl, cancel)
	dc, err := connector.Connect(dctx)
	stop()
	cancel()
	if err == nil && c.isClosed() {
		_ = dc.Close()
		err = ErrClosed
	}
	if err != nil {
		if ctx.Err() == nil && dctx.Err() != nil && !errors.Is(err, context.DeadlineExceeded) {
			// Interrupted by the monitor or Close, not by the caller.
			err = fmt.Errorf("%w: %w", errDialInterrupted, err)
		}
		done(ctx, err)
		return nil, &NodeError{Node: n.name, Op: opConnect.String(), Err: err}
	}
	done(ctx, nil)
	pc := newPhysConn(c.tel, n, sl, sl == slotRead, dc)
	if fallback && n.custom {
		if err := pc.setReadOnly(ctx); err != nil {
			pc.close()
			return nil, &NodeError{Node: n.name, Op: opConnect.String(), Err: err}
		}
	}
	return pc, nil
}

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
