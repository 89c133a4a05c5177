package topology

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

var errProbe = errors.New("probe: connection refused")

func prim(lsn uint64, tl uint32) Observation {
	return Observation{LSN: lsn, Timeline: tl, RTT: time.Millisecond}
}
func repl(lsn uint64) Observation {
	return Observation{InRecovery: true, LSN: lsn, RTT: time.Millisecond}
}

// replTL is a replica whose timeline is known.
func replTL(lsn uint64, tl uint32) Observation {
	o := repl(lsn)
	o.Timeline = tl
	return o
}
func down() Observation { return Observation{Err: errProbe} }

var names3 = []string{"db1", "db2", "db3"}

// run builds one snapshot per round, a second apart, and returns them all.
func run(t *testing.T, names []string, rounds [][]Observation, b Bounds) []*Snapshot {
	t.Helper()
	var hist History
	var prev *Snapshot
	var out []*Snapshot
	for r, obs := range rounds {
		prev = Build(prev, names, obs, &hist, b, t0.Add(time.Duration(r)*time.Second))
		out = append(out, prev)
	}
	return out
}

func states(s *Snapshot) []State {
	var st []State
	for _, n := range s.Nodes {
		st = append(st, n.State)
	}
	return st
}

func roles(s *Snapshot) []Role {
	var r []Role
	for _, n := range s.Nodes {
		r = append(r, n.Role)
	}
	return r
}

const (
	up      = StateUp
	dn      = StateDown
	fenced  = StateFenced
	lagging = StateLagging
	P       = RolePrimary
	R       = RoleReplica
	U       = RoleUnknown
)

