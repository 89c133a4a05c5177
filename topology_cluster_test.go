package unified_test

// Topology that is right from the first probe (DESIGN.md §4, invariants 1
// and 10), each case put on the real cluster in a state real clusters
// reach: two primaries, a replica on another lineage, a replica that can
// never catch up, a hung replica, a dial that overlaps a failover, a long
// outage, a host name with several addresses, a replica re-admitted.

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/faultproxy"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// newTable creates table (id int) on the primary and waits until every
// replica has it.
func newTable(t *testing.T, c *pgcluster.Cluster, table string) {
	t.Helper()
	ctx := t.Context()
	p, err := c.Primary(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Exec(ctx, p, "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+" (id int)"))
	for _, j := range c.Others(p) {
		require.NoError(t, c.WaitCatchUp(ctx, j, p))
	}
}

// hostsVia is the DSN host list of every node of c, node i reached at
// address via instead (a fault proxy in front of it).
func hostsVia(c *pgcluster.Cluster, i int, via string) string {
	hosts := make([]string, c.Len())
	for j := range hosts {
		hosts[j] = c.Node(j).Addr()
	}
	hosts[i] = via
	return strings.Join(hosts, ",")
}

func countOn(t *testing.T, c *pgcluster.Cluster, i int, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, c.QueryRow(t.Context(), i, query, args...).Scan(&n))
	return n
}

// healthOf returns the named node's health.
func healthOf(h unified.Health, name string) (unified.NodeHealth, bool) {
	for _, n := range h.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return unified.NodeHealth{}, false
}

// twoPrimaries kills the primary, promotes the most advanced replica,
// re-points the other, and starts the old primary again as it is (no
// rewind): it comes back as a primary on the old timeline. It returns the
// old primary and the new one.
func twoPrimaries(t *testing.T, c *pgcluster.Cluster) (old, cur int) {
	t.Helper()
	ctx := t.Context()
	old, err := c.Primary(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Kill(old))
	cur, _ = failOver(t, c, old)
	require.NoError(t, c.Start(ctx, old))
	rec, err := c.InRecovery(ctx, old)
	require.NoError(t, err)
	require.False(t, rec, "the old primary is back as a primary")
	return old, cur
}

// 1. A process started while two nodes claim primary writes to the one on
// the higher timeline, even when that one answers 150 ms slower.
func TestFreshProcessesDoNotWriteToStalePrimary(t *testing.T) {
	const table = "stale_primary_writes"
	c, _ := faultable(t, table)
	ctx := t.Context()
	old, cur := twoPrimaries(t, c)

	slow, err := faultproxy.New(c.Node(cur).Addr())
	require.NoError(t, err)
	defer slow.Close()
	slow.SetLatency(75 * time.Millisecond) // each way: 150 ms a round trip
	dsn := "postgres://postgres@" + hostsVia(c, cur, slow.Addr()) + "/postgres?sslmode=disable&unified_health_timeout=3s"
	const processes = 10
	var wg sync.WaitGroup
	for i := range processes { // fresh processes, started together
		wg.Go(func() {
			db, err := sql.Open("unified", dsn)
			if err != nil {
				t.Error(err)
				return
			}
			defer db.Close()
			if _, err = db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", i); err != nil {
				t.Errorf("process %d: %v", i, err)
				return
			}
			conn, _ := unified.ConnectorOf(db)
			h := conn.Health(ctx)
			if h.Primary != slow.Addr() {
				t.Errorf("process %d: primary %q, want %q", i, h.Primary, slow.Addr())
			}
			if on, _ := healthOf(h, c.Node(old).Addr()); on.State != "fenced" {
				t.Errorf("process %d: the old primary is %q, want fenced", i, on.State)
			}
		})
	}
	wg.Wait()
	stale := countOn(t, c, old, "SELECT count(*) FROM "+table)
	t.Logf("writes on the stale node from %d fresh processes: %d", processes, stale)
	assert.Zero(t, stale, "no write reached the old primary")
	assert.Equal(t, processes, countOn(t, c, cur, "SELECT count(*) FROM "+table))
}

