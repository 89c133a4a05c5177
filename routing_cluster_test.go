package unified_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// restoreAfter puts the shared cluster back in shape after a test that
// faults it.
func restoreAfter(t *testing.T, c *pgcluster.Cluster) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Restore(ctx); err != nil {
			t.Fatalf("restore cluster: %v", err)
		}
	})
}

// setUp runs setup on db, and teardown once the test is over.
func setUp(t *testing.T, db *sql.DB, setup, teardown string) {
	t.Helper()
	_, err := db.ExecContext(t.Context(), setup)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = db.ExecContext(context.Background(), teardown) })
}

// faultable is the package's cluster for a test that faults it: restored
// after the test. With a table name, a new table of that name, (id int),
// is on the primary and replayed by every replica first. It returns the
// cluster and its primary's index.
func faultable(t *testing.T, table string) (*pgcluster.Cluster, int) {
	t.Helper()
	c := pgcluster.Need(t, cluster)
	restoreAfter(t, c)
	if table != "" {
		newTable(t, c, table)
	}
	primary, err := c.Primary(t.Context())
	require.NoError(t, err)
	return c, primary
}

// portsOf maps each node's port to its index.
func portsOf(c *pgcluster.Cluster) map[int]int {
	m := map[int]int{}
	for i := 0; i < c.Len(); i++ {
		m[c.Node(i).Port] = i
	}
	return m
}

// readSpread runs n ReadOnly queries from `workers` goroutines and returns
// how many landed on each node index.
func readSpread(t *testing.T, db *sql.DB, c *pgcluster.Cluster, workers, n int) map[int]int {
	t.Helper()
	ctx := unified.WithMode(t.Context(), unified.ReadOnly)
	ports := portsOf(c)
	var mu sync.Mutex
	counts := map[int]int{}
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for i := 0; i < n/workers; i++ {
				var port int
				if err := db.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
					failed.Store(err)
					return
				}
				mu.Lock()
				counts[ports[port]]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatalf("read failed: %v", err)
	}
	return counts
}

func TestReadOnlyQueriesGoToReplicas(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	primary, err := c.Primary(t.Context())
	require.NoError(t, err)
	db := openUnified(t, c)
	counts := readSpread(t, db, c, 8, 1000)
	assert.Zero(t, counts[primary], "no read on the primary: %v", counts)
	total := 0
	for i := 0; i < c.Len(); i++ {
		if i == primary {
			continue
		}
		assert.Positive(t, counts[i], "replica %d got no read: %v", i, counts)
		total += counts[i]
	}
	assert.Equal(t, 1000, total)
}

func TestReadOnlyTransactionOnOneReplica(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	primary, err := c.Primary(t.Context())
	require.NoError(t, err)
	db := openUnified(t, c)
	ctx := t.Context()
	for _, begin := range []struct {
		name string
		ctx  context.Context
		opts *sql.TxOptions
	}{
		{"ReadOnly context", unified.WithMode(ctx, unified.ReadOnly), nil},
		{"ReadOnly context and TxOptions.ReadOnly", unified.WithMode(ctx, unified.ReadOnly), &sql.TxOptions{ReadOnly: true}},
	} {
		t.Run(begin.name, func(t *testing.T) {
			tx, err := db.BeginTx(begin.ctx, begin.opts)
			require.NoError(t, err)
			defer tx.Rollback()
			first := serverPort(t, ctx, tx)
			assert.NotEqual(t, c.Node(primary).Port, first)
			for i := 0; i < 10; i++ {
				// A statement's own mode does not move it out of the transaction.
				assert.Equal(t, first, serverPort(t, unified.WithMode(ctx, unified.ReadWrite), tx))
			}
			var inRecovery bool
			require.NoError(t, tx.QueryRowContext(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery))
			assert.True(t, inRecovery)
			require.NoError(t, tx.Commit())
		})
	}
}

func TestWriteInReadOnlyModeFails(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	db := openUnified(t, c)
	ctx := t.Context()
	setUp(t, db, "CREATE TABLE IF NOT EXISTS ro_writes (id int)", "DROP TABLE ro_writes")
	primary, err := c.Primary(ctx)
	require.NoError(t, err)
	require.NoError(t, c.WaitCatchUp(ctx, (primary+1)%3, primary))
	require.NoError(t, c.WaitCatchUp(ctx, (primary+2)%3, primary))

	_, err = db.ExecContext(unified.WithMode(ctx, unified.ReadOnly), "INSERT INTO ro_writes VALUES (1)")
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "25006", pgErr.Code)
	var n int
	require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM ro_writes").Scan(&n))
	assert.Zero(t, n, "nothing was written on the primary")
}

