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
//	go run ./examples/failover [-duration 20s] [-writers 4] [-readers 4] [-sync=false] [-no-failover]
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
// It needs the PostgreSQL server binaries (Debian: apt-get install
// postgresql; or set UNIFIED_PG_BIN to their directory). Ctrl-C stops the
// cluster and exits.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// options are the command-line flags.
type options struct {
	duration time.Duration // how long the workload runs
	writers  int
	readers  int
	failover bool // kill the primary midway (false with -no-failover)
	sync     bool // synchronous replication
}

func main() {
	o := options{}
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "how long the workload runs")
	flag.IntVar(&o.writers, "writers", 4, "concurrent writers (INSERT, no mode: the primary)")
	flag.IntVar(&o.readers, "readers", 4, "concurrent readers (unified.ReadOnly: the replicas)")
	noFailover := flag.Bool("no-failover", false, "run the workload without killing the primary")
	flag.BoolVar(&o.sync, "sync", true, "synchronous replication: a commit is acknowledged once a replica has it (-sync=false: asynchronous)")
	flag.Parse()
	o.failover = !*noFailover

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	sum, err := run(ctx, os.Stdout, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "failover:", err)
		os.Exit(1)
	}
	if sum.Lost > 0 || sum.Duplicates > 0 {
		os.Exit(1)
	}
}

// table receives the writes. It has no unique constraint, so a write stored
// twice shows up as a duplicate id.
const table = "demo_writes"

// writeTimeout bounds one write; unified makes writes wait for a new
// primary within the caller's deadline.
const writeTimeout = 10 * time.Second

// run is the whole demo; out receives everything it prints. It returns the
// summary, or an error when the cluster cannot be started or the run was
// interrupted. The cluster is stopped before it returns.
func run(ctx context.Context, out io.Writer, o options) (*summary, error) {
	if _, err := pgcluster.FindBinDir(); err != nil {
		return nil, err
	}
	con := newConsole(out)
	con.say("starting a local PostgreSQL primary + 2 streaming replicas (synchronous replication: %v) ...", o.sync)
	cl, err := pgcluster.Start(ctx, pgcluster.Options{Replicas: 2, Synchronous: o.sync})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	nodes := newNodeNames(cl)
	for i := 0; i < cl.Len(); i++ {
		role := "replica"
		if i == 0 {
			role = "primary"
		}
		con.say("  %s  %s  %s", cl.Node(i).Name, cl.Node(i).Addr(), role)
	}

	// The application's side: one *sql.DB over all three hosts.
	dsn := cl.DSN("unified_health_interval=200ms")
	con.say("\nsql.Open(\"unified\", %q)\n", dsn)
	db, err := sql.Open("unified", dsn)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	// database/sql keeps only 2 idle connections by default and would
	// close and reopen the others all the time.
	db.SetMaxIdleConns(o.writers + o.readers)
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+table+" (id bigint, writer int)"); err != nil {
		return nil, err
	}
	connector, _ := unified.ConnectorOf(db)

	con.say("%d writers INSERT unique ids (no mode: the primary), %d readers run SELECT inet_server_port() with unified.ReadOnly.", o.writers, o.readers)
	con.say("Each second: the primary unified sees, writes and reads done in that second, replica lag.\n")
	con.startClock()

	watch := &primaryWatch{nodes: nodes, con: con}
	rec := newRecorder(cl.Len())
	var bg sync.WaitGroup
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	bg.Go(func() { watch.run(watchCtx, connector) })
	bg.Go(func() { printEverySecond(watchCtx, con, rec, watch, nodes) })

	stopLoad := make(chan struct{})
	var load sync.WaitGroup
	for i := 0; i < o.writers; i++ {
		load.Go(func() { write(ctx, stopLoad, db, rec, i) })
	}
	for i := 0; i < o.readers; i++ {
		load.Go(func() { read(ctx, stopLoad, db, rec, nodes) })
	}

	// The faults, on their own schedule, while the load runs.
	sc := &scenario{cl: cl, con: con, nodes: nodes, sync: o.sync}
	var scenarioErr error
	if o.failover {
		scenarioErr = sc.run(ctx, o.duration)
	}
	if scenarioErr == nil {
		sleep(ctx, o.duration-con.elapsed(time.Now()))
	}
	close(stopLoad)
	load.Wait()
	stopWatch()
	bg.Wait()
	if ctx.Err() != nil {
		con.say("\ninterrupted: stopping the cluster")
		return nil, errors.New("interrupted")
	}
	if scenarioErr != nil {
		return nil, scenarioErr
	}

	// The verdict: what the new primary holds against what the clients saw.
	p, err := cl.Primary(ctx)
	if err != nil {
		return nil, err
	}
	stored, err := cl.IDCounts(ctx, p, table)
	if err != nil {
		return nil, err
	}
	sum := summarize(rec, stored, sc, watch, nodes, o.failover, o.sync)
	sum.print(con)
	return sum, nil
}

