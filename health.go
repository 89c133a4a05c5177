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
// suspected: tens of milliseconds, so that waiting writes go out right after
// a promotion, not a health interval later.
const failoverProbeInterval = 5 * time.Millisecond

var errNotProbed = errors.New("not probed yet")

// monitor is the health monitor of one Connector: one loop that launches a
// probe per node (each on its own dedicated connection, all in parallel),
// folds each result into a new immutable topology snapshot and publishes it.
// A slow or hung node delays only its own probe: the loop publishes every
// result as it arrives.
type monitor struct {
	c      *Connector
	ctx    context.Context // canceled by stop
	cancel context.CancelFunc
	wg     sync.WaitGroup

	startOnce sync.Once
	kickc     chan struct{} // buffered(1): "probe now"
	results   chan probeResult
	probes    []driver.Conn // per node; used only by that node's in-flight probe
	// building is the last snapshot built, published or not (before the
	// election the chain of snapshots runs ahead of the published one);
	// owned by the loop goroutine.
	building *topology.Snapshot
	// lastPrimary is the last node seen as primary (-1: none yet); owned by
	// the loop goroutine.
	lastPrimary int

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

type probeResult struct {
	node int
	obs  topology.Observation
}

func newMonitor(c *Connector) *monitor {
	ctx, cancel := context.WithCancel(context.Background())
	return &monitor{
		c:           c,
		ctx:         ctx,
		cancel:      cancel,
		kickc:       make(chan struct{}, 1),
		results:     make(chan probeResult, len(c.nodes)),
		probes:      make([]driver.Conn, len(c.nodes)),
		published:   make(chan struct{}),
		lastPrimary: -1,
	}
}

func (m *monitor) start() {
	m.startOnce.Do(func() {
		m.wg.Add(1)
		go m.run()
	})
}

// stop ends the loop and waits for it; in-flight probes are canceled.
func (m *monitor) stop() {
	m.startOnce.Do(func() {}) // a monitor never started stays stopped
	m.cancel()
	m.wg.Wait()
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
	return m.waiters > 0 ||
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
	n := len(m.c.nodes)
	obs := make([]topology.Observation, n)
	for i := range obs {
		obs[i].Err = errNotProbed
	}
	inflight := make([]bool, n)
	// failures and notBefore give each failing node its own backoff, so a
	// node that keeps failing (down, rejecting our credentials) is probed
	// ever less often (see probeBackoffLimit), even during a failover,
	// while the healthy ones keep their cadence.
	failures := make([]int, n)
	notBefore := make([]time.Time, n)
	// launched is when each node's last probe started: a node is never
	// probed more often than every failoverProbeInterval, however often
	// statements ask.
	launched := make([]time.Time, n)
	pending := 0
	var hist topology.History
	names := m.c.nodeNames()

	launch := func() {
		now := time.Now()
		for i := range inflight {
			if inflight[i] || now.Before(notBefore[i]) || now.Sub(launched[i]) < failoverProbeInterval {
				continue
			}
			launched[i] = now
			inflight[i] = true
			pending++
			go m.probe(i)
		}
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-m.ctx.Done():
			for ; pending > 0; pending-- {
				<-m.results
			}
			for i, pc := range m.probes {
				if pc != nil {
					_ = pc.Close()
					m.probes[i] = nil
				}
			}
			return
		case <-timer.C:
			launch()
			timer.Reset(m.nextInterval())
		case <-m.kickc:
			launch()
			timer.Reset(m.nextInterval())
		case r := <-m.results:
			pending--
			inflight[r.node] = false
			obs[r.node] = r.obs
			if r.obs.Err != nil {
				failures[r.node]++
				notBefore[r.node] = r.obs.At.Add(probeBackoff(m.nextInterval(), m.probeBackoffLimit(), failures[r.node]))
			} else {
				failures[r.node], notBefore[r.node] = 0, time.Time{}
			}
			m.publish(names, obs, &hist)
			if m.fast() {
				// Re-probe this node at once during a failover: the
				// loop is driven by answers, not by the clock.
				timer.Reset(failoverProbeInterval)
			}
		}
	}
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

func (m *monitor) nextInterval() time.Duration {
	if m.fast() {
		return failoverProbeInterval
	}
	return m.c.cfg.HealthInterval
}

// probe runs one probe of node i within unified_health_timeout, dialing the
// node's probe connection first when it has none.
func (m *monitor) probe(i int) {
	ctx, cancel := context.WithTimeout(m.ctx, m.c.cfg.HealthTimeout)
	defer cancel()
	n := m.c.nodes[i]
	o := topology.Observation{}
	res, rtt, err := m.probeOnce(ctx, i)
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
	}
	m.results <- probeResult{node: i, obs: o}
}

