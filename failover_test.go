package unified_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/faultproxy"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// haParams are the DSN parameters of the failover scenarios: probes fast
// enough that a test sees the monitor react within a second.
var haParams = []string{"unified_health_interval=100ms", "unified_health_timeout=300ms"}

// others returns the node indexes other than i.
func others(c *pgcluster.Cluster, i int) []int { return c.Others(i) }

// failOver promotes the most advanced replica after node failed was lost
// and makes the other follow it (pgcluster.FailOver); it returns the new
// primary and the moment it accepted writes.
func failOver(t *testing.T, c *pgcluster.Cluster, failed int) (int, time.Time) {
	t.Helper()
	target, promotedAt, _, err := c.FailOver(t.Context(), failed)
	require.NoError(t, err)
	return target, promotedAt
}

// killAndPromote SIGKILLs the primary under load and fails over; it
// returns the new primary, the moment of the kill and the moment the new
// primary accepted writes.
func killAndPromote(t *testing.T, c *pgcluster.Cluster, primary int) (int, time.Time, time.Time) {
	t.Helper()
	require.NoError(t, c.Kill(primary))
	killedAt := time.Now()
	target, promotedAt := failOver(t, c, primary)
	return target, killedAt, promotedAt
}

func runKillScenario(t *testing.T, synchronous bool) verdict {
	c, primary := faultable(t, "")
	ctx := t.Context()
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
	// The reads are judged from the kill to the writes' recovery, and for
	// a second at least: a write outage of 100 ms is shorter than a
	// scheduling stall of a loaded CI machine, where no read may end in
	// it (a CI run saw none in 95 ms). A second with no read is a fault.
	v := w.check(t, c, target, killedAt, later(resumed, killedAt.Add(time.Second)))
	t.Logf("kill (synchronous=%v): %s; client recovery %v after promotion; write outage %v",
		synchronous, v, resumed.Sub(promotedAt).Round(time.Millisecond), resumed.Sub(killedAt).Round(time.Millisecond))
	assert.Zero(t, v.dup, "no write is stored twice")
	assert.Zero(t, v.unflaggedStored, "every stored write that returned an error carries ErrCommitUnknown: %v", v.unflaggedErrs)
	assert.False(t, resumed.IsZero(), "writes resumed by themselves")
	if v.readsOK+v.readsFailed > 0 {
		assert.GreaterOrEqual(t, float64(v.readsOK)/float64(v.readsOK+v.readsFailed), 0.999, "reads keep succeeding during the failover: %v", v.readErrs)
	}
	assert.Positive(t, v.readsOK, "reads were served during the failover")
	return v
}

// later is the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
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
	c, primary := faultable(t, "")
	db := openUnified(t, c, haParams...)
	w := newWorkload(t, db, c, "failover_switchover")
	w.start(8, 4, 10*time.Second)
	time.Sleep(300 * time.Millisecond)

	require.NoError(t, c.Stop(primary, "fast"))
	stoppedAt := time.Now()
	target, promotedAt := failOver(t, c, primary)
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

