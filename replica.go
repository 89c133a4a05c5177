package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/unifiedsql/unified/internal/pgprobe"
	"github.com/unifiedsql/unified/internal/topology"
)

// This file chooses where a ReadOnly statement runs: a replica that may
// serve it (eligible, within the statement's lag bound, past its session's
// floor), chosen by unified_replica_policy; without one, the read-only
// fallback session on the primary. The choices are pure functions of the
// topology snapshot; readConn applies them.

// readWant is what one read asks of its replica.
type readWant struct {
	maxLag time.Duration // WithMaxLag; lagSet false: the Connector's bounds
	lagSet bool
	floor  floor // the session's floor; zero: no session, or an empty one
	sess   *Session
}

// eligibleFor reports whether node i of s may serve a read that wants w
// (the floor aside): a replica that is up, or, with a per-statement bound
// (WithMaxLag), one shown within that bound instead of the Connector's
// time bound (maxLagBytes still applies; 0: off).
func eligibleFor(s *topology.Snapshot, i int, w readWant, maxLagBytes uint64) bool {
	if s == nil || i < 0 || i >= len(s.Nodes) {
		return false
	}
	n := &s.Nodes[i]
	if n.Role != topology.RoleReplica {
		return false
	}
	if !w.lagSet {
		return n.State == topology.StateUp
	}
	if (n.State != topology.StateUp && n.State != topology.StateLagging) || n.LagUnknown {
		return false
	}
	return n.Lag <= w.maxLag && (maxLagBytes == 0 || n.LagBytes <= maxLagBytes)
}

// replicaEligible reports whether node i of s may serve reads under the
// Connector's bounds.
func replicaEligible(s *topology.Snapshot, i int) bool { return eligibleFor(s, i, readWant{}, 0) }

// pickReplica chooses a replica for a new read connection among the nodes
// ok accepts, or -1 when there is none. It is pure: cursor is the
// round-robin counter or a random number (see Connector.cursor), load the
// statements in flight on each node (PolicyLeastLoaded).
//
//   - PolicyRoundRobin, PolicyRandom: the cursor-th acceptable node.
//   - PolicyLeastRTT: the cursor-th of the near ones (see near): the
//     fastest, and those about as fast, so that replicas in one place
//     share the reads instead of one taking them all by a few
//     microseconds.
//   - PolicyLeastLoaded: the power of two choices: of two acceptable nodes
//     the cursor picks, the one with fewer statements in flight, ties by
//     RTT. It spreads load about as well as asking every node, without
//     herding on the least loaded one.
func pickReplica(s *topology.Snapshot, policy ReplicaPolicy, cursor uint64, ok func(i int) bool, load func(i int) int64) int {
	if s == nil {
		return -1
	}
	var buf [8]int
	idx := buf[:0]
	for i := range s.Nodes {
		if ok(i) {
			idx = append(idx, i)
		}
	}
	n := uint64(len(idx))
	if n == 0 {
		return -1
	}
	switch policy {
	case PolicyLeastRTT:
		best := fastest(s, idx)
		k := 0
		for _, i := range idx {
			if near(s.Nodes[i].RTT, best) {
				idx[k] = i
				k++
			}
		}
		return idx[cursor%uint64(k)]
	case PolicyLeastLoaded:
		ai := cursor % n
		a := idx[ai]
		if n == 1 {
			return a
		}
		b := idx[(ai+1+(cursor/n)%(n-1))%n] // a different node than a
		la, lb := load(a), load(b)
		if lb < la || (lb == la && s.Nodes[b].RTT < s.Nodes[a].RTT) {
			return b
		}
		return a
	default:
		return idx[cursor%n]
	}
}

// near reports whether a replica whose probe round trip (smoothed, see
// probe.go) is rtt counts as near when the fastest eligible one's is best:
// within twice it plus a millisecond. A replica a WAN link away, or behind
// a slow or lossy link, is not near one in the client's data centre.
func near(rtt, best time.Duration) bool { return rtt <= 2*best+time.Millisecond }

// fastest is the lowest probe round trip of the nodes idx of s (not empty).
func fastest(s *topology.Snapshot, idx []int) time.Duration {
	best := s.Nodes[idx[0]].RTT
	for _, i := range idx[1:] {
		best = min(best, s.Nodes[i].RTT)
	}
	return best
}

