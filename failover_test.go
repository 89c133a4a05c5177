package unified_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/pgcluster"
)

// haParams are the DSN parameters of the failover scenarios: probes fast
// enough that a test sees the monitor react within a second.
var haParams = []string{"unified_health_interval=100ms", "unified_health_timeout=300ms"}

// mostAdvanced returns, among candidates, the replica that received the
// most WAL: the one a failover manager promotes so that no acknowledged
// synchronous commit is lost.
func mostAdvanced(t *testing.T, c *pgcluster.Cluster, candidates ...int) int {
	t.Helper()
	best, bestLSN := -1, int64(-1)
	for _, i := range candidates {
		var lsn int64
		require.NoError(t, c.QueryRow(t.Context(), i,
			"SELECT COALESCE((pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::int8, 0)").Scan(&lsn))
		if lsn > bestLSN {
			best, bestLSN = i, lsn
		}
	}
	return best
}

// others returns the node indexes other than i.
func others(c *pgcluster.Cluster, i int) []int {
	var out []int
	for j := 0; j < c.Len(); j++ {
		if j != i {
			out = append(out, j)
		}
	}
	return out
}

// killAndPromote SIGKILLs the primary under load, promotes the most
// advanced replica and re-points the other one, and returns the new
// primary and the moment it accepted writes.
func killAndPromote(t *testing.T, c *pgcluster.Cluster, primary int) (int, time.Time, time.Time) {
	t.Helper()
	ctx := t.Context()
	require.NoError(t, c.Kill(primary))
	killedAt := time.Now()
	rest := others(c, primary)
	target := mostAdvanced(t, c, rest...)
	promotedAt, err := c.Promote(ctx, target)
	require.NoError(t, err)
	for _, j := range rest {
		if j != target {
			require.NoError(t, c.Repoint(ctx, j, target))
		}
	}
	return target, killedAt, promotedAt
}

func runKillScenario(t *testing.T, synchronous bool) verdict {
	c := pgcluster.Need(t, cluster)
	restoreAfter(t, c)
	ctx := t.Context()
	primary, err := c.Primary(ctx)
	require.NoError(t, err)
	if synchronous {
		require.NoError(t, c.SetSynchronous(ctx, primary, true))
	}
	db := openUnified(t, c, haParams...)
	w := newWorkload(t, db, c, "failover_kill")
	w.start(8, 4, 10*time.Second)
	time.Sleep(500 * time.Millisecond)

	target, killedAt, promotedAt := killAndPromote(t, c, primary)
	waitFor(t, 15*time.Second, func() bool { return w.ackedSince(promotedAt) >= 50 }, "writes to resume on the new primary")
	time.Sleep(200 * time.Millisecond)
	w.halt()

	resumed := w.firstAckAfter(promotedAt)
	v := w.check(t, c, target, killedAt, resumed)
	t.Logf("kill (synchronous=%v): %s; client recovery %v after promotion; write outage %v",
		synchronous, v, resumed.Sub(promotedAt).Round(time.Millisecond), resumed.Sub(killedAt).Round(time.Millisecond))
	assert.Zero(t, v.dup, "no write is stored twice")
	assert.Zero(t, v.unflaggedStored, "every stored write that returned an error carries ErrCommitUnknown: %v", v.unflaggedErrs)
	assert.False(t, resumed.IsZero(), "writes resumed by themselves")
	if v.readsOK+v.readsFailed > 0 {
		assert.GreaterOrEqual(t, float64(v.readsOK)/float64(v.readsOK+v.readsFailed), 0.999, "reads keep succeeding during the outage: %v", v.readErrs)
	}
	assert.Positive(t, v.readsOK, "reads were served during the outage")
	return v
}

func TestFailoverKillSynchronous(t *testing.T) {
	v := runKillScenario(t, true)
	assert.Zero(t, v.lost, "no acknowledged write is lost with synchronous replication")
}

func TestFailoverKillAsynchronous(t *testing.T) {
	v := runKillScenario(t, false)
	t.Logf("asynchronous replication: %d acknowledged writes lost (expected to be possible)", v.lost)
}

func TestSwitchover(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	restoreAfter(t, c)
	ctx := t.Context()
	primary, err := c.Primary(ctx)
	require.NoError(t, err)
	db := openUnified(t, c, haParams...)
	w := newWorkload(t, db, c, "failover_switchover")
	w.start(8, 4, 10*time.Second)
	time.Sleep(300 * time.Millisecond)

	require.NoError(t, c.Stop(primary, "fast"))
	stoppedAt := time.Now()
	rest := others(c, primary)
	target := mostAdvanced(t, c, rest...)
	promotedAt, err := c.Promote(ctx, target)
	require.NoError(t, err)
	for _, j := range rest {
		if j != target {
			require.NoError(t, c.Repoint(ctx, j, target))
		}
	}
	waitFor(t, 15*time.Second, func() bool { return w.ackedSince(promotedAt) >= 50 }, "writes to resume")
	w.halt()
	resumed := w.firstAckAfter(promotedAt)
	v := w.check(t, c, target, stoppedAt, resumed)
	t.Logf("switchover: %s; client recovery %v", v, resumed.Sub(promotedAt).Round(time.Millisecond))
	assert.Zero(t, v.lost)
	assert.Zero(t, v.dup)
	assert.Zero(t, v.failed, "statements not yet sent see no error; in-flight ones carry ErrCommitUnknown: %v", v.unflaggedErrs)
	assert.Zero(t, v.readsFailed, "%v", v.readErrs)
}

var _ = context.Background