func TestElection(t *testing.T) {
	tests := []struct {
		name        string
		names       []string
		rounds      [][]Observation
		primary     int
		states      []State
		roles       []Role
		maxTimeline uint32
	}{
		{
			name:        "single primary",
			rounds:      [][]Observation{{prim(100, 1), repl(100), repl(100)}},
			primary:     0,
			states:      []State{up, up, up},
			roles:       []Role{P, R, R},
			maxTimeline: 1,
		},
		{
			name:        "primary not first",
			rounds:      [][]Observation{{repl(100), repl(100), prim(100, 1)}},
			primary:     2,
			states:      []State{up, up, up},
			roles:       []Role{R, R, P},
			maxTimeline: 1,
		},
		{
			name:        "two primaries, higher timeline wins despite lower LSN",
			rounds:      [][]Observation{{prim(500, 1), prim(100, 2), replTL(100, 2)}},
			primary:     1,
			states:      []State{fenced, up, up},
			roles:       []Role{P, P, R},
			maxTimeline: 2,
		},
		{
			name:        "same timeline, higher LSN wins",
			rounds:      [][]Observation{{prim(100, 2), prim(200, 2), replTL(200, 2)}},
			primary:     1,
			states:      []State{fenced, up, up},
			roles:       []Role{P, P, R},
			maxTimeline: 2,
		},
		{
			name:        "tie without history: lowest index",
			rounds:      [][]Observation{{replTL(100, 1), prim(100, 1), prim(100, 1)}},
			primary:     1,
			states:      []State{up, up, fenced},
			roles:       []Role{R, P, P},
			maxTimeline: 1,
		},
		{
			name: "tie keeps the previous primary",
			rounds: [][]Observation{
				{repl(100), repl(100), prim(100, 1)},
				{prim(100, 1), replTL(100, 1), prim(100, 1)},
			},
			primary:     2,
			states:      []State{fenced, up, up},
			roles:       []Role{P, R, P},
			maxTimeline: 1,
		},
		{
			name: "failover to a promoted replica",
			rounds: [][]Observation{
				{prim(100, 1), repl(100), repl(100)},
				{down(), repl(100), repl(100)},
				{down(), prim(100, 2), repl(100)},
			},
			primary:     1,
			states:      []State{dn, up, up},
			roles:       []Role{P, P, R},
			maxTimeline: 2,
		},
		{
			name: "old primary back on a lower timeline as only candidate stays fenced",
			rounds: [][]Observation{
				{prim(100, 1), repl(100), repl(100)},
				{down(), prim(200, 2), replTL(200, 2)},
				{prim(900, 1), down(), replTL(200, 2)},
			},
			primary:     -1,
			states:      []State{fenced, dn, up},
			roles:       []Role{P, P, R},
			maxTimeline: 2,
		},
		{
			name: "old primary back while the new one is up",
			rounds: [][]Observation{
				{prim(100, 1), repl(100), repl(100)},
				{down(), prim(200, 2), replTL(200, 2)},
				{prim(900, 1), prim(210, 2), replTL(210, 2)},
			},
			primary:     1,
			states:      []State{fenced, up, up},
			roles:       []Role{P, P, R},
			maxTimeline: 2,
		},
		{
			name: "fenced node stays fenced while the winner is down",
			rounds: [][]Observation{
				{prim(100, 2), prim(200, 2), replTL(200, 2)},
				{prim(300, 2), down(), replTL(200, 2)},
			},
			primary:     -1,
			states:      []State{fenced, dn, up},
			roles:       []Role{P, P, R},
			maxTimeline: 2,
		},
		{
			name: "fenced node does not take over with a higher LSN on the same timeline",
			rounds: [][]Observation{
				{prim(100, 2), prim(200, 2), replTL(200, 2)},
				{prim(400, 2), prim(250, 2), replTL(250, 2)},
			},
			primary:     1,
			states:      []State{fenced, up, up},
			roles:       []Role{P, P, R},
			maxTimeline: 2,
		},
		{
			name: "fencing survives the fenced node going down",
			rounds: [][]Observation{
				{prim(100, 2), prim(200, 2), replTL(200, 2)},
				{down(), prim(210, 2), replTL(210, 2)},
				{prim(900, 2), prim(220, 2), replTL(220, 2)},
			},
			primary:     1,
			states:      []State{fenced, up, up},
			roles:       []Role{P, P, R},
			maxTimeline: 2,
		},
		{
			name: "fenced node released after reporting recovery",
			rounds: [][]Observation{
				{prim(100, 2), prim(200, 2), replTL(200, 2)},
				{replTL(200, 2), prim(300, 2), replTL(300, 2)},
				{replTL(300, 2), prim(300, 2), replTL(300, 2)}, // it replays from the primary
			},
			primary:     1,
			states:      []State{up, up, up},
			roles:       []Role{R, P, R},
			maxTimeline: 2,
		},
		{
			name: "released node can be promoted and win later",
			rounds: [][]Observation{
				{prim(100, 2), prim(200, 2), replTL(200, 2)},
				{replTL(200, 2), down(), replTL(200, 2)},
				{prim(200, 3), down(), replTL(200, 3)},
			},
			primary:     0,
			states:      []State{up, dn, up},
			roles:       []Role{P, P, R},
			maxTimeline: 3,
		},
		{
			name: "fenced node wins with a strictly higher timeline",
			rounds: [][]Observation{
				{prim(100, 2), prim(200, 2), replTL(200, 2)},
				{prim(50, 3), prim(300, 2), replTL(50, 3)},
			},
			primary:     0,
			states:      []State{up, fenced, up},
			roles:       []Role{P, P, R},
			maxTimeline: 3,
		},
		{
			name: "fenced node sharing a new timeline does not win",
			rounds: [][]Observation{
				{prim(100, 2), prim(200, 2), replTL(200, 2)},
				{prim(500, 3), prim(300, 3), replTL(300, 3)},
			},
			primary:     1,
			states:      []State{fenced, up, up},
			roles:       []Role{P, P, R},
			maxTimeline: 3,
		},
		{
			name:        "all down",
			rounds:      [][]Observation{{prim(100, 1), repl(100), repl(100)}, {down(), down(), down()}},
			primary:     -1,
			states:      []State{dn, dn, dn},
			roles:       []Role{P, R, R},
			maxTimeline: 1,
		},
		{
			name:        "never seen, down: a replica never shown within the bounds",
			rounds:      [][]Observation{{down(), down(), repl(100)}},
			primary:     -1,
			states:      []State{dn, dn, lagging},
			roles:       []Role{U, U, R},
			maxTimeline: 0,
		},
		{
			name:    "no nodes",
			names:   []string{},
			rounds:  [][]Observation{{}},
			primary: -1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			names := tt.names
			if names == nil {
				names = names3
			}
			snaps := run(t, names, tt.rounds, Bounds{})
			s := snaps[len(snaps)-1]
			assert.Equal(t, tt.primary, s.Primary, "Primary")
			assert.Equal(t, tt.states, states(s), "states")
			assert.Equal(t, tt.roles, roles(s), "roles")
			assert.Equal(t, tt.maxTimeline, s.MaxTimeline, "MaxTimeline")
			p, ok := s.PrimaryNode()
			assert.Equal(t, tt.primary >= 0, ok)
			if ok {
				assert.Equal(t, names[tt.primary], p.Name)
				assert.Equal(t, StateUp, p.State)
				assert.Zero(t, p.LagBytes)
				assert.Zero(t, p.Lag)
			}
		})
	}
}

func TestDownNodeKeepsLastKnown(t *testing.T) {
	var hist History
	s1 := Build(nil, names3, []Observation{prim(100, 1), {InRecovery: true, LSN: 90, Timeline: 1, RTT: 3 * time.Millisecond, At: t0}, repl(80)}, &hist, Bounds{}, t0)
	require.Equal(t, 0, s1.Primary)
	assert.Equal(t, t0, s1.Nodes[1].LastSeen)
	assert.NoError(t, s1.Nodes[1].LastErr)

	t1 := t0.Add(time.Second)
	s2 := Build(s1, names3, []Observation{prim(110, 1), down(), repl(110)}, &hist, Bounds{}, t1)
	n := s2.Nodes[1]
	assert.Equal(t, StateDown, n.State)
	assert.Equal(t, RoleReplica, n.Role)
	assert.Equal(t, uint64(90), n.LSN)
	assert.Equal(t, uint32(1), n.Timeline)
	assert.Equal(t, 3*time.Millisecond, n.RTT)
	assert.Equal(t, t0, n.LastSeen, "LastSeen is the last successful probe")
	assert.ErrorIs(t, n.LastErr, errProbe)
	assert.Equal(t, t1, n.Since)
	assert.Zero(t, n.LagBytes)
	assert.Zero(t, n.Lag)

	// An observation without At is seen at now.
	assert.Equal(t, t1, s2.Nodes[2].LastSeen)
}

