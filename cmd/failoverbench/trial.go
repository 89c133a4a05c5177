package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/pgcluster"
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
	table := fmt.Sprintf("fb_%s_%s_%d", scenario, driver, n)
	if err := cl.Exec(ctx, primary, "DROP TABLE IF EXISTS "+table); err != nil {
		return r, err
	}
	if err := cl.Exec(ctx, primary, "CREATE TABLE "+table+" (id bigint, writer int)"); err != nil {
		return r, err
	}

	w, err := openClients(cl, cfg, driver)
	if err != nil {
		return r, err
	}
	defer w.close()
	w.table = table
	for i := 0; i < cl.Len(); i++ {
		w.nodes[cl.Node(i).Port] = cl.Node(i).Name
	}

	w.start(ctx, cfg)
	stopped := false
	halt := func() {
		if !stopped {
			stopped = true
			w.halt()
		}
	}
	defer halt()
	if !sleep(ctx, cfg.warmup) {
		return r, ctx.Err()
	}
	if w.ackedSince(time.Time{}) == 0 {
		return r, fmt.Errorf("no write succeeded during the warm-up: %v", w.sampleErrors())
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
	for w.ackedSince(promotedAt) < 20 && time.Now().Before(deadline) {
		if !sleep(ctx, 10*time.Millisecond) {
			return r, ctx.Err()
		}
	}
	sleep(ctx, 200*time.Millisecond)
	end := time.Now()
	halt()
	if ctx.Err() != nil {
		return r, ctx.Err()
	}

	stored, err := cl.IDCounts(ctx, target, table)
	if err != nil {
		return r, err
	}
	w.judge(&r, stored, faultAt, promotedAt, deadline, end)
	return r, nil
}

// clients is one trial's database/sql side: the writers' and the readers'
// *sql.DB (the same one for unified) and what every statement returned.
type clients struct {
	wdb, rdb *sql.DB
	readOnly bool // readers use unified.ReadOnly
	table    string
	nodes    map[int]string // port → node name

	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex          // protects following fields
	acked   map[int64]time.Time // id → when acknowledged
	flagged map[int64]error     // id → error wrapping unified.ErrCommitUnknown
	failed  map[int64]error     // id → any other error
	reads   []readResult
	errs    []string // a few distinct errors
}

type readResult struct {
	at   time.Time
	node string // "" when the read failed
}

func openClients(cl *pgcluster.Cluster, cfg config, driver string) (*clients, error) {
	w := &clients{
		nodes: map[int]string{}, stop: make(chan struct{}),
		acked: map[int64]time.Time{}, flagged: map[int64]error{}, failed: map[int64]error{},
	}
	var err error
	switch driver {
	case "unified":
		w.wdb, err = sql.Open("unified", cl.DSN(cfg.unifiedParams...))
		w.rdb = w.wdb
		w.readOnly = true
	case "pgx":
		w.wdb, err = sql.Open("pgx", cl.DSN("target_session_attrs=read-write", "connect_timeout=2"))
		if err == nil {
			w.rdb, err = sql.Open("pgx", cl.DSN("target_session_attrs=prefer-standby", "connect_timeout=2"))
		}
	}
	if err != nil {
		w.close()
		return nil, err
	}
	// database/sql keeps 2 idle connections by default and would reopen
	// the others all the time.
	w.wdb.SetMaxIdleConns(cfg.writers + cfg.readers)
	w.rdb.SetMaxIdleConns(cfg.writers + cfg.readers)
	return w, nil
}

func (w *clients) close() {
	if w.wdb != nil {
		w.wdb.Close()
	}
	if w.rdb != nil && w.rdb != w.wdb {
		w.rdb.Close()
	}
}