// 2. A standby started without standby.signal comes up as a second primary
// on the same timeline; with more WAL it still does not take the role, and
// when it is a standby again the healthy primary was never fenced.
func TestSameTimelineNewcomerDoesNotTakeOver(t *testing.T) {
	const table = "same_timeline_newcomer"
	c, primary := faultable(t, table)
	ctx := t.Context()
	newcomer := c.Others(primary)[0]
	running := openUnified(t, c, haParams...)
	require.NoError(t, running.PingContext(ctx))

	require.NoError(t, c.Stop(newcomer, "fast"))
	require.NoError(t, c.SetStandbySignal(newcomer, false))
	require.NoError(t, c.Start(ctx, newcomer))
	rec, err := c.InRecovery(ctx, newcomer)
	require.NoError(t, err)
	require.False(t, rec, "the standby came up as a primary")
	// More WAL than the healthy primary.
	require.NoError(t, c.Exec(ctx, newcomer, "CREATE TABLE bulk_"+table+" AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 50000) g"))

	fresh := openUnified(t, c, haParams...)
	for i, db := range []*sql.DB{running, fresh} {
		for k := range 10 {
			_, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", 100*i+k)
			require.NoError(t, err)
		}
	}
	assert.Zero(t, countOn(t, c, newcomer, "SELECT count(*) FROM "+table), "no write reached the newcomer")
	assert.Equal(t, 20, countOn(t, c, primary, "SELECT count(*) FROM "+table))
	for i, db := range []*sql.DB{running, fresh} {
		conn, _ := unified.ConnectorOf(db)
		waitFor(t, 5*time.Second, func() bool {
			on, _ := healthOf(conn.Health(ctx), c.Node(newcomer).Addr())
			return on.State == "fenced"
		}, "db %d to see the newcomer fenced", i)
		assert.Equal(t, c.Node(primary).Addr(), conn.Health(ctx).Primary)
	}

	// The newcomer is made a standby again: it cannot follow (it has WAL
	// the primary lacks), but it reports recovery.
	require.NoError(t, c.Stop(newcomer, "fast"))
	require.NoError(t, c.SetStandbySignal(newcomer, true))
	require.NoError(t, c.Start(ctx, newcomer))
	conn, _ := unified.ConnectorOf(running)
	waitFor(t, 10*time.Second, func() bool {
		on, _ := healthOf(conn.Health(ctx), c.Node(newcomer).Addr())
		return on.Role == "replica"
	}, "the newcomer to report recovery")
	for k := range 10 {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := running.ExecContext(wctx, "INSERT INTO "+table+" VALUES ($1)", 1000+k)
		cancel()
		require.NoError(t, err, "writes go on to the healthy primary: it was never fenced")
	}
	h := conn.Health(ctx)
	assert.Equal(t, c.Node(primary).Addr(), h.Primary)
	on, _ := healthOf(h, c.Node(newcomer).Addr())
	assert.NotEqual(t, "up", on.State, "a replica ahead of its primary has another history: no reads (%+v)", on)
}

