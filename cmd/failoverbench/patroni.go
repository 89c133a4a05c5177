package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/unifiedsql/unified/internal/patroni"
	"github.com/unifiedsql/unified/internal/workload"
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
	var pgVersion string
	if conn, err := cl.Connect(ctx, 0); err == nil {
		err = conn.QueryRow(ctx, "SHOW server_version").Scan(&pgVersion)
		conn.Close(ctx)
		if err != nil {
			fmt.Fprintln(stderr, "failoverbench:", err)
			return 1
		}
	} else {
		fmt.Fprintln(stderr, "failoverbench:", err)
		return 1
	}

	t0 := time.Now()
	var trials []trialResult
	for n := 1; n <= cfg.trials; n++ {
		for _, scenario := range cfg.scenarios {
			for _, driver := range cfg.drivers {
				r, err := runPatroniTrial(ctx, cl, cfg, scenario, driver, n)
				if ctx.Err() != nil {
					fmt.Fprintln(stderr, "failoverbench: interrupted; stopping the cluster")
					return 1
				}
				if err != nil {
					fmt.Fprintf(stderr, "failoverbench: %s/%s trial %d: %v\n", scenario, driver, n, err)
					return 1
				}
				progress("%-10s %-7s trial %d/%d: %s", scenario, driver, n, cfg.trials, r)
				trials = append(trials, r)
			}
		}
	}
	rows := aggregate(trials, cfg.scenarios, cfg.drivers)
	progress("done in %v", time.Since(t0).Round(time.Second))
	if cfg.asJSON {
		if err := writeJSON(stdout, cfg, pgVersion, trials, rows); err != nil {
			fmt.Fprintln(stderr, "failoverbench:", err)
			return 1
		}
		return 0
	}
	writePatroniTable(stdout, cfg, pgVersion, rows, trials)
	return 0
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
	wdb, rdb, err := openDBs(cl, cfg, driver)
	if err != nil {
		return r, err
	}
	defer closeDBs(wdb, rdb)
	table := fmt.Sprintf("fbp_%s_%s_%d", scenario, driver, n)
	if err := workload.CreateTable(ctx, wdb, table); err != nil {
		return r, err
	}
	nodes := map[int]int{}
	for i := range cl.Len() {
		nodes[cl.Node(i).Port] = i
	}
	w := workload.Start(ctx, wdb, rdb, workload.Config{
		Table: table, Writers: cfg.writers, Readers: cfg.readers,
		WriteTimeout: cfg.writeTimeout, ReadTimeout: 2 * time.Second,
		WritePause: 2 * time.Millisecond, ReadPause: time.Millisecond,
		Nodes: nodes,
	})
	defer w.Stop()
	if !sleep(ctx, cfg.warmup) {
		return r, ctx.Err()
	}
	if w.AckedSince(time.Time{}) == 0 {
		v := workload.Judge(w.Outcomes(), nil, time.Time{}, time.Time{})
		return r, fmt.Errorf("no write succeeded during the warm-up: %v", v.Samples(6))
	}

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

	deadline := promotedAt.Add(cfg.bound)
	for w.AckedSince(promotedAt) < 20 && time.Now().Before(deadline) {
		if !sleep(ctx, 10*time.Millisecond) {
			return r, ctx.Err()
		}
	}
	sleep(ctx, 200*time.Millisecond)
	end := time.Now()
	o := w.Stop()
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	stored, err := workload.IDCounts(ctx, cl.Node(target).DSN(), table)
	if err != nil {
		return r, err
	}
	judgeNamed(&r, o, stored, func(i int) string {
		if node := cl.Node(i); node != nil {
			return node.Name
		}
		return "unknown"
	}, faultAt, promotedAt, deadline, end)
	return r, nil
}

// judgeNamed is judge with node names from name.
func judgeNamed(r *trialResult, o workload.Outcomes, stored map[int64]int, name func(int) string, faultAt, promotedAt, deadline, end time.Time) {
	rec := o.Recovery(promotedAt, deadline, end)
	outageEnd := end
	if !rec.Resumed.IsZero() {
		d := ms(rec.Resumed.Sub(promotedAt))
		r.RecoveryMS = &d
		outageEnd = rec.Resumed
	}
	r.LongestOutageMS = ms(rec.LongestOutage)
	v := workload.Judge(o, stored, faultAt, outageEnd)
	r.Acked, r.Flagged, r.FlaggedStored, r.Failed, r.Unflagged = v.Acked, v.Unknown, v.UnknownStored, v.Failed, v.FailedStored
	r.Lost, r.Dup, r.Errors = v.Lost, v.Duplicates, v.Samples(6)
	r.ReadsOK, r.ReadsFailed, r.ReadsByNode = v.ReadsOK, v.ReadsFailed, map[string]int{}
	for i, n := range v.ReadsByNode {
		r.ReadsByNode[name(i)] += n
	}
}

func writePatroniTable(w io.Writer, cfg config, pgVersion string, rows []row, trials []trialResult) {
	repl := "asynchronous replication"
	if cfg.sync {
		repl = "Patroni synchronous_mode"
	}
	params := "driver defaults"
	if len(cfg.unifiedParams) > 0 {
		params = strings.Join(cfg.unifiedParams, "&")
	}
	fmt.Fprintf(w, "Failover by Patroni 3.0.2 (etcd v2 client, ttl 20 s, loop_wait 1 s, retry_timeout 3 s): %d trials per row, %d writers + %d readers, %s, PostgreSQL %s, %d CPUs.\n",
		cfg.trials, cfg.writers, cfg.readers, repl, pgVersion, runtime.NumCPU())
	fmt.Fprintf(w, "unified: %s; pgx: connect_timeout=2, target_session_attrs=read-write (writers) / prefer-standby (readers).\n", params)
	fmt.Fprintf(w, "Client recovery = first acknowledged write - the new leader's first pg_is_in_recovery() = false. Write deadline %v; no recovery = no write acknowledged within %v of the promotion.\n\n", cfg.writeTimeout, cfg.bound)
	fmt.Fprintln(w, "| scenario | driver | Patroni: fault to writable (median) | client recovery median | client recovery max | longest write outage (median) | reads ok during outage | read spread | lost | dup | unflagged | flagged (stored) |")
	fmt.Fprintln(w, "|---|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|")
	for _, r := range rows {
		max := recovery(r.RecoveryMaxMS)
		if r.NoRecovery > 0 {
			max = fmt.Sprintf("no recovery (%d/%d)", r.NoRecovery, r.Trials)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %d | %d (%d) |\n",
			patroniScenarioName(r.Scenario), r.Driver, msText(promotedMedian(trials, r.Scenario, r.Driver)), recovery(r.RecoveryMedianMS), max, msText(r.OutageMedianMS),
			readShare(r.ReadsOK, r.ReadsFailed), spread(r.ReadsByNode, r.ReadsOK),
			r.Lost, r.Dup, r.Unflagged, r.Flagged, r.FlaggedStored)
	}
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
