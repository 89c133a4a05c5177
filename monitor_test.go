package unified

import (
	"bytes"
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/pgprobe"
)

// fakeNode is an in-memory PostgreSQL node for the monitor's probe and for
// statements: no network, so testing/synctest controls every clock.
type fakeNode struct {
	mu         sync.Mutex // protects following fields
	inRecovery bool
	lsn        uint64
	timeline   uint32
	down       bool // refuse connections and break open ones
	probes     []time.Time
	dials      int
}

func (f *fakeNode) set(fn func(f *fakeNode)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeNode) probeTimes() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.probes...)
}

var errRefused = &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}

func (f *fakeNode) Connect(context.Context) (driver.Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dials++
	if f.down {
		return nil, errRefused
	}
	return &fakeConn{node: f}, nil
}

func (f *fakeNode) Driver() driver.Driver { return nil }

type fakeConn struct{ node *fakeNode }

func (c *fakeConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("not supported") }
func (c *fakeConn) Close() error                        { return nil }
func (c *fakeConn) Begin() (driver.Tx, error)           { return nil, errors.New("not supported") }

func (c *fakeConn) QueryContext(_ context.Context, query string, _ []driver.NamedValue) (driver.Rows, error) {
	f := c.node
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, io.ErrUnexpectedEOF
	}
	if query == pgprobe.Query {
		f.probes = append(f.probes, time.Now())
		return &fakeRows{cols: []string{"in_recovery", "lsn", "timeline", "system", "started", "senders"},
			vals: []driver.Value{f.inRecovery, pgprobe.FormatLSN(f.lsn), int64(f.timeline), nil, nil, nil}}, nil
	}
	return &fakeRows{cols: []string{"x"}, vals: []driver.Value{int64(1)}}, nil
}

func (c *fakeConn) ExecContext(context.Context, string, []driver.NamedValue) (driver.Result, error) {
	c.node.mu.Lock()
	defer c.node.mu.Unlock()
	if c.node.down {
		return nil, io.ErrUnexpectedEOF
	}
	return driver.RowsAffected(1), nil
}

type fakeRows struct {
	cols []string
	vals []driver.Value
	done bool
}

func (r *fakeRows) Columns() []string { return r.cols }
func (r *fakeRows) Close() error      { return nil }
func (r *fakeRows) Next(dest []driver.Value) error {
	if r.done {
		return io.EOF
	}
	r.done = true
	copy(dest, r.vals)
	return nil
}

// fakeCluster builds a Connector over three fake nodes: a primary and two
// replicas.
func fakeCluster(t *testing.T, params string) (*Connector, []*fakeNode) {
	t.Helper()
	cfg, err := ParseConfig("postgres://u@n0:5432,n1:5432,n2:5432/db?" + params)
	require.NoError(t, err)
	nodes := []*fakeNode{{lsn: 100, timeline: 1}, {inRecovery: true, lsn: 100}, {inRecovery: true, lsn: 100}}
	var opts []Option
	for i, n := range cfg.Nodes() {
		opts = append(opts, WithNodeConnector(n.Name, nodes[i]))
	}
	c, err := NewConnector(cfg, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, nodes
}

func TestMonitorProbesEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := fakeCluster(t, "unified_health_interval=1s")
		start := time.Now()
		h := c.Health(t.Context())
		assert.Equal(t, "n0:5432", h.Primary)
		assert.True(t, h.Writable)
		assert.True(t, h.Readable)
		time.Sleep(3*time.Second + time.Millisecond)
		synctest.Wait()
		for i, n := range nodes {
			var offsets []time.Duration
			for _, at := range n.probeTimes() {
				offsets = append(offsets, at.Sub(start))
			}
			assert.Equal(t, []time.Duration{0, time.Second, 2 * time.Second, 3 * time.Second}, offsets, "node %d", i)
		}
		require.NoError(t, c.Close())
	})
}