func (m *monitor) probeOnce(ctx context.Context, i int) (pgprobe.Result, time.Duration, error) {
	pc := m.probes[i]
	if pc == nil {
		var err error
		pc, err = m.c.nodes[i].rw.Connect(ctx)
		if err != nil {
			return pgprobe.Result{}, 0, err
		}
		m.probes[i] = pc
	}
	q, ok := pc.(driver.QueryerContext)
	if !ok {
		return pgprobe.Result{}, 0, fmt.Errorf("node connection %T does not implement driver.QueryerContext", pc)
	}
	start := time.Now()
	res, err := pgprobe.Run(ctx, q)
	rtt := time.Since(start)
	if err != nil {
		_ = pc.Close()
		m.probes[i] = nil
		return pgprobe.Result{}, 0, err
	}
	return res, rtt, nil
}

// publish builds a new snapshot from the latest observations, stores it
// and wakes every operation waiting for one. Nothing is stored before every
// node has answered its first probe or timed out: until then the election
// could still be overturned (a node on a higher timeline, or the incumbent,
// has not spoken), so no write may be routed (DESIGN.md §4).
func (m *monitor) publish(names []string, obs []topology.Observation, hist *topology.History) {
	prev := m.c.topo.Load()
	now := time.Now()
	bounds := topology.Bounds{MaxLag: m.c.cfg.MaxReplicaLag, MaxLagBytes: m.c.cfg.MaxReplicaLagBytes}
	s := topology.Build(m.building, names, obs, hist, bounds, now)
	m.building = s
	if prev == nil {
		for _, o := range obs {
			if errors.Is(o.Err, errNotProbed) {
				return // not elected yet
			}
		}
	}
	m.c.topo.Store(s)
	m.interrupt(prev, s)

	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case s.Primary >= 0:
		if m.lastPrimary >= 0 && m.lastPrimary != s.Primary {
			d := time.Duration(0)
			if !m.lostAt.IsZero() {
				d = now.Sub(m.lostAt)
			}
			m.c.tel.failover(d)
			m.c.log.Warn("unified: failover: new primary", "from", names[m.lastPrimary], "to", names[s.Primary], "duration", d)
		}
		m.lastPrimary, m.lostAt, m.everPrimary = s.Primary, time.Time{}, true
		if m.suspectAt.IsZero() || obs[s.Primary].At.After(m.suspectAt) {
			m.suspectAt = time.Time{}
		}
	case prev != nil && prev.Primary >= 0:
		m.lostAt = now
		if !m.suspectAt.IsZero() && m.suspectAt.Before(now) {
			m.lostAt = m.suspectAt // the first statement that saw it go
		}
		m.c.log.Warn("unified: primary lost", "node", names[prev.Primary])
	}
	if prev == nil || s.Changed(prev) {
		m.logChange(prev, s)
	}
	close(m.published)
	m.published = make(chan struct{})
}

// interrupt stops what may no longer go on after the change from prev to
// s: dials to a node that is no longer the primary for the primary slot;
// the primary sessions on the old primary once another node is the primary
// (a statement stuck on a hung or cut-off old primary then fails at once,
// with ErrCommitUnknown for a write, instead of at its own deadline); and
// the reads and read dials on a node that went down (a hung replica: the
// reads run again on another node).
func (m *monitor) interrupt(prev, s *topology.Snapshot) {
	for i, n := range m.c.nodes {
		primaryNow := s.Primary == i
		wasPrimary := prev != nil && prev.Primary == i
		if !primaryNow {
			n.interruptDials(slotPrimary)
		}
		if wasPrimary && !primaryNow && s.Primary >= 0 {
			if k := n.interruptConns(slotPrimary); k > 0 {
				m.c.log.Warn("unified: interrupted sessions on the old primary", "node", n.name, "connections", k)
			}
		}
		down := s.Nodes[i].State == topology.StateDown
		wasDown := prev != nil && prev.Nodes[i].State == topology.StateDown
		if down && !wasDown {
			n.interruptDials(slotRead)
			if k := n.interruptConns(slotRead); k > 0 {
				m.c.log.Warn("unified: interrupted reads on a node that went down", "node", n.name, "connections", k)
			}
		}
	}
}

