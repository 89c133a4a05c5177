package unified

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/fakepg"
)

// fakeCluster builds a Connector over three in-memory nodes with a health
// monitor: n0 the primary on timeline 1, n1 and n2 replicas. No network,
// so testing/synctest controls every clock. The DSN's password must show
// up nowhere.
func fakeCluster(t *testing.T, params string, opts ...Option) (*Connector, []*fakepg.Node) {
	t.Helper()
	cfg, err := ParseConfig("postgres://u:s3cr3t-pw@n0:5432,n1:5432,n2:5432/db?" + params)
	require.NoError(t, err)
	nodes := []*fakepg.Node{
		fakepg.New(fakepg.State{LSN: 100, Timeline: 1}),
		fakepg.New(fakepg.State{InRecovery: true, LSN: 100}),
		fakepg.New(fakepg.State{InRecovery: true, LSN: 100}),
	}
	for i, n := range cfg.Nodes() {
		opts = append(opts, WithNodeConnector(n.Name, nodes[i]))
	}
	c, err := NewConnector(cfg, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, nodes
}

// staticFake builds a Connector over one fake primary, n0, with static
// roles (no monitor, no probes).
func staticFake(t *testing.T, params string) (*Connector, *fakepg.Node) {
	t.Helper()
	cfg, err := ParseConfig("postgres://u@n0:5432/db?" + params)
	require.NoError(t, err)
	node := fakepg.New(fakepg.State{LSN: 1, Timeline: 1})
	c, err := NewConnector(cfg, WithNodeConnector("n0:5432", node), WithStaticPrimary("n0:5432"))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, node
}

// logical returns a new logical connection of c, closed when the test ends.
func logical(t *testing.T, c *Connector) *Conn {
	t.Helper()
	dc, err := c.Connect(t.Context())
	require.NoError(t, err)
	t.Cleanup(func() { dc.Close() })
	return dc.(*Conn)
}

// down marks a fake node down: dials refused, open connections broken.
func down(n *fakepg.Node) { n.Set(func(s *fakepg.State) { s.Down = true }) }

// promote makes a fake replica the primary on timeline tl.
func promote(n *fakepg.Node, tl uint32) {
	n.Set(func(s *fakepg.State) { s.InRecovery, s.Timeline = false, tl })
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
			for _, at := range n.ProbeTimes() {
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
		down(nodes[0])
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
		for _, at := range nodes[1].ProbeTimes() {
			if time.Since(at) < 200*time.Millisecond {
				recent++
			}
		}
		assert.GreaterOrEqual(t, recent, 5, "fast probing during the failover")

		promoted := time.Now()
		promote(nodes[1], 2)
		d := <-waited
		require.Positive(t, d, "the waiting write got the new primary")
		assert.LessOrEqual(t, time.Since(promoted), 3*failoverProbeInterval, "the new primary is found within a few fast probes")
		assert.EqualValues(t, 1, c.Stats().Failovers)

		// Back to the normal cadence once the primary is known.
		before := len(nodes[2].ProbeTimes())
		time.Sleep(2 * time.Second)
		synctest.Wait()
		assert.LessOrEqual(t, len(nodes[2].ProbeTimes())-before, 3)
	})
}

func TestMonitorBacksOffFailingNode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := fakeCluster(t, "unified_health_interval=100ms&unified_breaker_open=1s&unified_breaker_failures=3")
		require.True(t, c.Health(t.Context()).Writable)
		down(nodes[2])
		d0 := nodes[2].Dials()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		// Without backoff: 100 attempts in 10 s. With it: a few quick ones,
		// then one per second (the cap for intervals below a second).
		attempts := nodes[2].Dials() - d0
		assert.GreaterOrEqual(t, attempts, 8)
		assert.LessOrEqual(t, attempts, 16)
		h := c.Stats().Health
		assert.Equal(t, "down", h.Nodes[2].State)
		assert.Equal(t, "open", h.Nodes[2].Breaker)

		// The node comes back: the next probe sees it and closes the breaker.
		nodes[2].Set(func(s *fakepg.State) { s.Down = false })
		time.Sleep(time.Second + 100*time.Millisecond)
		synctest.Wait()
		h = c.Stats().Health
		assert.Equal(t, "up", h.Nodes[2].State)
		assert.Equal(t, "closed", h.Nodes[2].Breaker)
	})
}

func TestBreakerFailsFastAndHalfOpens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, node := staticFake(t, "unified_breaker_failures=3&unified_breaker_open=2s&unified_retry_max=1")
		down(node)
		conn := logical(t, c)
		exec := func() error {
			_, err := conn.ExecContext(t.Context(), "INSERT INTO t VALUES (1)", nil)
			return err
		}
		for i := 0; i < 3; i++ {
			err := exec()
			require.Error(t, err)
			assert.NotErrorIs(t, err, ErrCircuitOpen, "attempt %d reaches the node", i)
		}
		dials := node.Dials()
		err := exec()
		assert.ErrorIs(t, err, ErrCircuitOpen)
		assert.ErrorIs(t, err, fakepg.ErrRefused, "the open breaker reports the node's last fault")
		assert.Equal(t, dials, node.Dials(), "an open breaker fails fast, without dialing")

		time.Sleep(2*time.Second + time.Millisecond)
		node.Set(func(s *fakepg.State) { s.Down = false })
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
		c, nodes := fakeCluster(t, "unified_health_interval=100ms&unified_breaker_failures=2", WithLogger(logger))
		require.True(t, c.Health(t.Context()).Writable)

		down(nodes[0])
		time.Sleep(300 * time.Millisecond)
		promote(nodes[1], 2)
		time.Sleep(300 * time.Millisecond)
		nodes[0].Set(func(s *fakepg.State) { s.Down = false }) // back, still claiming primary on timeline 1
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
		c, node := staticFake(t, "unified_retry_max=3&unified_breaker_failures=100")
		down(node)
		conn := logical(t, c)

		_, err := conn.ExecContext(t.Context(), "INSERT", nil)
		require.Error(t, err)
		assert.Equal(t, 3, node.Dials(), "read-write: a dial that sent nothing is retried up to unified_retry_max")

		_, err = conn.ExecContext(WithMode(t.Context(), Batch), "INSERT", nil)
		require.Error(t, err)
		assert.Equal(t, 4, node.Dials(), "batch: one attempt, no retry")
	})
}

// A node re-resolved from DNS or Patroni is a new *node with the same
// server.address and server.port: its duration series is the old one, so
// the cache of attribute sets does not grow with every new *node (it
// would fill up with dead nodes and then build the set on every call).
func TestOpSetsKeyedByAddressNotNode(t *testing.T) {
	c, _ := staticFake(t, "")
	tel := c.tel
	key := func(n *node) opKey { return opKeyOf(n, true, ReadWrite, "SELECT", "", "") } // as opRecord.end
	first := &node{name: "db/10.0.0.1:5432", host: "db", port: 5432}
	tel.initNode(first)
	tel.opSet(key(first))
	base := tel.opSets.Len()
	for i := range 50 {
		n := &node{name: "db/10.0.1." + strconv.Itoa(i) + ":5432", host: "db", port: 5432}
		tel.initNode(n)
		tel.opSet(key(n))
	}
	assert.Equal(t, base, tel.opSets.Len(), "50 re-resolved nodes of one host:port share one series")
}
