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
//     known Role, LSN, Timeline, RTT and system identity; LastErr is the
//     probe's error and LastSeen stays the time of its last successful
//     probe. Lag is 0.
//   - Aliases. A node that answered with the same server identity (system
//     identifier and postmaster start time) as an earlier node that answered
//     is the same server under another address or name: [StateAlias], with
//     AliasOf naming the first, and it takes no part in the election or the
//     routing. (127.0.0.1 and ::1 of one "localhost" server.)
//   - A node that answered is a primary candidate when it is not in recovery
//     (InRecovery false), otherwise a replica.
//   - Timeline guard. MaxTimeline is the highest timeline ever seen on a
//     primary candidate: prev's, raised by every candidate of this round. A
//     candidate on a lower timeline is an old primary that came back without
//     being rewound: it is [StateFenced], even when it is the only candidate.
//     So is a candidate on a timeline lower than a replica of this round
//     replays: that timeline exists (its primary may be down, as at a
//     process's start while the new primary is down).
//   - Incumbency. Among the candidates on MaxTimeline, prev's primary keeps
//     the role: a newcomer on the same timeline (a standby started without
//     standby.signal, which comes up as a second primary on the same
//     timeline) does not take it, however much WAL it has. Only a higher
//     timeline, or the incumbent leaving the role (down, fenced, a replica,
//     gone), moves it. Without an incumbent (the first snapshot, or the
//     primary left) the highest LSN wins, then the lowest index.
//   - Every other candidate is [StateFenced] with [RolePrimary]: it claims to
//     be a primary and gets no writes. Fencing sticks while its reason
//     stands: a node fenced because another node held the role stays fenced
//     while that node still claims the role (up and primary, or down: a node
//     that does not answer may still be taking writes from others) and is
//     released the moment it does not (it reported recovery, or left the
//     node set); a node fenced by the timeline guard stays fenced until a
//     timeline higher than every other candidate's makes it the winner (it
//     was promoted again). Any fenced node is released when it reports
//     recovery.
//   - No winner (no candidate, or all fenced): Primary is -1.
//   - The winner's LSN is added to the History, after a Reset when the
//     winner is not prev's primary (LSNs of different nodes do not compare).
//   - Replicas, against the winner: a replica whose timeline is known and is
//     not the winner's is [StateDiverged] (it follows another lineage, such
//     as a fenced old primary's, and may hold writes the primary lacks or
//     lack ones it acknowledged); so is a replica whose timeline is unknown
//     (0) while any node is fenced, and so is a replica that replayed past
//     a position the primary reported later (another history on the same
//     timeline number, such as a standby that ran as a second primary for a
//     while), until it replays again or goes down; a fenced primary that
//     reports recovery on the same timeline is suspected the same way from
//     its first answer as a replica. Otherwise LagBytes =
//     primary LSN -
//     replica LSN (0 if the replica is ahead), Lag = History.TimeLag(replica
//     LSN, now). A replica behind the oldest sample the History holds (a new
//     process, a new primary) has a Lag that is only a lower bound: it is
//     [StateLagging] with LagUnknown set until it is shown within the
//     bounds. A replica exceeding a non-zero bound is [StateLagging], else
//     [StateUp].
//   - With no winner, the lineage is MaxTimeline's and the lag cannot be
//     measured: a replica keeps the lag state of prev (so that reads keep
//     flowing during a failover to replicas that were within the bounds),
//     and a replica prev did not show within the bounds is [StateLagging].
//   - Since is the time State last changed (now for a node new in this
//     snapshot); Generation is prev's + 1.
//
// Limitation of the timeline guard: MaxTimeline only grows. A cluster
// recreated from scratch behind the same addresses (timeline 1 again) stays
// fenced until the snapshot chain is restarted (a new Connector). Timelines
// are compared by number: two separate promotions to the same timeline
// number on different forks look alike.
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
	// StateDiverged: a replica not known to be on the primary's timeline;
	// no reads.
	StateDiverged
	// StateAlias: the same server as another node (AliasOf); not used.
	StateAlias
)

