package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/unifiedsql/unified/internal/patroni"
)

// -manager patroni: the same trials with a real Patroni doing the
// failover (internal/patroni: etcd and three Patroni nodes, ttl 20 s,
// loop_wait 1 s, retry_timeout 3 s, the etcd v2 client; -sync turns on
// Patroni's synchronous_mode). The scenarios:
//
//   - crash: SIGKILL of the leader's Patroni and PostgreSQL at once (a
//     machine dies); Patroni promotes a replica once the leader key
//     expired, about the TTL later; the node is started again after the
//     trial and rejoins;
//   - hang: SIGSTOP of both; Patroni promotes a replica about 22 s later;
//     the node is woken after the trial, demotes itself and rejoins;
//   - switchover: POST /switchover to the leader's REST API, to the
//     synchronous standby with -sync, else to a replica of Patroni's
//     choice.
//
// Client recovery is the first acknowledged write minus the moment the
// new leader first answered pg_is_in_recovery() = false, polled every few
// milliseconds on every node (Patroni's /primary says 200 before the
// promotion ends). Trials start from whatever node leads after the last
// one, once the cluster is whole again.

// patroniScenarios are the scenarios -manager patroni knows.
var patroniScenarios = []string{"crash", "hang", "switchover"}

func runPatroni(ctx context.Context, cfg config, stdout, stderr io.Writer) int {
	progress := func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) }
	if _, _, _, err := patroni.Binaries(); err != nil {
		fmt.Fprintln(stderr, "failoverbench:", err)
		return 1
	}
	progress("starting etcd and 3 Patroni nodes ...")
	opts := patroni.Options{Synchronous: cfg.sync}
	if cfg.verbose {
		opts.Logf = progress
	}
	cl, err := patroni.Start(ctx, opts)
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
	trials, ok := runTrials(ctx, cfg, stderr, 10, nil, func(scenario, driver string, n int) (trialResult, error) {
		return runPatroniTrial(ctx, cl, cfg, scenario, driver, n)
	})
	if !ok {
		return 1
	}
	rows := aggregate(trials, cfg.scenarios, cfg.drivers)
	progress("done in %v", time.Since(t0).Round(time.Second))
	return report(stdout, stderr, cfg, pgVersion, trials, rows, func(w io.Writer) {
		writePatroniTable(w, cfg, pgVersion, rows, trials)
	})
}

// runPatroniTrial runs one scenario with one driver from a whole cluster,
// and leaves the cluster whole again.
func runPatroniTrial(ctx context.Context, cl *patroni.Cluster, cfg config, scenario, driver string, n int) (trialResult, error) {
	r := trialResult{Scenario: scenario, Driver: driver, Trial: n}
	if err := cl.WaitHealthy(ctx); err != nil {
		return r, err
	}
	leader, err := cl.Leader(ctx)
	if err != nil {
		return r, err
	}
	nodes := make([]nodeOf, cl.Len())
	for i := range nodes {
		nodes[i] = nodeOf{cl.Node(i).Port, cl.Node(i).Name}
	}
	l, err := startLoad(ctx, cl, cfg, driver, fmt.Sprintf("fbp_%s_%s_%d", scenario, driver, n), nodes)
	if err != nil {
		return r, err
	}
	defer l.close()

	type promoted struct {
		i   int
		at  time.Time
		err error
	}
	wait := make(chan promoted, 1)
	go func() {
		i, at, err := cl.WaitLeaderWritable(ctx, leader)
		wait <- promoted{i, at, err}
	}()
	faultAt := time.Now()
	var faultErr error
	switch scenario {
	case "crash":
		faultErr = cl.Crash(leader)
	case "hang":
		faultErr = cl.Hang(leader)
	case "switchover":
		faultErr = cl.Switchover(ctx, -1)
	}
	// Bring the faulted node back whatever happens, once measured.
	defer func() {
		switch {
		case cl.Hung(leader):
			_ = cl.Resume(leader)
		case !cl.Running(leader):
			_ = cl.StartNode(ctx, leader)
		}
	}()
	if faultErr != nil {
		return r, faultErr
	}
	p := <-wait
	if p.err != nil {
		return r, p.err
	}
	target, promotedAt := p.i, p.at
	r.Killed, r.Promoted = cl.Node(leader).Name, cl.Node(target).Name
	r.PromotedMS = ms(promotedAt.Sub(faultAt))

	if _, _, err := l.finish(ctx, cfg, &r, cl.Node(target).DSN(), faultAt, promotedAt); err != nil {
		return r, err
	}
	return r, nil
}

func writePatroniTable(w io.Writer, cfg config, pgVersion string, rows []row, trials []trialResult) {
	repl := "asynchronous replication"
	if cfg.sync {
		repl = "Patroni synchronous_mode"
	}
	promoted := column{"Patroni: fault to writable (median)", "--:", func(r row) string {
		return msText(promotedMedian(trials, r.Scenario, r.Driver))
	}}
	writeMarkdown(w, cfg, "Failover by Patroni 3.0.2 (etcd v2 client, ttl 20 s, loop_wait 1 s, retry_timeout 3 s)", repl, pgVersion,
		"Client recovery = first acknowledged write - the new leader's first pg_is_in_recovery() = false. ",
		columns(patroniScenarioName, &promoted), rows)
}

func patroniScenarioName(s string) string {
	switch s {
	case "crash":
		return "crash (SIGKILL Patroni + PostgreSQL)"
	case "hang":
		return "hang (SIGSTOP Patroni + PostgreSQL)"
	case "switchover":
		return "switchover (POST /switchover)"
	}
	return s
}

// promotedMedian is the median time from the fault to the new leader
// accepting writes over the trials of one row: Patroni's part.
func promotedMedian(trials []trialResult, scenario, driver string) float64 {
	var v []float64
	for _, t := range trials {
		if t.Scenario == scenario && t.Driver == driver {
			v = append(v, t.PromotedMS)
		}
	}
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	return v[(len(v)-1)/2]
}