// 3. In a split brain, a replica streaming from the fenced old primary is
// "ahead" with no lag, on the old timeline: it serves no reads.
func TestReplicaOfFencedLineageServesNoReads(t *testing.T) {
	const table = "fenced_lineage"
	c, old := faultable(t, table)
	ctx := t.Context()
	rest := c.Others(old)
	require.NoError(t, c.Kill(old))
	cur, follower := rest[0], rest[1]
	_, err := c.Promote(ctx, cur) // the other replica is not re-pointed
	require.NoError(t, err)
	// The old primary comes back as it was, and the other replica, which
	// still follows it, streams from it again: a lineage of its own.
	require.NoError(t, c.Start(ctx, old))
	waitFor(t, 20*time.Second, func() bool {
		ok, _ := c.Streaming(ctx, follower, old)
		return ok
	}, "the follower to stream from the old primary again")
	require.NoError(t, c.Exec(ctx, old, "INSERT INTO "+table+" SELECT g FROM generate_series(1, 5000) g"))
	require.NoError(t, c.WaitCatchUp(ctx, follower, old))

	db := openUnified(t, c, haParams...)
	db.SetMaxIdleConns(0) // every read on a new logical connection: a new replica choice
	ro := unified.WithMode(ctx, unified.ReadOnly)
	onFollower := 0
	for range 40 {
		conn, err := db.Conn(ro)
		require.NoError(t, err)
		var n, port int
		require.NoError(t, conn.QueryRowContext(ro, "SELECT count(*), inet_server_port() FROM "+table).Scan(&n, &port))
		_ = conn.Close()
		if port == c.Node(follower).Port {
			onFollower++
		}
		assert.Zero(t, n, "a read saw rows only the fenced lineage has (port %d)", port)
	}
	t.Logf("reads served by the fenced lineage: %d of 40", onFollower)
	assert.Zero(t, onFollower)
	conn, _ := unified.ConnectorOf(db)
	on, _ := healthOf(conn.Health(ctx), c.Node(follower).Addr())
	assert.Equal(t, "diverged", on.State)
}

// 4. A new process does not read from a replica that is far behind: one
// that can never catch up (an old primary made a standby without rewind),
// or one whose replay was paused before the process started.
func TestNewProcessAvoidsStaleReplica(t *testing.T) {
	const table = "new_process_stale"
	c, primary := faultable(t, table)
	ctx := t.Context()
	paused := c.Others(primary)[0]
	require.NoError(t, c.PauseReplay(ctx, paused))
	require.NoError(t, c.Exec(ctx, primary, "INSERT INTO "+table+" VALUES (42)"))
	time.Sleep(3 * time.Second)

	db := openUnified(t, c, "unified_max_replica_lag=1s")
	db.SetMaxIdleConns(0) // every read on a new logical connection: a new replica choice
	ro := unified.WithMode(ctx, unified.ReadOnly)
	missed, onPaused := 0, 0
	for range 20 {
		conn, err := db.Conn(ro)
		require.NoError(t, err)
		var n, port int
		require.NoError(t, conn.QueryRowContext(ro, "SELECT count(*), inet_server_port() FROM "+table+" WHERE id = 42").Scan(&n, &port))
		_ = conn.Close()
		if n == 0 {
			missed++
		}
		if port == c.Node(paused).Port {
			onPaused++
		}
	}
	t.Logf("a new process, replay paused 3 s: %d of 20 reads missed a row committed 3 s earlier, %d served by the paused replica", missed, onPaused)
	assert.Zero(t, missed)
	assert.Zero(t, onPaused)
	conn, _ := unified.ConnectorOf(db)
	on, _ := healthOf(conn.Health(ctx), c.Node(paused).Addr())
	assert.Equal(t, "lagging", on.State, "%+v", on)
	require.NoError(t, c.ResumeReplay(ctx, paused))
}

