package unified_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// workload runs concurrent writers (unique ids, no unique constraint, so a
// duplicate would show) and ReadOnly readers against one unified DB, and
// records what every write returned.
type workload struct {
	db    *sql.DB
	table string
	ports map[int]int // port -> node index

	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex // protects following fields
	acked   map[int64]time.Time
	unknown map[int64]error
	failed  map[int64]error
	reads   []readResult
}

type readResult struct {
	at   time.Time
	node int // -1 on error
	err  error
}

func newWorkload(t *testing.T, db *sql.DB, c *pgcluster.Cluster, table string) *workload {
	t.Helper()
	_, err := db.ExecContext(t.Context(), fmt.Sprintf("DROP TABLE IF EXISTS %[1]s; CREATE TABLE %[1]s (id bigint, writer int, at timestamptz DEFAULT clock_timestamp())", table))
	require.NoError(t, err)
	return &workload{
		db: db, table: table, ports: portsOf(c), stop: make(chan struct{}),
		acked: map[int64]time.Time{}, unknown: map[int64]error{}, failed: map[int64]error{},
	}
}

// start launches the writers and readers; each write may wait up to
// writeTimeout (for a failover), each read up to 2 s.
func (w *workload) start(writers, readers int, writeTimeout time.Duration) {
	for i := 0; i < writers; i++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for seq := int64(0); ; seq++ {
				select {
				case <-w.stop:
					return
				default:
				}
				id := int64(i)*10_000_000 + seq
				ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
				_, err := w.db.ExecContext(ctx, "INSERT INTO "+w.table+" (id, writer) VALUES ($1, $2)", id, i)
				cancel()
				w.mu.Lock()
				switch {
				case err == nil:
					w.acked[id] = time.Now()
				case errors.Is(err, unified.ErrCommitUnknown):
					w.unknown[id] = err
				default:
					w.failed[id] = err
				}
				w.mu.Unlock()
			}
		}()
	}
	for i := 0; i < readers; i++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			ro := unified.WithMode(context.Background(), unified.ReadOnly)
			for {
				select {
				case <-w.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(ro, 2*time.Second)
				var port int
				err := w.db.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port)
				cancel()
				r := readResult{at: time.Now(), node: -1, err: err}
				if err == nil {
					r.node = w.ports[port]
				} else if conn, ok := unified.ConnectorOf(w.db); ok {
					r.err = fmt.Errorf("%w (at %s, topology then: %s)", err, r.at.Format("15:04:05.000"), describeHealth(conn.Stats().Health))
				}
				w.mu.Lock()
				w.reads = append(w.reads, r)
				w.mu.Unlock()
				time.Sleep(time.Millisecond)
			}
		}()
	}
}

func (w *workload) halt() {
	close(w.stop)
	w.wg.Wait()
}

// ackedSince counts writes acknowledged at or after t.
func (w *workload) ackedSince(t time.Time) int {
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

// firstAckAfter is the first acknowledgement at or after t (zero if none).
func (w *workload) firstAckAfter(t time.Time) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	var first time.Time
	for _, at := range w.acked {
		if !at.Before(t) && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	return first
}

// verdict is what the database holds compared with what the clients saw.
type verdict struct {
	acked, unknown, failed int
	lost                   int // acknowledged but absent
	dup                    int // ids stored more than once
	unknownStored          int // ErrCommitUnknown writes that were in fact committed
	unflaggedStored        int // writes that returned another error but were stored
	unflaggedErrs          []string
	readsOK, readsFailed   int
	readsByNode            map[int]int
	readErrs               []string
}

// check counts the ids stored on node i (the current primary).
func (w *workload) check(t *testing.T, c *pgcluster.Cluster, i int, readsFrom, readsTo time.Time) verdict {
	t.Helper()
	stored, err := c.IDCounts(t.Context(), i, w.table)
	require.NoError(t, err)

	w.mu.Lock()
	defer w.mu.Unlock()
	v := verdict{acked: len(w.acked), unknown: len(w.unknown), failed: len(w.failed), readsByNode: map[int]int{}}
	for _, n := range stored {
		if n > 1 {
			v.dup++
		}
	}
	for id := range w.acked {
		if stored[id] == 0 {
			v.lost++
		}
	}
	for id := range w.unknown {
		if stored[id] > 0 {
			v.unknownStored++
		}
	}
	for id, err := range w.failed {
		if stored[id] > 0 {
			v.unflaggedStored++
		}
		if len(v.unflaggedErrs) < 5 {
			v.unflaggedErrs = append(v.unflaggedErrs, err.Error())
		}
	}
	for _, r := range w.reads {
		if r.at.Before(readsFrom) || r.at.After(readsTo) {
			continue
		}
		if r.err != nil {
			v.readsFailed++
			if len(v.readErrs) < 5 {
				v.readErrs = append(v.readErrs, r.err.Error())
			}
			continue
		}
		v.readsOK++
		v.readsByNode[r.node]++
	}
	sort.Strings(v.unflaggedErrs)
	return v
}

func (v verdict) String() string {
	return fmt.Sprintf("acked=%d unknown=%d (stored %d) failed=%d (stored %d) lost=%d dup=%d reads ok=%d failed=%d by node=%v",
		v.acked, v.unknown, v.unknownStored, v.failed, v.unflaggedStored, v.lost, v.dup, v.readsOK, v.readsFailed, v.readsByNode)
}

// describeHealth is a one-line view of the topology, for failure messages.
func describeHealth(h unified.Health) string {
	s := fmt.Sprintf("primary=%q age=%v", h.Primary, h.Age.Round(time.Millisecond))
	for _, n := range h.Nodes {
		s += fmt.Sprintf(" [%s %s %s breaker=%s lag=%v/%dB err=%q]", n.Name, n.Role, n.State, n.Breaker, n.Lag, n.LagBytes, n.LastError)
	}
	return s
}
