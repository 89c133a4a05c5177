package netns

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/netns"
	"github.com/unifiedsql/unified/internal/workload"
)

// writeStarts returns when each write began: when its writer's previous
// write returned (the workload's writers run one write at a time; the
// pause after a failed one is 2 ms), or first for a writer's first.
func writeStarts(outs workload.Outcomes, first time.Time) map[int64]time.Time {
	starts := map[int64]time.Time{}
	byWriter := map[int64][]workload.Write{}
	for _, w := range outs.Writes {
		byWriter[w.ID/1_000_000_000] = append(byWriter[w.ID/1_000_000_000], w)
	}
	for _, ws := range byWriter {
		slices.SortFunc(ws, func(a, b workload.Write) int { return int(a.ID - b.ID) })
		for k, w := range ws {
			starts[w.ID] = first
			if k > 0 {
				starts[w.ID] = ws[k-1].At
			}
		}
	}
	return starts
}

// longestWrite is the longest time a write took, and its outcome.
func longestWrite(outs workload.Outcomes, first time.Time) (time.Duration, workload.Write) {
	starts := writeStarts(outs, first)
	var d time.Duration
	var worst workload.Write
	for _, w := range outs.Writes {
		if took := w.At.Sub(starts[w.ID]); took > d {
			d, worst = took, w
		}
	}
	return d, worst
}

func startLoad(t *testing.T, db *sql.DB, table string, nodes map[int]int, writeTimeout time.Duration) *workload.Run {
	t.Helper()
	require.NoError(t, workload.CreateTable(t.Context(), db, table))
	run := workload.Start(context.Background(), db, db, workload.Config{
		Table: table, Writers: 8, Readers: 4,
		WriteTimeout: writeTimeout, ReadTimeout: 5 * time.Second,
		WritePause: 2 * time.Millisecond, ReadPause: time.Millisecond,
		Nodes: nodes, ReadErrorTopology: true,
	})
	t.Cleanup(func() { run.Stop() })
	waitFor(t, 30*time.Second, func() bool { return run.AckedSince(time.Time{}) >= 200 }, "200 writes before the fault")
	return run
}

// TestClientCutFromPrimary drops every packet between the client and the
// primary, both ways (a hang with no RST; Patroni and the replicas still
// reach it, so nobody fails over). Reads go on on the replicas; a write
// waits unified_failover_timeout (20 s) for a primary and fails with
// ErrNoPrimary; when the link heals writes resume on the same primary and
// nothing is stored twice.
func TestClientCutFromPrimary(t *testing.T) {
	c, ctx, leader, leaks := begin(t, 3*time.Minute)
	db := openDB(t, c, "unified_failover_timeout=20s")
	conn, _ := unified.ConnectorOf(db)
	_, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS cut_probe; CREATE TABLE cut_probe (k int)")
	require.NoError(t, err)
	loadAt := time.Now()
	run := startLoad(t, db, "netns_cut", ports(c), 40*time.Second)

	cutAt := time.Now()
	host(leader).Link.Set(netns.Impairment{Drop: true})
	waitFor(t, 10*time.Second, func() bool { return conn.Health(ctx).Primary == "" }, "unified to lose the primary")
	lostAt := time.Now()
	start := time.Now()
	_, perr := db.ExecContext(ctx, "INSERT INTO cut_probe VALUES (1)")
	waited := time.Since(start)
	healAt := time.Now()
	host(leader).Link.Heal()
	waitFor(t, 60*time.Second, func() bool { return run.AckedSince(healAt) >= 100 }, "writes to resume after the link healed")
	resumed := run.FirstAckAfter(healAt)
	outs := run.Stop()

	l, err := c.Leader(ctx)
	require.NoError(t, err)
	assert.Equal(t, leader, l, "Patroni did not fail over: the primary was cut off from the client only")
	stored, err := workload.IDCounts(ctx, c.Node(l).DSN(), "netns_cut")
	require.NoError(t, err)
	v := workload.Judge(outs, stored, cutAt, healAt)
	noPrimary := 0
	for _, w := range outs.Writes {
		if errors.Is(w.Err, unified.ErrNoPrimary) {
			noPrimary++
		}
	}
	t.Logf("cut of node%d: unified saw no primary %v after the cut; a write then waited %v: %v; reads during the cut %d ok %d failed (%.3f %%) by node %v; writes: acked %d, ErrNoPrimary %d, unknown %d (stored %d), failed %d (stored %d), lost %d, dup %d; first write %v after the heal",
		leader, lostAt.Sub(cutAt).Round(time.Millisecond), waited.Round(time.Millisecond), perr,
		v.ReadsOK, v.ReadsFailed, readShare(v.ReadsOK, v.ReadsFailed), v.ReadsByNode,
		v.Acked, noPrimary, v.Unknown, v.UnknownStored, v.Failed, v.FailedStored, v.Lost, v.Duplicates, resumed.Sub(healAt).Round(time.Millisecond))
	for _, s := range v.Samples(6) {
		t.Logf("  error: %s", s)
	}
	took, worst := longestWrite(outs, loadAt)
	t.Logf("longest write of the workload: %v (returned %v after the cut: %v)", took.Round(time.Millisecond), worst.At.Sub(cutAt).Round(time.Millisecond), worst.Err)
	// DESIGN §4: a statement in flight to a node the probes find hung is
	// interrupted (ErrCommitUnknown for a write), and a write waits for a
	// primary unified_failover_timeout at most: none lasts much longer.
	assert.Less(t, took, 25*time.Second, "a write in flight to the cut-off primary was not interrupted: it returned %v after the cut (%v)", worst.At.Sub(cutAt).Round(time.Millisecond), worst.Err)
	assert.ErrorIs(t, perr, unified.ErrNoPrimary, "a write without a primary fails with ErrNoPrimary")
	assert.InDelta(t, 20, waited.Seconds(), 3, "it waited unified_failover_timeout")
	assert.Positive(t, v.ReadsOK, "reads went on")
	assert.GreaterOrEqual(t, readShare(v.ReadsOK, v.ReadsFailed), 99.9, "reads during the cut: %v", v.ReadErrors)
	assert.Zero(t, v.Duplicates, "nothing stored twice")
	assert.Zero(t, v.FailedStored, "stored writes whose error does not wrap ErrCommitUnknown: %v", v.FailedErrors)
	assert.Zero(t, v.Lost)
	var n int
	require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM cut_probe").Scan(&n))
	assert.Zero(t, n, "the write that got ErrNoPrimary was never sent")
	closeAndCheck(t, c, db, leaks)
}