func TestSince(t *testing.T) {
	snaps := run(t, names3, [][]Observation{
		{prim(100, 1), repl(100), repl(100)},
		{prim(100, 1), repl(100), repl(100)},
		{prim(100, 1), down(), repl(100)},
		{prim(100, 1), down(), repl(100)},
		{prim(100, 1), repl(100), repl(100)},
	}, Bounds{})
	for _, s := range snaps {
		assert.Equal(t, t0, s.Nodes[0].Since)
		assert.Equal(t, t0, s.Nodes[2].Since)
	}
	assert.Equal(t, t0, snaps[1].Nodes[1].Since)
	assert.Equal(t, t0.Add(2*time.Second), snaps[2].Nodes[1].Since)
	assert.Equal(t, t0.Add(2*time.Second), snaps[3].Nodes[1].Since)
	assert.Equal(t, t0.Add(4*time.Second), snaps[4].Nodes[1].Since)
}

func TestGeneration(t *testing.T) {
	snaps := run(t, names3, [][]Observation{
		{prim(100, 1), repl(100), repl(100)},
		{down(), down(), down()},
		{prim(100, 1), repl(100), repl(100)},
	}, Bounds{})
	for i, s := range snaps {
		assert.Equal(t, uint64(i+1), s.Generation)
		assert.Equal(t, t0.Add(time.Duration(i)*time.Second), s.At)
	}
}

func cloneSnapshot(s *Snapshot) *Snapshot {
	c := *s
	c.Nodes = append([]Node(nil), s.Nodes...)
	return &c
}

func TestBuildNeverMutatesPrev(t *testing.T) {
	var hist History
	prev := Build(nil, names3, []Observation{prim(100, 2), prim(200, 2), repl(90)}, &hist, Bounds{MaxLagBytes: 10}, t0)
	before := cloneSnapshot(prev)

	rounds := [][]Observation{
		{down(), down(), down()},
		{repl(300), prim(400, 3), repl(10)},
		{prim(900, 1), prim(400, 2), repl(400)},
	}
	for i, obs := range rounds {
		next := Build(prev, names3, obs, &hist, Bounds{MaxLagBytes: 10}, t0.Add(time.Duration(i+1)*time.Second))
		assert.Equal(t, before, prev, "round %d changed prev", i)
		next.Nodes[0].Name = "scribbled"
		assert.Equal(t, "db1", prev.Nodes[0].Name, "round %d: new snapshot shares prev's nodes", i)
	}

	// Nor the caller's slices.
	names := []string{"a", "b"}
	obs := []Observation{prim(1, 1), repl(1)}
	s := Build(nil, names, obs, nil, Bounds{}, t0)
	s.Nodes[0].Name = "x"
	assert.Equal(t, []string{"a", "b"}, names)
	assert.Equal(t, []Observation{prim(1, 1), repl(1)}, obs)
}

func TestBuildPanicsOnMismatch(t *testing.T) {
	assert.Panics(t, func() { Build(nil, names3, []Observation{prim(1, 1)}, nil, Bounds{}, t0) })
}

func TestNodesMatchedByName(t *testing.T) {
	var hist History
	s1 := Build(nil, []string{"a", "b"}, []Observation{prim(100, 2), prim(200, 2)}, &hist, Bounds{}, t0)
	require.Equal(t, 1, s1.Primary)
	// Same nodes, other order: "a" is still held fenced, "b" still primary.
	s2 := Build(s1, []string{"b", "a"}, []Observation{prim(200, 2), prim(300, 2)}, &hist, Bounds{}, t0.Add(time.Second))
	assert.Equal(t, 0, s2.Primary)
	assert.Equal(t, StateFenced, s2.Nodes[1].State)
}