// write is one writer: INSERT unique ids until stop is closed, recording
// what each INSERT returned.
func write(ctx context.Context, stop <-chan struct{}, db *sql.DB, rec *recorder, writer int) {
	for seq := int64(0); !stopped(ctx, stop); seq++ {
		id := int64(writer)*1_000_000_000 + seq
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		_, err := db.ExecContext(wctx, "INSERT INTO "+table+" (id, writer) VALUES ($1, $2)", id, writer)
		cancel()
		rec.write(id, err)
		if err != nil {
			time.Sleep(5 * time.Millisecond) // don't spin on a persistent error
		}
	}
}

// read is one reader: ask a replica which node it is until stop is closed.
func read(ctx context.Context, stop <-chan struct{}, db *sql.DB, rec *recorder, nodes *nodeNames) {
	ro := unified.WithMode(ctx, unified.ReadOnly)
	for !stopped(ctx, stop) {
		rctx, cancel := context.WithTimeout(ro, 2*time.Second)
		var port int
		err := db.QueryRowContext(rctx, "SELECT inet_server_port()").Scan(&port)
		cancel()
		rec.read(nodes.byPort(port), err)
	}
}

func stopped(ctx context.Context, stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

// scenario is the failure: SIGKILL the primary, promote the most advanced
// replica, re-point the other one, later bring the old primary back as a
// replica. It records when things happened for the summary.
type scenario struct {
	cl    *pgcluster.Cluster
	con   *console
	nodes *nodeNames
	sync  bool

	// Set by run, read after it returned.
	killed, promoted int       // node indexes
	killedAt         time.Time // just before SIGKILL
	promotedAt       time.Time // when the new primary first accepted writes
}

func (s *scenario) run(ctx context.Context, duration time.Duration) error {
	if !sleep(ctx, 3*duration/10) {
		return nil
	}
	old, err := s.cl.Primary(ctx)
	if err != nil {
		return err
	}
	s.killed = old
	s.killedAt = time.Now()
	s.con.event(s.killedAt, ">>> SIGKILL %s, the primary", s.nodes.name(old))
	if err := s.cl.Kill(old); err != nil {
		return err
	}

	rest := s.cl.Others(old)
	target, err := s.cl.MostAdvanced(ctx, rest...)
	if err != nil {
		return err
	}
	s.promoted = target
	if s.promotedAt, err = s.cl.Promote(ctx, target); err != nil {
		return err
	}
	s.con.event(s.promotedAt, ">>> %s promoted: it accepts writes (%v after the kill)",
		s.nodes.name(target), ms(s.promotedAt.Sub(s.killedAt)))
	// The other replica follows the new primary; one that replayed past the
	// point where the new timeline forked off is rewound (pg_rewind).
	rejoined, err := s.cl.Follow(ctx, target, rest...)
	if err != nil {
		return err
	}
	for _, j := range rest {
		switch {
		case j == target:
		case slices.Contains(rejoined, j):
			s.con.event(time.Now(), ">>> %s could not follow %s: rejoined it (pg_rewind)", s.nodes.name(j), s.nodes.name(target))
		default:
			s.con.event(time.Now(), ">>> %s re-pointed: streams from %s", s.nodes.name(j), s.nodes.name(target))
		}
	}
	if s.sync {
		if err := s.cl.SetSynchronous(ctx, target, true); err != nil {
			return err
		}
		s.con.event(time.Now(), ">>> synchronous replication on %s", s.nodes.name(target))
	}

	if !sleep(ctx, 6*duration/10-s.con.elapsed(time.Now())) {
		return nil
	}
	s.con.event(time.Now(), ">>> bringing %s back as a replica of %s (pg_rewind) ...", s.nodes.name(old), s.nodes.name(target))
	if err := s.cl.Rejoin(ctx, old, target); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	s.con.event(time.Now(), ">>> %s rejoined: a replica streaming from %s", s.nodes.name(old), s.nodes.name(target))
	return nil
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