func TestHungPrimary(t *testing.T) {
	c, primary := faultable(t, "")
	ctx := t.Context()
	const interval, timeout = 200 * time.Millisecond, 300 * time.Millisecond
	db := openUnified(t, c, "unified_health_interval=200ms", "unified_health_timeout=300ms")
	conn, _ := unified.ConnectorOf(db)
	_, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS hung_writes (id int)")
	require.NoError(t, err)
	before := runtime.NumGoroutine()

	// A write already in flight when the primary hangs, with no deadline
	// of its own: it waits on an open socket that never answers.
	inflight := make(chan error, 1)
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	_, err = tx.ExecContext(ctx, "INSERT INTO hung_writes VALUES (0)")
	require.NoError(t, err)

	require.NoError(t, c.Hang(primary))
	hungAt := time.Now()
	t.Cleanup(func() { _ = c.Continue(primary) })
	go func() { inflight <- tx.Commit() }()

	// Callers' deadlines are honoured while the primary hangs.
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Go(func() {
			wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := db.ExecContext(wctx, "INSERT INTO hung_writes VALUES (1)")
			assert.Error(t, err)
			assert.Less(t, time.Since(start), 500*time.Millisecond+time.Second, "the caller's deadline is honoured")
		})
	}
	waitFor(t, 5*time.Second, func() bool { return conn.Health(ctx).Nodes[primary].State == "down" }, "hung primary marked down")
	markedDown := time.Since(hungAt)
	t.Logf("hung primary marked down after %v (health interval %v, timeout %v)", markedDown.Round(time.Millisecond), interval, timeout)

	// The commit in flight is interrupted once the probes find the node
	// hung, with no other primary yet: its outcome is unknown. (Without
	// that it would wait until TCP gives up: the bound here is a
	// failure's, not a target.)
	select {
	case err := <-inflight:
		assert.ErrorIs(t, err, unified.ErrCommitUnknown, "%v", err)
		assert.ErrorContains(t, err, "interrupted: the node stopped answering its health probes", "the error says why")
	case <-time.After(20 * time.Second):
		t.Fatal("the commit in flight on the hung primary was not interrupted")
	}
	wg.Wait()

	// A replica is promoted while the old primary still hangs: writes move.
	target, promotedAt := failOver(t, c, primary)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = db.ExecContext(wctx, "CREATE TABLE IF NOT EXISTS hung_after (id int)")
	require.NoError(t, err)
	t.Logf("first write after promotion: %v", time.Since(promotedAt).Round(time.Millisecond))
	assert.Equal(t, c.Node(target).Port, serverPort(t, ctx, db))

	// No goroutine pile-up: the timed-out writes left nothing behind.
	waitFor(t, 5*time.Second, func() bool { return runtime.NumGoroutine() <= before+5 },
		"goroutines to settle (before %d, now %d)", before, runtime.NumGoroutine())
}

func TestReadsMoveOffFaultyReplica(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	ctx := t.Context()
	primary, err := c.Primary(ctx)
	require.NoError(t, err)
	rest := others(c, primary)
	faulty, healthy := rest[0], rest[1]
	proxy, err := faultproxy.New(c.Node(faulty).Addr())
	require.NoError(t, err)
	t.Cleanup(func() { proxy.Close() })
	dsn := func(params ...string) string {
		hosts := []string{c.Node(primary).Addr(), proxy.Addr(), c.Node(healthy).Addr()}
		return "postgres://postgres@" + strings.Join(hosts, ",") + "/postgres?sslmode=disable&" +
			strings.Join(append([]string{"unified_health_interval=100ms", "unified_health_timeout=300ms"}, params...), "&")
	}
	open := func(params ...string) (*sql.DB, *unified.Connector) {
		db, err := sql.Open("unified", dsn(params...))
		require.NoError(t, err)
		t.Cleanup(func() { db.Close() })
		conn, _ := unified.ConnectorOf(db)
		return db, conn
	}

	t.Run("blackhole", func(t *testing.T) {
		proxy.Pass()
		db, conn := open()
		counts := readSpread(t, db, c, 8, 200)
		require.Positive(t, counts[faulty], "the proxied replica serves reads before the fault: %v", counts)
		proxy.Blackhole()
		waitFor(t, 5*time.Second, func() bool { return conn.Health(ctx).Nodes[1].State == "down" }, "blackholed replica marked down")
		counts = readSpread(t, db, c, 8, 400)
		assert.Zero(t, counts[faulty], "%v", counts)
		assert.Equal(t, 400, counts[healthy], "%v", counts)
	})
	t.Run("latency", func(t *testing.T) {
		proxy.Pass()
		proxy.SetLatency(20 * time.Millisecond)
		db, conn := open("unified_replica_policy=least-rtt")
		waitFor(t, 5*time.Second, func() bool {
			h := conn.Health(ctx)
			return h.Nodes[1].State == "up" && h.Nodes[1].RTT > 30*time.Millisecond
		}, "the slow replica's RTT to show")
		counts := readSpread(t, db, c, 8, 400)
		assert.Zero(t, counts[faulty], "least-rtt avoids the slow replica: %v", counts)
		assert.Equal(t, 400, counts[healthy], "%v", counts)
	})
}