func TestReadsAvoidLaggingReplica(t *testing.T) {
	c, primary := faultable(t, "")
	ctx := t.Context()
	lagging, other := (primary+1)%3, (primary+2)%3
	db := openUnified(t, c, "unified_health_interval=50ms", "unified_max_replica_lag=300ms")
	conn, _ := unified.ConnectorOf(db)
	setUp(t, db, "CREATE TABLE IF NOT EXISTS lag_writes (id serial, at timestamptz default now())", "DROP TABLE lag_writes")

	require.NoError(t, c.PauseReplay(ctx, lagging))
	_, err := db.ExecContext(ctx, "INSERT INTO lag_writes DEFAULT VALUES")
	require.NoError(t, err)
	waitFor(t, 10*time.Second, func() bool {
		return conn.Health(ctx).Nodes[lagging].State == "lagging"
	}, "replica %d to be marked lagging", lagging)
	counts := readSpread(t, db, c, 8, 400)
	assert.Zero(t, counts[lagging], "reads avoid the lagging replica: %v", counts)
	assert.Equal(t, 400, counts[other], "%v", counts)

	require.NoError(t, c.ResumeReplay(ctx, lagging))
	waitFor(t, 10*time.Second, func() bool {
		return conn.Health(ctx).Nodes[lagging].State == "up"
	}, "replica %d to catch up", lagging)
	// New logical connections spread over both replicas again.
	db2 := openUnified(t, c, "unified_health_interval=50ms", "unified_max_replica_lag=300ms")
	counts = readSpread(t, db2, c, 8, 400)
	assert.Positive(t, counts[lagging], "reads are back on the caught-up replica: %v", counts)
}

func TestReadFallbackWhenReplicasDown(t *testing.T) {
	c, primary := faultable(t, "")
	ctx := t.Context()
	fallback := openUnified(t, c, "unified_health_interval=50ms")
	strict := openUnified(t, c, "unified_health_interval=50ms", "unified_read_fallback=error")
	ro := unified.WithMode(ctx, unified.ReadOnly)
	// Warm both up while the replicas are there.
	serverPort(t, ro, fallback)
	serverPort(t, ro, strict)

	for i := 0; i < c.Len(); i++ {
		if i != primary {
			require.NoError(t, c.Stop(i, "fast"))
		}
	}
	fc, _ := unified.ConnectorOf(fallback)
	waitFor(t, 10*time.Second, func() bool {
		h := fc.Health(ctx)
		return h.Nodes[(primary+1)%3].State == "down" && h.Nodes[(primary+2)%3].State == "down"
	}, "replicas marked down")

	for i := 0; i < 20; i++ {
		assert.Equal(t, c.Node(primary).Port, serverPort(t, ro, fallback))
	}
	// The fallback stays read-only: a write in ReadOnly mode still fails.
	_, err := fallback.ExecContext(ro, "CREATE TABLE fallback_write (id int)")
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "25006", pgErr.Code)
	assert.Positive(t, fc.Stats().ReadFallbacks)

	sc, _ := unified.ConnectorOf(strict)
	waitFor(t, 10*time.Second, func() bool {
		h := sc.Health(ctx)
		return h.Nodes[(primary+1)%3].State == "down" && h.Nodes[(primary+2)%3].State == "down"
	}, "replicas marked down")
	var port int
	err = strict.QueryRowContext(ro, "SELECT inet_server_port()").Scan(&port)
	assert.ErrorIs(t, err, unified.ErrNoReplica)
	// Writes are unaffected.
	_, err = strict.ExecContext(ctx, "SELECT 1")
	require.NoError(t, err)
}

