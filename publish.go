package unified

import (
	"errors"
	"time"

	"github.com/unifiedsql/unified/internal/topology"
)

// This file is what one publication of the health monitor does (health.go
// runs the loop and owns its lock and its waits): build the snapshot from
// the latest probes, store it, and stop what the change forbids (interrupt).

// Why the monitor interrupted a statement (see interrupt): the prefix of
// its error.
var (
	errHung     = errors.New("interrupted: the node stopped answering its health probes")
	errWentDown = errors.New("interrupted: the node went down")
	errDemoted  = errors.New("interrupted: another node is the primary now")
)

// publish builds a new snapshot from the latest observations, stores it
// and wakes every operation waiting for one. Nothing is stored before every
// node has answered its first probe or timed out: until then the election
// could still be overturned (a node on a higher timeline, or the incumbent,
// has not spoken), so no write may be routed (DESIGN.md §4).
func (m *monitor) publish() {
	prev := m.c.viewNow()
	now := time.Now()
	nodes := make([]*node, len(m.members))
	obs := make([]topology.Observation, len(m.members))
	for i, mb := range m.members {
		nodes[i], obs[i] = mb.n, mb.obs
		if mb.draining {
			obs[i] = topology.Observation{At: now, Err: &NodeError{Node: mb.n.name, Op: opProbe.String(), Err: errDrained}}
		}
	}
	bounds := topology.Bounds{MaxLag: m.c.cfg.MaxReplicaLag, MaxLagBytes: m.c.cfg.MaxReplicaLagBytes}
	base := m.building
	if prev == nil {
		// Before the election every build starts afresh: a candidate that
		// answered first must not become the incumbent of the next.
		base = nil
	}
	s := topology.Build(base, names(nodes), obs, &m.hist, bounds, now)
	m.building = s
	if prev == nil {
		for _, o := range obs {
			if errors.Is(o.Err, errNotProbed) {
				return // not elected yet
			}
		}
	}
	v := &view{s: s, nodes: nodes, leaving: m.leaving(now)}
	if m.c.cfg.ReplicaPolicy == PolicyLeastRTT {
		v.far = farReplicas(v)
	}
	m.c.view.Store(v)
	m.interrupt(prev, v)
	m.refillSpares(v)
	if rebalance(prev, v) {
		m.c.balance.Add(1)
	}
	primary := v.primary()
	if prev == nil || primary != prev.primary() {
		m.warmUntil = now.Add(warmupWindow)
		for _, n := range nodes {
			n.replayHint.Store(0) // positions on the old primary's history
		}
	}

	m.announce(prev, v, obs, now)
}

// interrupt stops what may no longer go on after the change from prev to
// v: dials to a node that is no longer the primary for the primary slot;
// the primary sessions on the last published primary once another node is
// the primary, or once it went down by a probe timeout (a statement stuck
// on a hung or cut-off primary then fails at once, with ErrCommitUnknown
// for a write, instead of at its own deadline, or never: DESIGN.md §4);
// and the reads, the read-only sessions on the primary and the read dials
// on a node that went down (a hung replica: the reads run again on another
// node). A node that went down by refusing or resetting connections has
// none left to interrupt; a drained one keeps its reads until they end.
func (m *monitor) interrupt(prev, v *view) {
	primary := v.primary()
	for i, n := range v.nodes {
		if n != primary {
			n.interruptDials(slotPrimary)
		}
		wentDown := false
		if j := prev.index(n); j >= 0 {
			wentDown = prev.s.Nodes[j].State != topology.StateDown
		}
		st := v.s.Nodes[i]
		wentDown = wentDown && st.State == topology.StateDown && !errors.Is(st.LastErr, errDrained)
		cause := errWentDown
		if timedOut(st.LastErr) {
			cause = errHung
		}
		if n == m.lastPrimary && n != primary && (primary != nil || wentDown && cause == errHung) {
			if primary != nil && !wentDown {
				cause = errDemoted
			}
			if k := n.interruptConns(slotPrimary, cause); k > 0 {
				m.c.log.Warn("unified: interrupted sessions on the old primary", "node", n.name, "connections", k)
			}
		}
		if wentDown {
			n.interruptDials(slotRead)
			n.interruptDials(slotFallback)
			if k := n.interruptConns(slotRead, cause) + n.interruptConns(slotFallback, cause); k > 0 {
				m.c.log.Warn("unified: interrupted reads on a node that went down", "node", n.name, "connections", k)
			}
		}
	}
}

func (m *monitor) logChange(prev, s *topology.Snapshot) {
	for i, n := range s.Nodes {
		if prev != nil && i < len(prev.Nodes) && prev.Nodes[i].Name == n.Name && prev.Nodes[i].Role == n.Role && prev.Nodes[i].State == n.State {
			continue
		}
		attrs := []any{"node", n.Name, "role", n.Role.String(), "state", n.State.String()}
		if n.LastErr != nil {
			attrs = append(attrs, "error", n.LastErr.Error())
		}
		if n.AliasOf != "" {
			attrs = append(attrs, "alias_of", n.AliasOf)
		}
		m.c.log.Info("unified: node changed", attrs...)
	}
}
