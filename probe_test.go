package unified

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/fakepg"
)

func TestProbeDeadline(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name          string
		rtt, ceiling  time.Duration
		deadline, sta time.Duration
	}{
		{"no round trip known yet: the ceiling", 0, 500 * ms, 500 * ms, time.Second},
		{"a fast node: the floor", 100 * time.Microsecond, 500 * ms, 50 * ms, 100 * ms},
		{"a slower node: twenty round trips", 10 * ms, 500 * ms, 200 * ms, 400 * ms},
		{"never above unified_health_timeout", 100 * ms, 500 * ms, 500 * ms, time.Second},
		{"a tiny health timeout wins", ms, 20 * ms, 20 * ms, 100 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.deadline, probeDeadline(tc.rtt, tc.ceiling))
			assert.Equal(t, tc.sta, stallAfter(tc.rtt, tc.ceiling))
		})
	}
	assert.Equal(t, 150*ms, confirmDeadline(100*time.Microsecond, 500*ms), "a confirmation waits three deadlines")
	assert.Equal(t, 500*ms, confirmDeadline(10*ms, 500*ms), "never above unified_health_timeout")
	assert.Equal(t, 8*ms, ewma(10*ms, 0), "the EWMA moves a fifth of the way")
	assert.Equal(t, 3*ms, ewma(0, 3*ms), "the first sample is the value")
	for _, tc := range []struct {
		name       string
		st         confirmStage
		peer, slow bool
		down       bool
		next       confirmStage
	}{
		{"first timeout, another node answered meanwhile: confirm it with a longer deadline", confirmNone, true, false, false, confirmPeers},
		{"first timeout, no other answer: ask it again beside the others", confirmNone, false, false, false, confirmPeers},
		{"second timeout, another node answered beside it: down", confirmPeers, true, false, true, confirmNone},
		{"second timeout, no other node answered either: the client is slow, give it the full timeout", confirmPeers, false, false, false, confirmFull},
		{"the full timeout ran out: down", confirmFull, false, false, true, confirmNone},
		{"the full timeout ran out, others answered: down", confirmFull, true, false, true, confirmNone},
		{"the client's scheduler is behind: another's answer proves nothing, the full timeout decides", confirmNone, true, true, false, confirmFull},
		{"slow client, second stage: the full timeout too", confirmPeers, true, true, false, confirmFull},
		{"slow client, the full timeout ran out: down all the same", confirmFull, false, true, true, confirmNone},
	} {
		down, next := timedOutDown(tc.st, tc.peer, tc.slow)
		assert.Equal(t, tc.down, down, tc.name)
		assert.Equal(t, tc.next, next, tc.name)
	}
}

// A hung node is marked down within the adaptive probe deadline when the
// other nodes answer, not at unified_health_timeout; and a statement stuck
// on it has it probed out of turn, not a health interval later.
func TestHungNodeSeenFast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_health_timeout=500ms")
		require.Equal(t, "n0:5432", c.Health(t.Context()).Primary)
		time.Sleep(1100 * time.Millisecond) // round trips known
		dc, err := c.Connect(t.Context())
		require.NoError(t, err)
		conn := dc.(*Conn)
		defer conn.Close()
		_, err = conn.ExecContext(t.Context(), "SELECT 1", nil)
		require.NoError(t, err)

		start := time.Now()
		nodes[0].Set(func(s *fakepg.State) { s.Hung = true })
		done := make(chan error, 1)
		go func() {
			_, err := conn.ExecContext(context.Background(), "INSERT", nil) // no deadline
			done <- err
		}()
		for c.Health(t.Context()).Nodes[0].State != "down" {
			time.Sleep(10 * time.Millisecond)
		}
		seen := time.Since(start)
		t.Logf("hung primary marked down after %v (health interval 1s, timeout 500ms)", seen)
		assert.Less(t, seen, 400*time.Millisecond, "the stall and the adaptive deadline, not a health interval")
		// The primary went down by a timeout: the write stuck on it is
		// interrupted, and it may have committed.
		assert.ErrorIs(t, <-done, ErrCommitUnknown)
		require.NoError(t, c.Close())
	})
}

