package unified_test

// Benchmarks of read-your-writes sessions on the local cluster: what a
// session costs a write, and how many session reads the replicas serve.
//
//	go test -run '^$' -bench 'Session' -benchtime 2000x .

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// benchSessionDB opens a unified DB over the cluster with a table of its
// own, warmed up (every node probed, a connection per role).
func benchSessionDB(b *testing.B, table string) (*pgcluster.Cluster, *sql.DB) {
	b.Helper()
	c := pgcluster.Need(b, cluster)
	ctx := context.Background()
	p, err := c.Primary(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Exec(ctx, p, "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+" (id bigint)"); err != nil {
		b.Fatal(err)
	}
	db, err := sql.Open("unified", c.DSN())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = db.Close()
		_ = c.Exec(context.Background(), p, "DROP TABLE IF EXISTS "+table)
	})
	db.SetMaxIdleConns(16)
	if _, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES (0)"); err != nil {
		b.Fatal(err)
	}
	return c, db
}

// BenchmarkSessionWrite: an autocommit INSERT and a one-INSERT transaction,
// with and without a session. An autocommit write with a session runs one
// more statement (its floor); a COMMIT learns it in the same round trip.
func BenchmarkSessionWrite(b *testing.B) {
	_, db := benchSessionDB(b, "bench_session_write")
	for _, kind := range []string{"autocommit", "transaction"} {
		for _, with := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/session=%v", kind, with), func(b *testing.B) {
				ctx := context.Background()
				if with {
					ctx = unified.WithSession(ctx, unified.NewSession())
				}
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					var err error
					if kind == "autocommit" {
						_, err = db.ExecContext(ctx, "INSERT INTO bench_session_write VALUES ($1)", i)
					} else {
						var tx *sql.Tx
						if tx, err = db.BeginTx(ctx, nil); err == nil {
							if _, err = tx.ExecContext(ctx, "INSERT INTO bench_session_write VALUES ($1)", i); err == nil {
								err = tx.Commit()
							}
						}
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

var benchSessionIDs atomic.Int64

// BenchmarkSessionReadShare: 8 workers each write a row and read it back
// through a session, at once or 20 ms later; replica-share is the share of
// those reads the replicas served (the rest went to the primary, read-only).
func BenchmarkSessionReadShare(b *testing.B) {
	_, db := benchSessionDB(b, "bench_session_share")
	conn, _ := unified.ConnectorOf(db)
	for _, after := range []time.Duration{0, 5 * time.Millisecond, 20 * time.Millisecond} {
		b.Run(fmt.Sprintf("read-after=%v", after), func(b *testing.B) {
			before := conn.Stats()
			var done atomic.Int64
			var wg sync.WaitGroup
			n := int64(b.N)
			start := time.Now()
			for range 8 {
				wg.Go(func() {
					ctx := unified.WithSession(context.Background(), unified.NewSession())
					ro := unified.WithMode(ctx, unified.ReadOnly)
					for done.Add(1) <= n {
						id := benchSessionIDs.Add(1) // unique across the benchmark's runs
						if _, err := db.ExecContext(ctx, "INSERT INTO bench_session_share VALUES ($1)", id); err != nil {
							b.Error(err)
							return
						}
						time.Sleep(after)
						var k int
						if err := db.QueryRowContext(ro, "SELECT count(*) FROM bench_session_share WHERE id = $1", id).Scan(&k); err != nil || k != 1 {
							b.Errorf("read of %d: %d rows, %v", id, k, err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N), "ns/op")
			s := conn.Stats()
			replica := s.SessionReadsReplica - before.SessionReadsReplica
			total := replica + s.SessionReadsPrimary - before.SessionReadsPrimary
			if total > 0 {
				b.ReportMetric(float64(replica)/float64(total), "replica-share")
			}
		})
	}
}