func TestLag(t *testing.T) {
	t.Run("idle cluster has no lag, even after minutes", func(t *testing.T) {
		var hist History
		var s *Snapshot
		for sec := 0; sec <= 600; sec++ {
			s = Build(s, names3, []Observation{prim(5000, 1), repl(5000), repl(5000)}, &hist, Bounds{MaxLag: time.Second}, t0.Add(time.Duration(sec)*time.Second))
		}
		for _, n := range s.Nodes {
			assert.Zero(t, n.Lag, n.Name)
			assert.Zero(t, n.LagBytes, n.Name)
			assert.Equal(t, StateUp, n.State, n.Name)
		}
		assert.Equal(t, 2, hist.Len(), "an idle run is kept as two samples")
	})

	t.Run("paused replica lag grows with now", func(t *testing.T) {
		var hist History
		var s *Snapshot
		// The primary writes 100 bytes a second; db3 stops replaying at
		// t0+10s (LSN 1000).
		for sec := 0; sec <= 120; sec++ {
			now := t0.Add(time.Duration(sec) * time.Second)
			lsn := uint64(sec) * 100
			s = Build(s, names3, []Observation{prim(lsn, 1), repl(lsn), repl(min(lsn, 1000))}, &hist, Bounds{MaxLag: 30 * time.Second}, now)
			paused := s.Nodes[2]
			wantLag := max(0, time.Duration(sec-10)*time.Second)
			assert.Equal(t, wantLag, paused.Lag, "second %d", sec)
			assert.Equal(t, lsn-min(lsn, 1000), paused.LagBytes, "second %d", sec)
			if wantLag > 30*time.Second {
				assert.Equal(t, StateLagging, paused.State, "second %d", sec)
			} else {
				assert.Equal(t, StateUp, paused.State, "second %d", sec)
			}
			assert.Zero(t, s.Nodes[1].Lag)
			assert.Equal(t, StateUp, s.Nodes[1].State)
		}
		// Replay resumes: Up again, Since moves.
		now := t0.Add(121 * time.Second)
		s = Build(s, names3, []Observation{prim(12100, 1), repl(12100), repl(12100)}, &hist, Bounds{MaxLag: 30 * time.Second}, now)
		assert.Equal(t, StateUp, s.Nodes[2].State)
		assert.Equal(t, now, s.Nodes[2].Since)
	})

	t.Run("primary busy then idle, replica paused", func(t *testing.T) {
		var hist History
		var s *Snapshot
		// Writes stop at t0+10s (LSN 1000); the replica stopped at 500.
		for sec := 0; sec <= 100; sec++ {
			lsn := uint64(min(sec, 10)) * 100
			s = Build(s, names3, []Observation{prim(lsn, 1), repl(lsn), repl(min(lsn, 500))}, &hist, Bounds{}, t0.Add(time.Duration(sec)*time.Second))
		}
		assert.Equal(t, 95*time.Second, s.Nodes[2].Lag)
		assert.Equal(t, uint64(500), s.Nodes[2].LagBytes)
		assert.Zero(t, s.Nodes[1].Lag)
	})

	t.Run("bounds", func(t *testing.T) {
		tests := []struct {
			name  string
			b     Bounds
			want  State
			lagBy uint64
		}{
			{"no bounds", Bounds{}, up, 100},
			{"bytes exceeded", Bounds{MaxLagBytes: 99}, lagging, 100},
			{"bytes at the bound", Bounds{MaxLagBytes: 100}, up, 100},
			{"time exceeded", Bounds{MaxLag: 4 * time.Second}, lagging, 100},
			{"time at the bound", Bounds{MaxLag: 5 * time.Second}, up, 100},
			{"both, time exceeded", Bounds{MaxLag: time.Second, MaxLagBytes: 1000}, lagging, 100},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var hist History
				// The primary was at 900 at t0 and at 1000 at t0+1s; the
				// replica at 900 is 100 bytes and, at t0+5s, 5s behind.
				s := Build(nil, names3, []Observation{prim(900, 1), repl(900), repl(900)}, &hist, tt.b, t0)
				s = Build(s, names3, []Observation{prim(1000, 1), repl(1000), repl(900)}, &hist, tt.b, t0.Add(time.Second))
				s = Build(s, names3, []Observation{prim(1000, 1), repl(1000), repl(900)}, &hist, tt.b, t0.Add(5*time.Second))
				n := s.Nodes[2]
				assert.Equal(t, tt.lagBy, n.LagBytes)
				assert.Equal(t, 5*time.Second, n.Lag)
				assert.Equal(t, tt.want, n.State)
			})
		}
	})

	t.Run("replica ahead of the primary's sample", func(t *testing.T) {
		var hist History
		s := Build(nil, names3, []Observation{prim(1000, 1), repl(1010), repl(1000)}, &hist, Bounds{MaxLagBytes: 1}, t0)
		assert.Zero(t, s.Nodes[1].LagBytes)
		assert.Zero(t, s.Nodes[1].Lag)
		assert.Equal(t, StateUp, s.Nodes[1].State)
	})

	t.Run("no primary: replicas keep their last verdict, so reads flow", func(t *testing.T) {
		var hist History
		b := Bounds{MaxLagBytes: 1000}
		s := Build(nil, names3, []Observation{prim(1000, 1), repl(1000), repl(1000)}, &hist, b, t0)
		s = Build(s, names3, []Observation{prim(5000, 1), repl(1000), repl(5000)}, &hist, b, t0.Add(time.Second))
		require.Equal(t, StateLagging, s.Nodes[1].State)
		require.Equal(t, StateUp, s.Nodes[2].State)
		s = Build(s, names3, []Observation{down(), repl(1000), repl(5000)}, &hist, b, t0.Add(2*time.Second))
		assert.Equal(t, -1, s.Primary)
		assert.Equal(t, StateLagging, s.Nodes[1].State, "it was behind: still no reads")
		assert.Equal(t, uint64(4000), s.Nodes[1].LagBytes, "its last known lag")
		assert.Equal(t, StateUp, s.Nodes[2].State, "it was within the bounds: reads go on")
	})

	t.Run("nil history: time lag 0, bytes still counted", func(t *testing.T) {
		s := Build(nil, names3, []Observation{prim(1000, 1), repl(100), repl(1000)}, nil, Bounds{MaxLag: time.Nanosecond}, t0.Add(time.Hour))
		assert.Equal(t, uint64(900), s.Nodes[1].LagBytes)
		assert.Zero(t, s.Nodes[1].Lag)
		assert.Equal(t, StateUp, s.Nodes[1].State)
	})

	t.Run("history reset when the primary changes", func(t *testing.T) {
		var hist History
		s := Build(nil, names3, []Observation{prim(1000, 1), repl(1000), repl(1000)}, &hist, Bounds{}, t0)
		s = Build(s, names3, []Observation{prim(2000, 1), repl(1000), repl(1000)}, &hist, Bounds{}, t0.Add(time.Second))
		require.Equal(t, 2, hist.Len())
		// db2 promoted at LSN 1500 (ahead of nothing in db1's history).
		s = Build(s, names3, []Observation{down(), prim(1500, 2), repl(1000)}, &hist, Bounds{}, t0.Add(10*time.Second))
		assert.Equal(t, 1, hist.Len())
		// db3 still at 1000 is older than every sample of the new primary:
		// its lag is unknown, at least the samples' span.
		assert.Equal(t, time.Duration(0), s.Nodes[2].Lag)
		assert.True(t, s.Nodes[2].LagUnknown)
		assert.Equal(t, StateLagging, s.Nodes[2].State, "not eligible until shown within the bounds")
		s = Build(s, names3, []Observation{down(), prim(1600, 2), repl(1000)}, &hist, Bounds{}, t0.Add(15*time.Second))
		assert.Equal(t, 5*time.Second, s.Nodes[2].Lag, "lower bound: since the oldest sample")
		assert.Equal(t, uint64(600), s.Nodes[2].LagBytes)
		assert.Equal(t, StateLagging, s.Nodes[2].State)
		s = Build(s, names3, []Observation{down(), prim(1700, 2), repl(1600)}, &hist, Bounds{}, t0.Add(16*time.Second))
		assert.False(t, s.Nodes[2].LagUnknown, "caught up past the oldest sample")
		assert.Equal(t, StateUp, s.Nodes[2].State)
	})
}

