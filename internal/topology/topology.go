// Package topology turns probe observations of a set of PostgreSQL nodes into
// an immutable [Snapshot]: each node's role and state, which node is the
// primary, and how far each replica lags. It is pure logic: no I/O, no clock
// (the caller passes now), no goroutines.
//
// # Build rules
//
// [Build] takes the previous snapshot (nil for the first), one [Observation]
// per node, the primary's LSN [History] and the lag [Bounds]:
//
//   - A node whose probe failed (Err != nil) is [StateDown]. It keeps its last
//     known Role, LSN, Timeline and RTT; LastErr is the probe's error and
//     LastSeen stays the time of its last successful probe. Lag is 0.
//   - A node that answered is a primary candidate when it is not in recovery
//     (InRecovery false), otherwise a replica.
//   - Timeline guard. MaxTimeline is the highest timeline ever seen on a
//     primary candidate: prev's, raised by every candidate of this round. A
//     candidate on a lower timeline is an old primary that came back without
//     being rewound: it is [StateFenced], even when it is the only candidate.
//   - Among the remaining candidates the highest (Timeline, LSN) wins. On a
//     tie, prev's primary keeps the role if it is among the tied nodes, else
//     the lowest index wins. Every other candidate is [StateFenced] with
//     [RolePrimary]: it claims to be a primary and gets no writes.
//   - Fencing sticks. A node fenced in prev, or fenced before it went down,
//     stays fenced for as long as it reports InRecovery false; it is released
//     when it reports recovery (it became a replica). The one exception: it
//     wins when its timeline is strictly higher than prev's MaxTimeline and
//     than every other candidate's (it was promoted again since). So two
//     split-brain primaries on one timeline never trade places, even while
//     the winner is briefly down.
//   - No winner (no candidate, or all fenced): Primary is -1.
//   - The winner's LSN is added to the History, after a Reset when the
//     winner is not prev's primary (LSNs of different nodes do not compare).
//   - Replicas: LagBytes = primary LSN - replica LSN (0 if the replica is
//     ahead), Lag = History.TimeLag(replica LSN, now). A replica exceeding a
//     non-zero bound is [StateLagging], else [StateUp]. With no primary its
//     lag is unknown: LagBytes and Lag are 0 and it stays [StateUp], so reads
//     keep flowing during a failover.
//   - Since is the time State last changed (now for a node new in this
//     snapshot); Generation is prev's + 1.
//
// Limitation of the timeline guard: MaxTimeline only grows. A cluster
// recreated from scratch behind the same addresses (timeline 1 again) stays
// fenced until the snapshot chain is restarted (a new Connector).
//
// # Concurrency
//
// A [Snapshot] is immutable after Build and safe to share between goroutines
// (the driver publishes it through an atomic.Pointer). Build never modifies
// prev. A [History] is not safe for concurrent use.
package topology

import (
	"fmt"
	"strconv"
	"time"
)

// Role is what a node is in replication.
type Role uint8

const (
	// RoleUnknown: never successfully probed.
	RoleUnknown Role = iota
	// RolePrimary: not in recovery; accepts writes (if not fenced).
	RolePrimary
	// RoleReplica: in recovery (a streaming standby).
	RoleReplica
)

// String returns "unknown", "primary" or "replica".
func (r Role) String() string {
	switch r {
	case RoleUnknown:
		return "unknown"
	case RolePrimary:
		return "primary"
	case RoleReplica:
		return "replica"
	}
	return "Role(" + strconv.Itoa(int(r)) + ")"
}

// State is whether a node can be used.
type State uint8

const (
	// StateUnknown: not probed yet.
	StateUnknown State = iota
	// StateUp: answered its last probe; usable for its role.
	StateUp
	// StateDown: its last probe failed.
	StateDown
	// StateLagging: a replica behind by more than the Bounds; no reads.
	StateLagging
	// StateFenced: claims to be a primary but lost the election; no writes.
	StateFenced
)

