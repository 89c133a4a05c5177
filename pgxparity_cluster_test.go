package unified_test

// Sessions and outcomes as pgx keeps them (DESIGN.md §2, invariants 3-5 and
// 9). Where pgx defines the behaviour, the same steps run through
// sql.Open("pgx", ...) straight to the primary as the reference, and
// unified must give the same answer.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/faultproxy"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// primaryAdmin is a plain pgx connection to the cluster's primary, for the
// ground truth and for what another client does.
func primaryAdmin(t *testing.T, c *pgcluster.Cluster) *pgx.Conn {
	t.Helper()
	p, err := c.Primary(t.Context())
	require.NoError(t, err)
	conn, err := c.Connect(t.Context(), p)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// lockedSession takes a connection of db that holds the advisory lock
// lock, closed at the end of the test, and its backend's pid.
func lockedSession(t *testing.T, db *sql.DB, lock int) (*sql.Conn, int) {
	t.Helper()
	ctx := t.Context()
	conn := sqlConn(t, ctx, db)
	var pid int
	require.NoError(t, conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid))
	_, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", lock)
	require.NoError(t, err)
	return conn, pid
}

// waitBackendGone waits until the server backend pid has exited.
func waitBackendGone(t *testing.T, admin *pgx.Conn, pid int) {
	t.Helper()
	waitFor(t, 5*time.Second, func() bool {
		var n int
		_ = admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n)
		return n == 0
	}, "backend %d to exit", pid)
}

func countRows(t *testing.T, admin *pgx.Conn, table string) int {
	t.Helper()
	var n int
	require.NoError(t, admin.QueryRow(t.Context(), "SELECT count(*) FROM "+table).Scan(&n))
	return n
}

// proxiedPrimary starts a fault proxy in front of the primary and returns
// it with a one-host DSN through it (sslmode=disable, so it can cut).
func proxiedPrimary(t *testing.T, c *pgcluster.Cluster, params ...string) (*faultproxy.Proxy, string) {
	t.Helper()
	p, err := c.Primary(t.Context())
	require.NoError(t, err)
	px, err := faultproxy.New(c.Node(p).Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = px.Close() })
	dsn := "postgres://postgres@" + px.Addr() + "/postgres?sslmode=disable"
	if len(params) > 0 {
		dsn += "&" + strings.Join(params, "&")
	}
	return px, dsn
}

// A transaction opened with a plain BEGIN statement whose session the server
// killed (idle_in_transaction_session_timeout) must not go on, on a new
// session, as if nothing happened: pgx fails the next INSERT and the COMMIT.
func TestPlainBeginOnKilledSessionFails(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	admin := primaryAdmin(t, c)
	bothDrivers(t, "id int", func(t *testing.T, db *sql.DB, table string) {
		ctx := t.Context()
		conn := sqlConn(t, ctx, db)
		_, err := conn.ExecContext(ctx, "SET idle_in_transaction_session_timeout = '200ms'")
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, "BEGIN")
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)")
		require.NoError(t, err)
		time.Sleep(700 * time.Millisecond) // the server ends the session

		_, errInsert := conn.ExecContext(ctx, "INSERT INTO "+table+" VALUES (2)")
		_, errCommit := conn.ExecContext(ctx, "COMMIT")
		assert.Error(t, errInsert, "the INSERT after the session died fails")
		assert.Error(t, errCommit, "the COMMIT of a transaction whose session died fails")
		assert.Zero(t, countRows(t, admin, table), "nothing of the transaction is stored")
	})
}

// A NOTIFY that arrives on an idle session that ran LISTEN leaves it the
// same server session: same backend, same settings, the advisory lock
// still held.
func TestNotifyOnIdleSessionKeepsTheSession(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	admin := primaryAdmin(t, c)
	bothDrivers(t, "", func(t *testing.T, db *sql.DB, table string) {
		ctx := t.Context()
		const lock = 770001
		conn, pid := lockedSession(t, db, lock)
		_, err := conn.ExecContext(ctx, "SET search_path = pg_catalog")
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, "LISTEN "+table)
		require.NoError(t, err)

		for i := range 3 {
			_, err = admin.Exec(ctx, "NOTIFY "+table+", 'n"+fmt.Sprint(i)+"'")
			require.NoError(t, err)
			time.Sleep(50 * time.Millisecond) // the connection sits idle with unread bytes

			var pidNow int
			require.NoError(t, conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pidNow))
			assert.Equal(t, pid, pidNow, "the same backend after NOTIFY %d", i)
			var path string
			require.NoError(t, conn.QueryRowContext(ctx, "SHOW search_path").Scan(&path))
			assert.Equal(t, "pg_catalog", path, "the session's settings are kept")
			var got bool
			require.NoError(t, admin.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", lock).Scan(&got))
			assert.False(t, got, "another client cannot take the lock the session holds")
		}
		_, err = conn.ExecContext(ctx, "SELECT pg_advisory_unlock_all()")
		require.NoError(t, err)
	})
}

