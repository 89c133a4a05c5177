package patroni

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/internal/patroni"
	"github.com/unifiedsql/unified/internal/workload"
)

// fault is what a scenario does to the cluster under load.
type fault int

const (
	leaderCrash  fault = iota + 1 // SIGKILL of the leader's Patroni and PostgreSQL
	leaderHang                    // SIGSTOP of both, SIGCONT once the new leader writes
	switchover                    // POST /switchover to the synchronous standby
	replicaCrash                  // SIGKILL of the synchronous standby
)

func (f fault) String() string {
	switch f {
	case leaderCrash:
		return "leader crash"
	case leaderHang:
		return "leader hang"
	case switchover:
		return "switchover"
	case replicaCrash:
		return "replica crash"
	}
	return fmt.Sprintf("fault(%d)", int(f))
}

// outcome is what one fault under load gave.
type outcome struct {
	f                 fault
	faulted, leader   int       // the node faulted; the leader at the end
	faultAt           time.Time // the fault
	promotedAt        time.Time // the new leader accepted writes (zero: no promotion)
	resumed           time.Time // first acknowledgement after the promotion (or the fault)
	windowEnd         time.Time // synchronous_standby_names set again on the new leader
	rejoined          time.Time // the cluster was whole again
	readsBack         time.Time // first read served by the faulted node after that
	atRisk            int       // acknowledged between promotedAt and windowEnd
	longestOutage     time.Duration
	v                 workload.Verdict // reads counted from the fault to the resumption (replica crash: to the rejoin)
	readsAll, failAll int              // reads over the whole run
	writes            compactWrites    // for a later judge
}

// compactWrites is what a workload's writes returned, without their
// times: each writer's count (its ids are writer*1e9 + 0, 1, 2...) and the
// errors. Judging a soak at its end needs no more, in memory that does
// not grow with the acknowledged writes.
type compactWrites struct {
	perWriter map[int64]int64
	errs      map[int64]error
}

func compact(ws []workload.Write) compactWrites {
	c := compactWrites{perWriter: map[int64]int64{}, errs: map[int64]error{}}
	for _, w := range ws {
		c.perWriter[w.ID/1_000_000_000]++
		if w.Err != nil {
			c.errs[w.ID] = w.Err
		}
	}
	return c
}

// outcomes rebuilds the writes for workload.Judge.
func (c compactWrites) outcomes() workload.Outcomes {
	var o workload.Outcomes
	for wr, n := range c.perWriter {
		for seq := range n {
			id := wr*1_000_000_000 + seq
			o.Writes = append(o.Writes, workload.Write{ID: id, Err: c.errs[id]})
		}
	}
	return o
}

func (o outcome) String() string {
	s := fmt.Sprintf("%s of node%d: acked %d, unknown %d (stored %d), failed %d (stored %d: unflagged), lost %d, dup %d; outage reads %d ok %d failed (%.3f %%) by node %v; all reads %d ok %d failed; longest write outage %v",
		o.f, o.faulted, o.v.Acked, o.v.Unknown, o.v.UnknownStored, o.v.Failed, o.v.FailedStored, o.v.Lost, o.v.Duplicates,
		o.v.ReadsOK, o.v.ReadsFailed, readShare(o.v.ReadsOK, o.v.ReadsFailed), o.v.ReadsByNode, o.readsAll, o.failAll, o.longestOutage.Round(time.Millisecond))
	if !o.promotedAt.IsZero() {
		s += fmt.Sprintf("; node%d writable %v after the fault, client recovery %v", o.leader,
			o.promotedAt.Sub(o.faultAt).Round(time.Millisecond), o.resumed.Sub(o.promotedAt).Round(time.Millisecond))
		if !o.windowEnd.IsZero() {
			s += fmt.Sprintf("; synchronous_standby_names empty for %v after the promotion, %d writes acknowledged meanwhile (at risk)",
				o.windowEnd.Sub(o.promotedAt).Round(time.Millisecond), o.atRisk)
		}
	}
	s += fmt.Sprintf("; whole again %v after the fault, reads on node%d %v after that", o.rejoined.Sub(o.faultAt).Round(time.Millisecond),
		o.faulted, o.readsBack.Sub(o.rejoined).Round(time.Millisecond))
	return s
}

