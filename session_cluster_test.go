package unified_test

// Read your own writes from replicas (DESIGN.md §8, invariant 10: a
// session's reads never see less than its own writes), on the real
// cluster.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// delayReplay makes every replica apply commits d late
// (recovery_min_apply_delay), so that reads right after a write are stale
// on them for certain; undone at the end of the test.
func delayReplay(t *testing.T, c *pgcluster.Cluster, d time.Duration) {
	t.Helper()
	ctx := t.Context()
	p, err := c.Primary(ctx)
	require.NoError(t, err)
	set := func(val string) error {
		for _, j := range c.Others(p) {
			if err := c.Exec(ctx, j, "ALTER SYSTEM SET recovery_min_apply_delay = '"+val+"'"); err != nil {
				return err
			}
			if err := c.Exec(ctx, j, "SELECT pg_reload_conf()"); err != nil {
				return err
			}
		}
		return nil
	}
	require.NoError(t, set(fmt.Sprintf("%dms", d.Milliseconds())))
	t.Cleanup(func() {
		for _, j := range c.Others(p) {
			_ = c.Exec(context.Background(), j, "ALTER SYSTEM RESET recovery_min_apply_delay")
			_ = c.Exec(context.Background(), j, "SELECT pg_reload_conf()")
		}
	})
}