func TestHistoryTimeLag(t *testing.T) {
	sec := func(n float64) time.Time { return t0.Add(time.Duration(n * float64(time.Second))) }
	type smp struct {
		at  float64
		lsn uint64
	}
	big := uint64(1) << 63
	tests := []struct {
		name    string
		samples []smp
		replay  uint64
		now     float64
		want    time.Duration
	}{
		{"empty", nil, 5, 100, 0},
		{"at newest", []smp{{0, 1000}, {10, 2000}}, 2000, 30, 0},
		{"past newest", []smp{{0, 1000}, {10, 2000}}, 2500, 30, 0},
		{"midpoint", []smp{{0, 1000}, {10, 2000}}, 1500, 30, 25 * time.Second},
		{"quarter", []smp{{0, 1000}, {10, 2000}}, 1250, 10, 7500 * time.Millisecond},
		{"exactly at a sample", []smp{{0, 1000}, {10, 2000}, {20, 3000}}, 2000, 30, 20 * time.Second},
		{"at oldest", []smp{{0, 1000}, {10, 2000}}, 1000, 30, 30 * time.Second},
		{"older than every sample", []smp{{5, 1000}, {10, 2000}}, 10, 30, 25 * time.Second},
		{"idle run: last time at the LSN", []smp{{0, 1000}, {10, 1000}, {20, 1000}, {30, 2000}}, 1000, 40, 20 * time.Second},
		{"after an idle run", []smp{{0, 1000}, {10, 1000}, {20, 1000}, {30, 2000}}, 1500, 40, 15 * time.Second},
		{"run at the top then a jump", []smp{{0, 1000}, {1, 2000}, {2, 2000}, {3, 2000}, {4, 3000}}, 1500, 10, 9500 * time.Millisecond},
		{"uneven spacing", []smp{{0, 0}, {3, 300}, {4, 1300}}, 800, 4, 500 * time.Millisecond},
		{"huge LSNs are exact", []smp{{0, big}, {10, big + 1<<62}}, big + 1<<61, 10, 5 * time.Second},
		{"now before the sample: never negative", []smp{{0, 1000}, {10, 2000}}, 1500, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h History
			for _, s := range tt.samples {
				h.Add(sec(s.at), s.lsn)
			}
			assert.Equal(t, tt.want, h.TimeLag(tt.replay, sec(tt.now)))
		})
	}
}

