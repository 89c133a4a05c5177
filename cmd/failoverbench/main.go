// Command failoverbench measures how database/sql clients come through the
// failure of the PostgreSQL primary: unified, and side by side in the same
// run pgx stdlib with a multi-host DSN, on a local primary + 2 streaming
// replicas (internal/pgcluster).
//
//	go run ./cmd/failoverbench [-trials 5] [-sync] [-json] [-scenarios kill,hang] [-drivers unified,pgx] [-timeline t.json] [-manager patroni]
//
// With -manager patroni the failover is Patroni's (a real etcd + 3 Patroni
// nodes, internal/patroni) and the scenarios are crash, hang and switchover:
// see patroni.go.
//
// It needs the PostgreSQL server binaries (Debian: apt-get install
// postgresql; or set UNIFIED_PG_BIN). With the defaults it runs for about
// four minutes on two cores.
//
// # Scenarios
//
// Each trial starts from the restored cluster (node0 primary, node1 and node2
// streaming from it; Cluster.Restore), runs 8 writers and 4 readers for a
// second, then:
//
//   - kill: SIGKILL the primary's postmaster (a crash);
//   - hang: SIGSTOP the primary's processes (a hung host: TCP handshakes
//     complete, nothing answers); SIGCONT once the trial is measured.
//
// Then, as a failover manager would, it promotes the replica that received
// the most WAL and re-points the other one, and waits until writes resume,
// at most -bound (15 s) after the promotion ("no recovery" otherwise).
//
// # Clients
//
// unified: one *sql.DB from sql.Open("unified", dsn) over the three hosts
// (driver defaults unless -unified-params); writers use no mode, readers
// unified.ReadOnly. pgx: sql.Open("pgx", dsn) over the same three hosts with
// connect_timeout=2, target_session_attrs=read-write for the writers and
// prefer-standby for the readers. Writers INSERT unique ids into a table
// without a unique constraint, each INSERT with a -write-timeout (10 s)
// deadline, pausing 2 ms after a failed one; readers run SELECT
// inet_server_port() with a 2 s deadline.
//
// # Measures
//
//   - client recovery: the first acknowledged write after the promotion minus
//     the moment the promoted node first accepted writes (Cluster.Promote
//     polls pg_is_in_recovery() directly);
//   - longest write outage: the longest gap between consecutive acknowledged
//     writes over all writers;
//   - reads during the outage (from the fault to the first write after the
//     promotion): share that succeeded, and how the successful ones spread
//     over the nodes (by inet_server_port());
//   - lost: acknowledged writes absent from the new primary; dup: ids stored
//     more than once; unflagged: writes that returned an error not wrapping
//     unified.ErrCommitUnknown yet were stored (every stored failed pgx write
//     is unflagged); flagged: writes that returned ErrCommitUnknown, and how
//     many of them were stored.
//
// The result is a Markdown table (scenario × driver), or with -json the
// trials and the table's rows as JSON. Progress goes to stderr. SIGINT or
// SIGTERM stops the run; every PostgreSQL process is stopped on exit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/unifiedsql/unified/internal/pgcluster"
)