// recoveryBound is the longest client recovery (first acknowledged write
// minus the new leader's first writable moment) a scenario accepts: tens
// of milliseconds are measured; the slack is for two loaded cores.
const recoveryBound = 2 * time.Second

// readsOn counts the successful reads node i served after t.
func readsOn(run *workload.Run, i int, t time.Time) (int, time.Time) {
	n := 0
	var first time.Time
	for _, r := range run.Outcomes().Reads {
		if r.Err == nil && r.Node == i && r.At.After(t) {
			if n == 0 {
				first = r.At
			}
			n++
		}
	}
	return n, first
}

// startLoad creates table and starts 8 writers and 4 ReadOnly readers on
// it through db (stopped at the latest when the test ends), and waits for
// their first 200 acknowledged writes.
func startLoad(ctx context.Context, t *testing.T, c *patroni.Cluster, db *sql.DB, table string) *workload.Run {
	t.Helper()
	require.NoError(t, workload.CreateTable(ctx, db, table))
	run := workload.Start(context.Background(), db, db, workload.Config{
		Table: table, Writers: 8, Readers: 4,
		WriteTimeout: writeTimeout, ReadTimeout: 5 * time.Second,
		WritePause: 2 * time.Millisecond, ReadPause: time.Millisecond,
		Nodes: ports(c), ReadErrorTopology: true,
	})
	t.Cleanup(func() { run.Stop() })
	waitFor(t, 30*time.Second, func() bool { return run.AckedSince(time.Time{}) >= 200 }, "200 writes before the fault")
	return run
}

// faultUnderLoad runs 8 writers and 4 ReadOnly readers through db on
// table, applies f, waits for Patroni's new leader (unless a replica was
// faulted) and for writes to resume, brings the faulted node back
// (StartNode, Resume; after a switchover Patroni does it), waits until it
// serves reads again, stops the load and judges it against the leader's
// rows. It asserts nothing: callers do.
func faultUnderLoad(ctx context.Context, t *testing.T, c *patroni.Cluster, db *sql.DB, table string, f fault) outcome {
	t.Helper()
	leader, err := c.Leader(ctx)
	require.NoError(t, err)
	sync := syncStandby(ctx, t, c, leader)
	require.NotEqual(t, -1, sync, "the leader has a synchronous standby")
	run := startLoad(ctx, t, c, db, table)
	defer run.Stop()

	o := outcome{f: f, faulted: leader}
	type promoted struct {
		n   int
		at  time.Time
		err error
	}
	wait := make(chan promoted, 1)
	if f != replicaCrash {
		go func() {
			n, at, err := c.WaitLeaderWritable(ctx, leader)
			wait <- promoted{n, at, err}
		}()
	}
	o.faultAt = time.Now()
	switch f {
	case leaderCrash:
		require.NoError(t, c.Crash(leader))
	case leaderHang:
		require.NoError(t, c.Hang(leader))
	case switchover:
		require.NoError(t, c.Switchover(ctx, sync))
	case replicaCrash:
		o.faulted = sync
		require.NoError(t, c.Crash(sync))
	}
	o.leader = leader
	from := o.faultAt
	window := make(chan time.Time, 1)
	if f != replicaCrash {
		p := <-wait
		require.NoError(t, p.err)
		o.leader, o.promotedAt, from = p.n, p.at, p.at
		go func() { window <- asyncWindow(ctx, c, p.n) }()
	} else {
		window <- time.Time{}
	}
	waitFor(t, 60*time.Second, func() bool { return run.AckedSince(from) >= 100 }, fmt.Sprintf("writes to resume after the %s", f))
	o.resumed = run.FirstAckAfter(from)

	switch f {
	case leaderCrash, replicaCrash:
		require.NoError(t, c.StartNode(ctx, o.faulted))
	case leaderHang:
		require.NoError(t, c.Resume(o.faulted))
	}
	require.NoError(t, c.WaitHealthy(ctx))
	o.rejoined = time.Now()
	waitFor(t, 30*time.Second, func() bool {
		n, first := readsOn(run, o.faulted, o.rejoined)
		o.readsBack = first
		return n > 0
	}, fmt.Sprintf("node%d to serve reads again", o.faulted))

	outs := run.Stop()
	end := time.Now()
	final, err := c.Leader(ctx)
	require.NoError(t, err)
	stored, err := workload.IDCounts(ctx, c.Node(final).DSN(), table)
	require.NoError(t, err)
	readsTo := o.resumed
	if f == replicaCrash {
		readsTo = o.rejoined
	}
	o.v = workload.Judge(outs, stored, o.faultAt, readsTo)
	o.writes = compact(outs.Writes)
	all := workload.Judge(outs, stored, time.Time{}, time.Time{})
	o.readsAll, o.failAll = all.ReadsOK, all.ReadsFailed
	o.longestOutage = outs.Recovery(from, time.Time{}, end).LongestOutage
	o.windowEnd = <-window
	if !o.windowEnd.IsZero() {
		for _, w := range outs.Writes {
			if w.Err == nil && !w.At.Before(o.promotedAt) && !w.At.After(o.windowEnd) {
				o.atRisk++
			}
		}
	}
	if final != o.leader {
		t.Errorf("the leader changed again: node%d at the end, node%d after the %s", final, o.leader, f)
	}
	return o
}