func TestHistoryBounds(t *testing.T) {
	t.Run("nil history", func(t *testing.T) {
		var h *History
		assert.Zero(t, h.TimeLag(1, t0))
	})
	t.Run("LSN going backwards resets", func(t *testing.T) {
		var h History
		h.Add(t0, 1000)
		h.Add(t0.Add(time.Second), 2000)
		h.Add(t0.Add(2*time.Second), 500)
		assert.Equal(t, 1, h.Len())
		assert.Equal(t, time.Second, h.TimeLag(100, t0.Add(3*time.Second)))
	})
	t.Run("time going backwards resets", func(t *testing.T) {
		var h History
		h.Add(t0, 1000)
		h.Add(t0.Add(time.Second), 2000)
		h.Add(t0.Add(-time.Second), 3000)
		assert.Equal(t, 1, h.Len())
	})
	t.Run("reset", func(t *testing.T) {
		var h History
		h.Add(t0, 1000)
		h.Add(t0.Add(time.Second), 2000)
		h.Reset()
		assert.Equal(t, 0, h.Len())
		assert.Zero(t, h.TimeLag(1, t0.Add(time.Hour)))
	})
	t.Run("sample count bounded", func(t *testing.T) {
		var h History
		// 10 samples a second, 2000 of them: under the time window.
		for i := range 2000 {
			h.Add(t0.Add(time.Duration(i)*100*time.Millisecond), uint64(i)*10)
		}
		assert.Equal(t, historySamples, h.Len())
		now := t0.Add(200 * time.Second)
		// The oldest kept is sample 976 (LSN 9760) at 97.6s.
		assert.Equal(t, now.Sub(t0.Add(97600*time.Millisecond)), h.TimeLag(0, now))
		// Interpolation still works across the ring's wrap.
		assert.Equal(t, now.Sub(t0.Add(150*time.Second+50*time.Millisecond)), h.TimeLag(15005, now))
	})
	t.Run("time window bounded", func(t *testing.T) {
		var h History
		for i := range 20 * 60 {
			h.Add(t0.Add(time.Duration(i)*time.Second), uint64(i)*10)
		}
		newest := t0.Add(1199 * time.Second)
		assert.Equal(t, 601, h.Len())
		assert.Equal(t, historyWindow, h.TimeLag(0, newest))
	})
	t.Run("idle run does not crowd out history", func(t *testing.T) {
		var h History
		h.Add(t0, 0)
		h.Add(t0.Add(time.Second), 1000)
		for i := 2; i < 5000; i++ {
			h.Add(t0.Add(time.Second+time.Duration(i)*100*time.Millisecond), 1000)
		}
		assert.Equal(t, 3, h.Len())
	})
}

func TestChanged(t *testing.T) {
	var hist History
	base := Build(nil, names3, []Observation{prim(100, 1), repl(100), repl(100)}, &hist, Bounds{}, t0)
	same := Build(base, names3, []Observation{prim(200, 1), repl(150), repl(200)}, &hist, Bounds{}, t0.Add(time.Second))
	stateChanged := Build(base, names3, []Observation{prim(200, 1), down(), repl(200)}, &hist, Bounds{}, t0.Add(time.Second))
	primaryChanged := Build(base, names3, []Observation{down(), prim(200, 2), repl(200)}, &hist, Bounds{}, t0.Add(time.Second))
	fewer := Build(nil, names3[:2], []Observation{prim(100, 1), repl(100)}, &hist, Bounds{}, t0)

	var nilSnap *Snapshot
	assert.False(t, same.Changed(base), "LSN, lag and RTT changes are not logged")
	assert.True(t, stateChanged.Changed(base))
	assert.True(t, primaryChanged.Changed(base))
	assert.True(t, fewer.Changed(base))
	assert.True(t, base.Changed(nil))
	assert.True(t, nilSnap.Changed(base))
	assert.False(t, nilSnap.Changed(nil))
}

func TestPrimaryNodeNil(t *testing.T) {
	var s *Snapshot
	_, ok := s.PrimaryNode()
	assert.False(t, ok)
	_, ok = (&Snapshot{Primary: 3}).PrimaryNode()
	assert.False(t, ok)
}

func TestStrings(t *testing.T) {
	assert.Equal(t, []string{"unknown", "primary", "replica", "Role(9)"},
		[]string{RoleUnknown.String(), RolePrimary.String(), RoleReplica.String(), Role(9).String()})
	assert.Equal(t, []string{"unknown", "up", "down", "lagging", "fenced", "State(9)"},
		[]string{StateUnknown.String(), StateUp.String(), StateDown.String(), StateLagging.String(), StateFenced.String(), State(9).String()})
}

func senders(o Observation, n int) Observation {
	o.Senders = n
	return o
}

func withID(o Observation, sys uint64, started string) Observation {
	o.SystemID, o.Started = sys, started
	return o
}