func TestCommitUnknownAfterCut(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	ctx := t.Context()
	primary, err := c.Primary(ctx)
	require.NoError(t, err)
	proxy, err := faultproxy.New(c.Node(primary).Addr())
	require.NoError(t, err)
	t.Cleanup(func() { proxy.Close() })
	db, err := sql.Open("unified", "postgres://postgres@"+proxy.Addr()+"/postgres?sslmode=disable&unified_health_interval=100ms")
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	_, err = db.ExecContext(ctx, "DROP TABLE IF EXISTS cut_writes; CREATE TABLE cut_writes (id int)")
	require.NoError(t, err)
	stored := func(id int) int {
		var n int
		require.NoError(t, c.QueryRow(ctx, primary, "SELECT count(*) FROM cut_writes WHERE id = $1", id).Scan(&n))
		return n
	}

	t.Run("COMMIT", func(t *testing.T) {
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = tx.ExecContext(ctx, "INSERT INTO cut_writes VALUES (1)")
		require.NoError(t, err)
		cuts := proxy.Cuts()
		proxy.CutAfterCommit()
		err = tx.Commit()
		require.Error(t, err, "a COMMIT whose connection broke is never reported as success")
		assert.ErrorIs(t, err, unified.ErrCommitUnknown)
		assert.NotErrorIs(t, err, driver.ErrBadConn)
		assert.Equal(t, cuts+1, proxy.Cuts())
		assert.Equal(t, 1, stored(1), "the commit in fact landed, once")
	})
	t.Run("autocommit write", func(t *testing.T) {
		proxy.CutAfter(func(q string) bool { return strings.Contains(q, "INSERT INTO cut_writes VALUES (2)") })
		_, err := db.ExecContext(ctx, "INSERT INTO cut_writes VALUES (2)")
		require.Error(t, err)
		assert.ErrorIs(t, err, unified.ErrCommitUnknown)
		assert.Equal(t, 1, stored(2), "the statement ran once and was not re-sent")
	})
	t.Run("RunTx", func(t *testing.T) {
		attempts := 0
		proxy.CutAfterCommit()
		err := unified.RunTx(ctx, db, nil, func(tx *sql.Tx) error {
			attempts++
			_, err := tx.ExecContext(ctx, "INSERT INTO cut_writes VALUES (3)")
			return err
		})
		assert.ErrorIs(t, err, unified.ErrCommitUnknown)
		assert.Equal(t, 1, attempts, "RunTx never re-runs after a COMMIT of unknown outcome")
		assert.Equal(t, 1, stored(3))
	})
	proxy.Pass()
	conn, _ := unified.ConnectorOf(db)
	assert.GreaterOrEqual(t, conn.Stats().CommitUnknown, uint64(3))
}

