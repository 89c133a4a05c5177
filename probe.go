package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/unifiedsql/unified/internal/pgprobe"
	"github.com/unifiedsql/unified/internal/topology"
)

// This file is one probe of one node and the pacing of a failing node's
// probes; the loop that runs them is the monitor's (health.go).

// Hang detection. A probe's query waits probeRTTFactor times the node's
// usual probe round trip (an EWMA of its successful probes), at least
// minProbeTimeout, at most unified_health_timeout: a node that answers in a
// millisecond is seen unresponsive in tens of milliseconds, not half a
// second. A probe that times out never marks the node down on its own: the
// node is probed again at once, together with every other node, with
// confirmFactor times the deadline (a node that only got slower, a loaded
// server answering in 80 ms where it used to answer in 1, passes it and
// keeps its sessions); it is down when that probe times out too while
// another node answered normally meanwhile (the client itself is not the
// slow one), and if no other node answered either, a last probe with the
// full unified_health_timeout decides (see timedOutDown). A client whose CPU is saturated makes every
// probe late and must not mark nodes down for it: when the monitor's own
// timer has fired late recently (the scheduler is behind, see
// monitor.clientSlow), another node's prompt answer proves nothing (its
// probe goroutine may simply have run first) and a timeout is confirmed
// by a probe with the full timeout. And a node is probed out
// of turn when a statement on it has been running longer than stallAfter:
// detection does not wait for the next health interval.
const (
	probeRTTFactor  = 20
	confirmFactor   = 3
	minProbeTimeout = 50 * time.Millisecond
	minStall        = 100 * time.Millisecond
	stallTick       = 50 * time.Millisecond
	schedLagLimit   = 10 * time.Millisecond
	schedLagMemory  = 2 * time.Second
)

// probeDeadline is the timeout of a probe's query for a node whose usual
// probe round trip is rtt (0: none yet: the ceiling).
func probeDeadline(rtt, ceiling time.Duration) time.Duration {
	if rtt <= 0 {
		return ceiling
	}
	return min(max(probeRTTFactor*rtt, minProbeTimeout), ceiling)
}

// confirmDeadline is the timeout of the probe that confirms a timed-out
// one (dial and query): confirmFactor times the deadline, at most the
// ceiling.
func confirmDeadline(rtt, ceiling time.Duration) time.Duration {
	return min(confirmFactor*probeDeadline(rtt, ceiling), ceiling)
}

// stallAfter is how long a statement on a node may run before the node is
// probed out of turn.
func stallAfter(rtt, ceiling time.Duration) time.Duration {
	return max(2*probeDeadline(rtt, ceiling), minStall)
}

// confirmStage is where a node whose probe timed out stands in the
// confirmation of the timeout (see timedOutDown).
type confirmStage uint8

const (
	confirmNone  confirmStage = iota // the last probe did not time out
	confirmPeers                     // re-probed with confirmDeadline, beside every other node
	confirmFull                      // re-probed with the full unified_health_timeout
)

// timedOutDown says what a probe that timed out at stage st means: the
// first timeout is confirmed by a probe with a longer deadline
// (confirmPeers); the node is down when that one timed out too while
// another node answered normally (peer), or when even the full-timeout
// probe timed out; otherwise next is the stage of the probe to send. While
// the client is slow (its scheduler behind) only the full-timeout probe
// decides.
func timedOutDown(st confirmStage, peer, clientSlow bool) (down bool, next confirmStage) {
	switch {
	case st == confirmFull:
		return true, confirmNone
	case clientSlow:
		return false, confirmFull
	case st == confirmNone:
		return false, confirmPeers
	case peer:
		return true, confirmNone
	default:
		return false, confirmFull
	}
}

// ewma folds a successful probe's round trip into the node's usual one.
func ewma(old, sample time.Duration) time.Duration {
	if old <= 0 {
		return sample
	}
	return (4*old + sample) / 5
}