// TestIssueRules covers the election, fencing and eligibility rules a
// real cluster showed were needed: incumbency on one timeline, fences
// lifted when their reason is gone, replicas of another lineage, replicas
// behind every sample of a new process, aliases.
func TestIssueRules(t *testing.T) {
	tests := []struct {
		name    string
		rounds  [][]Observation
		primary int
		states  []State
	}{
		{
			name: "a same-timeline newcomer with more WAL does not take the role",
			rounds: [][]Observation{
				{prim(100, 1), replTL(100, 1), replTL(100, 1)},
				{prim(110, 1), prim(5000, 1), replTL(110, 1)},
			},
			primary: 0,
			states:  []State{up, fenced, up},
		},
		{
			name: "the newcomer made a standby again: released but suspect, the incumbent never fenced",
			rounds: [][]Observation{
				{prim(100, 1), replTL(100, 1), replTL(100, 1)},
				{prim(110, 1), prim(5000, 1), replTL(110, 1)},
				{prim(120, 1), replTL(5000, 1), replTL(120, 1)},
			},
			primary: 0,
			states:  []State{up, StateDiverged, up}, // it may hold writes it took as a primary
		},
		{
			name: "the fence is lifted when the node that held the role leaves it",
			rounds: [][]Observation{
				{prim(100, 1), replTL(100, 1), replTL(100, 1)},
				{prim(110, 1), prim(5000, 1), replTL(110, 1)},
				{replTL(110, 1), prim(5100, 1), replTL(110, 1)},
			},
			primary: 1,
			states:  []State{lagging, up, lagging}, // both replicas behind the new primary's only sample
		},
		{
			name: "the fence holds while the node that held the role is down",
			rounds: [][]Observation{
				{prim(100, 1), replTL(100, 1), replTL(100, 1)},
				{prim(110, 1), prim(5000, 1), replTL(110, 1)},
				{down(), prim(5100, 1), replTL(110, 1)},
			},
			primary: -1,
			states:  []State{dn, fenced, up},
		},
		{
			name: "a new process, two primaries on one timeline: the one its replicas stream from wins",
			rounds: [][]Observation{
				{senders(prim(100, 1), 1), senders(prim(5000, 1), 0), replTL(100, 1)},
			},
			primary: 0,
			states:  []State{up, fenced, up},
		},
		{
			name: "a new process, two primaries on one timeline, no senders: the longest running wins",
			rounds: [][]Observation{
				{withID(prim(5000, 1), 7, "2026-12-01 10:00:00+00"), withID(prim(100, 1), 7, "2026-12-01 09:00:00+00"), replTL(100, 1)},
			},
			primary: 1,
			states:  []State{fenced, up, up},
		},
		{
			name: "a new process: the stale primary on the lower timeline loses, whatever its WAL",
			rounds: [][]Observation{
				{prim(9000, 1), prim(100, 2), replTL(100, 2)},
			},
			primary: 1,
			states:  []State{fenced, up, up},
		},
		{
			name: "a replica of the fenced old primary's lineage gets no reads",
			rounds: [][]Observation{
				{prim(5000, 1), prim(100, 2), replTL(6000, 1)},
			},
			primary: 1,
			states:  []State{fenced, up, StateDiverged},
		},
		{
			name: "a replica whose timeline is unknown during a split brain gets no reads",
			rounds: [][]Observation{
				{prim(5000, 1), prim(100, 2), repl(100)},
			},
			primary: 1,
			states:  []State{fenced, up, StateDiverged},
		},
		{
			name: "a replica whose timeline is unknown is fine without a competing lineage",
			rounds: [][]Observation{
				{prim(100, 1), repl(100), repl(100)},
			},
			primary: 0,
			states:  []State{up, up, up},
		},
		{
			name: "a replica's known timeline stands while its receiver restarts",
			rounds: [][]Observation{
				{prim(5000, 1), prim(100, 2), replTL(100, 2)},
				{prim(5000, 1), prim(100, 2), repl(100)},
			},
			primary: 1,
			states:  []State{fenced, up, up},
		},
		{
			name: "a new process: a replica behind the only sample is not eligible yet",
			rounds: [][]Observation{
				{prim(1000, 1), repl(1000), repl(10)},
			},
			primary: 0,
			states:  []State{up, up, lagging},
		},
		{
			name: "a replica that can never catch up stays not eligible",
			rounds: [][]Observation{
				{prim(1000, 1), repl(1000), repl(10)},
				{prim(2000, 1), repl(2000), repl(10)},
				{prim(3000, 1), repl(3000), repl(10)},
			},
			primary: 0,
			states:  []State{up, up, lagging},
		},
		{
			name: "the same server under two addresses: one node, the other an alias",
			rounds: [][]Observation{
				{withID(prim(100, 1), 7, "t1"), withID(prim(100, 1), 7, "t1"), withID(repl(100), 7, "t2")},
			},
			primary: 0,
			states:  []State{up, StateAlias, up},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snaps := run(t, names3, tt.rounds, Bounds{})
			s := snaps[len(snaps)-1]
			assert.Equal(t, tt.primary, s.Primary, "Primary")
			assert.Equal(t, tt.states, states(s), "states")
		})
	}
	t.Run("a replica ahead of what the primary reported later has another history", func(t *testing.T) {
		at := func(o Observation, d time.Duration) Observation { o.At = t0.Add(d); return o }
		var hist History
		obs := []Observation{at(prim(1000, 1), 2*time.Millisecond), at(replTL(5000, 1), time.Millisecond), at(replTL(1000, 1), time.Millisecond)}
		s := Build(nil, names3, obs, &hist, Bounds{}, t0.Add(3*time.Millisecond))
		assert.Equal(t, []State{up, StateDiverged, up}, states(s))
		// Seen before the primary's sample: the primary may have moved on.
		obs[1] = at(replTL(1001, 1), 3*time.Millisecond)
		s = Build(s, names3, obs, &hist, Bounds{}, t0.Add(4*time.Millisecond))
		assert.Equal(t, StateUp, s.Nodes[1].State)
	})
	t.Run("an alias names the node it repeats", func(t *testing.T) {
		s := run(t, names3, [][]Observation{{withID(prim(100, 1), 7, "t1"), withID(prim(100, 1), 7, "t1"), repl(100)}}, Bounds{})[0]
		assert.Equal(t, "db1", s.Nodes[1].AliasOf)
	})
	t.Run("a replica behind the only sample: its lag is unknown", func(t *testing.T) {
		s := run(t, names3, [][]Observation{{prim(1000, 1), repl(1000), repl(10)}}, Bounds{})[0]
		assert.True(t, s.Nodes[2].LagUnknown)
		assert.False(t, s.Nodes[1].LagUnknown)
		assert.Equal(t, uint64(990), s.Nodes[2].LagBytes)
	})
}