// TestSlowLossyReplica gives the link between the client and one replica
// 100 ms of delay each way (200 ms more round trip) and 5 % loss each way:
// with unified_replica_policy=least-rtt reads move to the other replica
// (and the primary) without a failed read. The probes' timeout (2 s) keeps
// the slow replica up and eligible: the policy alone must move the reads.
func TestSlowLossyReplica(t *testing.T) {
	c, _, leader, leaks := begin(t, 3*time.Minute)
	// Probes get 2 s: the slow replica stays up and eligible (a probe
	// timeout would mark it down and move its reads for that reason),
	// so only the policy can move the reads.
	db := openDB(t, c, "unified_replica_policy=least-rtt", "unified_failover_timeout=20s", "unified_health_timeout=2s")
	run := startLoad(t, db, "netns_slow", ports(c), 30*time.Second)
	time.Sleep(2 * time.Second)

	// The replica that serves the most reads now.
	before := workload.Judge(run.Outcomes(), nil, time.Time{}, time.Time{})
	slow := -1
	for i := range c.Len() {
		if i != leader && (slow < 0 || before.ReadsByNode[i] > before.ReadsByNode[slow]) {
			slow = i
		}
	}
	at := time.Now()
	host(slow).Link.Set(netns.Impairment{Delay: 100 * time.Millisecond, Loss: 0.05})
	// What unified saw every half second, logged if the test fails.
	uc, _ := unified.ConnectorOf(db)
	var seen []string
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("the topology every 500 ms after the link slowed:\n" + strings.Join(seen, "\n"))
		}
	})
	for range 30 {
		time.Sleep(500 * time.Millisecond)
		line := fmt.Sprintf("%5.1fs", time.Since(at).Seconds())
		for _, n := range uc.Health(context.Background()).Nodes {
			line += fmt.Sprintf("  %s %s %s rtt=%v", n.Name, n.Role, n.State, n.RTT.Round(100*time.Microsecond))
		}
		seen = append(seen, line)
	}
	end := time.Now()
	host(slow).Link.Heal()
	outs := run.Stop()
	during := workload.Judge(outs, nil, at, end)
	settled := workload.Judge(outs, nil, at.Add(5*time.Second), end)
	t.Logf("node%d slowed (200 ms RTT, 5 %% loss each way): reads before %v; during %d ok %d failed by node %v; from 5 s on %v",
		slow, before.ReadsByNode, during.ReadsOK, during.ReadsFailed, during.ReadsByNode, settled.ReadsByNode)
	for _, s := range during.ReadErrors {
		t.Logf("  read error: %s", s)
	}
	assert.Zero(t, during.ReadsFailed, "no read failed: %v", during.ReadErrors)
	assert.Positive(t, settled.ReadsOK)
	// The reads must leave the slow replica while it is up: least-rtt
	// with 200 ms against 1 ms.
	share := float64(settled.ReadsByNode[slow]) / float64(max(settled.ReadsOK, 1))
	t.Logf("share of the slow replica from 5 s on: %.1f %% (before: %.1f %%)", 100*share, 100*float64(before.ReadsByNode[slow])/float64(max(before.ReadsOK, 1)))
	assert.Less(t, share, 0.10, "reads moved away from the slow replica")
	closeAndCheck(t, c, db, leaks)
}