// checkOutcome asserts the scenario's guarantees.
func checkOutcome(t *testing.T, o outcome) {
	t.Helper()
	t.Log(o)
	for _, s := range o.v.Samples(8) {
		t.Logf("  error: %s", s)
	}
	assert.Zero(t, o.v.Lost, "acknowledged writes lost (synchronous_mode)")
	assert.Zero(t, o.v.Duplicates, "writes stored twice")
	assert.Zero(t, o.v.FailedStored, "stored writes whose error does not wrap ErrCommitUnknown: %v", o.v.FailedErrors)
	assert.Positive(t, o.v.ReadsOK, "reads during the outage")
	assert.GreaterOrEqual(t, readShare(o.v.ReadsOK, o.v.ReadsFailed), 99.9, "ReadOnly reads ok during the outage: %v", o.v.ReadErrors)
	assert.False(t, o.resumed.IsZero(), "writes resumed")
	if !o.promotedAt.IsZero() {
		// Writes waiting for a primary go out the moment it is found, and
		// statements stuck on the old leader are interrupted once another
		// node is the primary (DESIGN §4): recovery is milliseconds.
		assert.Less(t, o.resumed.Sub(o.promotedAt), recoveryBound, "client recovery after the promotion")
	}
	assert.False(t, o.readsBack.IsZero(), "node%d serves reads again", o.faulted)
}

// runScenario is one scenario test: a fresh DB, the fault, the checks,
// and after Close no goroutine and no server connection left.
func runScenario(t *testing.T, f fault, table string) {
	c := patroni.Need(t, cluster)
	ctx := ctxT(t, 4*time.Minute)
	require.NoError(t, c.WaitHealthy(ctx))
	healthyAfter(t, c)
	leaks := goleak.IgnoreCurrent()
	db := openDB(t, c)
	o := faultUnderLoad(ctx, t, c, db, table, f)
	checkOutcome(t, o)
	require.NoError(t, db.Close())
	noConnectionsLeft(t, c)
	verifyNoLeak(t, leaks)
}

// TestLeaderCrash: the leader's machine dies; Patroni promotes the
// synchronous standby about the TTL (20 s) later. Writes wait for it
// (unified_failover_timeout 30 s) and resume by themselves; reads go on
// on the replicas; the old leader, started again, rejoins and serves reads.
func TestLeaderCrash(t *testing.T) { runScenario(t, leaderCrash, "scen_leader_crash") }