// A session terminated by the server (pg_terminate_backend) fails Ping with
// driver.ErrBadConn, as pgx's does, and the sql.Conn is done: nothing runs
// on a new session that does not hold the old one's lock.
func TestTerminatedSessionFailsPing(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	admin := primaryAdmin(t, c)
	bothDrivers(t, "", func(t *testing.T, db *sql.DB, _ string) {
		ctx := t.Context()
		const lock = 770002
		conn, pid := lockedSession(t, db, lock)
		_, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1)", pid)
		require.NoError(t, err)
		waitBackendGone(t, admin, pid)

		err = conn.PingContext(ctx)
		assert.ErrorIs(t, err, driver.ErrBadConn, "the first Ping reports the lost session")
		assert.Error(t, conn.PingContext(ctx), "and so does the next")
		var pidNow int
		err = conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pidNow)
		assert.Error(t, err, "no statement runs on a new session (it ran on backend %d)", pidNow)
		var got bool
		require.NoError(t, admin.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", lock).Scan(&got))
		require.True(t, got, "the server released the lock of the terminated session")
		_, err = admin.Exec(ctx, "SELECT pg_advisory_unlock($1)", lock)
		require.NoError(t, err)
	})
}

// A Ping whose connection is cut after it was sent reports
// driver.ErrBadConn (what pgx returns and Conn.Ping's doc promises), and
// the sql.Conn's next statement does not run on a new backend.
func TestCutPingIsErrBadConn(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	for _, name := range []string{"pgx", "unified"} {
		t.Run(name, func(t *testing.T) {
			px, dsn := proxiedPrimary(t, c)
			db, err := sql.Open(name, dsn)
			require.NoError(t, err)
			defer db.Close()
			ctx := t.Context()
			conn, err := db.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			require.NoError(t, conn.PingContext(ctx))
			px.CutAfter(func(q string) bool { return q == "-- ping" })
			err = conn.PingContext(ctx)
			assert.ErrorIs(t, err, driver.ErrBadConn)
			assert.Equal(t, 1, px.Cuts(), "the ping was sent and cut")
			var one int
			assert.Error(t, conn.QueryRowContext(ctx, "SELECT 1").Scan(&one), "the sql.Conn is done")
		})
	}
}

// An INSERT ... RETURNING whose connection breaks while its rows are read,
// after the server committed it, returns an error wrapping
// ErrCommitUnknown from Rows, never a bare network error a caller would
// retry. pgx returns the bare error: the reference shows the rows are in
// fact stored.
func TestInsertReturningCutWhileReadingRows(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	admin := primaryAdmin(t, c)
	for _, name := range []string{"pgx", "unified"} {
		t.Run(name, func(t *testing.T) {
			px, dsn := proxiedPrimary(t, c)
			db, err := sql.Open(name, dsn)
			require.NoError(t, err)
			defer db.Close()
			ctx := t.Context()
			table := "returning_cut_" + name
			_, err = admin.Exec(ctx, "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+" (id int, pad text)")
			require.NoError(t, err)
			t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) })

			insert := "INSERT INTO " + table + " SELECT g, repeat('x', 200) FROM generate_series(1, 300) g RETURNING id, pad"
			px.CutAfterReply(func(q string) bool { return q == insert }, 4096)
			rows, err := db.QueryContext(ctx, insert)
			read := 0
			if err == nil {
				for rows.Next() {
					read++
				}
				err = rows.Err()
				_ = rows.Close()
			}
			require.Error(t, err, "the connection broke while the rows were read")
			assert.Equal(t, 1, px.Cuts())
			assert.Positive(t, read, "rows reached the caller before the break")
			assert.Less(t, read, 300)
			assert.Equal(t, 300, countRows(t, admin, table), "the server committed the INSERT")
			if name == "unified" {
				assert.ErrorIs(t, err, unified.ErrCommitUnknown, "%v", err)
				assert.NotErrorIs(t, err, driver.ErrBadConn)
			} else {
				t.Logf("pgx: %d rows read, then %v (not flagged)", read, err)
			}
		})
	}
}

