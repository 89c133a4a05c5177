// Package patronitest holds what the scenario tests over a shared
// patroni.Cluster (test/patroni, test/netns) have in common: waiting for
// a condition, the map of node ports the workload reads by, the check
// that a closed DB left no backend on any node, and the goroutine check
// that knows the cluster's own process waiters.
package patronitest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/internal/patroni"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// WaitFor polls cond every 20 ms for up to d, and fails the test naming
// what it waited for.
func WaitFor(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Ports maps each node's PostgreSQL port to its index, for the workload's
// reads.
func Ports(c *patroni.Cluster) map[int]int {
	m := map[int]int{}
	for i := range c.Len() {
		m[c.Node(i).Port] = i
	}
	return m
}

// ReadShare is the percentage of reads that succeeded (100 when there
// were none).
func ReadShare(ok, failed int) float64 {
	if ok+failed == 0 {
		return 100
	}
	return 100 * float64(ok) / float64(ok+failed)
}

// NoConnectionsLeft waits up to within until no node has a backend with
// application_name appName (a closed DB's physical and probe connections
// are gone), and fails the test naming the nodes that still have some.
// Hung or stopped nodes are skipped.
func NoConnectionsLeft(t *testing.T, c *patroni.Cluster, appName string, within time.Duration) {
	t.Helper()
	ctx := pgcluster.CtxT(t, within+15*time.Second)
	deadline := time.Now().Add(within)
	for i := range c.Len() {
		if !c.Running(i) || c.Hung(i) {
			continue
		}
		conn, err := c.Connect(ctx, i)
		require.NoError(t, err)
		for {
			var n int
			require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", appName).Scan(&n))
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: %d connections of the closed DB are still open", c.Node(i).Name, n)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		conn.Close(ctx)
	}
}

// VerifyNoLeak fails the test if a goroutine started since opts'
// IgnoreCurrent is still running; the process waiters of nodes the test
// restarted are the cluster's, not leaks.
func VerifyNoLeak(t *testing.T, opts ...goleak.Option) {
	t.Helper()
	opts = append(opts, goleak.IgnoreAnyFunction("github.com/unifiedsql/unified/internal/childproc.Start.func1"))
	goleak.VerifyNone(t, opts...)
}