// cursor is the replica policy's next cursor: the round-robin counter, or
// a random number for the random policies.
func (c *Connector) cursor() uint64 {
	if c.cfg.ReplicaPolicy == PolicyRandom || c.cfg.ReplicaPolicy == PolicyLeastLoaded {
		return rand.Uint64()
	}
	return c.rr.Add(1)
}

// breakerAllows returns the filter of the nodes of v whose breaker lets new
// work through.
func (c *Connector) breakerAllows(v *view) func(i int) bool {
	return func(i int) bool { return v.nodes[i].breaker.allows() }
}

// loadOf returns the statements in flight on each node of v.
func loadOf(v *view) func(i int) int64 {
	return func(i int) int64 { return v.nodes[i].inflight.Load() }
}

// readable returns the filter of the nodes of v that may serve a read
// wanting w: eligible for it, breaker not open, not tagged noloadbalance in
// Patroni, and not the node that just failed it.
func (c *Connector) readable(v *view, w readWant, exclude *node) func(i int) bool {
	return func(i int) bool {
		n := v.nodes[i]
		return n != exclude && !n.noLoadBalance.Load() && n.breaker.allows() && eligibleFor(v.s, i, w, c.cfg.MaxReplicaLagBytes)
	}
}

// readConn returns the connection a ReadOnly statement runs on:
//
//  1. With a session floor of another cluster or timeline than the
//     primary's, no replica can be known to have the write: the fallback.
//  2. The read slot's replica while it may serve this statement (and the
//     policy does not move it after a rebalance, or off a far replica: see
//     Connector.rebalance); else a replica the policy picks, dialed into
//     the read slot.
//  3. With a floor: that replica if it is known to have replayed it (from
//     its last probe or an earlier look), else one look at its replay
//     position on the read session (one round trip); if it has not, another
//     replica known to have replayed it; else the fallback.
//  4. The fallback: the read-only session on the primary (slotFallback),
//     when unified_read_fallback=primary or the read has a floor; else
//     ErrNoReplica.
func (c *Conn) readConn(ctx context.Context, exclude *node, a *attempt) (*physConn, error) {
	v := c.c.viewNow()
	if v == nil && c.c.mon != nil {
		var err error
		if v, err = c.c.mon.waitElected(ctx); err != nil {
			return nil, err
		}
	}
	w := a.want
	if !w.floor.zero() && ahead(v, w.floor) {
		var err error
		if v, err = c.c.catchUp(ctx, v, w.floor, a); err != nil {
			return nil, err
		}
	}
	if !w.floor.zero() && !sameLineage(v, w.floor) {
		return c.fallbackConn(ctx, a, sessionOtherTimeline)
	}
	ok := c.c.readable(v, w, exclude)
	pc := c.phys[slotRead]
	if pc != nil {
		if i := v.index(pc.node); i < 0 || !ok(i) || !pc.fit() {
			c.drop(slotRead)
			pc = nil
		} else if n := c.c.rebalance(pc, v, w.floor.zero() && v.isFar(i), ok); n != nil {
			c.drop(slotRead)
			if pc, err := c.dialRead(ctx, n); err != nil {
				return pc, err
			}
			pc = c.phys[slotRead]
		}
	}
	if pc == nil {
		i := pickReplica(v.s, c.c.cfg.ReplicaPolicy, c.c.cursor(), ok, loadOf(v))
		if i < 0 {
			return c.fallbackConn(ctx, a, sessionNoReplica)
		}
		var err error
		if pc, err = c.dialRead(ctx, v.nodes[i]); err != nil {
			return nil, err
		}
	}
	if w.floor.zero() {
		return pc, nil
	}
	if c.replayed(ctx, pc, v, w.floor, a) {
		a.rec.sessionRead(slotRead, sessionReplayed)
		return pc, nil
	}
	// Another replica known to have replayed the floor.
	for i, n := range v.nodes {
		if n != pc.node && ok(i) && known(v, i) >= w.floor.lsn {
			c.drop(slotRead)
			pc, err := c.dialRead(ctx, n)
			if err != nil {
				return nil, err
			}
			a.rec.sessionRead(slotRead, sessionReplayed)
			return pc, nil
		}
	}
	return c.fallbackConn(ctx, a, sessionNotReplayed)
}