// A client whose probes are all late (its CPU saturated) marks no node
// down: a probe that times out with no other node answering is confirmed
// with the full timeout first.
func TestSlowClientMarksNoNodeDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, nodes := fakeCluster(t, "unified_health_interval=100ms&unified_health_timeout=500ms")
		require.Equal(t, "n0:5432", c.Health(t.Context()).Primary)
		time.Sleep(time.Second) // round trips known: tiny, deadlines at the 50ms floor
		// No probe may read its delay while the delays change: one that
		// answered at once beside another that is late says the late
		// node, not the client, is slow.
		synctest.Wait()
		for _, n := range nodes {
			n.Set(func(s *fakepg.State) { s.Delay = 120 * time.Millisecond }) // every probe late, none hung
		}
		downs := 0
		for range 100 {
			time.Sleep(50 * time.Millisecond)
			for _, n := range c.Health(t.Context()).Nodes {
				if n.State == "down" {
					downs++
				}
			}
		}
		assert.Zero(t, downs, "no node marked down for a slow client")
		require.NoError(t, c.Close())
	})
}

// slowerPrimary starts a fake cluster probed each second with a 500ms
// health timeout (and params), waits until every round trip is known to be
// tiny, opens a session on the primary n0 and uses it, then makes n0 answer
// everything delay late: a primary that got slower, not hung.
func slowerPrimary(t *testing.T, params string, delay time.Duration) (*Connector, *Conn) {
	t.Helper()
	if params != "" {
		params = "&" + params
	}
	c, nodes := fakeCluster(t, "unified_health_interval=1s&unified_health_timeout=500ms"+params)
	require.Equal(t, "n0:5432", c.Health(t.Context()).Primary)
	time.Sleep(1100 * time.Millisecond) // round trips known: tiny
	conn := logical(t, c)
	_, err := conn.ExecContext(t.Context(), "SELECT 1", nil)
	require.NoError(t, err)
	synctest.Wait()
	nodes[0].Set(func(s *fakepg.State) { s.Delay = delay })
	return c, conn
}

// A primary that gets slower, not hung (a loaded server: every probe and
// statement answered in 80ms, unified_health_timeout 500ms), may be marked
// down once: its usual round trip was tiny, so its adaptive deadline is
// the 50ms floor, and the replicas answered meanwhile. But a node down by
// a timeout is probed again with the full timeout: it is the primary again
// at its next probe, not down for good (a timeout never updates the round
// trip, so the short deadline used to stay: ErrNoPrimary forever).
func TestSlowerPrimaryNotDownForGood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, conn := slowerPrimary(t, "unified_failover_timeout=3s", 80*time.Millisecond)
		done := make(chan error, 1)
		go func() {
			_, err := conn.ExecContext(context.Background(), "INSERT", nil)
			done <- err
		}()
		time.Sleep(5 * time.Second)
		h := c.Health(t.Context())
		t.Logf("after 5s of 80ms answers: n0 state=%s lastError=%q primary=%q", h.Nodes[0].State, h.Nodes[0].LastError, h.Primary)
		select {
		case err := <-done:
			assert.NoError(t, err, "an 80ms write on a node that answers is not interrupted")
		default:
			t.Error("an 80ms write still runs after 5s")
		}
		assert.Equal(t, "n0:5432", h.Primary, "a node answering in 80ms (timeout 500ms) is the primary")
		time.Sleep(60 * time.Second)
		h = c.Health(t.Context())
		assert.Equal(t, "n0:5432", h.Primary, "still the primary a minute later")
		_, err := logical(t, c).ExecContext(context.Background(), "INSERT", nil)
		assert.NoError(t, err, "a write a minute later")
		require.NoError(t, c.Close())
	})
}

// A primary that gets slower, not hung (every answer 120 ms where it used
// to answer at once: a load spike on the server), is never shown down and
// its sessions are not interrupted: the probe that timed out at the 50 ms
// floor is confirmed with three deadlines, which it passes.
func TestSlowPrimaryKeepsItsSessions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, conn := slowerPrimary(t, "", 120*time.Millisecond)
		downs := 0
		for range 50 {
			_, err := conn.ExecContext(context.Background(), "INSERT", nil)
			require.NoError(t, err, "a write on a slower primary")
			if c.Health(t.Context()).Nodes[0].State != "up" {
				downs++
			}
		}
		assert.Zero(t, downs, "the slower primary was never shown down")
		require.NoError(t, c.Close())
	})
}