// 5. Reads stuck on a replica that hangs (SIGSTOP) are interrupted once
// the probe timeout marks it down, and go to another node; without a
// deadline they would wait forever.
func TestReadsOnHungReplicaAreInterrupted(t *testing.T) {
	c, primary := faultable(t, "")
	db := openUnified(t, c, haParams...)
	db.SetMaxOpenConns(8)
	ro := unified.WithMode(context.Background(), unified.ReadOnly) // no deadline
	var stop atomic.Bool
	var last [8]atomic.Int64 // when each reader last finished a read
	var wg sync.WaitGroup
	for r := range 8 {
		wg.Go(func() {
			for !stop.Load() {
				var one int
				if err := db.QueryRowContext(ro, "SELECT 1 FROM pg_sleep(0.05)").Scan(&one); err == nil {
					last[r].Store(time.Now().UnixNano())
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	hung := c.Others(primary)[0]
	require.NoError(t, c.Hang(hung))
	hungAt := time.Now()
	time.Sleep(8 * time.Second)
	stuck := 0
	for r := range 8 {
		if time.Unix(0, last[r].Load()).Before(hungAt.Add(7 * time.Second)) {
			stuck++
		}
	}
	t.Logf("readers stuck 8 s after the hang: %d of 8", stuck)
	assert.Zero(t, stuck)
	stop.Store(true)
	require.NoError(t, c.Continue(hung))
	wg.Wait()
}

// 6. A write whose dial overlaps a failover never lands on the old primary:
// dials have their own bound, are interrupted when their node stops being
// the primary, and the topology is checked again before the first byte.
func TestDialOverlappingFailoverAvoidsOldPrimary(t *testing.T) {
	for _, fault := range []string{"latency", "hang"} {
		t.Run(fault, func(t *testing.T) {
			c := pgcluster.Need(t, cluster)
			restoreAfter(t, c)
			ctx := t.Context()
			table := "dial_overlap_" + fault
			newTable(t, c, table)
			old, err := c.Primary(ctx)
			require.NoError(t, err)
			px, err := faultproxy.New(c.Node(old).Addr())
			require.NoError(t, err)
			defer px.Close()
			db, err := sql.Open("unified", "postgres://postgres@"+hostsVia(c, old, px.Addr())+
				"/postgres?sslmode=disable&unified_health_interval=200ms&unified_health_timeout=2s")
			require.NoError(t, err)
			defer db.Close()
			conn0, _ := unified.ConnectorOf(db)
			require.NotEmpty(t, conn0.Health(ctx).Primary) // elected; no connection opened

			conn, err := db.Conn(ctx) // a fresh session: its first write dials
			require.NoError(t, err)
			defer conn.Close()
			if fault == "latency" {
				px.SetLatency(400 * time.Millisecond)
			} else {
				require.NoError(t, c.Hang(old))
			}
			done := make(chan error, 1)
			go func() {
				_, err := conn.ExecContext(context.Background(), "INSERT INTO "+table+" VALUES (1)")
				done <- err
			}()
			time.Sleep(300 * time.Millisecond) // the write is dialing the old primary
			cur, err := c.MostAdvanced(ctx, c.Others(old)...)
			require.NoError(t, err)
			_, err = c.Promote(ctx, cur)
			require.NoError(t, err)
			select {
			case err := <-done:
				require.NoError(t, err, "the write went to the new primary")
			case <-time.After(30 * time.Second):
				t.Fatal("the write is still blocked 30 s after the promotion")
			}
			if fault == "hang" {
				require.NoError(t, c.Continue(old))
			}
			px.Pass()
			time.Sleep(500 * time.Millisecond) // anything late would have landed by now
			onOld := countOn(t, c, old, "SELECT count(*) FROM "+table)
			t.Logf("%s: writes on the old primary from a dial that overlapped the failover: %d", fault, onOld)
			assert.Zero(t, onOld)
			assert.Equal(t, 1, countOn(t, c, cur, "SELECT count(*) FROM "+table))
		})
	}
}

// 7. unified_failover_timeout is a wait per write, counted from when that
// write began waiting: writes that start late in a long outage still wait
// for the new primary, and probing stays fast while they wait.
func TestWritesWaitInALongOutage(t *testing.T) {
	const table = "long_outage"
	c, _ := faultable(t, table)
	ctx := t.Context()
	db := openUnified(t, c, "unified_health_interval=100ms", "unified_health_timeout=300ms", "unified_failover_timeout=2s")
	require.NoError(t, db.PingContext(ctx))
	old, err := c.Primary(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Kill(old))
	time.Sleep(3 * time.Second) // longer than unified_failover_timeout since the loss

	const writes = 20
	errs := make(chan error, writes)
	for i := range writes {
		go func() {
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := db.ExecContext(wctx, "INSERT INTO "+table+" VALUES ($1)", i)
			errs <- err
		}()
	}
	time.Sleep(500 * time.Millisecond)
	cur, promotedAt := failOver(t, c, old)
	failed := 0
	for range writes {
		if err := <-errs; err != nil {
			failed++
			t.Log(err)
		}
	}
	t.Logf("writes that failed after a long outage: %d of %d (all acknowledged %v after the promotion at the latest)", failed, writes, time.Since(promotedAt).Round(time.Millisecond))
	assert.Zero(t, failed)
	assert.Equal(t, writes, countOn(t, c, cur, "SELECT count(*) FROM "+table))
}

// 8. Every address of a host name is a node of its own: a name that
// resolves to the primary and a replica is two nodes, and writes go to the
// primary, as pgx's target_session_attrs=read-write does. The same server
// under two spellings is one node, not a false split brain.
func TestHostNameAddressesAreNodes(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	ctx := t.Context()
	primary, err := c.Primary(ctx)
	require.NoError(t, err)
	replica := c.Others(primary)[0]
	port := c.Node(primary).Port
	// A replica at 127.0.0.2 on the primary's port, through a proxy.
	px, err := faultproxy.NewOn(net.JoinHostPort("127.0.0.2", strconv.Itoa(port)), c.Node(replica).Addr())
	require.NoError(t, err)
	defer px.Close()
	lookup := func(_ context.Context, host string) ([]string, error) {
		if host == "db.test" {
			return []string{"127.0.0.2", "127.0.0.1"}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	dsn := fmt.Sprintf("postgres://postgres@db.test:%d/postgres?sslmode=disable", port)

	t.Run("pgx", func(t *testing.T) {
		cfg, err := pgx.ParseConfig(dsn + "&target_session_attrs=read-write")
		require.NoError(t, err)
		cfg.LookupFunc = lookup
		db := stdlib.OpenDB(*cfg)
		defer db.Close()
		assert.Equal(t, port, serverPort(t, ctx, db))
		_, err = db.ExecContext(ctx, "SELECT txid_current()")
		require.NoError(t, err, "pgx writes to the primary")
	})
	t.Run("unified", func(t *testing.T) {
		cfg, err := unified.ParseConfig(dsn)
		require.NoError(t, err)
		db, err := unified.OpenDB(cfg, unified.WithLookupFunc(lookup))
		require.NoError(t, err)
		defer db.Close()
		_, err = db.ExecContext(ctx, "SELECT txid_current()")
		require.NoError(t, err, "unified writes to the primary")
		conn, _ := unified.ConnectorOf(db)
		h := conn.Health(ctx)
		require.Len(t, h.Nodes, 2, "%+v", h.Nodes)
		p := fmt.Sprintf("db.test/127.0.0.1:%d", port)
		assert.Equal(t, p, h.Primary)
		r, ok := healthOf(h, fmt.Sprintf("db.test/127.0.0.2:%d", port))
		require.True(t, ok)
		assert.Equal(t, "replica", r.Role)
		assert.Equal(t, "db.test", r.Host)
		assert.Equal(t, "127.0.0.2", r.Address)
		var inRecovery bool
		require.NoError(t, db.QueryRowContext(unified.WithMode(ctx, unified.ReadOnly), "SELECT pg_is_in_recovery()").Scan(&inRecovery))
		assert.True(t, inRecovery, "reads go to the replica address")
	})
	t.Run("two spellings of one server", func(t *testing.T) {
		addr := c.Node(primary).Addr()
		db, err := sql.Open("unified", fmt.Sprintf("postgres://postgres@%s,LOCALHOST:%d/postgres?sslmode=disable", addr, port))
		require.NoError(t, err)
		defer db.Close()
		_, err = db.ExecContext(ctx, "SELECT 1")
		require.NoError(t, err)
		conn, _ := unified.ConnectorOf(db)
		h := conn.Health(ctx)
		assert.Equal(t, addr, h.Primary)
		for _, n := range h.Nodes {
			assert.NotEqual(t, "fenced", n.State, "no false split brain: %+v", h.Nodes)
		}
	})
}

// 9. A replica that becomes eligible again gets reads from the read
// sessions chosen before, at statement boundaries, without a failed read. How soon
// is not asserted: it is a couple of health intervals on an idle machine,
// but a loaded one replays the paused WAL slower, and the replica may be
// lagging again for a while (DESIGN §7: no timing targets in tests).
func TestReadsRebalanceToReadmittedReplica(t *testing.T) {
	const table = "rebalance_writes"
	c, primary := faultable(t, table)
	ctx := t.Context()
	db := openUnified(t, c, "unified_health_interval=200ms", "unified_max_replica_lag=500ms")
	conn, _ := unified.ConnectorOf(db)
	paused := c.Others(primary)[0]
	pausedName := c.Node(paused).Addr()

	// Each reader holds one logical connection: only the rebalance can
	// move its read session back (a pool's churn of connections would
	// spread new ones too). All are taken before any goroutine starts, and
	// the goroutines stop before they close (the cleanups run last first).
	readers := make([]*sql.Conn, 8)
	for k := range readers {
		readers[k] = sqlConn(t, ctx, db)
	}
	var stop atomic.Bool
	var onPaused, total, failed atomic.Int64
	var wg sync.WaitGroup
	t.Cleanup(func() { stop.Store(true); wg.Wait() })
	wg.Go(func() { // WAL keeps coming, so a paused replica falls behind
		for i := 0; !stop.Load(); i++ {
			_, _ = db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", i)
			time.Sleep(5 * time.Millisecond)
		}
	})
	ro := unified.WithMode(ctx, unified.ReadOnly)
	for _, rc := range readers {
		wg.Go(func() {
			for !stop.Load() {
				var port int
				if err := rc.QueryRowContext(ro, "SELECT inet_server_port()").Scan(&port); err != nil {
					failed.Add(1)
					continue
				}
				total.Add(1)
				if port == c.Node(paused).Port {
					onPaused.Add(1)
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, c.PauseReplay(ctx, paused))
	waitFor(t, 10*time.Second, func() bool {
		n, _ := healthOf(conn.Health(ctx), pausedName)
		return n.State == "lagging"
	}, "the paused replica to be lagging")
	time.Sleep(300 * time.Millisecond)
	onPaused.Store(0)
	time.Sleep(500 * time.Millisecond)
	assert.Zero(t, onPaused.Load(), "no reads on the lagging replica")

	require.NoError(t, c.ResumeReplay(ctx, paused))
	// The reads counted while the replica is up: more than a fifth on it
	// (it is one of two replicas under round robin).
	resumed := time.Now()
	var upSince time.Time
	waitFor(t, 20*time.Second, func() bool {
		n, _ := healthOf(conn.Health(ctx), pausedName)
		if n.State != "up" {
			onPaused.Store(0)
			total.Store(0)
			upSince = time.Time{}
			return false
		}
		if upSince.IsZero() {
			upSince = time.Now()
		}
		return total.Load() >= 1000 && float64(onPaused.Load())/float64(total.Load()) > 0.2
	}, "read sessions to move back to the re-admitted replica")
	t.Logf("reads on the re-admitted replica: %d of %d, %v after the resume, %v after it was last shown up",
		onPaused.Load(), total.Load(), time.Since(resumed).Round(time.Millisecond), time.Since(upSince).Round(time.Millisecond))
	stop.Store(true)
	wg.Wait()
	assert.Zero(t, failed.Load(), "no read failed")
}