// dialRead dials n into the read slot.
func (c *Conn) dialRead(ctx context.Context, n *node) (*physConn, error) {
	pc, err := c.c.dial(ctx, n, slotRead)
	if err != nil {
		return nil, err
	}
	pc.balance = c.c.balance.Load()
	c.phys[slotRead] = pc
	return pc, nil
}

// fallbackConn returns the read-only session on the primary for a read no
// replica may serve, or ErrNoReplica (unified_read_fallback=error, and the
// read has no session floor to honour).
func (c *Conn) fallbackConn(ctx context.Context, a *attempt, why sessionReason) (*physConn, error) {
	if a.want.floor.zero() && c.c.cfg.ReadFallback == FallbackError {
		return nil, ErrNoReplica
	}
	v, err := c.c.waitPrimary(ctx, a)
	if err != nil {
		return nil, err
	}
	primary := v.primary()
	if pc := c.phys[slotFallback]; pc != nil {
		if pc.node == primary && pc.fit() {
			a.rec.sessionFallback(a.want, why)
			return pc, nil
		}
		c.drop(slotFallback)
	}
	pc, err := c.c.dial(ctx, primary, slotFallback)
	if err != nil {
		return nil, err
	}
	c.phys[slotFallback] = pc
	a.rec.sessionFallback(a.want, why)
	return pc, nil
}

// rebalance returns the node the read connection pc should move to, nil
// to stay: the policy, asked again, picks another node. It asks after a
// rebalance (a replica became eligible, or near or far: its node caught up
// again, an old primary came back as a replica, a link became slow or
// fast again), once per read connection, and at every statement on a far
// replica (PolicyLeastRTT: the read ran there because the near ones failed
// it or were not eligible) that has no session floor (one the far replica
// alone has replayed keeps it there: moving would dial the near one, find
// the floor missing, and dial back). Sessions move at a statement boundary
// outside a transaction; the primary session is never touched for this.
func (c *Connector) rebalance(pc *physConn, v *view, far bool, ok func(i int) bool) *node {
	gen := c.balance.Load()
	if (pc.balance == gen && !far) || v == nil {
		return nil
	}
	pc.balance = gen
	if j := pickReplica(v.s, c.cfg.ReplicaPolicy, c.cursor(), ok, loadOf(v)); j >= 0 && v.nodes[j] != pc.node {
		return v.nodes[j]
	}
	return nil
}

// readStale reports whether a read connection may no longer serve reads
// under v: a replica no longer eligible, or a fallback session on a node
// that is no longer the primary.
func (c *Connector) readStale(pc *physConn, v *view) bool {
	if v == nil {
		return false
	}
	if pc.slot == slotFallback {
		return pc.node != v.primary()
	}
	return !replicaEligible(v.s, v.index(pc.node))
}

// idleFallback reports whether pc is a fallback session on the primary
// that has not been used for two health intervals while a replica is
// eligible: read sessions have moved back to the replicas, and idle
// sessions on the primary should not pile up, one per pooled connection.
func (c *Connector) idleFallback(pc *physConn, v *view) bool {
	if pc.slot != slotFallback || v == nil || time.Since(pc.lastUsed) < 2*c.cfg.HealthInterval {
		return false
	}
	return pickReplica(v.s, PolicyRoundRobin, 0, c.readable(v, readWant{}, nil), loadOf(v)) >= 0
}

// sameLineage reports whether floor f belongs to the history v's primary
// continues: the same cluster and timeline (with no primary, the highest
// timeline seen).
func sameLineage(v *view, f floor) bool {
	tl, sys := lineage(v)
	return f.timeline == tl && sameSystem(f.system, sys)
}

// ahead reports whether floor f is of a later timeline of v's cluster than
// v's primary (or, with none, its highest timeline): the session wrote on a
// primary this process has not seen promoted yet.
func ahead(v *view, f floor) bool {
	tl, sys := lineage(v)
	return f.timeline > tl && sameSystem(f.system, sys)
}

// lineage is v's timeline and system identifier: its primary's, or with
// none its highest timeline (system unknown).
func lineage(v *view) (uint32, uint64) {
	if p, ok := v.s.PrimaryNode(); ok {
		return p.Timeline, p.SystemID
	}
	return v.s.MaxTimeline, 0
}

// sameSystem: two system identifiers name the same cluster, or one is
// unknown (0).
func sameSystem(a, b uint64) bool { return a == 0 || b == 0 || a == b }