func TestOldPrimaryOnOldTimelineIsFenced(t *testing.T) {
	c, primary := faultable(t, "")
	ctx := t.Context()
	// A short open time: the killed node's breaker must turn half-open
	// within the test to see it come back.
	db := openUnified(t, c, append(haParams, "unified_breaker_open=500ms")...)
	conn, _ := unified.ConnectorOf(db)
	_, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS fenced_writes; CREATE TABLE fenced_writes (id int)")
	require.NoError(t, err)
	require.NoError(t, c.WaitCatchUp(ctx, others(c, primary)[0], primary))
	require.NoError(t, c.WaitCatchUp(ctx, others(c, primary)[1], primary))

	target, _, _ := killAndPromote(t, c, primary)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = db.ExecContext(wctx, "INSERT INTO fenced_writes VALUES (0)")
	require.NoError(t, err)

	// The old primary comes back as it was: a second primary, on the old
	// timeline.
	require.NoError(t, c.Start(ctx, primary))
	inRecovery, err := c.InRecovery(ctx, primary)
	require.NoError(t, err)
	require.False(t, inRecovery, "the old primary claims primary again")
	waitFor(t, 5*time.Second, func() bool { return conn.Health(ctx).Nodes[primary].State == "fenced" }, "old primary fenced")
	h := conn.Health(ctx)
	assert.Equal(t, c.Node(target).Addr(), h.Primary)

	for i := 1; i <= 100; i++ {
		_, err := db.ExecContext(ctx, "INSERT INTO fenced_writes VALUES ($1)", i)
		require.NoError(t, err)
	}
	var onOld, onNew int
	require.NoError(t, c.QueryRow(ctx, primary, "SELECT count(*) FROM fenced_writes WHERE id > 0").Scan(&onOld))
	require.NoError(t, c.QueryRow(ctx, target, "SELECT count(*) FROM fenced_writes WHERE id > 0").Scan(&onNew))
	assert.Zero(t, onOld, "the fenced old primary receives no writes")
	assert.Equal(t, 100, onNew)
}

func TestAllNodesDown(t *testing.T) {
	c, primary := faultable(t, "")
	ctx := t.Context()
	db := openUnified(t, c, "unified_health_interval=100ms", "unified_health_timeout=300ms",
		"unified_failover_timeout=1s", "unified_breaker_failures=3", "unified_breaker_open=500ms")
	conn, _ := unified.ConnectorOf(db)
	_, err := db.ExecContext(ctx, "SELECT 1")
	require.NoError(t, err)

	require.NoError(t, c.Stop(primary, "immediate"))
	for _, j := range others(c, primary) {
		require.NoError(t, c.Stop(j, "immediate"))
	}
	waitFor(t, 5*time.Second, func() bool {
		for _, n := range conn.Health(ctx).Nodes {
			if n.Breaker != "open" && n.Breaker != "half-open" {
				return false
			}
		}
		return true
	}, "every breaker to open")
	// Each write waits for a primary up to unified_failover_timeout (1s
	// here) from when it began waiting, however long the outage has lasted,
	// then fails clearly.
	time.Sleep(time.Second)
	for i := 0; i < 5; i++ {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		start := time.Now()
		_, err := db.ExecContext(wctx, "SELECT 1")
		cancel()
		require.Error(t, err)
		assert.ErrorIs(t, err, unified.ErrNoPrimary)
		took := time.Since(start)
		assert.GreaterOrEqual(t, took, 900*time.Millisecond, "waited for a primary: %v", err)
		assert.Less(t, took, 5*time.Second, "and no longer than its own budget: %v", err)
		var rerr error
		rctx, rcancel := context.WithTimeout(unified.WithMode(ctx, unified.ReadOnly), 10*time.Second)
		rerr = db.QueryRowContext(rctx, "SELECT 1").Scan(new(int))
		rcancel()
		assert.Error(t, rerr)
	}
	h := conn.Health(ctx)
	assert.False(t, h.Writable)
	assert.False(t, h.Readable)

	// Recovery when the nodes return.
	require.NoError(t, c.Start(ctx, primary))
	for _, j := range others(c, primary) {
		require.NoError(t, c.Start(ctx, j))
	}
	waitFor(t, 15*time.Second, func() bool {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := db.ExecContext(wctx, "SELECT 1")
		return err == nil
	}, "writes to recover")
	waitFor(t, 15*time.Second, func() bool {
		rctx, cancel := context.WithTimeout(unified.WithMode(ctx, unified.ReadOnly), time.Second)
		defer cancel()
		var inRecovery bool
		return db.QueryRowContext(rctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery) == nil && inRecovery
	}, "reads to recover on a replica")
}