// TestPrimaryIsolated cuts the primary off from etcd and the other nodes
// while the client still reaches it: Patroni demotes it (it cannot renew
// the leader key) and promotes another node once the key expired. No
// acknowledged write is lost, and no write is sent to the old primary
// once unified sees the new one: the old primary's rows the new one lacks
// were all written before that moment, and no later write met a read-only
// old primary (SQLSTATE 25006).
func TestPrimaryIsolated(t *testing.T) {
	c, ctx, leader, leaks := begin(t, 4*time.Minute)
	db := openDB(t, c, "unified_failover_timeout=40s")
	conn, _ := unified.ConnectorOf(db)
	startedAt := time.Now()
	run := startLoad(t, db, "netns_isolated", ports(c), 50*time.Second)

	// When unified first shows another node as the primary.
	var (
		mu      sync.Mutex
		visible time.Time
		newName string
	)
	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for watchCtx.Err() == nil {
			if p := conn.Health(watchCtx).Primary; p != "" && p != c.Node(leader).Addr() {
				mu.Lock()
				visible, newName = time.Now(), p
				mu.Unlock()
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	t.Cleanup(func() { stopWatch(); wg.Wait() })

	isolatedAt := time.Now()
	require.NoError(t, tnet.Isolate(host(leader)))
	n, promotedAt, err := c.WaitLeaderWritable(ctx, leader)
	require.NoError(t, err)
	waitFor(t, 60*time.Second, func() bool { return run.AckedSince(promotedAt) >= 100 }, "writes to resume on the new leader")
	resumed := run.FirstAckAfter(promotedAt)
	wg.Wait()
	mu.Lock()
	vis, vname := visible, newName
	mu.Unlock()

	// What the old primary holds, before it is rewound.
	var oldRec bool
	old := map[int64]bool{}
	{
		// Patroni demotes it with a fast shutdown, which waits for its
		// WAL senders to the replicas it can no longer reach: it may be
		// shutting down (57P03) for up to wal_sender_timeout.
		var oc *pgx.Conn
		waitFor(t, 90*time.Second, func() bool {
			oc, err = c.Connect(ctx, leader)
			return err == nil
		}, "the old primary to accept connections")
		require.NoError(t, oc.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&oldRec))
		rows, err := oc.Query(ctx, "SELECT id FROM netns_isolated")
		require.NoError(t, err)
		for rows.Next() {
			var id int64
			require.NoError(t, rows.Scan(&id))
			old[id] = true
		}
		require.NoError(t, rows.Err())
		oc.Close(ctx)
	}
	require.NoError(t, tnet.Rejoin(host(leader)))
	outs := run.Stop()
	require.NoError(t, c.WaitHealthy(ctx))
	final, err := c.Leader(ctx)
	require.NoError(t, err)
	stored, err := workload.IDCounts(ctx, c.Node(final).DSN(), "netns_isolated")
	require.NoError(t, err)
	v := workload.Judge(outs, stored, isolatedAt, resumed)

	starts := writeStarts(outs, startedAt)
	var lateOnOld, lateReadOnly []int64
	for id := range old {
		if stored[id] == 0 && !starts[id].Before(vis) {
			lateOnOld = append(lateOnOld, id)
		}
	}
	for _, w := range outs.Writes {
		var pe *pgconn.PgError
		if errors.As(w.Err, &pe) && pe.Code == "25006" && !starts[w.ID].Before(vis) {
			lateReadOnly = append(lateReadOnly, w.ID)
		}
	}
	onlyOld := 0
	for id := range old {
		if stored[id] == 0 {
			onlyOld++
		}
	}
	t.Logf("node%d isolated: node%d writable after %v, unified showed %s as the primary %v after the isolation, client recovery %v; old primary in recovery: %v, holds %d rows the new leader lacks (none acknowledged); acked %d, unknown %d (stored %d), failed %d (stored %d), lost %d, dup %d; reads during the outage %d ok %d failed",
		leader, n, promotedAt.Sub(isolatedAt).Round(time.Millisecond), vname, vis.Sub(isolatedAt).Round(time.Millisecond), resumed.Sub(promotedAt).Round(time.Millisecond),
		oldRec, onlyOld, v.Acked, v.Unknown, v.UnknownStored, v.Failed, v.FailedStored, v.Lost, v.Duplicates, v.ReadsOK, v.ReadsFailed)
	for _, s := range v.Samples(6) {
		t.Logf("  error: %s", s)
	}
	require.False(t, vis.IsZero(), "unified saw the new primary")
	assert.Equal(t, n, final)
	assert.Zero(t, v.Lost, "acknowledged writes lost")
	assert.Zero(t, v.Duplicates)
	assert.Zero(t, v.FailedStored, "%v", v.FailedErrors)
	assert.Empty(t, lateOnOld, "writes stored on the old primary that began after the new one was visible")
	assert.Empty(t, lateReadOnly, "writes sent to the read-only old primary after the new one was visible")
	closeAndCheck(t, c, db, leaks)
}
