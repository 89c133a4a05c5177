package workload

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/unifiedsql/unified"
)

// Config is a workload's shape.
type Config struct {
	Table   string // made by CreateTable
	Writers int
	Readers int
	// WriteTimeout bounds one INSERT (default 10 s): unified makes a write
	// wait for a new primary within its deadline. ReadTimeout bounds one
	// read (default 2 s).
	WriteTimeout, ReadTimeout time.Duration
	// WritePause follows a failed INSERT, so a persistent error does not
	// spin; ReadPause follows every read. Default 0.
	WritePause, ReadPause time.Duration
	// Nodes maps a node's port (what inet_server_port() answers) to its
	// index, for Read.Node.
	Nodes map[int]int
	// ReadErrorTopology adds, to each failed read's error, unified's view
	// of the cluster at that moment (when the readers' DB is unified's),
	// for test failure messages.
	ReadErrorTopology bool
}

// CreateTable (re)creates table for a workload: ids without a unique
// constraint, so that a write stored twice shows as a duplicate.
func CreateTable(ctx context.Context, db *sql.DB, table string) error {
	t := pgx.Identifier{table}.Sanitize()
	_, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS "+t+"; CREATE TABLE "+t+" (id bigint, writer int)")
	return err
}

// IDCounts reads, over a plain pgx connection to dsn (one node, the
// current primary), how many rows of table carry each id: the ground truth
// for Judge.
func IDCounts(ctx context.Context, dsn, table string) (map[int64]int, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("workload: ground truth: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, "SELECT id, count(*) FROM "+pgx.Identifier{table}.Sanitize()+" GROUP BY id")
	if err != nil {
		return nil, fmt.Errorf("workload: ground truth: %w", err)
	}
	counts := map[int64]int{}
	for rows.Next() {
		var id, n int64
		if err := rows.Scan(&id, &n); err != nil {
			return nil, fmt.Errorf("workload: ground truth: %w", err)
		}
		counts[id] = int(n)
	}
	return counts, rows.Err()
}

// Run is a running workload. Its methods are safe for concurrent use.
type Run struct {
	cfg  Config
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup

	mu     sync.Mutex // protects following fields
	o      Outcomes
	counts Counts
}

// Counts are running totals, for a live display.
type Counts struct {
	WritesOK, WritesUnknown, WritesFailed int // WritesFailed excludes the unknown ones
	ReadsOK                               map[int]int
	ReadsFailed                           int
}

// Start starts cfg.Writers writers on wdb, each INSERTing ids
// writer*1e9 + 0, 1, 2..., and cfg.Readers readers on rdb running SELECT
// inet_server_port() in unified.ReadOnly mode (a context value other
// drivers ignore), until Stop or ctx ends. wdb and rdb may be the same DB.
func Start(ctx context.Context, wdb, rdb *sql.DB, cfg Config) *Run {
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 2 * time.Second
	}
	r := &Run{cfg: cfg, stop: make(chan struct{}), counts: Counts{ReadsOK: map[int]int{}}}
	insert := "INSERT INTO " + pgx.Identifier{cfg.Table}.Sanitize() + " (id, writer) VALUES ($1, $2)"
	for i := range cfg.Writers {
		r.wg.Go(func() {
			for seq := int64(0); !r.done(ctx); seq++ {
				id := int64(i)*1_000_000_000 + seq
				wctx, cancel := context.WithTimeout(ctx, cfg.WriteTimeout)
				began := time.Now()
				_, err := wdb.ExecContext(wctx, insert, id, i)
				now := time.Now()
				cancel()
				r.wrote(Write{ID: id, At: now, Took: now.Sub(began), Err: err})
				if err != nil {
					pause(cfg.WritePause)
				}
			}
		})
	}
	ro := unified.WithMode(ctx, unified.ReadOnly)
	for range cfg.Readers {
		r.wg.Go(func() {
			for !r.done(ctx) {
				rctx, cancel := context.WithTimeout(ro, cfg.ReadTimeout)
				var port int
				began := time.Now()
				err := rdb.QueryRowContext(rctx, "SELECT inet_server_port()").Scan(&port)
				cancel()
				r.read(rdb, began, port, err)
				pause(cfg.ReadPause)
			}
		})
	}
	return r
}

func pause(d time.Duration) {
	if d > 0 {
		time.Sleep(d)
	}
}

func (r *Run) done(ctx context.Context) bool {
	select {
	case <-r.stop:
		return true
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

func (r *Run) wrote(w Write) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.o.Writes = append(r.o.Writes, w)
	switch {
	case w.Err == nil:
		r.counts.WritesOK++
	case errors.Is(w.Err, unified.ErrCommitUnknown):
		r.counts.WritesUnknown++
	default:
		r.counts.WritesFailed++
	}
}

func (r *Run) read(db *sql.DB, began time.Time, port int, err error) {
	now := time.Now()
	rd := Read{At: now, Took: now.Sub(began), Node: -1, Err: err}
	if err == nil {
		if i, ok := r.cfg.Nodes[port]; ok {
			rd.Node = i
		}
	} else if c, ok := unified.ConnectorOf(db); ok && r.cfg.ReadErrorTopology {
		rd.Err = fmt.Errorf("%w (at %s, topology then: %s)", err, rd.At.Format("15:04:05.000"), DescribeHealth(c.Stats().Health))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.o.Reads = append(r.o.Reads, rd)
	if err != nil {
		r.counts.ReadsFailed++
	} else {
		r.counts.ReadsOK[rd.Node]++
	}
}

// Stop stops the writers and readers, waits for the statements in flight
// and returns the outcomes. Later calls return them again.
func (r *Run) Stop() Outcomes {
	r.once.Do(func() { close(r.stop) })
	r.wg.Wait()
	return r.Outcomes()
}

// Outcomes returns a copy of the outcomes so far.
func (r *Run) Outcomes() Outcomes {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Outcomes{Writes: append([]Write(nil), r.o.Writes...), Reads: append([]Read(nil), r.o.Reads...)}
}

// Counts returns the running totals.
func (r *Run) Counts() Counts {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.counts
	c.ReadsOK = maps.Clone(r.counts.ReadsOK)
	return c
}

// AckedSince counts the writes acknowledged at or after t so far.
func (r *Run) AckedSince(t time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.o.AckedSince(t)
}

// FirstAckAfter is Outcomes.FirstAckAfter on the outcomes so far.
func (r *Run) FirstAckAfter(t time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.o.FirstAckAfter(t)
}

// DescribeHealth is a one-line view of unified's topology, for messages.
func DescribeHealth(h unified.Health) string {
	s := fmt.Sprintf("primary=%q age=%v", h.Primary, h.Age.Round(time.Millisecond))
	for _, n := range h.Nodes {
		s += fmt.Sprintf(" [%s %s %s breaker=%s lag=%v/%dB err=%q]", n.Name, n.Role, n.State, n.Breaker, n.Lag, n.LagBytes, n.LastError)
	}
	return s
}