func TestBatchBulkhead(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	db := openUnified(t, c, "unified_max_batch_conns=3")
	ctx := unified.WithMode(t.Context(), unified.Batch)
	// Each statement counts the batch statements active on the server,
	// itself included.
	const q = `SELECT /*unified-batch-probe*/ (SELECT count(*) FROM pg_stat_activity
		WHERE state = 'active' AND query LIKE '%unified-batch-probe%' AND pid <> pg_backend_pid()) + 1,
		pg_sleep(0.02)`
	var maxSeen atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Go(func() {
			var active int64
			var sleep string
			if err := db.QueryRowContext(ctx, q).Scan(&active, &sleep); err != nil {
				errs <- err
				return
			}
			for {
				m := maxSeen.Load()
				if active <= m || maxSeen.CompareAndSwap(m, active) {
					break
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.LessOrEqual(t, maxSeen.Load(), int64(3), "never more than unified_max_batch_conns batch statements at once")
	assert.Positive(t, maxSeen.Load())

	// A caller whose deadline passes while waiting for a slot gets a clear error.
	var hold sync.WaitGroup
	release := make(chan struct{})
	for i := 0; i < 3; i++ {
		hold.Add(1)
		go func() {
			defer hold.Done()
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Error(err)
				return
			}
			<-release
			_ = tx.Rollback()
		}()
	}
	waitFor(t, 5*time.Second, func() bool {
		return len(errs) == 0 && batchSlotsTaken(t, db, ctx)
	}, "three batch transactions holding every slot")
	close(release)
	hold.Wait()
}

// batchSlotsTaken reports whether a Batch statement now waits for a slot.
func batchSlotsTaken(t *testing.T, db *sql.DB, ctx context.Context) bool {
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := db.ExecContext(short, "SELECT 1")
	if err == nil {
		return false
	}
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "unified_max_batch_conns=3")
	return true
}

func TestRunTxRetriesSerializationFailure(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	db := openUnified(t, c)
	ctx := t.Context()
	setUp(t, db, "DROP TABLE IF EXISTS runtx_acct, runtx_log; CREATE TABLE runtx_acct (id int PRIMARY KEY, v int); CREATE TABLE runtx_log (attempt int); INSERT INTO runtx_acct VALUES (1, 0)", "DROP TABLE runtx_acct, runtx_log")

	attempts := 0
	err := unified.RunTx(ctx, db, &sql.TxOptions{Isolation: sql.LevelRepeatableRead}, func(tx *sql.Tx) error {
		attempts++
		var v int
		if err := tx.QueryRowContext(ctx, "SELECT v FROM runtx_acct WHERE id = 1").Scan(&v); err != nil {
			return err
		}
		if attempts <= 2 {
			// A concurrent writer commits in between: our update must fail
			// with 40001 under REPEATABLE READ.
			if _, err := db.ExecContext(ctx, "UPDATE runtx_acct SET v = v + 100 WHERE id = 1"); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO runtx_log VALUES ($1)", attempts); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "UPDATE runtx_acct SET v = $1 WHERE id = 1", v+1)
		return err
	})
	require.NoError(t, err)
	assert.Equal(t, 3, attempts)
	var v, logged int
	require.NoError(t, db.QueryRowContext(ctx, "SELECT v FROM runtx_acct WHERE id = 1").Scan(&v))
	require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM runtx_log").Scan(&logged))
	assert.Equal(t, 201, v, "the committed attempt saw both concurrent updates")
	assert.Equal(t, 1, logged, "exactly one attempt committed")

	// A non-retryable error is returned at once, after one attempt.
	attempts = 0
	boom := errors.New("boom")
	err = unified.RunTx(ctx, db, nil, func(tx *sql.Tx) error { attempts++; return boom })
	assert.ErrorIs(t, err, boom)
	assert.Equal(t, 1, attempts)

	// Attempts are bounded by unified_retry_max.
	attempts = 0
	err = unified.RunTx(ctx, db, &sql.TxOptions{Isolation: sql.LevelRepeatableRead}, func(tx *sql.Tx) error {
		attempts++
		var v int
		if err := tx.QueryRowContext(ctx, "SELECT v FROM runtx_acct WHERE id = 1").Scan(&v); err != nil {
			return err
		}
		if _, err := db.ExecContext(ctx, "UPDATE runtx_acct SET v = v + 1 WHERE id = 1"); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "UPDATE runtx_acct SET v = 0 WHERE id = 1")
		return err
	})
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "40001", pgErr.Code)
	assert.Equal(t, 3, attempts)
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, cond func() bool, what string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, fmt.Sprintf(what, args...))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
