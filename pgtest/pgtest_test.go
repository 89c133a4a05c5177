package pgtest

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// query runs a one-row query on a node over a new connection.
func query(t *testing.T, n *Node, sql string, dest ...any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, n.DSN())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.QueryRow(ctx, sql).Scan(dest...)
}

func has(t *testing.T, n *Node, id int) bool {
	t.Helper()
	var ok bool
	require.NoError(t, query(t, n, fmt.Sprintf("SELECT EXISTS (SELECT 1 FROM t WHERE id = %d)", id), &ok))
	return ok
}

func createTable(t *testing.T, n *Node) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), n.DSN())
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(t.Context(), "CREATE TABLE t (id int)")
	require.NoError(t, err)
}

func insert(t *testing.T, n *Node, id int) {
	t.Helper()
	var x int
	require.NoError(t, query(t, n, fmt.Sprintf("INSERT INTO t VALUES (%d) RETURNING id", id), &x))
}

// TestFaults goes through every fault on one synchronous cluster.
func TestFaults(t *testing.T) {
	c := Start(t, Synchronous())
	require.Equal(t, 3, c.Len())
	assert.Equal(t, 0, c.Primary())
	for i := range c.Len() {
		n := c.Node(i)
		assert.Equal(t, fmt.Sprintf("node%d", i), n.Name())
		assert.Equal(t, fmt.Sprintf("127.0.0.1:%d", n.Port()), n.Addr())
		assert.Equal(t, fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", n.Addr()), n.DSN())
		assert.Contains(t, c.DSN(), n.Addr())
		assert.True(t, n.PromotedAt().IsZero())
	}
	var one int
	createTable(t, c.Node(0))
	insert(t, c.Node(0), 1)
	var sync string
	require.NoError(t, query(t, c.Node(0), "SHOW synchronous_standby_names", &sync))
	assert.Equal(t, "ANY 1 (*)", sync)

	// Replay paused: node1 stops moving, node2 does not.
	c.PauseReplay(1)
	insert(t, c.Node(0), 2)
	require.Eventually(t, func() bool { return has(t, c.Node(2), 2) }, 10*time.Second, 10*time.Millisecond)
	assert.False(t, has(t, c.Node(1), 2), "paused replica replayed")
	c.ResumeReplay(1)
	require.Eventually(t, func() bool { return has(t, c.Node(1), 2) }, 10*time.Second, 10*time.Millisecond)

	// Hung: connections are accepted, nothing answers.
	c.Hang(2)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	_, err := pgx.Connect(ctx, c.Node(2).DSN())
	cancel()
	require.Error(t, err, "a hung node answered")
	c.Resume(2)
	require.NoError(t, query(t, c.Node(2), "SELECT 1", &one))

	// Crash and failover: the most advanced replica is promoted, the other
	// follows it, the cluster stays synchronous.
	c.Kill(0)
	require.Error(t, query(t, c.Node(0), "SELECT 1", &one), "a killed node answered")
	before := time.Now()
	p, err := c.FailOver()
	require.NoError(t, err)
	require.Contains(t, []int{1, 2}, p)
	assert.Equal(t, p, c.Primary())
	assert.True(t, c.Node(p).PromotedAt().After(before))
	insert(t, c.Node(p), 3)
	for _, i := range []int{1, 2} {
		assert.True(t, has(t, c.Node(i), 1) && has(t, c.Node(i), 2), "node%d lost an acknowledged write", i)
	}
	require.NoError(t, query(t, c.Node(p), "SHOW synchronous_standby_names", &sync))
	assert.Equal(t, "ANY 1 (*)", sync)
	var streaming []string
	require.NoError(t, query(t, c.Node(p), "SELECT array_agg(application_name::text) FROM pg_stat_replication WHERE state = 'streaming'", &streaming))
	assert.Equal(t, []string{c.Node(3 - p).Name()}, streaming)

	// The old primary comes back as a replica of the new one.
	c.Rejoin(0)
	var rec bool
	require.NoError(t, query(t, c.Node(0), "SELECT pg_is_in_recovery()", &rec))
	assert.True(t, rec)
	insert(t, c.Node(p), 4)
	require.Eventually(t, func() bool { return has(t, c.Node(0), 4) }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, query(t, c.Node(p), "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", &one))
	assert.Equal(t, 2, one)

	// Close stops everything; a second Close does nothing.
	c.Close()
	c.Close()
	require.Error(t, query(t, c.Node(p), "SELECT 1", &one), "a node answered after Close")
}

// TestLonePrimary: Replicas(0), Conf, a FailOver with nothing to fail over
// to, and a misuse that fails the test; Start's cleanup closes the cluster.
func TestLonePrimary(t *testing.T) {
	var c *Cluster
	var out bytes.Buffer
	reached := false
	code := run("lone", &out, func(tb testing.TB) {
		c = Start(tb, Replicas(0), Conf("work_mem = '8MB'"))
		assert.Equal(t, 1, c.Len())
		assert.Equal(t, c.Node(0).DSN(), c.DSN())
		var wm string
		require.NoError(t, query(t, c.Node(0), "SHOW work_mem", &wm))
		assert.Equal(t, "8MB", wm)
		_, err := c.FailOver()
		assert.ErrorContains(t, err, "no replica")
		c.Node(1)
		reached = true
	})
	assert.Equal(t, 1, code)
	assert.False(t, reached, "Node(1) did not fail")
	assert.Contains(t, out.String(), "pgtest: no node 1 (the cluster has 1)")
	assert.Contains(t, out.String(), "last lines of node0's server log", "a failed run logs the server logs")
	require.NotNil(t, c)
	var one int
	require.Error(t, query(t, c.Node(0), "SELECT 1", &one), "the cluster outlived its program")
}

func TestOptionErrors(t *testing.T) {
	for name, opts := range map[string][]Option{
		"Replicas(-1)":                {Replicas(-1)},
		"Synchronous with no replica": {Replicas(0), Synchronous()},
	} {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			code := run("opts", &out, func(tb testing.TB) { Start(tb, opts...) })
			assert.Equal(t, 1, code)
			assert.True(t, strings.HasPrefix(out.String(), "opts: pgtest: "), out.String())
		})
	}
}