// config is the command line.
type config struct {
	trials        int
	sync          bool
	asJSON        bool
	scenarios     []string
	drivers       []string
	writers       int
	readers       int
	writeTimeout  time.Duration
	bound         time.Duration
	warmup        time.Duration
	unifiedParams []string
	verbose       bool
	timeline      string        // -timeline: where to write the trials' timelines
	manager       string        // "" (the command's own failover) or "patroni"
	saturate      time.Duration // -saturate: the saturated run's length (0: none; see saturate.go)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the command without its process; it returns the exit status: 0
// when every trial ran, 1 when the cluster or a trial failed, 2 on a usage
// error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if cfg.manager == "patroni" {
		return runPatroni(ctx, cfg, stdout, stderr)
	}
	if _, err := pgcluster.FindBinDir(); err != nil {
		fmt.Fprintln(stderr, "failoverbench:", err)
		return 1
	}
	progress := func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) }
	progress("starting a local primary + 2 streaming replicas ...")
	opts := pgcluster.Options{Replicas: 2, Synchronous: cfg.sync}
	if cfg.verbose {
		opts.Logf = progress
	}
	cl, err := pgcluster.Start(ctx, opts)
	if err != nil {
		fmt.Fprintln(stderr, "failoverbench:", err)
		return 1
	}
	defer cl.Close()
	pgVersion, err := serverVersion(ctx, cl)
	if err != nil {
		fmt.Fprintln(stderr, "failoverbench:", err)
		return 1
	}

	t0 := time.Now()
	trials, ok := runTrials(ctx, cfg, stderr, 4, func() error { return restore(ctx, cl, cfg.sync) }, func(scenario, driver string, n int) (trialResult, error) {
		return runTrial(ctx, cl, cfg, scenario, driver, n)
	})
	if !ok {
		return 1
	}
	rows := aggregate(trials, cfg.scenarios, cfg.drivers)
	var sat *saturation
	if cfg.saturate > 0 {
		if err := restore(ctx, cl, cfg.sync); err != nil {
			fmt.Fprintln(stderr, "failoverbench: restore:", err)
			return 1
		}
		progress("saturated run: %v, no fault ...", cfg.saturate)
		s, err := runSaturation(ctx, cl, cfg, cfg.saturate)
		if err != nil {
			fmt.Fprintln(stderr, "failoverbench: saturated run:", err)
			return 1
		}
		writeSaturation(stderr, s)
		sat = &s
	}
	progress("done in %v", time.Since(t0).Round(time.Second))
	if cfg.timeline != "" {
		if err := writeTimelines(cfg.timeline, trials); err != nil {
			fmt.Fprintln(stderr, "failoverbench:", err)
			return 1
		}
		progress("timelines written to %s", cfg.timeline)
	}
	return report(stdout, stderr, cfg, pgVersion, trials, rows, func(w io.Writer) {
		writeTable(w, cfg, pgVersion, rows)
		if sat != nil {
			writeSaturation(w, *sat)
		}
	})
}

// runTrials runs trial for each trial number, scenario and driver, and
// prints each result to stderr, the scenario padded to width. restore,
// when not nil, brings the cluster back before each trial but the first.
// It returns false when a trial or a restore failed or ctx ended, which it
// printed.
func runTrials(ctx context.Context, cfg config, stderr io.Writer, width int, restore func() error,
	trial func(scenario, driver string, n int) (trialResult, error),
) ([]trialResult, bool) {
	var trials []trialResult
	for n := 1; n <= cfg.trials; n++ {
		for _, scenario := range cfg.scenarios {
			for _, driver := range cfg.drivers {
				if restore != nil && len(trials) > 0 {
					if err := restore(); err != nil {
						if ctx.Err() != nil {
							fmt.Fprintln(stderr, "failoverbench: interrupted; stopping the cluster")
							return nil, false
						}
						fmt.Fprintln(stderr, "failoverbench: restore:", err)
						return nil, false
					}
				}
				r, err := trial(scenario, driver, n)
				if ctx.Err() != nil {
					fmt.Fprintln(stderr, "failoverbench: interrupted; stopping the cluster")
					return nil, false
				}
				if err != nil {
					fmt.Fprintf(stderr, "failoverbench: %s/%s trial %d: %v\n", scenario, driver, n, err)
					return nil, false
				}
				fmt.Fprintf(stderr, "%-*s %-7s trial %d/%d: %s\n", width, scenario, driver, n, cfg.trials, r)
				trials = append(trials, r)
			}
		}
	}
	return trials, true
}

