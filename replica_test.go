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

// eligibleAnd is the filter readConn gives pickReplica: eligible under the
// Connector's bounds, and allowed (nil: all).
func eligibleAnd(s *topology.Snapshot, allowed func(int) bool) func(int) bool {
	return func(i int) bool { return replicaEligible(s, i) && (allowed == nil || allowed(i)) }
}

func noLoad(int) int64 { return 0 }

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
		{"least rtt", snap(0, primaryUp, replica(up, 30*time.Millisecond), replica(up, time.Millisecond), replica(up, 20*time.Millisecond)), PolicyLeastRTT, 0, nil, 2},
		{"least rtt: the near ones share, first", snap(0, primaryUp, replica(up, 200*time.Microsecond), replica(up, 200*time.Millisecond), replica(up, 900*time.Microsecond)), PolicyLeastRTT, 0, nil, 1},
		{"least rtt: the near ones share, second", snap(0, primaryUp, replica(up, 200*time.Microsecond), replica(up, 200*time.Millisecond), replica(up, 900*time.Microsecond)), PolicyLeastRTT, 1, nil, 3},
		{"least rtt: the far one never", snap(0, primaryUp, replica(up, 200*time.Microsecond), replica(up, 200*time.Millisecond), replica(up, 900*time.Microsecond)), PolicyLeastRTT, 2, nil, 1},
		{"least rtt ignores ineligible", snap(0, primaryUp, replica(up, 3*time.Millisecond), replica(topology.StateDown, time.Microsecond)), PolicyLeastRTT, 0, nil, 1},
		{"replicas during failover (no primary)", snap(-1, topology.Node{Role: topology.RolePrimary, State: topology.StateDown}, replica(up, 0)), PolicyRoundRobin, 0, nil, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, pickReplica(tc.s, tc.policy, tc.cursor, eligibleAnd(tc.s, tc.allowed), noLoad))
		})
	}
}

func TestRoundRobinSpreadsEvenly(t *testing.T) {
	s := snap(0, primaryUp, replica(topology.StateUp, 0), replica(topology.StateUp, 0))
	counts := map[int]int{}
	for cursor := uint64(0); cursor < 1000; cursor++ {
		counts[pickReplica(s, PolicyRoundRobin, cursor, eligibleAnd(s, nil), noLoad)]++
	}
	assert.Equal(t, map[int]int{1: 500, 2: 500}, counts)
}

func TestPickReplicaLeastLoaded(t *testing.T) {
	ms := time.Millisecond
	s := snap(0, primaryUp, replica(topology.StateUp, 2*ms), replica(topology.StateUp, ms), replica(topology.StateUp, 3*ms))
	loads := func(l ...int64) func(int) int64 { return func(i int) int64 { return l[i] } }
	cases := []struct {
		name   string
		cursor uint64
		load   func(int) int64
		want   int
	}{
		// With 3 eligible nodes (1, 2, 3), cursor 0 compares nodes 1 and 2.
		{"the less loaded of the two", 0, loads(0, 5, 1, 0), 2},
		{"the other way round", 0, loads(0, 1, 5, 0), 1},
		{"a tie goes to the lower RTT", 0, loads(0, 4, 4, 0), 2},
		// Cursor 1 compares nodes 2 and 3.
		{"another pair", 1, loads(0, 0, 9, 2), 3},
		{"never the one not drawn", 1, loads(0, 0, 1, 1), 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, pickReplica(s, PolicyLeastLoaded, tc.cursor, eligibleAnd(s, nil), tc.load))
		})
	}
	t.Run("one eligible", func(t *testing.T) {
		one := snap(0, primaryUp, replica(topology.StateDown, 0), replica(topology.StateUp, 0))
		assert.Equal(t, 2, pickReplica(one, PolicyLeastLoaded, 5, eligibleAnd(one, nil), noLoad))
	})
	t.Run("two draws are always two nodes", func(t *testing.T) {
		for cursor := uint64(0); cursor < 100; cursor++ {
			// With the same load everywhere, the lower RTT of the two
			// drawn wins: never node 3, the slowest, unless drawn alone.
			got := pickReplica(s, PolicyLeastLoaded, cursor, eligibleAnd(s, nil), noLoad)
			assert.NotEqual(t, 3, got, "cursor %d", cursor)
		}
	})
	t.Run("spreads over busy replicas", func(t *testing.T) {
		load := []int64{0, 0, 0, 0}
		for k := 0; k < 300; k++ {
			i := pickReplica(s, PolicyLeastLoaded, uint64(k*7919), eligibleAnd(s, nil), func(i int) int64 { return load[i] })
			load[i]++ // statements that never end: the load only grows
		}
		for i := 1; i <= 3; i++ {
			assert.InDelta(t, 100, load[i], 15, "node %d got %d of 300", i, load[i])
		}
	})
}