// writeThenRead runs workers that each insert a row and read it back at
// once in ReadOnly mode, with a session of their own when withSession; it
// returns how many reads missed their own write, of how many.
func writeThenRead(t *testing.T, db *sql.DB, table string, withSession bool, workers, each int) (stale, total int) {
	t.Helper()
	var staleN, totalN atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			ctx := t.Context()
			if withSession {
				ctx = unified.WithSession(ctx, unified.NewSession())
			}
			ro := unified.WithMode(ctx, unified.ReadOnly)
			for k := range each {
				id := w*1_000_000 + k
				if _, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", id); err != nil {
					t.Error(err)
					return
				}
				var n int
				if err := db.QueryRowContext(ro, "SELECT count(*) FROM "+table+" WHERE id = $1", id).Scan(&n); err != nil {
					t.Error(err)
					return
				}
				totalN.Add(1)
				if n == 0 {
					staleN.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return int(staleN.Load()), int(totalN.Load())
}

// Under write load, a worker that writes and reads back at once through a
// session never misses its write; without a session it does (the replicas
// apply commits 30 ms late here), so the test can fail.
func TestSessionReadsItsOwnWrites(t *testing.T) {
	const table = "session_own_writes"
	c, _ := faultable(t, table)
	delayReplay(t, c, 30*time.Millisecond)
	db := openUnified(t, c, haParams...)
	conn, _ := unified.ConnectorOf(db)

	stale, total := writeThenRead(t, db, table, false, 8, 25)
	t.Logf("without a session: %d of %d reads missed their own write", stale, total)
	require.Positive(t, stale, "the replicas lag: without a session reads are stale")

	before := conn.Stats()
	stale, total = writeThenRead(t, db, table, true, 8, 25)
	after := conn.Stats()
	t.Logf("with a session: %d of %d reads missed their own write; served by replicas %d, by the primary %d",
		stale, total, after.SessionReadsReplica-before.SessionReadsReplica, after.SessionReadsPrimary-before.SessionReadsPrimary)
	assert.Zero(t, stale, "a session reads its own writes")
	assert.Equal(t, uint64(total), after.SessionReadsReplica-before.SessionReadsReplica+after.SessionReadsPrimary-before.SessionReadsPrimary)
}

// Reads issued some time after the write are served by replicas that have
// replayed it (no artificial delay here).
func TestSessionReadsGoToReplicasOnceReplayed(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	ctx := t.Context()
	const table = "session_replicas"
	newTable(t, c, table)
	db := openUnified(t, c)
	conn, _ := unified.ConnectorOf(db)
	sess := unified.NewSession()
	sctx := unified.WithSession(ctx, sess)
	ro := unified.WithMode(sctx, unified.ReadOnly)
	before := conn.Stats()
	for k := range 50 {
		_, err := db.ExecContext(sctx, "INSERT INTO "+table+" VALUES ($1)", k)
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
		var n int
		require.NoError(t, db.QueryRowContext(ro, "SELECT count(*) FROM "+table+" WHERE id = $1", k).Scan(&n))
		require.Equal(t, 1, n)
	}
	after := conn.Stats()
	onReplicas := after.SessionReadsReplica - before.SessionReadsReplica
	t.Logf("reads 20 ms after their write served by replicas: %d of 50", onReplicas)
	assert.GreaterOrEqual(t, onReplicas, uint64(40), "at least 80 %% of them")
}

// A transaction begun with a plain BEGIN statement on a sql.Conn, with a
// session in the context: the driver sends nothing inside it (SET
// TRANSACTION must be its first statement, or PostgreSQL refuses it with
// 25001), and its COMMIT raises the floor, so the session then reads the
// row.
func TestSessionCallersOwnBeginBlock(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	const table = "session_own_begin"
	newTable(t, c, table)
	delayReplay(t, c, 200*time.Millisecond) // so that the last read can fail
	db := openUnified(t, c)
	sess := unified.NewSession()
	ctx := unified.WithSession(t.Context(), sess)
	conn := sqlConn(t, ctx, db)
	for _, q := range []string{"BEGIN", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "INSERT INTO " + table + " VALUES (1)"} {
		_, err := conn.ExecContext(ctx, q)
		require.NoError(t, err, q)
	}
	var iso string
	require.NoError(t, conn.QueryRowContext(ctx, "SHOW transaction_isolation").Scan(&iso))
	assert.Equal(t, "serializable", iso)
	_, err := conn.ExecContext(ctx, "COMMIT")
	require.NoError(t, err)
	var n int
	require.NoError(t, db.QueryRowContext(unified.WithMode(ctx, unified.ReadOnly), "SELECT count(*) FROM "+table).Scan(&n))
	assert.Equal(t, 1, n, "the session reads the committed row")
}

// A token carries the session to another *sql.DB (another process).
func TestSessionTokenToAnotherDB(t *testing.T) {
	const table = "session_token"
	c, _ := faultable(t, table)
	ctx := t.Context()
	delayReplay(t, c, 200*time.Millisecond)
	writer := openUnified(t, c)
	reader := openUnified(t, c)
	for k := range 10 {
		sess := unified.NewSession()
		_, err := writer.ExecContext(unified.WithSession(ctx, sess), "INSERT INTO "+table+" VALUES ($1)", k)
		require.NoError(t, err)
		tok := sess.Token()
		require.NotEmpty(t, tok)
		got, err := unified.ParseSession(tok)
		require.NoError(t, err)
		var n int
		require.NoError(t, reader.QueryRowContext(unified.WithMode(unified.WithSession(ctx, got), unified.ReadOnly),
			"SELECT count(*) FROM "+table+" WHERE id = $1", k).Scan(&n))
		assert.Equal(t, 1, n, "the other DB reads the write the token names")
	}
	// A transaction's COMMIT raises the floor too.
	sess := unified.NewSession()
	tx, err := writer.BeginTx(unified.WithSession(ctx, sess), nil)
	require.NoError(t, err)
	_, err = tx.ExecContext(ctx, "INSERT INTO "+table+" VALUES (100)")
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	got, err := unified.ParseSession(sess.Token())
	require.NoError(t, err)
	var n int
	require.NoError(t, reader.QueryRowContext(unified.WithMode(unified.WithSession(ctx, got), unified.ReadOnly),
		"SELECT count(*) FROM "+table+" WHERE id = 100").Scan(&n))
	assert.Equal(t, 1, n)
}

// A failover between the write and the read: the floor is of the old
// timeline, so the read goes to the new primary, which has the write
// (synchronous replication).
func TestSessionAcrossFailover(t *testing.T) {
	const table = "session_failover"
	c, old := faultable(t, table)
	ctx := t.Context()
	require.NoError(t, c.SetSynchronous(ctx, old, true))
	db := openUnified(t, c, haParams...)
	conn, _ := unified.ConnectorOf(db)
	sess := unified.NewSession()
	_, err := db.ExecContext(unified.WithSession(ctx, sess), "INSERT INTO "+table+" VALUES (1)")
	require.NoError(t, err)
	tok := sess.Token()

	require.NoError(t, c.Kill(old))
	cur, _ := failOver(t, c, old)
	waitFor(t, 10*time.Second, func() bool { return conn.Health(ctx).Primary == c.Node(cur).Addr() }, "the new primary")
	got, err := unified.ParseSession(tok)
	require.NoError(t, err)
	before := conn.Stats()
	var n int
	require.NoError(t, db.QueryRowContext(unified.WithMode(unified.WithSession(ctx, got), unified.ReadOnly),
		"SELECT count(*) FROM "+table+" WHERE id = 1").Scan(&n))
	assert.Equal(t, 1, n, "the read sees the write made before the failover")
	assert.Equal(t, before.SessionReadsPrimary+1, conn.Stats().SessionReadsPrimary, "served by the new primary: no replica can be known to have it")
}

// SessionHandler in a real HTTP round trip: the token comes back in the
// response header and a follow-up request reads its write.
func TestSessionHandlerRoundTrip(t *testing.T) {
	const table = "session_http"
	c, _ := faultable(t, table)
	delayReplay(t, c, 200*time.Millisecond)
	db := openUnified(t, c)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		if _, err := db.ExecContext(r.Context(), "INSERT INTO "+table+" VALUES ($1)", r.PathValue("id")); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		var n int
		err := db.QueryRowContext(unified.WithMode(r.Context(), unified.ReadOnly), "SELECT count(*) FROM "+table+" WHERE id = $1", r.PathValue("id")).Scan(&n)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		_, _ = io.WriteString(w, strconv.Itoa(n))
	})
	srv := httptest.NewServer(unified.SessionHandler(mux))
	defer srv.Close()

	for id := range 5 {
		resp, err := http.Post(srv.URL+"/items/"+strconv.Itoa(id), "text/plain", nil)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		tok := resp.Header.Get(unified.SessionHeader)
		require.NotEmpty(t, tok, "the response carries the session")

		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/items/"+strconv.Itoa(id), nil)
		req.Header.Set(unified.SessionHeader, tok)
		resp, err = http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, "1", string(body), "the follow-up request reads its write")

		// Without the header the same read (replicas 200 ms late) misses it.
		resp, err = http.Get(srv.URL + "/items/" + strconv.Itoa(id))
		require.NoError(t, err)
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, "0", string(body), "without the session the replica has not replayed it yet")
	}
}