// String returns "unknown", "up", "down", "lagging" or "fenced".
func (s State) String() string {
	switch s {
	case StateUnknown:
		return "unknown"
	case StateUp:
		return "up"
	case StateDown:
		return "down"
	case StateLagging:
		return "lagging"
	case StateFenced:
		return "fenced"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Observation is the result of one probe of one node.
type Observation struct {
	// At is when the probe was answered. The zero time means now.
	At time.Time
	// Err is the probe's error; non-nil means the node is down and the
	// other fields are ignored.
	Err error
	// InRecovery is pg_is_in_recovery(): true on a replica.
	InRecovery bool
	// LSN is the current WAL LSN on a primary, the replay LSN on a replica.
	LSN uint64
	// Timeline is the node's WAL timeline (0 when unknown).
	Timeline uint32
	// RTT is the probe's round-trip time.
	RTT time.Duration
}

// Node is one node in a Snapshot.
type Node struct {
	Name     string
	Role     Role
	State    State
	LSN      uint64 // last known: current WAL LSN on a primary, replay LSN on a replica
	Timeline uint32 // last known
	RTT      time.Duration
	// LagBytes and Lag are how far a replica is behind the primary, in WAL
	// bytes and in time; 0 for primaries, down nodes, and when there is no
	// primary.
	LagBytes uint64
	Lag      time.Duration
	LastErr  error     // the last probe's error; nil when it succeeded
	LastSeen time.Time // the last successful probe; zero if never
	Since    time.Time // when State last changed

	// fenced: this node was fenced and has not reported recovery since. It
	// survives StateDown so that fencing sticks across an outage.
	fenced bool
}

// Snapshot is the topology at one moment. It is immutable after Build.
type Snapshot struct {
	Nodes       []Node
	Primary     int // index into Nodes; -1 = none
	At          time.Time
	Generation  uint64 // 1 for the first Build, +1 per Build
	MaxTimeline uint32 // highest timeline ever seen on a primary candidate
}

// PrimaryNode returns the primary, if there is one. It is safe on a nil
// Snapshot.
func (s *Snapshot) PrimaryNode() (Node, bool) {
	if s == nil || s.Primary < 0 || s.Primary >= len(s.Nodes) {
		return Node{}, false
	}
	return s.Nodes[s.Primary], true
}

// Changed reports whether s differs from prev in what is worth logging: the
// set of nodes, any node's role or state, or which node is the primary. A nil
// prev (or s) counts as a change unless both are nil.
func (s *Snapshot) Changed(prev *Snapshot) bool {
	if s == nil || prev == nil {
		return s != prev
	}
	if len(s.Nodes) != len(prev.Nodes) || s.primaryName() != prev.primaryName() {
		return true
	}
	for i := range s.Nodes {
		a, b := &s.Nodes[i], &prev.Nodes[i]
		if a.Name != b.Name || a.Role != b.Role || a.State != b.State {
			return true
		}
	}
	return false
}

func (s *Snapshot) primaryName() string {
	if n, ok := s.PrimaryNode(); ok {
		return n.Name
	}
	return ""
}

// Bounds are the limits beyond which a replica is StateLagging. A zero field
// is no limit.
type Bounds struct {
	MaxLag      time.Duration
	MaxLagBytes uint64
}

func (b Bounds) exceeded(lag time.Duration, lagBytes uint64) bool {
	return (b.MaxLag > 0 && lag > b.MaxLag) || (b.MaxLagBytes > 0 && lagBytes > b.MaxLagBytes)
}

// Build returns the snapshot following prev (nil for the first) given one
// observation per node: obs[i] is the probe of names[i]. Nodes are matched
// with prev by name. hist is the primary's LSN history, updated here (nil:
// time lag unknown, 0). now is the time of the snapshot. The rules are in the
// package documentation. Build panics if names and obs differ in length.
func Build(prev *Snapshot, names []string, obs []Observation, hist *History, b Bounds, now time.Time) *Snapshot {
	if len(names) != len(obs) {
		panic(fmt.Sprintf("topology.Build: %d names, %d observations", len(names), len(obs)))
	}
	s := &Snapshot{
		Nodes:   make([]Node, len(names)),
		Primary: -1,
		At:      now,
	}
	prevByName := map[string]*Node{}
	prevPrimary := ""
	if prev != nil {
		s.Generation = prev.Generation
		s.MaxTimeline = prev.MaxTimeline
		for i := range prev.Nodes {
			prevByName[prev.Nodes[i].Name] = &prev.Nodes[i]
		}
		prevPrimary = prev.primaryName()
	}
	s.Generation++
	prevMaxTimeline := s.MaxTimeline

	// Pass 1: per-node facts, and the candidates' highest timeline.
	var candidates []int
	for i, name := range names {
		o := &obs[i]
		n := Node{Name: name}
		if p := prevByName[name]; p != nil {
			n.Role, n.LSN, n.Timeline, n.RTT = p.Role, p.LSN, p.Timeline, p.RTT
			n.LastSeen, n.fenced = p.LastSeen, p.fenced
		}
		if o.Err != nil {
			n.State = StateDown
			n.LastErr = o.Err
			s.Nodes[i] = n
			continue
		}
		n.State = StateUp
		n.LSN, n.Timeline, n.RTT = o.LSN, o.Timeline, o.RTT
		n.LastSeen = o.At
		if n.LastSeen.IsZero() {
			n.LastSeen = now
		}
		if o.InRecovery {
			n.Role = RoleReplica
			n.fenced = false // reported recovery: released
		} else {
			n.Role = RolePrimary
			candidates = append(candidates, i)
			s.MaxTimeline = max(s.MaxTimeline, o.Timeline)
		}
		s.Nodes[i] = n
	}

	// Pass 2: elect among the candidates that pass the timeline guard and are
	// not held fenced.
	winner := -1
	for _, i := range candidates {
		n := &s.Nodes[i]
		if n.Timeline < s.MaxTimeline {
			continue
		}
		if n.fenced && !newTimeline(s, candidates, i, prevMaxTimeline) {
			continue
		}
		if winner < 0 || beats(n, &s.Nodes[winner], prevPrimary) {
			winner = i
		}
	}
	for _, i := range candidates {
		n := &s.Nodes[i]
		if i == winner {
			n.fenced = false
			continue
		}
		n.State = StateFenced
		n.fenced = true
	}
	s.Primary = winner

	// Pass 3: lag, against the winner.
	var primaryLSN uint64
	if winner >= 0 {
		p := &s.Nodes[winner]
		primaryLSN = p.LSN
		if hist != nil {
			if p.Name != prevPrimary {
				hist.Reset()
			}
			at := obs[winner].At
			if at.IsZero() {
				at = now
			}
			hist.Add(at, p.LSN)
		}
	}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if n.State != StateUp || n.Role != RoleReplica || winner < 0 {
			continue
		}
		if primaryLSN > n.LSN {
			n.LagBytes = primaryLSN - n.LSN
		}
		n.Lag = hist.TimeLag(n.LSN, now)
		if b.exceeded(n.Lag, n.LagBytes) {
			n.State = StateLagging
		}
	}

	// Since: carried while the state holds.
	for i := range s.Nodes {
		n := &s.Nodes[i]
		n.Since = now
		if p := prevByName[n.Name]; p != nil && p.State == n.State {
			n.Since = p.Since
		}
	}
	return s
}

// newTimeline reports whether candidate i is on a timeline strictly higher
// than prevMax and every other candidate's: promoted again since it was
// fenced.
func newTimeline(s *Snapshot, candidates []int, i int, prevMax uint32) bool {
	tl := s.Nodes[i].Timeline
	if tl <= prevMax {
		return false
	}
	for _, j := range candidates {
		if j != i && s.Nodes[j].Timeline >= tl {
			return false
		}
	}
	return true
}

// beats reports whether a should win over b, the best so far (b has the
// lower index): higher (Timeline, LSN), and on a tie prev's primary.
func beats(a, b *Node, prevPrimary string) bool {
	if a.Timeline != b.Timeline {
		return a.Timeline > b.Timeline
	}
	if a.LSN != b.LSN {
		return a.LSN > b.LSN
	}
	return a.Name == prevPrimary && b.Name != prevPrimary
}
