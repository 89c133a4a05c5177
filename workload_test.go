package unified_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/pgcluster"
	wl "github.com/unifiedsql/unified/internal/workload"
)

// workload runs the failover workload of internal/workload (concurrent
// writers of unique ids, ReadOnly readers) against one unified DB.
type workload struct {
	db    *sql.DB
	table string
	ports map[int]int // port -> node index
	run   *wl.Run
}

func newWorkload(t *testing.T, db *sql.DB, c *pgcluster.Cluster, table string) *workload {
	t.Helper()
	require.NoError(t, wl.CreateTable(t.Context(), db, table))
	return &workload{db: db, table: table, ports: portsOf(c)}
}

// start launches the writers and readers; each write may wait up to
// writeTimeout (for a failover), each read up to 2 s.
func (w *workload) start(writers, readers int, writeTimeout time.Duration) {
	w.run = wl.Start(context.Background(), w.db, w.db, wl.Config{
		Table: w.table, Writers: writers, Readers: readers,
		WriteTimeout: writeTimeout, ReadTimeout: 2 * time.Second, ReadPause: time.Millisecond,
		Nodes: w.ports, ReadErrorTopology: true,
	})
}

func (w *workload) halt() { w.run.Stop() }

// ackedSince counts writes acknowledged at or after t.
func (w *workload) ackedSince(t time.Time) int { return w.run.AckedSince(t) }

// firstAckAfter is the first acknowledgement at or after t (zero if none).
func (w *workload) firstAckAfter(t time.Time) time.Time { return w.run.FirstAckAfter(t) }

// verdict is wl.Verdict under the names the scenarios in failover_test.go
// use.
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

// check judges the outcomes against the ids stored on node i (the current
// primary), counting the reads between readsFrom and readsTo.
func (w *workload) check(t *testing.T, c *pgcluster.Cluster, i int, readsFrom, readsTo time.Time) verdict {
	t.Helper()
	stored, err := wl.IDCounts(t.Context(), c.Node(i).DSN(), w.table)
	require.NoError(t, err)
	v := wl.Judge(w.run.Outcomes(), stored, readsFrom, readsTo)
	return verdict{
		acked: v.Acked, unknown: v.Unknown, failed: v.Failed, lost: v.Lost, dup: v.Duplicates,
		unknownStored: v.UnknownStored, unflaggedStored: v.FailedStored, unflaggedErrs: v.FailedErrors,
		readsOK: v.ReadsOK, readsFailed: v.ReadsFailed, readsByNode: v.ReadsByNode, readErrs: v.ReadErrors,
	}
}

func (v verdict) String() string {
	return fmt.Sprintf("acked=%d unknown=%d (stored %d) failed=%d (stored %d) lost=%d dup=%d reads ok=%d failed=%d by node=%v",
		v.acked, v.unknown, v.unknownStored, v.failed, v.unflaggedStored, v.lost, v.dup, v.readsOK, v.readsFailed, v.readsByNode)
}
