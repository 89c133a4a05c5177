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

	outageReads

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

// outageReads are the reads from the fault to the first write after the
// promotion (or the end of the trial): a trial's, or a row's summed over
// its trials.
type outageReads struct {
	ReadsOK     int            `json:"outage_reads_ok"`
	ReadsFailed int            `json:"outage_reads_failed"`
	ReadsByNode map[string]int `json:"outage_reads_by_node"` // successful reads by node name
}

// add counts o's reads in r as well.
func (r *outageReads) add(o outageReads) {
	r.ReadsOK += o.ReadsOK
	r.ReadsFailed += o.ReadsFailed
	if r.ReadsByNode == nil {
		r.ReadsByNode = map[string]int{}
	}
	for n, c := range o.ReadsByNode {
		r.ReadsByNode[n] += c
	}
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
	nodes := make([]nodeOf, cl.Len())
	for i := range nodes {
		nodes[i] = nodeOf{cl.Node(i).Port, cl.Node(i).Name}
	}
	l, err := startLoad(ctx, cl, cfg, driver, fmt.Sprintf("fb_%s_%s_%d", scenario, driver, n), nodes)
	if err != nil {
		return r, err
	}
	defer l.close()

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

	o, end, err := l.finish(ctx, cfg, &r, cl.Node(target).DSN(), faultAt, promotedAt)
	if err != nil {
		return r, err
	}
	if cfg.timeline != "" {
		r.timeline = trialTimeline(r, o, cl, primary, target, l.start, faultAt, promotedAt, end)
	}
	return r, nil
}

// nodeOf is what a trial's load knows of a node of the cluster.
type nodeOf struct {
	port int
	name string
}

// load is a trial's workload: the driver's DBs over the cluster, the
// trial's table, and the writers and readers running on them.
type load struct {
	wdb, rdb *sql.DB
	table    string
	nodes    []nodeOf // by index
	w        *workload.Run
	start    time.Time // when the writers and readers started
}

// startLoad opens the driver's DBs over cl, creates table, starts the
// writers and readers, and lets them run for the warm-up, in which some
// write must succeed. Stop it with close.
func startLoad(ctx context.Context, cl interface{ DSN(params ...string) string }, cfg config, driver, table string, nodes []nodeOf) (*load, error) {
	wdb, rdb, err := openDBs(cl, cfg, driver)
	if err != nil {
		return nil, err
	}
	l := &load{wdb: wdb, rdb: rdb, table: table, nodes: nodes}
	if err := workload.CreateTable(ctx, wdb, table); err != nil {
		l.close()
		return nil, err
	}
	ports := map[int]int{}
	for i, n := range nodes {
		ports[n.port] = i
	}
	l.start = time.Now()
	l.w = workload.Start(ctx, wdb, rdb, workload.Config{
		Table: table, Writers: cfg.writers, Readers: cfg.readers,
		WriteTimeout: cfg.writeTimeout, ReadTimeout: 2 * time.Second,
		WritePause: 2 * time.Millisecond, ReadPause: time.Millisecond, // no spinning on a persistent error
		Nodes: ports,
	})
	if !sleep(ctx, cfg.warmup) {
		l.close()
		return nil, ctx.Err()
	}
	if l.w.AckedSince(time.Time{}) == 0 {
		v := workload.Judge(l.w.Outcomes(), nil, time.Time{}, time.Time{})
		l.close()
		return nil, fmt.Errorf("no write succeeded during the warm-up: %v", v.Samples(6))
	}
	return l, nil
}

// close stops the writers and readers and closes the DBs.
func (l *load) close() {
	if l.w != nil {
		l.w.Stop()
	}
	closeDBs(l.wdb, l.rdb)
}

// finish waits for writes to resume after the promotion, within the
// bound, stops the writers and readers 200 ms later, and fills r from what
// they saw and what the new primary (at dsn) holds. It returns the
// outcomes and when the load stopped.
func (l *load) finish(ctx context.Context, cfg config, r *trialResult, dsn string, faultAt, promotedAt time.Time) (workload.Outcomes, time.Time, error) {
	deadline := promotedAt.Add(cfg.bound)
	for l.w.AckedSince(promotedAt) < 20 && time.Now().Before(deadline) {
		if !sleep(ctx, 10*time.Millisecond) {
			return workload.Outcomes{}, time.Time{}, ctx.Err()
		}
	}
	sleep(ctx, 200*time.Millisecond)
	end := time.Now()
	o := l.w.Stop()
	if ctx.Err() != nil {
		return o, end, ctx.Err()
	}
	stored, err := workload.IDCounts(ctx, dsn, l.table)
	if err != nil {
		return o, end, err
	}
	l.judge(r, o, stored, faultAt, promotedAt, deadline, end)
	return o, end, nil
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
func (l *load) judge(r *trialResult, o workload.Outcomes, stored map[int64]int, faultAt, promotedAt, deadline, end time.Time) {
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
		if i >= 0 && i < len(l.nodes) {
			name = l.nodes[i].name
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
