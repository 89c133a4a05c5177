package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/unifiedsql/unified/internal/pgprobe"
	"github.com/unifiedsql/unified/internal/topology"
)

// failoverProbeInterval is the probe cadence while the primary is missing or
// suspected: milliseconds, so that waiting writes go out right after a
// promotion, not a health interval later.
const failoverProbeInterval = 5 * time.Millisecond

// Warm-up: for warmupWindow after the first election and after every change
// of primary, while a replica's lag is unknown (it is behind every sample
// of the primary's position: not eligible, see topology's LagUnknown),
// nodes are probed every warmupInterval, so that replicas are shown within
// the lag bounds a few probes after the start instead of a health interval
// later.
const (
	warmupWindow   = 2 * time.Second
	warmupInterval = 50 * time.Millisecond
)

var errNotProbed = errors.New("not probed yet")

// monitor is the health monitor of one Connector: one loop that launches a
// probe per node (each on its own dedicated connection, all in parallel),
// folds each result into a new immutable topology snapshot and publishes it.
// A slow or hung node delays only its own probe: the loop publishes every
// result as it arrives. Nothing outside this file takes its lock.
type monitor struct {
	c      *Connector
	ctx    context.Context // canceled by stop
	cancel context.CancelFunc
	wg     sync.WaitGroup

	startOnce sync.Once
	kickc     chan struct{} // buffered(1): "probe now"
	results   chan probeResult

	// Owned by the loop goroutine:
	members []*member
	disc    discovery
	// building is the last snapshot built, published or not (before the
	// election the snapshots are built but not published).
	building    *topology.Snapshot
	hist        topology.History
	lastPrimary *node     // the last node published as primary
	warmUntil   time.Time // see warmupWindow
	lateAt      time.Time // when the loop's timer last fired late (see clientSlow)

	mu sync.Mutex // protects following fields
	// published is closed and replaced at every publication, waking the
	// operations that wait for one.
	published chan struct{}
	// suspectAt is when a statement last reported that the primary may be
	// gone (zero: no suspicion); it is cleared by a snapshot with a primary
	// probed after it.
	suspectAt time.Time
	// lostAt is when the last published snapshot stopped naming a primary
	// (zero while one is named).
	lostAt      time.Time
	waiters     int  // operations waiting for a primary now
	everPrimary bool // a primary has been published since start
}

// member is one node as the monitor probes it.
type member struct {
	n   *node
	key string // see memberKey
	// draining: its address left its source (drainSince): no new
	// statements; removed once nothing is open to it.
	draining   bool
	drainSince time.Time
	obs        topology.Observation
	inflight   bool
	// failures and notBefore give each failing node its own backoff, so a
	// node that keeps failing (down, rejecting our credentials) is probed
	// ever less often (see probeBackoffLimit), even during a failover,
	// while the healthy ones keep their cadence.
	failures  int
	notBefore time.Time
	// launched is when its last probe started: a node is never probed more
	// often than every failoverProbeInterval, however often statements ask.
	launched time.Time
	conn     driver.Conn // the probe connection; used only by the in-flight probe
	// connIdent is the first answer on conn: its server's identity
	// (system identifier, start time), which later probes on the same
	// connection do not ask again (pgprobe.QueryAgain).
	connIdent *pgprobe.Result
	// rtt is the node's usual probe round trip (see probeDeadline);
	// confirm: its last probe timed out and is being confirmed (see
	// timedOutDown).
	rtt     time.Duration
	confirm confirmStage
	// promptAt is when it last answered a probe within its deadline.
	promptAt time.Time
}

type probeResult struct {
	m   *member
	obs topology.Observation
}

func newMonitor(c *Connector) *monitor {
	ctx, cancel := context.WithCancel(context.Background())
	return &monitor{
		c:         c,
		ctx:       ctx,
		cancel:    cancel,
		kickc:     make(chan struct{}, 1),
		results:   make(chan probeResult),
		published: make(chan struct{}),
	}
}

