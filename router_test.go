package unified

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/unifiedsql/unified/internal/topology"
)

func snap(primary int, nodes ...topology.Node) *topology.Snapshot {
	return &topology.Snapshot{Primary: primary, Nodes: nodes}
}

func replica(state topology.State, rtt time.Duration) topology.Node {
	return topology.Node{Role: topology.RoleReplica, State: state, RTT: rtt}
}

var primaryUp = topology.Node{Role: topology.RolePrimary, State: topology.StateUp}

func TestPickReplica(t *testing.T) {
	up := topology.StateUp
	cases := []struct {
		name    string
		s       *topology.Snapshot
		policy  ReplicaPolicy
		cursor  uint64
		allowed func(int) bool
		want    int
	}{
		{"nil snapshot", nil, PolicyRoundRobin, 0, nil, -1},
		{"primary only", snap(0, primaryUp), PolicyRoundRobin, 0, nil, -1},
		{"round robin first", snap(0, primaryUp, replica(up, 0), replica(up, 0)), PolicyRoundRobin, 0, nil, 1},
		{"round robin second", snap(0, primaryUp, replica(up, 0), replica(up, 0)), PolicyRoundRobin, 1, nil, 2},
		{"round robin wraps", snap(0, primaryUp, replica(up, 0), replica(up, 0)), PolicyRoundRobin, 2, nil, 1},
		{"random uses cursor", snap(0, primaryUp, replica(up, 0), replica(up, 0)), PolicyRandom, 7, nil, 2},
		{"down replica skipped", snap(0, primaryUp, replica(topology.StateDown, 0), replica(up, 0)), PolicyRoundRobin, 0, nil, 2},
		{"lagging replica skipped", snap(0, primaryUp, replica(topology.StateLagging, 0), replica(up, 0)), PolicyRoundRobin, 0, nil, 2},
		{"fenced node skipped", snap(0, primaryUp, topology.Node{Role: topology.RolePrimary, State: topology.StateFenced}), PolicyRoundRobin, 0, nil, -1},
		{"all replicas down", snap(0, primaryUp, replica(topology.StateDown, 0), replica(topology.StateLagging, 0)), PolicyRoundRobin, 0, nil, -1},
		{"breaker open skipped", snap(0, primaryUp, replica(up, 0), replica(up, 0)), PolicyRoundRobin, 0, func(i int) bool { return i != 1 }, 2},
		{"nothing allowed", snap(0, primaryUp, replica(up, 0)), PolicyRoundRobin, 0, func(int) bool { return false }, -1},
		{"least rtt", snap(0, primaryUp, replica(up, 3*time.Millisecond), replica(up, time.Millisecond), replica(up, 2*time.Millisecond)), PolicyLeastRTT, 0, nil, 2},
		{"least rtt ignores ineligible", snap(0, primaryUp, replica(up, 3*time.Millisecond), replica(topology.StateDown, time.Microsecond)), PolicyLeastRTT, 0, nil, 1},
		{"replicas during failover (no primary)", snap(-1, topology.Node{Role: topology.RolePrimary, State: topology.StateDown}, replica(up, 0)), PolicyRoundRobin, 0, nil, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, pickReplica(tc.s, tc.policy, tc.cursor, tc.allowed))
		})
	}
}

func TestRoundRobinSpreadsEvenly(t *testing.T) {
	s := snap(0, primaryUp, replica(topology.StateUp, 0), replica(topology.StateUp, 0))
	counts := map[int]int{}
	for cursor := uint64(0); cursor < 1000; cursor++ {
		counts[pickReplica(s, PolicyRoundRobin, cursor, nil)]++
	}
	assert.Equal(t, map[int]int{1: 500, 2: 500}, counts)
}