// report prints the result to stdout: with -json the JSON document, else
// what table writes. It returns the exit status.
func report(stdout, stderr io.Writer, cfg config, pgVersion string, trials []trialResult, rows []row, table func(io.Writer)) int {
	if cfg.asJSON {
		if err := writeJSON(stdout, cfg, pgVersion, trials, rows); err != nil {
			fmt.Fprintln(stderr, "failoverbench:", err)
			return 1
		}
		return 0
	}
	table(stdout)
	return 0
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("failoverbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.IntVar(&cfg.trials, "trials", 5, "trials per scenario and driver")
	fs.BoolVar(&cfg.sync, "sync", false, "synchronous replication (synchronous_standby_names = 'ANY 1 (*)')")
	fs.BoolVar(&cfg.asJSON, "json", false, "print the trials and the summary rows as JSON instead of the Markdown table")
	scenarios := fs.String("scenarios", "", "comma-separated scenarios: kill (SIGKILL), hang (SIGSTOP); with -manager patroni: crash, hang, switchover (default: all of them)")
	manager := fs.String("manager", "", "who fails over: empty (the command promotes the most advanced replica itself) or patroni (a real Patroni cluster, see patroni.go)")
	drivers := fs.String("drivers", "unified,pgx", "comma-separated drivers: unified, pgx")
	fs.IntVar(&cfg.writers, "writers", 8, "concurrent writers")
	fs.IntVar(&cfg.readers, "readers", 4, "concurrent readers")
	fs.DurationVar(&cfg.writeTimeout, "write-timeout", 10*time.Second, "deadline of each INSERT")
	fs.DurationVar(&cfg.bound, "bound", 15*time.Second, "how long after the promotion writes may take to resume")
	fs.DurationVar(&cfg.warmup, "warmup", time.Second, "load before the fault")
	params := fs.String("unified-params", "", "extra unified_* DSN parameters for unified, &-separated (default: the driver's defaults)")
	fs.BoolVar(&cfg.verbose, "v", false, "log what the cluster does")
	fs.DurationVar(&cfg.saturate, "saturate", 0, "after the trials, run the workload this long on the healthy cluster with every CPU kept busy, and count nodes wrongly shown down (see saturate.go)")
	fs.StringVar(&cfg.timeline, "timeline", "", "also write every trial as a timeline to this JSON file (draw it with: go -C examples run ./failoverplot)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: failoverbench [flags]\n\n"+
			"Kills (SIGKILL) and hangs (SIGSTOP) the primary of a local PostgreSQL cluster under load and\n"+
			"measures unified and pgx side by side. Prints a Markdown table.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	cfg.manager = *manager
	known := []string{"kill", "hang"}
	if cfg.manager == "patroni" {
		known = patroniScenarios
	}
	if *scenarios == "" {
		*scenarios = strings.Join(known, ",")
	}
	cfg.scenarios = splitList(*scenarios)
	cfg.drivers = splitList(*drivers)
	for _, p := range strings.Split(*params, "&") {
		if p = strings.TrimSpace(p); p != "" {
			cfg.unifiedParams = append(cfg.unifiedParams, p)
		}
	}
	bad := func(format string, args ...any) (config, error) {
		fmt.Fprintf(stderr, "failoverbench: "+format+"\n", args...)
		fs.Usage()
		return cfg, errors.New("usage")
	}
	switch {
	case fs.NArg() > 0:
		return bad("unexpected argument %q", fs.Arg(0))
	case cfg.trials < 1:
		return bad("-trials must be at least 1")
	case cfg.writers < 1 || cfg.readers < 1:
		return bad("-writers and -readers must be at least 1")
	}
	if cfg.manager != "" && cfg.manager != "patroni" {
		return bad("unknown manager %q (want patroni, or none)", cfg.manager)
	}
	if cfg.manager == "patroni" && (cfg.timeline != "" || cfg.saturate > 0) {
		return bad("-timeline and -saturate run only on the command's own cluster, not with -manager patroni")
	}
	for _, s := range cfg.scenarios {
		if !slices.Contains(known, s) {
			return bad("unknown scenario %q (want %s)", s, strings.Join(known, ", "))
		}
	}
	for _, d := range cfg.drivers {
		if d != "unified" && d != "pgx" {
			return bad("unknown driver %q (want unified, pgx)", d)
		}
	}
	if len(cfg.scenarios) == 0 || len(cfg.drivers) == 0 {
		return bad("no scenario or no driver")
	}
	return cfg, nil
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// restore brings the cluster back to node0 primary with both replicas
// streaming from it, synchronous when asked.
func restore(ctx context.Context, cl *pgcluster.Cluster, sync bool) error {
	if err := cl.Restore(ctx); err != nil {
		return err
	}
	if sync {
		return cl.SetSynchronous(ctx, 0, true)
	}
	return nil
}

// serverVersion is what node 0 of cl (a pgcluster or a patroni Cluster)
// says SHOW server_version is, asked over a connection of its own.
func serverVersion(ctx context.Context, cl interface {
	Connect(ctx context.Context, i int) (*pgx.Conn, error)
}) (string, error) {
	conn, err := cl.Connect(ctx, 0)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var v string
	err = conn.QueryRow(ctx, "SHOW server_version").Scan(&v)
	return v, err
}
