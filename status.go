package unified

import (
	"context"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/unifiedsql/unified/internal/pgprobe"
)

// Health is a point-in-time view of the cluster as the Connector sees it.
type Health struct {
	// Primary is the name of the node writes go to; "" when there is none
	// (during a failover, or when no node is primary).
	Primary string
	// Writable: a primary is known and its breaker is not open.
	Writable bool
	// Readable: reads can be served, by an eligible replica or, with
	// unified_read_fallback=primary, by the primary.
	Readable bool
	// Leaving names the primary a switchover Patroni scheduled is about to
	// demote: writes wait for the new primary meanwhile. "" when none.
	Leaving string
	// At is when the topology was last published; Age is how old it was
	// when Health was called.
	At    time.Time
	Age   time.Duration
	Nodes []NodeHealth
}

// NodeHealth is one node's part of Health.
type NodeHealth struct {
	// Name is "host:port" as in the DSN, or "host/address:port" for one of
	// the addresses a host name resolved to.
	Name string
	// Host is the DSN's (or Patroni's) host; Address the address the name
	// resolved to ("" for an address or socket given as such); Source where
	// the node came from: "dsn" (a host of the DSN as given), "dns" (an
	// address a DSN host name resolved to) or "patroni" (a member of
	// Patroni's GET /cluster).
	Host    string
	Address string
	Source  string
	// Role is "primary", "replica" or "unknown" (never probed
	// successfully). A node that is down keeps the role it last had.
	Role string
	// State is "up", "down", "lagging" (a replica beyond the lag bounds,
	// or not yet shown within them: LagUnknown), "fenced" (claims primary
	// but lost the election: no writes), "diverged" (a replica not known to
	// be on the primary's timeline: no reads), "alias" (the same server as
	// the node AliasOf names: not used) or "unknown" (not probed yet).
	State   string
	AliasOf string
	// LagBytes and Lag are how far a replica is behind the primary, in WAL
	// bytes and in time (how long ago the primary was where the replica
	// is); 0 for the primary and when no primary is known. With LagUnknown
	// the replica is behind every sample of the primary's WAL position this
	// process holds, and Lag is only a lower bound.
	LagBytes   uint64
	Lag        time.Duration
	LagUnknown bool
	// LSN is the node's WAL position at its last probe, in PostgreSQL's
	// text form: the current position on a primary, the replay position on
	// a replica (what a session's floor is compared with); "" when never
	// probed.
	LSN      string
	RTT      time.Duration // the probe round trip, smoothed (an EWMA: a fifth of each new sample)
	Timeline uint32
	// Breaker is the node's circuit breaker: "closed", "half-open" or "open".
	Breaker string
	// LastError is the last probe's error (no password), "" when it
	// succeeded.
	LastError string
	LastSeen  time.Time // last successful probe
	Since     time.Time // when State last changed
}

// Health returns the current topology. The handler of [HealthHandler]
// serves it as JSON. On a Connector that has not probed
// yet it starts the monitor and waits, within ctx, for every node's first
// probe; if ctx ends first it reports what is known (possibly no nodes
// probed, every state "unknown").
func (c *Connector) Health(ctx context.Context) Health {
	v := c.viewNow()
	if c.mon != nil {
		if got, err := c.mon.waitElected(ctx); err == nil {
			v = got
		} else {
			v = c.viewNow()
		}
	}
	return c.health(v, time.Now())
}

func (c *Connector) health(v *view, now time.Time) Health {
	h := Health{}
	if v == nil {
		for _, sd := range c.seeds {
			h.Nodes = append(h.Nodes, NodeHealth{Name: sd.Name, Host: sd.ConnConfig.Host, Source: "dsn", Role: "unknown", State: "unknown", Breaker: "closed"})
		}
		return h
	}
	s := v.s
	h.At, h.Age = s.At, now.Sub(s.At)
	for i, n := range s.Nodes {
		nd := v.nodes[i]
		nh := NodeHealth{
			Name: n.Name, Host: nd.host, Address: nd.addr, Source: nd.source,
			Role: n.Role.String(), State: n.State.String(), AliasOf: n.AliasOf,
			LagBytes: n.LagBytes, Lag: n.Lag, LagUnknown: n.LagUnknown, RTT: n.RTT, Timeline: n.Timeline,
			Breaker:  breakerName(nd.breaker.state()),
			LastSeen: n.LastSeen, Since: n.Since,
		}
		if n.LastErr != nil {
			nh.LastError = n.LastErr.Error()
		}
		if !n.LastSeen.IsZero() {
			nh.LSN = pgprobe.FormatLSN(max(n.LSN, nd.replayHint.Load()))
		}
		h.Nodes = append(h.Nodes, nh)
	}
	allows := c.breakerAllows(v)
	if p := v.primary(); p != nil {
		h.Primary = p.name
		h.Writable = p.breaker.allows()
	}
	if v.leaving != nil {
		h.Leaving = v.leaving.name
	}
	eligible := func(i int) bool { return allows(i) && replicaEligible(s, i) }
	h.Readable = pickReplica(s, PolicyRoundRobin, 0, eligible, loadOf(v)) >= 0 ||
		(c.cfg.ReadFallback == FallbackPrimary && h.Writable)
	if c.isClosed() {
		// A closed Connector serves nothing, whatever it last saw.
		h.Writable, h.Readable = false, false
	}
	return h
}

func breakerName(s gobreaker.State) string {
	switch s {
	case gobreaker.StateClosed:
		return "closed"
	case gobreaker.StateHalfOpen:
		return "half-open"
	default:
		return "open"
	}
}

// Stats are counters since the Connector was made. Read them with
// [Connector.Stats]; they only grow.
type Stats struct {
	// Failovers counts primary changes observed by the monitor (a new node
	// became the primary after the previous one was lost).
	Failovers uint64
	// Retries counts attempts made again: a statement re-sent after a
	// failure that provably did not reach the server, a read re-run on
	// another node, and each look again for a primary by a write that
	// waits for one (the unified.retry.count metric).
	Retries uint64
	// CommitUnknown counts errors returned wrapping ErrCommitUnknown.
	CommitUnknown uint64
	// ReadFallbacks counts ReadOnly operations the primary served because
	// no replica was eligible (the unified.read.fallback metric).
	ReadFallbacks uint64
	// SessionReadsReplica and SessionReadsPrimary count ReadOnly
	// operations with a session floor served by a replica that had
	// replayed it, and by the primary (the unified.session.read metric).
	SessionReadsReplica uint64
	SessionReadsPrimary uint64
	// DiscoveryErrors counts host names that did not resolve and failed
	// reads of Patroni's member list (the unified.discovery.errors metric).
	DiscoveryErrors uint64
	// Health is the topology at the time of the call (no waiting).
	Health Health
}

// Stats returns the counters and the current topology without waiting.
func (c *Connector) Stats() Stats {
	return Stats{
		Failovers:           c.tel.counts.failovers.Load(),
		Retries:             c.tel.counts.retries.Load(),
		CommitUnknown:       c.tel.counts.commitUnknown.Load(),
		ReadFallbacks:       c.tel.counts.readFallbacks.Load(),
		SessionReadsReplica: c.tel.counts.sessionReads[0].Load(),
		SessionReadsPrimary: c.tel.counts.sessionReads[1].Load(),
		DiscoveryErrors:     c.tel.counts.discoveryErrors.Load(),
		Health:              c.health(c.viewNow(), time.Now()),
	}
}
