package pgtest_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/pgtest"
)

// TestPatroniSwitchoverAndHang walks the Patroni variant through the
// faults that take seconds (a crash costs Patroni's TTL, 20 s: the
// scenario tests in test/patroni do those): a switchover to the
// synchronous standby, then a replica frozen and thawed.
func TestPatroniSwitchoverAndHang(t *testing.T) {
	c := pgtest.StartPatroni(t, pgtest.Synchronous())
	require.Equal(t, 3, c.Len())
	l := c.Leader()
	assert.Equal(t, 0, l, "node 0 bootstraps and leads")
	s := c.SyncStandby()
	require.NotEqual(t, -1, s, "a synchronous standby")
	require.NotEqual(t, l, s)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	exec := func(i int, sql string) error {
		conn, err := pgx.Connect(ctx, c.Node(i).DSN())
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	require.NoError(t, exec(l, "DROP TABLE IF EXISTS pt; CREATE TABLE pt (k int); INSERT INTO pt VALUES (1)"))
	assert.Error(t, exec(s, "INSERT INTO pt VALUES (2)"), "a replica is read-only")

	t0 := time.Now()
	c.Switchover(s)
	n, at := c.WaitLeaderWritable(l)
	t.Logf("switchover %s -> %s: writable %v after the request", c.Node(l), c.Node(n), at.Sub(t0).Round(time.Millisecond))
	assert.Equal(t, s, n)
	c.WaitHealthy()
	assert.Equal(t, s, c.Leader())
	require.NoError(t, exec(s, "INSERT INTO pt VALUES (3)"))

	r := 3 - l - s
	c.Hang(r)
	assert.True(t, c.Hung(r))
	c.Resume(r)
	c.WaitHealthy()
	assert.True(t, c.Running(r))
	assert.Contains(t, c.DSN("a=b"), c.Node(r).Addr())
	assert.Len(t, c.RESTURLs(), 3)
}
