package unified

import (
	"context"
	"time"

	"github.com/unifiedsql/unified/internal/topology"
)

// This file keeps warm spares: unified_warm_spares ordinary (read-write)
// sessions open to each replica and used by nothing, so that when a replica
// is promoted the first writes to it go out on a session already open
// instead of waiting for a dial. On a local network a dial (TCP, startup,
// authentication, a backend fork) costs milliseconds and a statement a
// tenth of one: the dial is most of a failover's client recovery, and what
// every client that redials (pgx's multi-host DSN) pays at each failover.
//
// A spare is a physical connection of the primary slot that no logical
// connection holds yet. A session opened on a standby can write once the
// server leaves recovery (PostgreSQL decides a transaction's read-only-ness
// at its start), so a spare needs nothing done to it when its node is
// promoted: physFor takes it instead of dialing, once the monitor has
// published the node as the primary (the election's rules hold as for any
// dial). The monitor keeps the count at each publication: replicas that are
// up or lagging get their spares (dialed one at a time, backing off on
// failure); a primary keeps the ones it has for the writes that take them;
// any other node (down, fenced, draining) has its spares closed, and so do
// spares whose socket was closed by the server or the network. Spares are
// open connections: they count in unified.connection.count and in the
// server's connections (one per replica per process by default; set
// unified_warm_spares=0 to keep none).

// sparePlan says what a node in state st keeps: refill, the spares to hold
// (want), and keep, whether those it holds stay.
func sparePlan(st topology.Node, want int) (refill int, keep bool) {
	switch {
	case st.Role == topology.RoleReplica && (st.State == topology.StateUp || st.State == topology.StateLagging):
		return want, true
	case st.Role == topology.RolePrimary && st.State == topology.StateUp:
		return 0, true
	default:
		return 0, false
	}
}

// takeSpare returns a spare of the node whose socket looks alive, nil when
// it has none; dead ones are closed on the way.
func (n *node) takeSpare() *physConn {
	for {
		n.mu.Lock()
		if len(n.spares) == 0 {
			n.mu.Unlock()
			return nil
		}
		pc := n.spares[len(n.spares)-1]
		n.spares = n.spares[:len(n.spares)-1]
		n.mu.Unlock()
		if pc.fit() {
			return pc
		}
		pc.close()
	}
}

// keepSpares applies the node's plan: it closes the spares it may not keep,
// and the dead ones, and returns how many more it should dial. The live
// ones stay in the list while they are looked at (a socket poll each), so
// that a write taking a spare at that moment, right after a promotion was
// published, finds one.
func (n *node) keepSpares(refill int, keep bool) int {
	n.mu.Lock()
	n.spareWant = refill
	var dead []*physConn
	alive := n.spares[:0]
	for _, pc := range n.spares {
		if keep && pc.fit() {
			alive = append(alive, pc)
		} else {
			dead = append(dead, pc)
		}
	}
	clear(n.spares[len(alive):])
	n.spares = alive
	more := 0
	if !n.spareDialing && !time.Now().Before(n.spareNotBefore) {
		more = max(refill-len(n.spares), 0)
	}
	n.mu.Unlock()
	for _, pc := range dead {
		pc.close()
	}
	return more
}

// putSpare adds a dialed spare, or closes it when the node no longer wants
// one (its plan changed while it was dialed).
func (n *node) putSpare(pc *physConn) {
	n.mu.Lock()
	ok := len(n.spares) < n.spareWant
	if ok {
		n.spares = append(n.spares, pc)
	}
	n.mu.Unlock()
	if !ok {
		pc.close()
	}
}

// refillSpares starts a spare dial for each node of v that wants one more
// (one dial per node at a time).
func (m *monitor) refillSpares(v *view) {
	want := m.c.cfg.WarmSpares
	for i, n := range v.nodes {
		refill, keep := sparePlan(v.s.Nodes[i], want)
		if n.keepSpares(refill, keep) == 0 {
			continue
		}
		n.mu.Lock()
		n.spareDialing = true
		n.mu.Unlock()
		m.wg.Add(1)
		go m.dialSpare(n)
	}
}

// dialSpare dials one spare to n within the dial timeout.
func (m *monitor) dialSpare(n *node) {
	defer m.wg.Done()
	ctx, cancel := context.WithTimeout(m.ctx, m.c.dialTimeout(n))
	dc, err := n.rw.Connect(ctx)
	cancel()
	n.mu.Lock()
	n.spareDialing = false
	if err != nil {
		n.spareFailures++
		n.spareNotBefore = time.Now().Add(probeBackoff(m.c.cfg.HealthInterval, m.probeBackoffLimit(), n.spareFailures+2))
	} else {
		n.spareFailures = 0
	}
	n.mu.Unlock()
	if err != nil {
		return
	}
	if m.ctx.Err() != nil || m.c.isClosed() {
		_ = dc.Close()
		return
	}
	n.putSpare(newPhysConn(m.c.tel, n, slotPrimary, false, dc))
}

// closeSpares closes the node's spares and wants no more.
func (n *node) closeSpares() {
	n.keepSpares(0, false)
}

// dialPrimary opens the primary slot's session to n, the primary: one of
// its warm spares when it has one, else a dial.
func (c *Connector) dialPrimary(ctx context.Context, n *node) (*physConn, error) {
	if pc := n.takeSpare(); pc != nil {
		return pc, nil
	}
	return c.dial(ctx, n, slotPrimary)
}