// catchUp waits, within the operation's failover deadline, until the
// monitor has seen the timeline of floor f (it probes at once): a session
// read must not run on the old timeline's primary only because this
// process has not probed the promotion yet (invariant 10). Still behind at
// the deadline, the read fails.
func (c *Connector) catchUp(ctx context.Context, v *view, f floor, a *attempt) (*view, error) {
	if c.mon == nil {
		return v, nil // a static topology: no other timeline to learn of
	}
	until := a.waitDeadline(c)
	for ahead(v, f) {
		ch := c.mon.publication()
		c.mon.suspectPrimary()
		if !time.Now().Before(until) {
			tl, _ := lineage(v)
			return nil, fmt.Errorf("%w: the session's writes are on timeline %d; the nodes this process knows are on timeline %d", ErrNoPrimary, f.timeline, tl)
		}
		if err := c.waitPublished(ctx, ch, until); err != nil {
			return nil, err
		}
		v = c.viewNow()
	}
	return v, nil
}

// known is the highest replay position node i is known to have reached:
// its last probe's, or a later look at it (replayed).
func known(v *view, i int) uint64 {
	return max(v.s.Nodes[i].LSN, v.nodes[i].replayHint.Load())
}

// replayQuery is the one look at a replica's replay position a session read
// may take.
const replayQuery = "SELECT pg_last_wal_replay_lsn()::text"

// replayed reports whether pc's replica has replayed up to f: known, or, if
// not, after one look on the read session. A failed look is a no.
func (c *Conn) replayed(ctx context.Context, pc *physConn, v *view, f floor, a *attempt) bool {
	if i := v.index(pc.node); i >= 0 && known(v, i) >= f.lsn {
		return true
	}
	start := time.Now()
	lsn, err := queryLSN(ctx, pc, replayQuery)
	a.rec.floorWait(time.Since(start))
	if err != nil {
		if pc.broken() {
			c.drop(slotRead)
		}
		return false
	}
	pc.node.seeReplay(lsn)
	return lsn >= f.lsn
}

// seeReplay notes that the node's replay reached lsn.
func (n *node) seeReplay(lsn uint64) {
	for {
		cur := n.replayHint.Load()
		if lsn <= cur || n.replayHint.CompareAndSwap(cur, lsn) {
			return
		}
	}
}

// queryLSN runs a one-row, one-column query of a pg_lsn as text on pc.
func queryLSN(ctx context.Context, pc *physConn, query string) (uint64, error) {
	if pc.queryer == nil {
		return 0, fmt.Errorf("unified: node driver %T cannot query", pc.dc)
	}
	rows, err := pc.queryer.QueryContext(ctx, query, nil)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	dest := make([]driver.Value, 1)
	if err := rows.Next(dest); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, errors.New("unified: no row")
		}
		return 0, err
	}
	var s string
	switch x := dest[0].(type) {
	case string:
		s = x
	case []byte:
		s = string(x)
	case nil:
		return 0, nil // a replica that replayed nothing
	default:
		return 0, fmt.Errorf("unified: LSN of type %T", x)
	}
	return pgprobe.ParseLSN(s)
}

// rebalance reports whether read sessions chosen before v may move (see
// Conn.readConn): a replica is eligible in v that was not in prev, or is
// far in one of prev and v and not in the other (PolicyLeastRTT, see
// view.far: its link became slow, or fast again: the reads leave it, or
// share it again).
func rebalance(prev, v *view) bool {
	if prev == nil {
		return false
	}
	for i, n := range v.nodes {
		if !replicaEligible(v.s, i) {
			continue
		}
		if j := prev.index(n); !replicaEligible(prev.s, j) || v.isFar(i) != prev.isFar(j) {
			return true
		}
	}
	return false
}

// farReplicas says, by index of v, which eligible replicas are not near
// (see near): the view's far under PolicyLeastRTT.
func farReplicas(v *view) []bool {
	var idx []int
	for i := range v.nodes {
		if replicaEligible(v.s, i) {
			idx = append(idx, i)
		}
	}
	far := make([]bool, len(v.nodes))
	if len(idx) == 0 {
		return far
	}
	best := fastest(v.s, idx)
	for _, i := range idx {
		far[i] = !near(v.s.Nodes[i].RTT, best)
	}
	return far
}
