package unified

import (
	"github.com/unifiedsql/unified/internal/topology"
)

// replicaEligible reports whether node i of s may serve reads: a replica that
// is up (not down, not lagging past the bounds, not fenced).
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