// WithMaxLag bounds a statement's replica lag tighter or looser than
// unified_max_replica_lag.
func TestWithMaxLag(t *testing.T) {
	const table = "with_max_lag"
	c, primary := faultable(t, table)
	ctx := t.Context()
	paused := c.Others(primary)[0]
	db := openUnified(t, c, "unified_health_interval=100ms", "unified_max_replica_lag=1s")
	db.SetMaxIdleConns(0)
	conn, _ := unified.ConnectorOf(db)
	require.NoError(t, c.PauseReplay(ctx, paused))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			_, _ = db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", i)
		}
	})
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(400 * time.Millisecond) // the paused replica is a few hundred ms behind: within 1s
	n, _ := healthOf(conn.Health(ctx), c.Node(paused).Addr())
	require.Equal(t, "up", n.State, "%+v", n)

	onPaused := func(rctx context.Context) int {
		k := 0
		for range 20 {
			var port int
			require.NoError(t, db.QueryRowContext(rctx, "SELECT inet_server_port()").Scan(&port))
			if port == c.Node(paused).Port {
				k++
			}
		}
		return k
	}
	ro := unified.WithMode(ctx, unified.ReadOnly)
	assert.Positive(t, onPaused(ro), "within the Connector's bound the paused replica serves reads")
	assert.Zero(t, onPaused(unified.WithMaxLag(ro, 50*time.Millisecond)), "a tighter bound keeps them off it")

	waitFor(t, 10*time.Second, func() bool {
		n, _ := healthOf(conn.Health(ctx), c.Node(paused).Addr())
		return n.State == "lagging"
	}, "the paused replica to fall past 1s")
	assert.Zero(t, onPaused(ro), "past the Connector's bound: no reads")
	assert.Positive(t, onPaused(unified.WithMaxLag(ro, time.Hour)), "a looser bound lets them back")
	require.NoError(t, c.ResumeReplay(ctx, paused))
}

func TestParseSessionErrors(t *testing.T) {
	for _, tok := range []string{"x", "AAAA", "!!!!!!!!!!!!!!!!!!!!!!!!!!!!", "AgAAAAEAAAAAAAAAAQAAAAAAAAAA"} {
		_, err := unified.ParseSession(tok)
		require.Error(t, err, tok)
		assert.True(t, errors.Is(err, unified.ErrBadSession), err.Error())
	}
	s, err := unified.ParseSession("")
	require.NoError(t, err)
	assert.Equal(t, "", s.Token(), "empty in, empty out")
}