// The replica db3 followed the new primary db2 (timeline 2), then was
// rebuilt from the old primary db1, which came back on timeline 1 without
// a rewind (fenced): it now replays timeline 1, and its postmaster start
// time changed (another server instance). Its timeline is what it says,
// not the timeline 2 it showed before the rebuild: it is diverged, not
// shown on the primary's lineage and eligible for reads (the rule "a
// replay timeline only grows" used to carry timeline 2 across the rebuild).
func TestRebuiltReplicaOnOldLineageDiverged(t *testing.T) {
	const sys = 42
	rounds := [][]Observation{
		{withID(prim(100, 1), sys, "a1"), withID(replTL(100, 1), sys, "b1"), withID(replTL(100, 1), sys, "c1")},
		{down(), withID(prim(200, 2), sys, "b1"), withID(replTL(200, 2), sys, "c1")},
		{withID(prim(900, 1), sys, "a2"), withID(prim(1000, 2), sys, "b1"), down()},
		{withID(prim(950, 1), sys, "a2"), withID(prim(2000, 2), sys, "b1"), withID(replTL(950, 1), sys, "c2")},
	}
	snaps := run(t, names3, rounds, Bounds{})
	s := snaps[len(snaps)-1]
	assert.Equal(t, 1, s.Primary)
	assert.Equal(t, uint32(1), s.Nodes[2].Timeline, "the rebuilt replica's own timeline")
	assert.Equal(t, StateDiverged, s.Nodes[2].State, "a replica that reports timeline 1 replays the fenced node's lineage")

	// Within one server instance the last known timeline still stands
	// while the replica's WAL receiver restarts (timeline unknown).
	rounds = [][]Observation{
		{withID(prim(100, 2), sys, "a1"), withID(replTL(100, 2), sys, "b1"), withID(replTL(100, 2), sys, "c1")},
		{withID(prim(200, 2), sys, "a1"), withID(replTL(200, 2), sys, "b1"), withID(replTL(200, 0), sys, "c1")},
	}
	s = run(t, names3, rounds, Bounds{})[1]
	assert.Equal(t, uint32(2), s.Nodes[2].Timeline, "the same instance keeps its known timeline")
	assert.Equal(t, StateUp, s.Nodes[2].State)
}

// A new process (no prev) starts while the new primary (timeline 2) is
// down and the old primary came back on timeline 1 without a rewind. The
// only replica already replays timeline 2: timeline 2 exists, so the
// timeline-1 candidate is stale and gets no writes, and stays fenced by
// the guard when that replica goes down too; the timeline-2 primary wins
// when it is back (it used to be elected: the guard counted only the
// candidates' timelines).
func TestStaleOnlyCandidateAtStartFencedByReplicaTimeline(t *testing.T) {
	snaps := run(t, names3, [][]Observation{
		{prim(900, 1), down(), replTL(200, 2)},
		{prim(910, 1), down(), down()},
		{prim(920, 1), prim(300, 2), replTL(300, 2)},
	}, Bounds{})
	assert.Equal(t, -1, snaps[0].Primary, "a primary on timeline 1 while a replica replays timeline 2")
	assert.Equal(t, fenced, snaps[0].Nodes[0].State)
	assert.Equal(t, -1, snaps[1].Primary, "the guard's fence sticks")
	assert.Equal(t, 1, snaps[2].Primary, "the timeline-2 primary, back")
	assert.Equal(t, []State{fenced, up, up}, states(snaps[2]))
}