func TestMonitorFollowsFailoverFast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_failover_timeout=10s")
		require.Equal(t, "n0:5432", c.Health(t.Context()).Primary)

		// The primary dies; a write notices and waits for the new one.
		nodes[0].set(func(f *fakeNode) { f.down = true })
		c.mon.suspectPrimary()
		waited := make(chan time.Duration, 1)
		go func() {
			// As a write does: ask for the primary until it is the new one.
			start := time.Now()
			for {
				v, err := c.waitPrimary(context.Background(), nil)
				if err != nil {
					waited <- -1
					return
				}
				if v.primary().name == "n1:5432" {
					waited <- time.Since(start)
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
		time.Sleep(200 * time.Millisecond)
		synctest.Wait()
		// Fast re-probing: the healthy replicas are probed every few tens
		// of milliseconds, not every second.
		recent := 0
		for _, at := range nodes[1].probeTimes() {
			if time.Since(at) < 200*time.Millisecond {
				recent++
			}
		}
		assert.GreaterOrEqual(t, recent, 5, "fast probing during the failover")

		promoted := time.Now()
		nodes[1].set(func(f *fakeNode) { f.inRecovery, f.timeline = false, 2 })
		d := <-waited
		require.Positive(t, d, "the waiting write got the new primary")
		assert.LessOrEqual(t, time.Since(promoted), 3*failoverProbeInterval, "the new primary is found within a few fast probes")
		assert.EqualValues(t, 1, c.Stats().Failovers)

		// Back to the normal cadence once the primary is known.
		before := len(nodes[2].probeTimes())
		time.Sleep(2 * time.Second)
		synctest.Wait()
		assert.LessOrEqual(t, len(nodes[2].probeTimes())-before, 3)
	})
}

func TestMonitorBacksOffFailingNode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := fakeCluster(t, "unified_health_interval=100ms&unified_breaker_open=1s&unified_breaker_failures=3")
		require.True(t, c.Health(t.Context()).Writable)
		nodes[2].set(func(f *fakeNode) { f.down = true })
		dials := func() int {
			nodes[2].mu.Lock()
			defer nodes[2].mu.Unlock()
			return nodes[2].dials
		}
		d0 := dials()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		// Without backoff: 100 attempts in 10 s. With it: a few quick ones,
		// then one per second (the cap for intervals below a second).
		attempts := dials() - d0
		assert.GreaterOrEqual(t, attempts, 8)
		assert.LessOrEqual(t, attempts, 16)
		h := c.Stats().Health
		assert.Equal(t, "down", h.Nodes[2].State)
		assert.Equal(t, "open", h.Nodes[2].Breaker)

		// The node comes back: the next probe sees it and closes the breaker.
		nodes[2].set(func(f *fakeNode) { f.down = false })
		time.Sleep(time.Second + 100*time.Millisecond)
		synctest.Wait()
		h = c.Stats().Health
		assert.Equal(t, "up", h.Nodes[2].State)
		assert.Equal(t, "closed", h.Nodes[2].Breaker)
	})
}

func TestBreakerFailsFastAndHalfOpens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg, err := ParseConfig("postgres://u@n0:5432/db?unified_breaker_failures=3&unified_breaker_open=2s&unified_retry_max=1")
		require.NoError(t, err)
		node := &fakeNode{lsn: 1, timeline: 1, down: true}
		c, err := NewConnector(cfg, WithNodeConnector("n0:5432", node), WithStaticPrimary("n0:5432"))
		require.NoError(t, err)
		defer c.Close()
		dc, err := c.Connect(t.Context())
		require.NoError(t, err)
		conn := dc.(*Conn)
		exec := func() error {
			_, err := conn.ExecContext(t.Context(), "INSERT INTO t VALUES (1)", nil)
			return err
		}
		for i := 0; i < 3; i++ {
			err := exec()
			require.Error(t, err)
			assert.NotErrorIs(t, err, ErrCircuitOpen, "attempt %d reaches the node", i)
		}
		dials := node.dials
		err = exec()
		assert.ErrorIs(t, err, ErrCircuitOpen)
		assert.ErrorIs(t, err, errRefused, "the open breaker reports the node's last fault")
		assert.Equal(t, dials, node.dials, "an open breaker fails fast, without dialing")

		time.Sleep(2*time.Second + time.Millisecond)
		node.set(func(f *fakeNode) { f.down = false })
		require.NoError(t, exec(), "half-open after unified_breaker_open: one trial goes through")
		assert.Equal(t, "closed", breakerName(c.viewNow().nodes[0].breaker.state()))

		// SQL errors and the caller's cancellation never trip it.
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		for i := 0; i < 5; i++ {
			_, _ = conn.ExecContext(ctx, "INSERT", nil)
		}
		assert.Equal(t, "closed", breakerName(c.viewNow().nodes[0].breaker.state()))
		require.NoError(t, conn.Close())
	})
}