func (m *monitor) start() {
	m.startOnce.Do(func() {
		m.wg.Add(1)
		go m.run()
	})
}

// stop ends the loop and waits for it (and for spare dials); in-flight
// probes are canceled and the warm spares closed.
func (m *monitor) stop() {
	m.startOnce.Do(func() {}) // a monitor never started stays stopped
	m.cancel()
	m.wg.Wait()
	for _, mb := range m.members {
		mb.n.closeSpares()
	}
}

func (m *monitor) kick() {
	select {
	case m.kickc <- struct{}{}:
	default:
	}
}

// suspectPrimary is called when a statement on the primary failed in a way
// that says the primary may be gone (classify.Class.LostPrimary): it starts
// fast re-probing at once. Concurrent calls coalesce into one probe round.
func (m *monitor) suspectPrimary() {
	m.mu.Lock()
	m.suspectAt = time.Now()
	m.mu.Unlock()
	m.kick()
}

// fast reports whether the monitor probes at failoverProbeInterval: while
// an operation waits for a primary, and for up to unified_failover_timeout
// after a statement suspected the primary or the primary went missing.
func (m *monitor) fast() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	now, window := time.Now(), m.c.cfg.FailoverTimeout
	return m.waiters > 0 || m.c.viewNow().leavingNow() ||
		(!m.suspectAt.IsZero() && now.Sub(m.suspectAt) < window) ||
		(!m.lostAt.IsZero() && now.Sub(m.lostAt) < window)
}

// publication returns the channel the next publication closes.
func (m *monitor) publication() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.published
}

