package main

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver

	_ "github.com/unifiedsql/unified" // the "unified" driver
	"github.com/unifiedsql/unified/internal/pgcluster"
	"github.com/unifiedsql/unified/internal/workload"
)

// trialResult is what one trial measured. Durations are in milliseconds.
type trialResult struct {
	Scenario string `json:"scenario"`
	Driver   string `json:"driver"`
	Trial    int    `json:"trial"`
	Killed   string `json:"faulted_node"`
	Promoted string `json:"promoted_node"`
	// PromotedMS: from the fault to the promoted node accepting writes
	// (the failover manager's part, the same for both drivers).
	PromotedMS float64 `json:"promoted_after_fault_ms"`
	// RecoveryMS: from the promotion to the first acknowledged write; nil
	// when no write was acknowledged within -bound.
	RecoveryMS *float64 `json:"recovery_ms"`
	// LongestOutageMS: the longest gap between consecutive acknowledged
	// writes (to the end of the trial when writes never resumed).
	LongestOutageMS float64 `json:"longest_outage_ms"`

	ReadsOK     int            `json:"outage_reads_ok"`
	ReadsFailed int            `json:"outage_reads_failed"`
	ReadsByNode map[string]int `json:"outage_reads_by_node"`

	Acked         int      `json:"acked"`
	Flagged       int      `json:"flagged"`        // returned ErrCommitUnknown
	FlaggedStored int      `json:"flagged_stored"` // ... and were stored
	Failed        int      `json:"failed"`         // returned another error
	Unflagged     int      `json:"unflagged"`      // ... and were stored
	Lost          int      `json:"lost"`
	Dup           int      `json:"dup"`
	Errors        []string `json:"sample_errors,omitempty"`
	Notes         []string `json:"notes,omitempty"` // what went differently

	timeline *workload.Timeline // with -timeline (timeline.go)
}

func (r trialResult) String() string {
	rec := "no recovery"
	if r.RecoveryMS != nil {
		rec = fmt.Sprintf("recovery %.0f ms", *r.RecoveryMS)
	}
	s := fmt.Sprintf("promoted after %.0f ms, %s, longest outage %.0f ms, outage reads %d ok %d failed %v, acked %d flagged %d (stored %d) failed %d unflagged %d lost %d dup %d",
		r.PromotedMS, rec, r.LongestOutageMS, r.ReadsOK, r.ReadsFailed, r.ReadsByNode,
		r.Acked, r.Flagged, r.FlaggedStored, r.Failed, r.Unflagged, r.Lost, r.Dup)
	for _, n := range r.Notes {
		s += "\n    note: " + n
	}
	if len(r.Errors) > 0 {
		s += "\n    errors: " + strings.Join(r.Errors, "\n            ")
	}
	return s
}

// runTrial runs one scenario with one driver on the cluster as it is
// (node0 primary, both replicas streaming from it).
func runTrial(ctx context.Context, cl *pgcluster.Cluster, cfg config, scenario, driver string, n int) (trialResult, error) {
	r := trialResult{Scenario: scenario, Driver: driver, Trial: n}
	primary, err := cl.Primary(ctx)
	if err != nil {
		return r, err
	}
	wdb, rdb, err := openDBs(cl, cfg, driver)
	if err != nil {
		return r, err
	}
	defer closeDBs(wdb, rdb)
	table := fmt.Sprintf("fb_%s_%s_%d", scenario, driver, n)
	if err := workload.CreateTable(ctx, wdb, table); err != nil {
		return r, err
	}
	nodes := map[int]int{}
	for i := 0; i < cl.Len(); i++ {
		nodes[cl.Node(i).Port] = i
	}

	loadStart := time.Now()
	w := workload.Start(ctx, wdb, rdb, workload.Config{
		Table: table, Writers: cfg.writers, Readers: cfg.readers,
		WriteTimeout: cfg.writeTimeout, ReadTimeout: 2 * time.Second,
		WritePause: 2 * time.Millisecond, ReadPause: time.Millisecond, // no spinning on a persistent error
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

	// The fault, then what a failover manager does.
	faultAt := time.Now()
	switch scenario {
	case "kill":
		if err := cl.Kill(primary); err != nil {
			return r, err
		}
	case "hang":
		// Every process of the server stopped (pgcluster stops the
		// postmaster and each backend): TCP handshakes still complete,
		// nothing answers. Resumed once measured; the next Restore turns
		// it into a standby again.
		err := cl.Hang(primary)
		defer cl.Continue(primary)
		if err != nil {
			return r, err
		}
	}
	target, promotedAt, rejoined, err := cl.FailOver(ctx, primary)
	for _, j := range rejoined {
		// It replayed past the new timeline's fork point: it was rewound.
		r.Notes = append(r.Notes, fmt.Sprintf("%s could not follow %s; rejoined it", cl.Node(j).Name, cl.Node(target).Name))
	}
	if err != nil {
		return r, err
	}
	r.Killed, r.Promoted = cl.Node(primary).Name, cl.Node(target).Name
	r.PromotedMS = ms(promotedAt.Sub(faultAt))

	// Wait for writes to resume on the new primary, within the bound.
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
	judge(&r, o, stored, cl, faultAt, promotedAt, deadline, end)
	if cfg.timeline != "" {
		r.timeline = trialTimeline(r, o, cl, primary, target, loadStart, faultAt, promotedAt, end)
	}
	return r, nil
}

// openDBs opens the writers' and the readers' *sql.DB: the same one for
// unified; for pgx one per target_session_attrs.
func openDBs(cl interface{ DSN(params ...string) string }, cfg config, driver string) (wdb, rdb *sql.DB, err error) {
	switch driver {
	case "unified":
		wdb, err = sql.Open("unified", cl.DSN(cfg.unifiedParams...))
		rdb = wdb
	case "pgx":
		wdb, err = sql.Open("pgx", cl.DSN("target_session_attrs=read-write", "connect_timeout=2"))
		if err == nil {
			rdb, err = sql.Open("pgx", cl.DSN("target_session_attrs=prefer-standby", "connect_timeout=2"))
		}
	}
	if err != nil {
		closeDBs(wdb, rdb)
		return nil, nil, err
	}
	// database/sql keeps 2 idle connections by default and would reopen
	// the others all the time.
	wdb.SetMaxIdleConns(cfg.writers + cfg.readers)
	rdb.SetMaxIdleConns(cfg.writers + cfg.readers)
	return wdb, rdb, nil
}

func closeDBs(wdb, rdb *sql.DB) {
	if wdb != nil {
		wdb.Close()
	}
	if rdb != nil && rdb != wdb {
		rdb.Close()
	}
}

// judge fills r from what the clients saw and what the new primary holds.
// Reads count from the fault to the first write after the promotion (or
// the end).
func judge(r *trialResult, o workload.Outcomes, stored map[int64]int, cl *pgcluster.Cluster, faultAt, promotedAt, deadline, end time.Time) {
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
		name := "unknown"
		if node := cl.Node(i); node != nil {
			name = node.Name
		}
		r.ReadsByNode[name] += n
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