func TestEligibleFor(t *testing.T) {
	ms := time.Millisecond
	lagging := func(lag time.Duration, bytes uint64, unknown bool) topology.Node {
		return topology.Node{Role: topology.RoleReplica, State: topology.StateLagging, Lag: lag, LagBytes: bytes, LagUnknown: unknown}
	}
	upLag := func(lag time.Duration) topology.Node {
		return topology.Node{Role: topology.RoleReplica, State: topology.StateUp, Lag: lag}
	}
	cases := []struct {
		name  string
		n     topology.Node
		w     readWant
		bytes uint64
		want  bool
	}{
		{"up, the Connector's bounds", upLag(5 * ms), readWant{}, 0, true},
		{"lagging, the Connector's bounds", lagging(20*time.Second, 0, false), readWant{}, 0, false},
		{"a tighter bound excludes an up replica", upLag(50 * ms), readWant{maxLag: 10 * ms, lagSet: true}, 0, false},
		{"a tighter bound keeps a close one", upLag(5 * ms), readWant{maxLag: 10 * ms, lagSet: true}, 0, true},
		{"a looser bound admits a lagging one", lagging(20*time.Second, 0, false), readWant{maxLag: time.Minute, lagSet: true}, 0, true},
		{"never one whose lag is unknown", lagging(0, 100, true), readWant{maxLag: time.Hour, lagSet: true}, 0, false},
		{"the byte bound still applies", lagging(time.Second, 1<<30, false), readWant{maxLag: time.Minute, lagSet: true}, 1 << 20, false},
		{"a primary is never a replica", primaryUp, readWant{maxLag: time.Hour, lagSet: true}, 0, false},
		{"down", topology.Node{Role: topology.RoleReplica, State: topology.StateDown}, readWant{maxLag: time.Hour, lagSet: true}, 0, false},
		{"diverged", topology.Node{Role: topology.RoleReplica, State: topology.StateDiverged}, readWant{maxLag: time.Hour, lagSet: true}, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, eligibleFor(snap(-1, tc.n), 0, tc.w, tc.bytes))
		})
	}
}

func TestNear(t *testing.T) {
	us, ms := time.Microsecond, time.Millisecond
	for _, tc := range []struct {
		rtt, best time.Duration
		near      bool
	}{
		{100 * us, 100 * us, true},   // the fastest itself
		{1200 * us, 100 * us, true},  // same data centre: within 2×+1ms
		{1300 * us, 100 * us, false}, // beyond
		{20 * ms, 10 * ms, true},     // twice as far, both remote
		{22 * ms, 10 * ms, false},    // more than twice
		{200 * ms, 200 * us, false},  // a slow link beside a local one
		{ms, 0, true},                // a round trip of 0 (a fake) is still a base
	} {
		assert.Equal(t, tc.near, near(tc.rtt, tc.best), "%v vs %v", tc.rtt, tc.best)
	}
}

func TestRebalance(t *testing.T) {
	us, ms := time.Microsecond, time.Millisecond
	nodes := []*node{{name: "p"}, {name: "a"}, {name: "b"}}
	mk := func(a, b topology.Node) *view { return &view{s: snap(0, primaryUp, a, b), nodes: nodes} }
	up, down := topology.StateUp, topology.StateDown
	for _, tc := range []struct {
		name       string
		prev, v    *view
		policy     ReplicaPolicy
		rebalanced bool
	}{
		{"first view", nil, mk(replica(up, us), replica(up, us)), PolicyRoundRobin, false},
		{"nothing changed", mk(replica(up, us), replica(up, us)), mk(replica(up, us), replica(up, us)), PolicyRoundRobin, false},
		{"a replica came back", mk(replica(up, us), replica(down, 0)), mk(replica(up, us), replica(up, us)), PolicyRoundRobin, true},
		{"a replica left: its sessions move anyway", mk(replica(up, us), replica(up, us)), mk(replica(up, us), replica(down, 0)), PolicyRoundRobin, false},
		{"least rtt: a link became slow", mk(replica(up, 200*us), replica(up, 300*us)), mk(replica(up, 200*us), replica(up, 200*ms)), PolicyLeastRTT, true},
		{"round robin ignores round trips", mk(replica(up, 200*us), replica(up, 300*us)), mk(replica(up, 200*us), replica(up, 200*ms)), PolicyRoundRobin, false},
		{"least rtt: still slow, already moved", mk(replica(up, 200*us), replica(up, 200*ms)), mk(replica(up, 200*us), replica(up, 210*ms)), PolicyLeastRTT, false},
		{"least rtt: the slow one is near again: reads share it again", mk(replica(up, 200*us), replica(up, 200*ms)), mk(replica(up, 200*us), replica(up, 300*us)), PolicyLeastRTT, true},
	} {
		for _, v := range []*view{tc.prev, tc.v} {
			if v != nil && tc.policy == PolicyLeastRTT {
				v.far = farReplicas(v) // as publish sets it
			}
		}
		assert.Equal(t, tc.rebalanced, rebalance(tc.prev, tc.v), tc.name)
	}
}