func (m *monitor) run() {
	defer m.wg.Done()
	m.initDiscovery()
	pending := 0
	// launch probes the nodes whose turn it is (all: every node that may be
	// probed now, as a failover asks), those with a stalled statement, and
	// those whose timed-out probe awaits confirmation.
	launch := func(all bool) {
		now := time.Now()
		m.c.clock.Store(now.UnixNano())
		iv := m.nextInterval()
		for _, mb := range m.members {
			if mb.inflight || now.Before(mb.notBefore) || now.Sub(mb.launched) < failoverProbeInterval {
				continue
			}
			stall := stallAfter(mb.rtt, m.c.cfg.HealthTimeout)
			due := all || mb.confirm != confirmNone || now.Sub(mb.launched) >= iv-time.Millisecond ||
				(now.Sub(mb.launched) >= stall && mb.n.stalled(now, stall))
			if !due {
				continue
			}
			// The query waits the node's usual deadline, the dial of a
			// probe connection the full timeout; the confirmation of a
			// timeout (the connection is gone with it) dials and queries
			// within confirmDeadline, and its last probe has the full
			// timeout. A
			// node down by a timeout has the full timeout as well: its
			// usual round trip (only successes update it) says nothing
			// any more, and a node that became slower, not hung, would
			// otherwise time out at the old deadline for good.
			query, dial := probeDeadline(mb.rtt, m.c.cfg.HealthTimeout), m.c.cfg.HealthTimeout
			switch {
			case mb.confirm == confirmPeers:
				query = confirmDeadline(mb.rtt, m.c.cfg.HealthTimeout)
				dial = query
			case mb.confirm == confirmFull, timedOut(mb.obs.Err):
				query = dial
			}
			mb.launched, mb.inflight = now, true
			pending++
			go m.probe(mb, dial, query)
		}
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	expect := time.Now() // when the timer should fire
	reset := func(d time.Duration) {
		timer.Reset(d)
		expect = time.Now().Add(d)
	}
	for {
		select {
		case <-m.ctx.Done():
			for ; pending > 0; pending-- {
				<-m.results
			}
			for _, mb := range m.members {
				if mb.conn != nil {
					_ = mb.conn.Close()
					mb.conn = nil
				}
			}
			return
		case <-timer.C:
			if time.Since(expect) > schedLagLimit {
				m.lateAt = time.Now() // the client's CPU is the slow one
			}
			now := time.Now()
			m.discover(now)
			m.retireIdle(now)
			before := len(m.members)
			m.reconcile(now)
			if len(m.members) != before {
				m.publish()
			}
			launch(false)
			reset(min(m.nextInterval(), stallTick))
		case r := <-m.disc.resolved:
			r.src.busy, r.src.pending = false, false
			if r.err == nil {
				r.src.addrs = r.addrs
			}
			r.src.next = m.refreshAfter(time.Now())
			m.reconcile(time.Now())
			m.publish()
			launch(false)
		case p := <-m.disc.patroni:
			m.disc.patroniBusy, m.disc.patroniNext = false, time.Now().Add(patroniPoll)
			if p.err == nil {
				m.applyPatroni(p.c, false)
				m.reconcile(time.Now())
			}
			m.publish()
			launch(false)
		case <-m.kickc:
			launch(true)
			reset(min(m.nextInterval(), stallTick))
		case r := <-m.results:
			pending--
			mb := r.m

			mb.inflight = false
			if timedOut(r.obs.Err) && mb.obs.Err == nil {
				down, next := timedOutDown(mb.confirm, m.peerAnswered(mb), m.clientSlow(time.Now()))
				mb.confirm = next
				if !down {
					// Maybe the client is the slow one: ask the node
					// again, and the others beside it (see probe.go).
					launch(next == confirmPeers)
					continue
				}
			}
			mb.confirm, mb.obs = confirmNone, r.obs
			// Classify against the monitor's context, not the probe's: a
			// probe timeout is the node's fault, not a cancellation.
			if r.obs.Err != nil {
				mb.n.breaker.record(m.ctx, r.obs.Err)
			} else {
				mb.n.breaker.healthy()
			}
			if r.obs.Err == nil {
				if r.obs.RTT < probeDeadline(mb.rtt, m.c.cfg.HealthTimeout) {
					mb.promptAt = r.obs.At
				}
				mb.rtt = max(ewma(mb.rtt, r.obs.RTT), time.Nanosecond) // known, however fast
				mb.obs.RTT = mb.rtt                                    // what the snapshot shows and least-rtt compares
			}
			if r.obs.Err != nil {
				mb.failures++
				mb.notBefore = r.obs.At.Add(probeBackoff(m.nextInterval(), m.probeBackoffLimit(), mb.failures))
				m.refreshSoon(mb.n, r.obs.At)
			} else {
				mb.failures, mb.notBefore = 0, time.Time{}
			}
			m.publish()
			switch {
			case m.fast():
				// Re-probe this node at once during a failover: the
				// loop is driven by answers, not by the clock.
				reset(failoverProbeInterval)
			case m.warming():
				reset(min(warmupInterval, m.c.cfg.HealthInterval))
			}
		}
	}
}

func (m *monitor) nextInterval() time.Duration {
	if m.fast() {
		return failoverProbeInterval
	}
	if m.warming() {
		return min(warmupInterval, m.c.cfg.HealthInterval)
	}
	return m.c.cfg.HealthInterval
}

// warming reports whether the monitor is in a warm-up (see warmupWindow).
func (m *monitor) warming() bool {
	if m.building == nil || !time.Now().Before(m.warmUntil) {
		return false
	}
	for _, n := range m.building.Nodes {
		if n.LagUnknown && n.State == topology.StateLagging {
			return true
		}
	}
	return false
}

// announce records the change of primary that v brings (the failover
// metric and log, when the primary was lost), logs each node whose role or
// state changed and wakes every operation waiting for a publication.
func (m *monitor) announce(prev, v *view, obs []topology.Observation, now time.Time) {
	s, primary := v.s, v.primary()
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case primary != nil:
		if m.lastPrimary != nil && m.lastPrimary != primary {
			d := time.Duration(0)
			if !m.lostAt.IsZero() {
				d = now.Sub(m.lostAt)
			}
			m.c.tel.failover(d)
			m.c.log.Warn("unified: failover: new primary", "from", m.lastPrimary.name, "to", primary.name, "duration", d)
		}
		m.lastPrimary, m.lostAt, m.everPrimary = primary, time.Time{}, true
		if m.suspectAt.IsZero() || obs[s.Primary].At.After(m.suspectAt) {
			m.suspectAt = time.Time{}
		}
	case prev.primary() != nil:
		m.lostAt = now
		if !m.suspectAt.IsZero() && m.suspectAt.Before(now) {
			m.lostAt = m.suspectAt // the first statement that saw it go
		}
		m.c.log.Warn("unified: primary lost", "node", prev.primary().name)
	}
	var prevSnap *topology.Snapshot
	if prev != nil {
		prevSnap = prev.s
	}
	if prevSnap == nil || s.Changed(prevSnap) {
		m.logChange(prevSnap, s)
	}
	close(m.published)
	m.published = make(chan struct{})
}

