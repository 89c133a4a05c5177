// Command failover shows unified riding through a crash of the primary.
//
// It starts a local PostgreSQL primary with two streaming replicas, opens ONE
// *sql.DB with sql.Open("unified", dsn), and runs concurrent writers (plain
// INSERTs, no mode) and readers (unified.ReadOnly). Midway it kills the
// primary with SIGKILL and promotes the most advanced replica, as a failover
// manager would; later the old primary comes back as a replica. The
// application code never changes: writes follow the new primary by
// themselves, reads keep going to the replicas.
//
//	go -C examples run ./failover [-duration 20s] [-writers 4] [-readers 4] [-sync=false] [-no-failover] [-plot timeline.svg]
//
// Every second it prints what happened in that second: writes acknowledged
// and failed, reads served per node, the primary as unified sees it
// ([unified.Connector.Health]) and the replicas' lag. Events (kill,
// promotion, rejoin, and unified noticing them) are printed as they happen.
// At the end it counts the ids stored on the new primary, directly, not
// through unified, and prints a summary. The exit status is 0 only when no
// acknowledged write was lost and none was stored twice.
//
// Replication is synchronous by default: the primary acknowledges a commit
// only once a replica has it. With -sync=false it is asynchronous, and a
// crashed primary may have acknowledged commits that no replica received:
// no client can save those, and the summary shows them as lost.
//
// With -plot file.svg (or .png, .pdf) it also draws the run as a timeline:
// acknowledged writes and successful reads per second by node, errors per
// second, p99 latency, with the kill, the moment the new primary accepted
// writes, the rejoin and what unified's Health showed marked (drawn by
// examples/internal/timelineplot, with gonum.org/v1/plot).
//
// The cluster is started and faulted with the public test kit
// [github.com/unifiedsql/unified/pgtest] (through [pgtest.Run], since this is
// a program, not a test). The workload, its recording and its judge are the
// ones the driver's own failover tests and cmd/failoverbench use, from
// github.com/unifiedsql/unified/internal/workload: this demo and
// examples/failoverplot are the programs of the examples module that import
// an internal package of the library, which Go allows because the import
// path lies below github.com/unifiedsql/unified; code outside this
// repository cannot.
//
// It needs the PostgreSQL server binaries (Debian: apt-get install
// postgresql; or set UNIFIED_PG_BIN to their directory). Ctrl-C stops the
// cluster and exits.
package main

import (
	"context"
	"database/sql"
	"flag"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/examples/internal/demo"
	"github.com/unifiedsql/unified/examples/internal/timelineplot"
	"github.com/unifiedsql/unified/internal/workload"
	"github.com/unifiedsql/unified/pgtest"
)

// options are the command-line flags.
type options struct {
	duration time.Duration // how long the workload runs
	writers  int
	readers  int
	failover bool   // kill the primary midway (false with -no-failover)
	sync     bool   // synchronous replication
	plot     string // where to draw the timeline; "" for none
}

func main() {
	o := options{}
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "how long the workload runs")
	flag.IntVar(&o.writers, "writers", 4, "concurrent writers (INSERT, no mode: the primary)")
	flag.IntVar(&o.readers, "readers", 4, "concurrent readers (unified.ReadOnly: the replicas)")
	noFailover := flag.Bool("no-failover", false, "run the workload without killing the primary")
	flag.BoolVar(&o.sync, "sync", true, "synchronous replication: a commit is acknowledged once a replica has it (-sync=false: asynchronous)")
	flag.StringVar(&o.plot, "plot", "", "draw the run as a timeline into this file (.svg, .png or .pdf)")
	flag.Parse()
	o.failover = !*noFailover

	var sum *summary
	code := pgtest.Run("failover", func(tb testing.TB) { sum = run(tb, os.Stdout, o) })
	if code == 0 && (sum.Lost > 0 || sum.Duplicates > 0) {
		code = 1
	}
	os.Exit(code)
}

// table receives the writes (workload.CreateTable: no unique constraint,
// so a write stored twice shows up as a duplicate id).
const table = "demo_writes"

// writeTimeout bounds one write; unified makes writes wait for a new
// primary within the caller's deadline.
const writeTimeout = 10 * time.Second