func TestProbeBackoff(t *testing.T) {
	base, limit := 100*time.Millisecond, time.Second
	want := []time.Duration{0, 0, 0, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
	for failures, w := range want {
		assert.Equal(t, w, probeBackoff(base, limit, failures), "failures=%d", failures)
	}
	assert.Equal(t, base, probeBackoff(base, base/2, 5), "never below base")
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLogsTopologyFailoverAndBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var out syncBuffer
		logger := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo}))
		cfg, err := ParseConfig("postgres://u:s3cr3t-pw@n0:5432,n1:5432,n2:5432/db?unified_health_interval=100ms&unified_breaker_failures=2")
		require.NoError(t, err)
		nodes := []*fakeNode{{lsn: 100, timeline: 1}, {inRecovery: true, lsn: 100}, {inRecovery: true, lsn: 100}}
		opts := []Option{WithLogger(logger)}
		for i, n := range cfg.Nodes() {
			opts = append(opts, WithNodeConnector(n.Name, nodes[i]))
		}
		c, err := NewConnector(cfg, opts...)
		require.NoError(t, err)
		defer c.Close()
		require.True(t, c.Health(t.Context()).Writable)

		nodes[0].set(func(f *fakeNode) { f.down = true })
		time.Sleep(300 * time.Millisecond)
		nodes[1].set(func(f *fakeNode) { f.inRecovery, f.timeline = false, 2 })
		time.Sleep(300 * time.Millisecond)
		nodes[0].set(func(f *fakeNode) { f.down = false }) // back, still claiming primary on timeline 1
		time.Sleep(2 * time.Second)
		synctest.Wait()
		require.NoError(t, c.Close())

		logs := out.String()
		for _, want := range []string{
			`msg="unified: node changed" node=n0:5432 role=primary state=up`,
			`msg="unified: primary lost" node=n0:5432`,
			`msg="unified: node changed" node=n0:5432 role=primary state=down`,
			`msg="unified: breaker changed" node=n0:5432 from=closed to=open`,
			`msg="unified: failover: new primary" from=n0:5432 to=n1:5432 duration=`,
			`msg="unified: node changed" node=n0:5432 role=primary state=fenced`,
			`msg="unified: breaker changed" node=n0:5432 from=open to=closed`,
		} {
			assert.Contains(t, logs, want)
		}
		assert.NotContains(t, logs, "s3cr3t-pw")
		assert.Equal(t, 1, strings.Count(logs, "failover: new primary"), "one line per failover")
	})
}

func TestBatchIsNeverRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg, err := ParseConfig("postgres://u@n0:5432/db?unified_retry_max=3&unified_breaker_failures=100")
		require.NoError(t, err)
		node := &fakeNode{lsn: 1, timeline: 1, down: true}
		c, err := NewConnector(cfg, WithNodeConnector("n0:5432", node), WithStaticPrimary("n0:5432"))
		require.NoError(t, err)
		defer c.Close()
		dc, err := c.Connect(t.Context())
		require.NoError(t, err)
		conn := dc.(*Conn)
		defer conn.Close()
		dials := func() int {
			node.mu.Lock()
			defer node.mu.Unlock()
			return node.dials
		}

		_, err = conn.ExecContext(t.Context(), "INSERT", nil)
		require.Error(t, err)
		assert.Equal(t, 3, dials(), "read-write: a dial that sent nothing is retried up to unified_retry_max")

		_, err = conn.ExecContext(WithMode(t.Context(), Batch), "INSERT", nil)
		require.Error(t, err)
		assert.Equal(t, 4, dials(), "batch: one attempt, no retry")
	})
}