// waitPrimary returns a view that names a primary. While there is none it
// waits for the monitor to publish one, within ctx and until the
// operation's own wait deadline (a.waitDeadline: unified_failover_timeout
// from when the operation first waited; a nil a waits that long from now).
// Probing stays fast while any operation waits. Before any primary has been
// published, an election that found none fails at once: a wrong DSN must
// not look like a failover.
func (c *Connector) waitPrimary(ctx context.Context, a *attempt) (*view, error) {
	if v := c.viewNow(); v.writable() != nil {
		return v, nil
	}
	if c.mon == nil {
		return nil, ErrNoPrimary
	}
	start := time.Now()
	until := start.Add(c.cfg.FailoverTimeout)
	if a != nil {
		until = a.waitDeadline(c)
	}
	v, err := c.mon.waitPrimary(ctx, until)
	if a != nil {
		a.rec.failoverWait(time.Since(start))
	}
	return v, err
}

func (m *monitor) waitPrimary(ctx context.Context, until time.Time) (*view, error) {
	m.start()
	m.mu.Lock()
	m.waiters++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.waiters--
		m.mu.Unlock()
	}()
	m.kick()
	for {
		v := m.c.viewNow()
		if v.writable() != nil {
			return v, nil
		}
		m.mu.Lock()
		ch, ever := m.published, m.everPrimary
		m.mu.Unlock()
		if v != nil && !ever {
			return nil, noPrimaryError(v)
		}
		if !time.Now().Before(until) {
			return nil, noPrimaryError(v)
		}
		if err := m.c.waitPublished(ctx, ch, until); err != nil {
			return nil, fmt.Errorf("%w: waiting for a primary: %w", ErrNoPrimary, err)
		}
	}
}

// waitPublished waits for the publication that closes ch, until deadline
// (zero: none), ctx or Close. Reaching the deadline is not an error: the
// caller looks again.
func (c *Connector) waitPublished(ctx context.Context, ch <-chan struct{}, deadline time.Time) error {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ch:
	case <-timeout:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.closed:
		return ErrClosed
	}
	return nil
}

// waitElected starts the monitor if needed and waits for the first view,
// so that the first statements see every node rather than whichever
// answered first.
func (m *monitor) waitElected(ctx context.Context) (*view, error) {
	m.start()
	for {
		ch := m.publication()
		if v := m.c.viewNow(); v != nil {
			return v, nil
		}
		if err := m.c.waitPublished(ctx, ch, time.Time{}); err != nil {
			return nil, err
		}
	}
}

// noPrimaryError wraps ErrNoPrimary with what the nodes last said.
func noPrimaryError(v *view) error {
	if v == nil {
		return ErrNoPrimary
	}
	errs := []error{ErrNoPrimary}
	for _, n := range v.s.Nodes {
		switch {
		case n.LastErr != nil && n.State == topology.StateDown:
			errs = append(errs, n.LastErr)
		case n.State == topology.StateFenced:
			errs = append(errs, fmt.Errorf("%s: fenced (claims primary on timeline %d)", n.Name, n.Timeline))
		}
	}
	return errors.Join(errs...)
}