// TestLeaderHang: the leader freezes (SIGSTOP of Patroni and PostgreSQL:
// TCP handshakes complete, nothing answers); Patroni promotes another
// node about 22 s later; the old leader is woken once the new one
// writes, finds the leader key gone, demotes itself and rejoins.
func TestLeaderHang(t *testing.T) { runScenario(t, leaderHang, "scen_leader_hang") }

// TestSwitchover: a planned switchover to the synchronous standby
// through Patroni's REST API: about 2 s without a writable leader.
func TestSwitchover(t *testing.T) { runScenario(t, switchover, "scen_switchover") }

// TestReplicaCrash: the synchronous standby dies; commits wait until
// Patroni names the other replica synchronous; reads move to the nodes
// left; the replica, started again, rejoins and serves reads.
func TestReplicaCrash(t *testing.T) { runScenario(t, replicaCrash, "scen_replica_crash") }

// TestCrashAsynchronous is the leader crash with Patroni's
// synchronous_mode switched off (PATCH /config): commits are acknowledged
// before a replica has them, and Patroni promotes a replica up to
// maximum_lag_on_failover (1 MiB) behind. The judge can show acknowledged
// writes lost here, and logs how many were; what unified owes holds all
// the same: nothing stored twice, every stored write that failed flagged
// ErrCommitUnknown, reads served throughout.
func TestCrashAsynchronous(t *testing.T) {
	if !*async {
		t.Skip("-patroni.async=false")
	}
	c := patroni.Need(t, cluster)
	ctx := ctxT(t, 4*time.Minute)
	require.NoError(t, c.WaitHealthy(ctx))
	healthyAfter(t, c)
	leader, err := c.Leader(ctx)
	require.NoError(t, err)
	require.NoError(t, patchConfig(ctx, c, leader, `{"synchronous_mode": false}`))
	t.Cleanup(func() {
		// Before healthyAfter's wait, which wants a synchronous standby.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for ctx.Err() == nil {
			if l, err := c.Leader(ctx); err == nil && patchConfig(ctx, c, l, `{"synchronous_mode": true}`) == nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Errorf("could not switch synchronous_mode back on")
	})
	waitFor(t, 15*time.Second, func() bool { return syncStandby(ctx, t, c, leader) == -1 }, "Patroni to make replication asynchronous")

	leaks := goleak.IgnoreCurrent()
	db := openDB(t, c)
	const table = "scen_crash_async"
	run := startLoad(ctx, t, c, db, table)
	defer run.Stop()
	faultAt := time.Now()
	require.NoError(t, c.Crash(leader))
	n, at, err := c.WaitLeaderWritable(ctx, leader)
	require.NoError(t, err)
	waitFor(t, 60*time.Second, func() bool { return run.AckedSince(at) >= 100 }, "writes to resume")
	resumed := run.FirstAckAfter(at)
	outs := run.Stop()
	stored, err := workload.IDCounts(ctx, c.Node(n).DSN(), table)
	require.NoError(t, err)
	v := workload.Judge(outs, stored, faultAt, resumed)
	t.Logf("asynchronous crash of node%d: node%d writable after %v, client recovery %v; acked %d, lost %d (possible without synchronous_mode), dup %d, unknown %d (stored %d), failed %d (stored %d), outage reads %d ok %d failed",
		leader, n, at.Sub(faultAt).Round(time.Millisecond), resumed.Sub(at).Round(time.Millisecond),
		v.Acked, v.Lost, v.Duplicates, v.Unknown, v.UnknownStored, v.Failed, v.FailedStored, v.ReadsOK, v.ReadsFailed)
	assert.Zero(t, v.Duplicates)
	assert.Zero(t, v.FailedStored, "%v", v.FailedErrors)
	assert.GreaterOrEqual(t, readShare(v.ReadsOK, v.ReadsFailed), 99.9, "%v", v.ReadErrors)
	require.NoError(t, db.Close())
	noConnectionsLeft(t, c)
	verifyNoLeak(t, leaks)
	require.NoError(t, c.StartNode(ctx, leader))
}