// pgx's "conn busy" (a statement on a transaction's connection while its
// rows are still open) is the caller's mistake: only that statement fails;
// the rows, the connection and the transaction live on.
func TestConnBusyFailsOnlyThatStatement(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	admin := primaryAdmin(t, c)
	bothDrivers(t, "id int", func(t *testing.T, db *sql.DB, table string) {
		ctx := t.Context()
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		rows, err := tx.QueryContext(ctx, "SELECT g FROM generate_series(1, 5) g")
		require.NoError(t, err)
		require.True(t, rows.Next())
		_, err = tx.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)")
		assert.Error(t, err, "the connection is busy with the open rows")
		n := 1
		for rows.Next() {
			n++
		}
		require.NoError(t, rows.Err(), "the open rows survive")
		assert.Equal(t, 5, n)
		require.NoError(t, rows.Close())
		_, err = tx.ExecContext(ctx, "INSERT INTO "+table+" VALUES (2)")
		require.NoError(t, err)
		require.NoError(t, tx.Commit())
		assert.Equal(t, 1, countRows(t, admin, table))
	})
}

// A ReadOnly statement that falls back to the primary runs read-only for
// every node connector, WithNodeConnector's too.
func TestFallbackReadIsReadOnlyWithNodeConnector(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	admin := primaryAdmin(t, c)
	p, err := c.Primary(t.Context())
	require.NoError(t, err)
	cfg, err := unified.ParseConfig(c.Node(p).DSN() + "&unified_read_fallback=primary")
	require.NoError(t, err)
	nodes := cfg.Nodes()
	require.Len(t, nodes, 1)
	pgxCfg, err := pgx.ParseConfig(c.Node(p).DSN())
	require.NoError(t, err)
	db, err := unified.OpenDB(cfg, unified.WithNodeConnector(nodes[0].Name, stdlib.GetConnector(*pgxCfg)))
	require.NoError(t, err)
	defer db.Close()
	ctx := t.Context()
	table := "fallback_read_only"
	_, err = admin.Exec(ctx, "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+" (id int)")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) })

	ro := unified.WithMode(ctx, unified.ReadOnly)
	var pgErr *pgconn.PgError
	_, err = db.ExecContext(ro, "INSERT INTO "+table+" VALUES (1)")
	require.ErrorAs(t, err, &pgErr, "an autocommit write in ReadOnly mode fails on the primary fallback")
	assert.Equal(t, "25006", pgErr.Code)

	tx, err := db.BeginTx(ro, nil)
	require.NoError(t, err)
	_, err = tx.ExecContext(ro, "INSERT INTO "+table+" VALUES (2)")
	require.ErrorAs(t, err, &pgErr, "a write in a ReadOnly transaction fails on the primary fallback")
	assert.Equal(t, "25006", pgErr.Code)
	_ = tx.Rollback()

	var n int
	require.NoError(t, db.QueryRowContext(ro, "SELECT count(*) FROM "+table).Scan(&n), "reads work")
	assert.Zero(t, countRows(t, admin, table))
	_, err = db.ExecContext(ctx, "INSERT INTO "+table+" VALUES (3)")
	require.NoError(t, err, "a write without a mode goes to the primary read-write")
}

// sql.TxOptions{ReadOnly: true} with no mode is a read-only transaction on
// the primary session, as with pgx: it sees the session's temporary tables
// and its own writes.
func TestReadOnlyTxOptionsWithoutModeStayOnTheSession(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	primary, err := c.Primary(t.Context())
	require.NoError(t, err)
	bothDrivers(t, "id int", func(t *testing.T, db *sql.DB, table string) {
		ctx := t.Context()
		conn := sqlConn(t, ctx, db)
		_, err = conn.ExecContext(ctx, "CREATE TEMP TABLE "+table+"_tmp (id int)")
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, "INSERT INTO "+table+"_tmp VALUES (1)")
		require.NoError(t, err)
		tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		require.NoError(t, err)
		defer tx.Rollback()
		var n int
		require.NoError(t, tx.QueryRowContext(ctx, "SELECT count(*) FROM "+table+"_tmp").Scan(&n))
		assert.Equal(t, 1, n, "the transaction sees the session's temporary table and its write")
		assert.Equal(t, c.Node(primary).Port, serverPort(t, ctx, tx))
		// A read-only transaction may write temporary tables, not others.
		_, err = tx.ExecContext(ctx, "INSERT INTO "+table+" VALUES (2)")
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		assert.Equal(t, "25006", pgErr.Code, "the transaction is read-only")
	})
}

