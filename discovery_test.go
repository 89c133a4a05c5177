package unified

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/fakepg"
)

// A DNS re-resolution in flight when Close is called ends before Close
// returns, and its cancellation is not a discovery error: nothing is
// logged or counted for it. (The lookup goroutine was not in the monitor's
// WaitGroup: Close returned while it still ran, and it then logged "did
// not resolve ... context canceled" and counted a discovery error.)
func TestDNSLookupEndsWithClose(t *testing.T) {
	cfg, err := ParseConfig("postgres://u@n0:5432,pool.test:1/db?unified_dns_refresh=1s&unified_health_interval=100ms")
	require.NoError(t, err)
	var calls, inFlight atomic.Int32
	lookup := func(ctx context.Context, host string) ([]string, error) {
		if calls.Add(1) == 1 {
			return []string{"127.0.0.1"}, nil
		}
		inFlight.Add(1)
		defer inFlight.Add(-1)
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond) // a resolver that takes a moment to notice
		return nil, ctx.Err()
	}
	var logs syncBuffer
	n0 := fakepg.New(fakepg.State{LSN: 100, Timeline: 1})
	c, err := NewConnector(cfg, WithNodeConnector("n0:5432", n0), WithLookupFunc(lookup),
		WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	require.NoError(t, err)
	require.Equal(t, "n0:5432", c.Health(t.Context()).Primary)
	require.Eventually(t, func() bool { return inFlight.Load() > 0 }, 5*time.Second, 10*time.Millisecond, "a lookup in flight")
	require.NoError(t, c.Close())
	assert.Zero(t, inFlight.Load(), "Close waits for the lookup goroutine")
	after := logs.String()
	time.Sleep(200 * time.Millisecond)
	assert.Empty(t, strings.TrimPrefix(logs.String(), after), "nothing logged after Close")
	assert.NotContains(t, logs.String(), "did not resolve", "a lookup canceled by Close is no failure")
	assert.Zero(t, c.Stats().DiscoveryErrors, "nor a discovery error")
}

// The DSN names n1 and Patroni lists it too, tagged noloadbalance: the two
// sources give one node (the same key), and Patroni's tag holds for it
// (the first source, the DSN's, used to win and the tag was lost: the
// replica still got reads).
func TestPatroniNoLoadBalanceOnDSNHost(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"members":[{"name":"n0","role":"leader","host":"n0","port":5432},{"name":"n1","role":"replica","host":"n1","port":5432,"tags":{"noloadbalance":true}}]}`))
	}))
	defer srv.Close()
	cfg, err := ParseConfig("postgres://u@n0:5432,n1:5432/db?unified_patroni=" + srv.URL)
	require.NoError(t, err)
	n0 := fakepg.New(fakepg.State{LSN: 100, Timeline: 1})
	n1 := fakepg.New(fakepg.State{InRecovery: true, LSN: 100})
	lookup := func(ctx context.Context, host string) ([]string, error) { return nil, errors.New("no DNS here") }
	c, err := NewConnector(cfg, WithNodeConnector("n0:5432", n0), WithNodeConnector("n1:5432", n1), WithLookupFunc(lookup))
	require.NoError(t, err)
	defer c.Close()
	require.Equal(t, "n0:5432", c.Health(t.Context()).Primary)
	n := c.viewNow().named("n1:5432")
	require.NotNil(t, n)
	assert.True(t, n.noLoadBalance.Load(), "Patroni's noloadbalance tag applies to the member the DSN names too")
	n = c.viewNow().named("n0:5432")
	require.NotNil(t, n)
	assert.False(t, n.noLoadBalance.Load(), "an untagged member")
}

// A member new to Patroni's list is resolved off the monitor's goroutine:
// a resolver that does not answer stops no probe, result or publication
// meanwhile (applyPatroni resolved it on the loop: up to twice
// unified_health_timeout per new member without a probe).
func TestPatroniNewMemberLookupKeepsMonitorProbing(t *testing.T) {
	var members atomic.Value
	members.Store(`{"members":[{"name":"n0","role":"leader","host":"n0","port":5432}]}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(members.Load().(string)))
	}))
	defer srv.Close()
	cfg, err := ParseConfig("postgres://u@n0:5432/db?unified_health_interval=100ms&unified_health_timeout=500ms&unified_patroni=" + srv.URL)
	require.NoError(t, err)
	slow := make(chan struct{}, 1)
	lookup := func(ctx context.Context, host string) ([]string, error) {
		if host == "slow.test" {
			select {
			case slow <- struct{}{}:
			default:
			}
			<-ctx.Done() // a resolver that does not answer
			return nil, ctx.Err()
		}
		return []string{"127.0.0.1"}, nil
	}
	n0 := fakepg.New(fakepg.State{LSN: 100, Timeline: 1})
	c, err := NewConnector(cfg, WithNodeConnector("n0:5432", n0), WithLookupFunc(lookup))
	require.NoError(t, err)
	defer c.Close()
	require.Equal(t, "n0:5432", c.Health(t.Context()).Primary)
	members.Store(`{"members":[{"name":"n0","role":"leader","host":"n0","port":5432},{"name":"n9","role":"replica","host":"slow.test","port":5432}]}`)
	select {
	case <-slow: // at the next Patroni poll (5s)
	case <-time.After(10 * time.Second):
		t.Fatal("the new member was never looked up")
	}
	from := time.Now()
	time.Sleep(1200 * time.Millisecond) // the lookup's bound (twice the health timeout), and then some
	var gap time.Duration
	var last time.Time
	for _, at := range n0.ProbeTimes() {
		if !at.Before(from) {
			gap = max(gap, at.Sub(last))
		}
		last = at
	}
	gap = max(gap, time.Since(last)) // and none since the last: a stall to now
	t.Logf("largest gap between probes of the primary (interval 100ms) since the lookup began: %v", gap)
	assert.Less(t, gap, 300*time.Millisecond, "the monitor keeps probing while a name resolves")
	assert.Equal(t, "n0:5432", c.Health(t.Context()).Primary)
	assert.Eventually(t, func() bool {
		for _, n := range c.Health(t.Context()).Nodes {
			if n.Name == "slow.test:5432" {
				return true
			}
		}
		return false
	}, 3*time.Second, 10*time.Millisecond, "the member joins, dialed by name, once its lookup gave up")
}