// probe runs one probe of mb's node: the dial of its probe connection, when
// it has none, within dial, the query within query. The loop records the
// outcome in the node's breaker once it has judged a timeout (see
// timedOutDown).
func (m *monitor) probe(mb *member, dial, query time.Duration) {
	ctx, cancel := context.WithTimeout(m.ctx, m.c.cfg.HealthTimeout)
	defer cancel()
	n := mb.n
	o := topology.Observation{}
	res, rtt, err := m.probeOnce(ctx, mb, dial, query)
	o.At = time.Now()
	if err != nil {
		o.Err = &NodeError{Node: n.name, Op: opProbe.String(), Err: err}
	} else {
		o.InRecovery, o.LSN, o.Timeline, o.RTT = res.InRecovery, res.LSN, res.Timeline, rtt
		o.SystemID, o.Started, o.Senders = res.SystemID, res.Started, res.Senders
	}
	m.results <- probeResult{m: mb, obs: o} // the loop reads every result, draining at stop
}

func (m *monitor) probeOnce(ctx context.Context, mb *member, dial, query time.Duration) (pgprobe.Result, time.Duration, error) {
	if mb.conn == nil {
		dctx, cancel := context.WithTimeout(ctx, dial)
		pc, err := mb.n.rw.Connect(dctx)
		cancel()
		if err != nil {
			return pgprobe.Result{}, 0, err
		}
		mb.conn, mb.connIdent = pc, nil
	}
	q, ok := mb.conn.(driver.QueryerContext)
	if !ok {
		return pgprobe.Result{}, 0, fmt.Errorf("node connection %T does not implement driver.QueryerContext", mb.conn)
	}
	qctx, cancel := context.WithTimeout(ctx, query)
	defer cancel()
	start := time.Now()
	var res pgprobe.Result
	var err error
	if id := mb.connIdent; id != nil {
		res, err = pgprobe.RunAgain(qctx, q)
		res.SystemID, res.Started = id.SystemID, id.Started
	} else {
		res, err = pgprobe.Run(qctx, q)
	}
	rtt := time.Since(start)
	if err != nil {
		_ = mb.conn.Close()
		mb.conn = nil
		return pgprobe.Result{}, 0, err
	}
	if mb.connIdent == nil {
		mb.connIdent = &res
	}
	return res, rtt, nil
}

// probeBackoff is how long to wait before probing again a node whose last
// `failures` probes failed: base, doubling per failure after the first two,
// capped at limit (and never below base).
func probeBackoff(base, limit time.Duration, failures int) time.Duration {
	if failures <= 2 {
		return 0
	}
	d := base
	for i := 2; i < failures && d < limit; i++ {
		d *= 2
	}
	return max(min(d, limit), base)
}

// probeBackoffLimit caps a failing node's probe backoff: the health
// interval, or up to 1 s (and never beyond unified_breaker_open) when the
// interval is shorter. A node that comes back is seen within that time; a
// node that keeps refusing us is asked at most about once a second.
func (m *monitor) probeBackoffLimit() time.Duration {
	return max(m.c.cfg.HealthInterval, min(m.c.cfg.BreakerOpen, time.Second))
}

// timedOut reports whether a probe failed by running out of time (a hung
// node, or a slow client), not by being refused or reset.
func timedOut(err error) bool {
	return err != nil && (errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err))
}

// clientSlow reports whether the monitor's own timer fired more than
// schedLagLimit late within the last schedLagMemory: the process's CPUs
// are saturated, and a probe's timeout says as much about the client as
// about the node.
func (m *monitor) clientSlow(now time.Time) bool {
	return !m.lateAt.IsZero() && now.Sub(m.lateAt) < schedLagMemory
}

// peerAnswered reports whether another node answered a probe within its
// deadline while mb's last probe waited.
func (m *monitor) peerAnswered(mb *member) bool {
	for _, p := range m.members {
		if p != mb && !p.draining && !p.promptAt.Before(mb.launched) {
			return true
		}
	}
	return false
}