func (w *clients) start(ctx context.Context, cfg config) {
	for i := 0; i < cfg.writers; i++ {
		w.wg.Go(func() {
			for seq := int64(0); !w.stopped(ctx); seq++ {
				id := int64(i)*1_000_000_000 + seq
				wctx, cancel := context.WithTimeout(ctx, cfg.writeTimeout)
				_, err := w.wdb.ExecContext(wctx, "INSERT INTO "+w.table+" (id, writer) VALUES ($1, $2)", id, i)
				cancel()
				w.write(id, err)
				if err != nil {
					time.Sleep(2 * time.Millisecond) // no spinning on a persistent error
				}
			}
		})
	}
	rctx := ctx
	if w.readOnly {
		rctx = unified.WithMode(ctx, unified.ReadOnly)
	}
	for range cfg.readers {
		w.wg.Go(func() {
			for !w.stopped(ctx) {
				qctx, cancel := context.WithTimeout(rctx, 2*time.Second)
				var port int
				err := w.rdb.QueryRowContext(qctx, "SELECT inet_server_port()").Scan(&port)
				cancel()
				w.read(port, err)
				time.Sleep(time.Millisecond)
			}
		})
	}
}

func (w *clients) stopped(ctx context.Context) bool {
	select {
	case <-w.stop:
		return true
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

// halt stops the load and waits for the statements in flight.
func (w *clients) halt() {
	close(w.stop)
	w.wg.Wait()
}

func (w *clients) write(id int64, err error) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err == nil:
		w.acked[id] = now
		return
	case errors.Is(err, unified.ErrCommitUnknown):
		w.flagged[id] = err
	default:
		w.failed[id] = err
	}
	w.sampleLocked(err)
}

func (w *clients) read(port int, err error) {
	now := time.Now()
	node := ""
	if err == nil {
		if node = w.nodes[port]; node == "" {
			node = fmt.Sprint(port)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.reads = append(w.reads, readResult{at: now, node: node})
	if err != nil {
		w.sampleLocked(err)
	}
}

func (w *clients) sampleLocked(err error) {
	if msg := err.Error(); len(w.errs) < 6 && !slices.Contains(w.errs, msg) {
		w.errs = append(w.errs, msg)
	}
}

func (w *clients) sampleErrors() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.errs)
}

// ackedSince counts writes acknowledged at or after t.
func (w *clients) ackedSince(t time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, at := range w.acked {
		if !at.Before(t) {
			n++
		}
	}
	return n
}

// judge fills r from what the clients saw and what the new primary holds.
func (w *clients) judge(r *trialResult, stored map[int64]int, faultAt, promotedAt, deadline, end time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r.Acked, r.Flagged, r.Failed, r.Errors = len(w.acked), len(w.flagged), len(w.failed), w.errs
	for id := range w.acked {
		if stored[id] == 0 {
			r.Lost++
		}
	}
	for _, n := range stored {
		if n > 1 {
			r.Dup++
		}
	}
	for id := range w.flagged {
		if stored[id] > 0 {
			r.FlaggedStored++
		}
	}
	for id := range w.failed {
		if stored[id] > 0 {
			r.Unflagged++
		}
	}

	acks := make([]time.Time, 0, len(w.acked))
	for _, at := range w.acked {
		acks = append(acks, at)
	}
	sort.Slice(acks, func(i, j int) bool { return acks[i].Before(acks[j]) })
	outageEnd := end
	if i := sort.Search(len(acks), func(i int) bool { return !acks[i].Before(promotedAt) }); i < len(acks) && acks[i].Before(deadline) {
		rec := ms(acks[i].Sub(promotedAt))
		r.RecoveryMS = &rec
		outageEnd = acks[i]
	} else {
		acks = append(acks[:i], end) // writes never resumed: the outage lasts to the end
	}
	var longest time.Duration
	for i := 1; i < len(acks); i++ {
		longest = max(longest, acks[i].Sub(acks[i-1]))
	}
	r.LongestOutageMS = ms(longest)

	r.ReadsByNode = map[string]int{}
	for _, rd := range w.reads {
		if rd.at.Before(faultAt) || rd.at.After(outageEnd) {
			continue
		}
		if rd.node == "" {
			r.ReadsFailed++
		} else {
			r.ReadsOK++
			r.ReadsByNode[rd.node]++
		}
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