// String returns "unknown", "up", "down", "lagging", "fenced", "diverged" or
// "alias".
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
	case StateDiverged:
		return "diverged"
	case StateAlias:
		return "alias"
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
	// SystemID is the server's system identifier (0 when unknown) and
	// Started its postmaster start time ("" when unknown): together the
	// server's identity.
	SystemID uint64
	Started  string
	// Senders is how many WAL senders (streaming replicas) the node serves.
	Senders int
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
	// LagUnknown: the replica is behind every primary sample held, so Lag
	// is only a lower bound (StateLagging until shown within the bounds).
	LagUnknown bool
	LastErr    error     // the last probe's error; nil when it succeeded
	LastSeen   time.Time // the last successful probe; zero if never
	Since      time.Time // when State last changed
	SystemID   uint64    // last known system identifier; 0 if never known
	AliasOf    string    // for StateAlias: the node this one is the same server as

	// fenced: this node was fenced and has not been released since (see the
	// package documentation). It survives StateDown so that fencing sticks
	// across an outage. fencedBy names the node that held the role when it
	// was fenced, "" for the timeline guard.
	fenced   bool
	fencedBy string
	started  string // last known postmaster start time
	// aheadAt is the replay LSN at which the replica was seen ahead of a
	// later primary position (another history): it stays diverged while it
	// has not replayed anything since. 0: never seen ahead.
	aheadAt uint64
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

	// Pass 1: per-node facts, aliases, and the candidates' highest timeline.
	var candidates []int
	// replicaMax is the highest timeline a replica replays: that timeline
	// exists, so a candidate below it is stale, even when no candidate is
	// on it (its primary down, say, at a process's start).
	var replicaMax uint32
	identities := map[string]string{} // server identity -> first node's name
	for i, name := range names {
		o := &obs[i]
		n := Node{Name: name}
		if p := prevByName[name]; p != nil {
			n.Role, n.LSN, n.Timeline, n.RTT = p.Role, p.LSN, p.Timeline, p.RTT
			n.LastSeen, n.fenced, n.fencedBy = p.LastSeen, p.fenced, p.fencedBy
			n.SystemID, n.started, n.aheadAt = p.SystemID, p.started, p.aheadAt
		}
		if o.Err != nil {
			n.State = StateDown
			n.LastErr = o.Err
			n.aheadAt = 0 // it may come back rebuilt
			s.Nodes[i] = n
			continue
		}
		n.State = StateUp
		n.LSN, n.RTT = o.LSN, o.RTT
		n.SystemID, n.started = o.SystemID, o.Started
		n.LastSeen = o.At
		if n.LastSeen.IsZero() {
			n.LastSeen = now
		}
		if id := identity(o); id != "" {
			if first, ok := identities[id]; ok {
				n.State, n.AliasOf = StateAlias, first
				n.Role = RoleReplica
				if !o.InRecovery {
					n.Role = RolePrimary
				}
				n.Timeline = o.Timeline
				s.Nodes[i] = n
				continue
			}
			identities[id] = name
		}
		if !o.InRecovery {
			n.aheadAt = 0
		}
		if o.InRecovery {
			if n.fenced && n.Role == RolePrimary && o.Timeline == n.Timeline && n.aheadAt == 0 {
				// A fenced primary that reports recovery on its timeline
				// may hold the writes it took as a primary (even through a
				// restart): suspect until it replays from the primary.
				n.aheadAt = max(o.LSN, 1)
			}
			n.Role = RoleReplica
			n.fenced, n.fencedBy = false, "" // reported recovery: released
			// A replica's timeline may be unknown for a moment (its WAL
			// receiver restarting): the last known one stands, since a
			// replay timeline only grows, within one server instance. A
			// replica restarted (rebuilt, say from a fenced old primary)
			// may replay an older lineage: its timeline is what it says.
			n.Timeline = o.Timeline
			if p := prevByName[name]; sameInstance(p, o) {
				n.Timeline = max(o.Timeline, replicaTimeline(p))
			}
			replicaMax = max(replicaMax, n.Timeline)
		} else {
			n.Role = RolePrimary
			n.Timeline = o.Timeline
			candidates = append(candidates, i)
			s.MaxTimeline = max(s.MaxTimeline, o.Timeline)
		}
		s.Nodes[i] = n
	}

	// Pass 2: elect among the candidates that pass the timeline guard and
	// whose fence, if any, no longer stands.
	claims := func(name string) bool { // name still claims the primary role
		for j := range s.Nodes {
			if m := &s.Nodes[j]; m.Name == name {
				return m.Role == RolePrimary && (m.State == StateUp || m.State == StateDown || m.State == StateFenced)
			}
		}
		return false // gone from the node set
	}
	stale := func(n *Node) bool { return n.Timeline < s.MaxTimeline || n.Timeline < replicaMax }
	eligible := make([]int, 0, len(candidates))
	for _, i := range candidates {
		n := &s.Nodes[i]
		if stale(n) {
			continue
		}
		if n.fenced {
			switch {
			case newTimeline(s, candidates, i, prevMaxTimeline):
			case n.fencedBy != "" && !claims(n.fencedBy):
			default:
				continue
			}
		}
		eligible = append(eligible, i)
	}
	winner := -1
	for _, i := range eligible {
		if s.Nodes[i].Name == prevPrimary {
			winner = i // the incumbent keeps the role
		}
	}
	if winner < 0 {
		for _, i := range eligible {
			if winner < 0 || likelierPrimary(&obs[i], &obs[winner]) {
				winner = i
			}
		}
	}
	for _, i := range candidates {
		n := &s.Nodes[i]
		if i == winner {
			n.fenced, n.fencedBy = false, ""
			continue
		}
		n.State = StateFenced
		switch {
		case stale(n):
			n.fenced, n.fencedBy = true, "" // the timeline guard
		case !n.fenced && winner >= 0:
			n.fenced, n.fencedBy = true, s.Nodes[winner].Name
		case !n.fenced:
			n.fenced = true // no winner: fenced by the guard
		}
	}
	s.Primary = winner
	fencing := false
	for i := range s.Nodes {
		if s.Nodes[i].State == StateFenced {
			fencing = true
		}
	}

	// Pass 3: lineage and lag, against the winner.
	lineage := s.MaxTimeline
	var primaryLSN uint64
	if winner >= 0 {
		p := &s.Nodes[winner]
		primaryLSN, lineage = p.LSN, p.Timeline
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
		if n.State != StateUp || n.Role != RoleReplica {
			continue
		}
		if ahead(obs, winner, i) {
			n.aheadAt = n.LSN
		} else if n.aheadAt != 0 && n.LSN != n.aheadAt {
			n.aheadAt = 0 // it replays again: it follows someone
		}
		if (n.Timeline != 0 && n.Timeline != lineage) || (n.Timeline == 0 && fencing) || n.aheadAt != 0 {
			n.State = StateDiverged
			continue
		}
		if winner < 0 {
			// No primary to measure against: keep prev's verdict.
			n.State = StateLagging
			if p := prevByName[n.Name]; p != nil && (p.State == StateUp || p.State == StateLagging) {
				n.State, n.Lag, n.LagBytes, n.LagUnknown = p.State, p.Lag, p.LagBytes, p.LagUnknown
			} else {
				n.LagUnknown = true
			}
			continue
		}
		if primaryLSN > n.LSN {
			n.LagBytes = primaryLSN - n.LSN
		}
		n.Lag = hist.TimeLag(n.LSN, now)
		n.LagUnknown = hist != nil && n.LagBytes > 0 && !hist.Covers(n.LSN)
		if n.LagUnknown || b.exceeded(n.Lag, n.LagBytes) {
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

// ahead reports whether replica i replayed past a position the primary
// (winner) reported later: impossible for a replica of that primary (it
// replays only WAL the primary flushed), so it has another history on the
// same timeline number (a standby that ran as a primary for a while).
func ahead(obs []Observation, winner, i int) bool {
	if winner < 0 {
		return false
	}
	p, r := &obs[winner], &obs[i]
	return r.LSN > p.LSN && !p.At.IsZero() && !r.At.IsZero() && !p.At.Before(r.At)
}

// likelierPrimary reports whether candidate a is likelier the cluster's real
// primary than b (b has the lower index), for an election without an
// incumbent on one timeline.
func likelierPrimary(a, b *Observation) bool {
	if a.Senders != b.Senders {
		return a.Senders > b.Senders
	}
	if a.Started != "" && b.Started != "" && a.Started != b.Started {
		return a.Started < b.Started // the same format from one cluster: text order is time order
	}
	return a.LSN > b.LSN
}

// identity is a server's identity as the probe saw it, "" when unknown.
func identity(o *Observation) string {
	if o.SystemID == 0 || o.Started == "" {
		return ""
	}
	return strconv.FormatUint(o.SystemID, 10) + "/" + o.Started
}

// replicaTimeline is the last known timeline of p if it was a replica.
func replicaTimeline(p *Node) uint32 {
	if p == nil || p.Role != RoleReplica {
		return 0
	}
	return p.Timeline
}

// sameInstance reports whether o may come from the server instance that p
// last showed: the same system identifier and postmaster start time, or
// either unknown.
func sameInstance(p *Node, o *Observation) bool {
	if p == nil {
		return false
	}
	if p.SystemID != 0 && o.SystemID != 0 && p.SystemID != o.SystemID {
		return false
	}
	return p.started == "" || o.Started == "" || p.started == o.Started
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