func (m *monitor) logChange(prev, s *topology.Snapshot) {
	for i, n := range s.Nodes {
		if prev != nil && i < len(prev.Nodes) && prev.Nodes[i].Role == n.Role && prev.Nodes[i].State == n.State {
			continue
		}
		attrs := []any{"node", n.Name, "role", n.Role.String(), "state", n.State.String()}
		if n.LastErr != nil {
			attrs = append(attrs, "error", n.LastErr.Error())
		}
		m.c.log.Info("unified: node changed", attrs...)
	}
}

// waitPrimary returns a snapshot that names a primary. While there is none
// it waits for the monitor to publish one, within ctx and until the
// operation's own wait deadline (a.waitDeadline: unified_failover_timeout
// from when the operation first waited; a nil a waits that long from now).
// Probing stays fast while any operation waits. Before any primary has been
// published, an election that found none fails at once: a wrong DSN must
// not look like a failover.
func (c *Connector) waitPrimary(ctx context.Context, a *attempt) (*topology.Snapshot, error) {
	if s := c.topo.Load(); s != nil && s.Primary >= 0 {
		return s, nil
	}
	if c.mon == nil {
		return nil, ErrNoPrimary
	}
	start := time.Now()
	until := start.Add(c.cfg.FailoverTimeout)
	if a != nil {
		until = a.waitDeadline(c)
	}
	s, err := c.mon.waitPrimary(ctx, until)
	if a != nil {
		a.rec.failoverWait(time.Since(start))
	}
	return s, err
}

func (m *monitor) waitPrimary(ctx context.Context, until time.Time) (*topology.Snapshot, error) {
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
		s := m.c.topo.Load()
		if s != nil && s.Primary >= 0 {
			return s, nil
		}
		m.mu.Lock()
		ch, ever := m.published, m.everPrimary
		m.mu.Unlock()
		if s != nil && !ever {
			return nil, noPrimaryError(s)
		}
		if !time.Now().Before(until) {
			return nil, noPrimaryError(s)
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

// elected reports whether the first snapshot is published: every node has
// answered its first probe or timed out.
func (m *monitor) elected() bool { return m.c.topo.Load() != nil }

// waitElected starts the monitor if needed and waits for the first
// snapshot, so that the first statements see every node rather than
// whichever answered first.
func (m *monitor) waitElected(ctx context.Context) (*topology.Snapshot, error) {
	m.start()
	for {
		ch := m.publication()
		if s := m.c.topo.Load(); s != nil {
			return s, nil
		}
		if err := m.c.waitPublished(ctx, ch, time.Time{}); err != nil {
			return nil, err
		}
	}
}

// noPrimaryError wraps ErrNoPrimary with what the nodes last said.
func noPrimaryError(s *topology.Snapshot) error {
	if s == nil {
		return ErrNoPrimary
	}
	errs := []error{ErrNoPrimary}
	for _, n := range s.Nodes {
		switch {
		case n.LastErr != nil && n.State == topology.StateDown:
			errs = append(errs, n.LastErr)
		case n.State == topology.StateFenced:
			errs = append(errs, fmt.Errorf("%s: fenced (claims primary on timeline %d)", n.Name, n.Timeline))
		}
	}
	return errors.Join(errs...)
}

// staticSnapshot is the topology of WithStaticPrimary: fixed roles, all up.
func staticSnapshot(names []string, primary int) *topology.Snapshot {
	s := &topology.Snapshot{Primary: primary, At: time.Now(), Generation: 1}
	for i, name := range names {
		n := topology.Node{Name: name, Role: topology.RoleReplica, State: topology.StateUp, Since: s.At, LastSeen: s.At}
		if i == primary {
			n.Role = topology.RolePrimary
		}
		s.Nodes = append(s.Nodes, n)
	}
	return s
}