func TestAuthFailureOnReplica(t *testing.T) {
	c, primary := faultable(t, "")
	ctx := t.Context()
	rest := others(c, primary)
	bad, good := rest[0], rest[1]
	require.NoError(t, c.Exec(ctx, primary, "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'unified_app') THEN CREATE ROLE unified_app LOGIN; END IF; END$$"))
	require.NoError(t, c.WaitCatchUp(ctx, bad, primary))
	require.NoError(t, c.WaitCatchUp(ctx, good, primary))
	t.Cleanup(func() { _ = c.WriteHBA(context.Background(), bad, nil) })

	dsn := strings.Replace(c.DSN("unified_health_interval=100ms", "unified_breaker_failures=3", "unified_breaker_open=1s"),
		"postgres://postgres@", "postgres://unified_app@", 1)
	db, err := sql.Open("unified", dsn)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	conn, _ := unified.ConnectorOf(db)
	counts := readSpread(t, db, c, 8, 200)
	require.Positive(t, counts[bad], "%v", counts)

	require.NoError(t, c.WriteHBA(ctx, bad, []string{
		"local all all trust",
		"host all unified_app 127.0.0.1/32 reject",
		"host all all 127.0.0.1/32 trust",
		"host replication all 127.0.0.1/32 trust",
	}))
	require.NoError(t, c.Exec(ctx, bad, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'unified_app'"))
	waitFor(t, 5*time.Second, func() bool {
		n := conn.Health(ctx).Nodes[bad]
		return n.State == "down" && strings.Contains(n.LastError, "28000")
	}, "the replica rejecting us marked down with the auth error (SQLSTATE 28000): %+v", conn.Health(ctx).Nodes[bad])
	assert.Contains(t, conn.Health(ctx).Nodes[bad].LastError, "pg_hba.conf rejects connection", "a clear error naming the auth failure")

	// No hot loop: the breaker spaces out the attempts.
	rejections := func() int { return strings.Count(c.LogTail(bad, 100000), "pg_hba.conf rejects connection") }
	r0 := rejections()
	counts = readSpread(t, db, c, 8, 400)
	time.Sleep(2 * time.Second)
	r1 := rejections()
	t.Logf("rejected connection attempts in ~2s: %d", r1-r0)
	assert.LessOrEqual(t, r1-r0, 10, "connection attempts to the rejecting node are throttled")
	assert.Zero(t, counts[bad], "%v", counts)
	assert.Equal(t, 400, counts[good], "%v", counts)
}

func TestRapidSwitchovers(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	restoreAfter(t, c)
	ctx := t.Context()
	db := openUnified(t, c, haParams...)
	w := newWorkload(t, db, c, "rapid_switchovers")
	w.start(4, 2, 15*time.Second)
	time.Sleep(200 * time.Millisecond)
	goroutines := runtime.NumGoroutine()
	var last int
	for k := 0; k < 10; k++ {
		cur, err := c.Primary(ctx)
		require.NoError(t, err)
		next := (cur + 1) % c.Len()
		require.NoError(t, c.Stop(cur, "fast"))
		promotedAt, err := c.Promote(ctx, next)
		require.NoError(t, err)
		var third []int
		for _, j := range others(c, next) {
			if j != cur {
				third = append(third, j)
			}
		}
		_, err = c.Follow(ctx, next, third...)
		require.NoError(t, err)
		waitFor(t, 15*time.Second, func() bool { return w.ackedSince(promotedAt) > 0 }, "writes after switchover %d", k+1)
		require.NoError(t, c.Rejoin(ctx, cur, next))
		t.Logf("switchover %d: %s -> %s, promoted at %s", k+1, c.Node(cur).Name, c.Node(next).Name, promotedAt.Format("15:04:05.000"))
		last = next
	}
	time.Sleep(200 * time.Millisecond)
	w.halt()
	v := w.check(t, c, last, time.Time{}, time.Now())
	t.Logf("10 switchovers: %s", v)
	assert.Zero(t, v.lost)
	assert.Zero(t, v.dup)
	assert.Zero(t, v.failed, "%v", v.unflaggedErrs)
	assert.Zero(t, v.readsFailed, "%v", v.readErrs)
	assert.LessOrEqual(t, runtime.NumGoroutine(), goroutines+10, "goroutines stable across switchovers")
}
