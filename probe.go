package unified

import (
	"context"
	"database/sql/driver"
	"fmt"
	"time"

	"github.com/unifiedsql/unified/internal/pgprobe"
	"github.com/unifiedsql/unified/internal/topology"
)

// This file is one probe of one node and the pacing of a failing node's
// probes; the loop that runs them is the monitor's (health.go).

// probe runs one probe of mb's node within unified_health_timeout, dialing
// the node's probe connection first when it has none.
func (m *monitor) probe(mb *member) {
	ctx, cancel := context.WithTimeout(m.ctx, m.c.cfg.HealthTimeout)
	defer cancel()
	n := mb.n
	o := topology.Observation{}
	res, rtt, err := m.probeOnce(ctx, mb)
	// Classify against the monitor's context, not the probe's: a probe
	// timeout is the node's fault, not a cancellation.
	if err != nil {
		n.breaker.record(m.ctx, err)
	} else {
		n.breaker.healthy()
	}
	o.At = time.Now()
	if err != nil {
		o.Err = &NodeError{Node: n.name, Op: opProbe.String(), Err: err}
	} else {
		o.InRecovery, o.LSN, o.Timeline, o.RTT = res.InRecovery, res.LSN, res.Timeline, rtt
		o.SystemID, o.Started, o.Senders = res.SystemID, res.Started, res.Senders
	}
	m.results <- probeResult{m: mb, obs: o} // the loop reads every result, draining at stop
}

func (m *monitor) probeOnce(ctx context.Context, mb *member) (pgprobe.Result, time.Duration, error) {
	if mb.conn == nil {
		pc, err := mb.n.rw.Connect(ctx)
		if err != nil {
			return pgprobe.Result{}, 0, err
		}
		mb.conn = pc
	}
	q, ok := mb.conn.(driver.QueryerContext)
	if !ok {
		return pgprobe.Result{}, 0, fmt.Errorf("node connection %T does not implement driver.QueryerContext", mb.conn)
	}
	start := time.Now()
	res, err := pgprobe.Run(ctx, q)
	rtt := time.Since(start)
	if err != nil {
		_ = mb.conn.Close()
		mb.conn = nil
		return pgprobe.Result{}, 0, err
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