// run is the whole demo; out receives everything it prints. It returns the
// summary; a failure (the cluster cannot start, Ctrl-C) fails tb. The
// cluster is stopped by tb's cleanup.
func run(tb testing.TB, out io.Writer, o options) *summary {
	ctx := tb.Context()
	con := newConsole(out)
	con.say("starting a local PostgreSQL primary + 2 streaming replicas (synchronous replication: %v) ...", o.sync)
	opts := []pgtest.Option{pgtest.Replicas(2)}
	if o.sync {
		opts = append(opts, pgtest.Synchronous())
	}
	cl := pgtest.Start(tb, opts...)
	firstPrimary := cl.Primary()
	nodes := newNodeNames(cl)
	demo.PrintNodes(out, cl)

	// The application's side: one *sql.DB over all three hosts.
	dsn := cl.DSN() + "&unified_health_interval=200ms"
	con.say("\nsql.Open(\"unified\", %q)\n", dsn)
	db, err := sql.Open("unified", dsn)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	// database/sql keeps only 2 idle connections by default and would
	// close and reopen the others all the time.
	db.SetMaxIdleConns(o.writers + o.readers)
	if err := workload.CreateTable(ctx, db, table); err != nil {
		tb.Fatal(err)
	}
	connector, _ := unified.ConnectorOf(db)

	con.say("%d writers INSERT unique ids (no mode: the primary), %d readers run SELECT inet_server_port() with unified.ReadOnly.", o.writers, o.readers)
	con.say("Each second: the primary unified sees, writes and reads done in that second, replica lag.\n")
	con.startClock()

	watch := &primaryWatch{nodes: nodes, con: con}
	var bg sync.WaitGroup
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer func() {
		stopWatch()
		bg.Wait()
	}()
	load := workload.Start(ctx, db, db, workload.Config{
		Table: table, Writers: o.writers, Readers: o.readers,
		WriteTimeout: writeTimeout, ReadTimeout: 2 * time.Second,
		WritePause: 5 * time.Millisecond, // don't spin on a persistent error
		Nodes:      nodes.byPrt,
	})
	defer load.Stop()
	bg.Go(func() { watch.run(watchCtx, connector) })
	bg.Go(func() { printEverySecond(watchCtx, con, load, watch, nodes) })

	// The faults, on their own schedule, while the load runs.
	sc := &scenario{tb: tb, cl: cl, con: con, nodes: nodes, sync: o.sync}
	if o.failover {
		sc.run(ctx, o.duration)
	}
	// The rejoin can outlast the duration under load: keep the workload
	// going a little after it, to show reads on the rejoined replica.
	demo.Sleep(ctx, max(o.duration-con.elapsed(time.Now()), o.duration/10))
	outcomes := load.Stop()
	end := time.Now()
	stopWatch()
	bg.Wait()
	if ctx.Err() != nil {
		con.say("\ninterrupted: stopping the cluster")
		tb.Fatal("interrupted")
	}

	// The verdict: what the new primary holds against what the clients
	// saw, read directly, not through unified.
	stored, err := workload.IDCounts(ctx, cl.Node(cl.Primary()).DSN(), table)
	if err != nil {
		tb.Fatal(err)
	}
	sum := summarize(outcomes, stored, sc, watch, nodes, o.failover, o.sync, end)
	sum.print(con)
	if o.plot != "" {
		tl := timeline(outcomes, sc, watch, nodes, firstPrimary, con.start, end, o.failover)
		if err := timelineplot.Save(o.plot, tl); err != nil {
			tb.Fatal(err)
		}
		con.say("\ntimeline drawn into %s", o.plot)
	}
	return sum
}

// scenario is the failure: SIGKILL the primary, fail over (promote the most
// advanced replica, re-point the other one), later bring the old primary
// back as a replica. It records when things happened for the summary.
type scenario struct {
	tb    testing.TB
	cl    *pgtest.Cluster
	con   *console
	nodes *nodeNames
	sync  bool

	// Set by run, read after it returned.
	killed, promoted int       // node indexes
	killedAt         time.Time // just before SIGKILL
	promotedAt       time.Time // when the new primary first accepted writes
	rejoinedAt       time.Time // when the old primary streamed again; zero if it did not
}

// run plays the scenario; it returns early when ctx ends.
func (s *scenario) run(ctx context.Context, duration time.Duration) {
	if !demo.Sleep(ctx, 3*duration/10) {
		return
	}
	old := s.cl.Primary()
	s.killed = old
	s.killedAt = time.Now()
	s.con.event(s.killedAt, ">>> SIGKILL %s, the primary", s.nodes.name(old))
	s.cl.Kill(old)

	// What a failover manager does: promote the replica with the most WAL,
	// make the other follow it (rewinding it with pg_rewind if it replayed
	// past the new timeline's fork point), keep replication synchronous.
	target, err := s.cl.FailOver()
	if err != nil {
		s.tb.Fatal(err)
	}
	s.promoted = target
	s.promotedAt = s.cl.Node(target).PromotedAt()
	s.con.event(s.promotedAt, ">>> %s promoted: it accepts writes (%v after the kill)",
		s.nodes.name(target), ms(s.promotedAt.Sub(s.killedAt)))
	for j := range s.cl.Len() {
		if j != target && j != old {
			s.con.event(time.Now(), ">>> %s follows %s", s.nodes.name(j), s.nodes.name(target))
		}
	}
	if s.sync {
		s.con.event(time.Now(), ">>> synchronous replication on %s", s.nodes.name(target))
	}

	if !demo.Sleep(ctx, 6*duration/10-s.con.elapsed(time.Now())) {
		return
	}
	s.con.event(time.Now(), ">>> bringing %s back as a replica of %s (pg_rewind) ...", s.nodes.name(old), s.nodes.name(target))
	s.cl.Rejoin(old)
	s.rejoinedAt = time.Now()
	s.con.event(s.rejoinedAt, ">>> %s rejoined: a replica streaming from %s", s.nodes.name(old), s.nodes.name(target))
}