// A BEGIN whose connection breaks had no effect: on a connection that has
// not served a statement yet it goes out again, like a write never sent.
func TestBegunOnBrokenConnectionIsSentAgain(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	admin := primaryAdmin(t, c)
	px, dsn := proxiedPrimary(t, c)
	db, err := sql.Open("unified", dsn)
	require.NoError(t, err)
	defer db.Close()
	ctx := t.Context()
	table := "begin_cut"
	_, err = admin.Exec(ctx, "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+" (id int)")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) })

	for i, warm := range []bool{false, true} {
		if warm {
			// A pooled connection that has served a statement: database/sql
			// moves the BEGIN to another connection.
			require.NoError(t, db.PingContext(ctx))
		}
		px.CutAfter(func(q string) bool { return strings.EqualFold(strings.TrimSpace(q), "begin") })
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err, "BEGIN is sent again after its connection broke (warm pool: %v)", warm)
		assert.Equal(t, i+1, px.Cuts())
		_, err = tx.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1)", i)
		require.NoError(t, err)
		require.NoError(t, tx.Commit())
	}
	assert.Equal(t, 2, countRows(t, admin, table))
}

// A server error is the value pgx returns (a *pgconn.PgError, or pgx's
// *pgconn.PrepareError around one when the statement failed to prepare),
// not wrapped, so code that type-asserts it (GORM's postgres dialect)
// works.
func TestServerErrorIsPgxValue(t *testing.T) {
	types := map[string][]string{}
	bothDrivers(t, "id int PRIMARY KEY", func(t *testing.T, db *sql.DB, table string) {
		ctx := t.Context()
		driverName := t.Name()[strings.LastIndex(t.Name(), "/")+1:]
		_, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)")
		require.NoError(t, err)
		_, err = db.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)")
		pgErr, ok := err.(*pgconn.PgError)
		require.True(t, ok, "a unique violation is a *pgconn.PgError, not wrapped: %T %v", err, err)
		assert.Equal(t, "23505", pgErr.Code)
		got := []string{fmt.Sprintf("%T", err)}

		err = db.QueryRowContext(ctx, "SELECT * FROM "+table+"_missing").Scan(new(int))
		got = append(got, fmt.Sprintf("%T", err))
		var pe *pgconn.PgError
		require.ErrorAs(t, err, &pe)
		assert.Equal(t, "42P01", pe.Code)

		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = tx.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)")
		got = append(got, fmt.Sprintf("%T", err))
		_ = tx.Rollback()
		types[driverName] = got
	})
	require.Len(t, types, 2)
	assert.Equal(t, types["pgx"], types["unified"], "unified returns the error types pgx returns")
}

// Operations on a closed Connector fail with ErrClosed.
func TestClosedConnectorErrClosed(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	cfg, err := unified.ParseConfig(c.DSN())
	require.NoError(t, err)
	conn, err := unified.NewConnector(cfg)
	require.NoError(t, err)
	db := sql.OpenDB(conn)
	require.NoError(t, db.PingContext(t.Context()))
	require.NoError(t, db.Close())
	_, err = conn.Connect(t.Context())
	assert.ErrorIs(t, err, unified.ErrClosed)
	assert.True(t, strings.HasPrefix(err.Error(), "unified: "), err.Error())
}

// panicValuer panics when pgx encodes it, inside the statement.
type panicValuer struct{}

func (panicValuer) Value() (driver.Value, error) { panic("boom") }

// A Batch statement that panics inside the node driver gives its bulkhead
// slot back.
func TestBatchSlotReleasedOnPanic(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	db := openUnified(t, c, "unified_max_batch_conns=1")
	tctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ctx := unified.WithMode(tctx, unified.Batch)
	for _, run := range []func() error{
		func() error { _, err := db.QueryContext(ctx, "SELECT $1::text", panicValuer{}); return err },
		func() error { _, err := db.ExecContext(ctx, "SELECT $1::text", panicValuer{}); return err },
	} {
		func() {
			defer func() { _ = recover() }()
			_ = run()
		}()
	}
	_, err := db.ExecContext(ctx, "SELECT 1")
	require.NoError(t, err, "the slot is free again")
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback())
}

// A multi-statement string whose first statement takes an advisory lock
// and whose second fails leaves the lock held by the session: when the
// server then terminates that session, the sql.Conn's next statement
// fails, as pgx's does, instead of running on a new session that holds no
// lock.
func TestFailedStatementKeepsTheSession(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	admin := primaryAdmin(t, c)
	bothDrivers(t, "", func(t *testing.T, db *sql.DB, _ string) {
		ctx := t.Context()
		conn := sqlConn(t, ctx, db)
		// The session's first statement: nothing else made it the user's.
		_, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(770003); SELECT 1/0")
		require.Error(t, err, "division by zero")
		var pid int
		require.NoError(t, admin.QueryRow(ctx, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 770003").Scan(&pid),
			"the session holds the lock")
		_, err = admin.Exec(ctx, "SELECT pg_terminate_backend($1)", pid)
		require.NoError(t, err)
		waitBackendGone(t, admin, pid)
		var pidNow int
		err = conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pidNow)
		assert.Error(t, err, "no statement runs on a new session (it ran on backend %d)", pidNow)
	})
}
