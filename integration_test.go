package unified_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// openUnified opens a unified DB over the whole cluster and closes it at
// the end of the test.
func openUnified(t *testing.T, c *pgcluster.Cluster, params ...string) *sql.DB {
	t.Helper()
	db, err := sql.Open("unified", c.DSN(params...))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	return db
}

// bothDrivers runs fn against pgx stdlib straight to the primary (the
// reference) and against unified over the whole cluster: the same
// assertions must hold for both. With columns, each run starts on a new
// table of those columns named table; with "", table is only a name.
func bothDrivers(t *testing.T, columns string, fn func(t *testing.T, db *sql.DB, table string)) {
	c := pgcluster.Need(t, cluster)
	primary, err := c.Primary(t.Context())
	require.NoError(t, err)
	for _, name := range []string{"pgx", "unified"} {
		t.Run(name, func(t *testing.T) {
			var db *sql.DB
			if name == "pgx" {
				db, err = sql.Open("pgx", c.Node(primary).DSN())
				require.NoError(t, err)
				t.Cleanup(func() { db.Close() })
			} else {
				db = openUnified(t, c)
			}
			table := strings.ToLower(strings.NewReplacer("/", "_", "-", "_").Replace(t.Name()))
			_, err := db.ExecContext(t.Context(), "DROP TABLE IF EXISTS "+table)
			require.NoError(t, err)
			t.Cleanup(func() {
				_, _ = db.ExecContext(context.Background(), "DROP TABLE IF EXISTS "+table)
			})
			if columns != "" {
				_, err := db.ExecContext(t.Context(), "CREATE TABLE "+table+" ("+columns+")")
				require.NoError(t, err)
			}
			fn(t, db, table)
		})
	}
}

// sqlConn takes one session of db, closed at the end of the test.
func sqlConn(t *testing.T, ctx context.Context, db *sql.DB) *sql.Conn {
	t.Helper()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func serverPort(t *testing.T, ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) int {
	t.Helper()
	var port int
	require.NoError(t, q.QueryRowContext(ctx, "SELECT inet_server_port()").Scan(&port))
	return port
}

func TestDefaultModeRunsOnPrimary(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	ctx := t.Context()
	primary, err := c.Primary(ctx)
	require.NoError(t, err)
	orders := map[string][]int{"listed": {0, 1, 2}, "reversed": {2, 1, 0}, "primary-last": {1, 2, 0}}
	for name, order := range orders {
		t.Run(name, func(t *testing.T) {
			db, err := sql.Open("unified", c.DSNOrder(order))
			require.NoError(t, err)
			defer db.Close()
			for i := 0; i < 20; i++ {
				assert.Equal(t, c.Node(primary).Port, serverPort(t, ctx, db))
			}
			var inRecovery bool
			require.NoError(t, db.QueryRowContext(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery))
			assert.False(t, inRecovery)
		})
	}
}

func TestKeywordValueMultiHostDSN(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	ctx := t.Context()
	primary, err := c.Primary(ctx)
	require.NoError(t, err)
	var hosts, ports []string
	for _, i := range []int{2, 0, 1} {
		hosts = append(hosts, c.Node(i).Host)
		ports = append(ports, strconv.Itoa(c.Node(i).Port))
	}
	dsn := fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=disable unified_health_interval=200ms",
		strings.Join(hosts, ","), strings.Join(ports, ","))
	db, err := sql.Open("unified", dsn)
	require.NoError(t, err)
	defer db.Close()
	assert.Equal(t, c.Node(primary).Port, serverPort(t, ctx, db))
}

func TestCRUD(t *testing.T) {
	bothDrivers(t, "id int PRIMARY KEY, name text", func(t *testing.T, db *sql.DB, table string) {
		ctx := t.Context()
		res, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1, $2), ($3, $4)", 1, "one", 2, "two")
		require.NoError(t, err)
		n, err := res.RowsAffected()
		require.NoError(t, err)
		assert.EqualValues(t, 2, n)

		res, err = db.ExecContext(ctx, "UPDATE "+table+" SET name = $1 WHERE id = $2", "uno", 1)
		require.NoError(t, err)
		n, _ = res.RowsAffected()
		assert.EqualValues(t, 1, n)

		var name string
		require.NoError(t, db.QueryRowContext(ctx, "SELECT name FROM "+table+" WHERE id = $1", 1).Scan(&name))
		assert.Equal(t, "uno", name)

		_, err = db.ExecContext(ctx, "DELETE FROM "+table+" WHERE id = 2")
		require.NoError(t, err)
		var count int
		require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&count))
		assert.Equal(t, 1, count)

		_, err = db.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1, 'dup')")
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		assert.Equal(t, "23505", pgErr.Code)

		err = db.QueryRowContext(ctx, "SELECT name FROM "+table+" WHERE id = 42").Scan(&name)
		assert.ErrorIs(t, err, sql.ErrNoRows)
	})
}

func TestTransactions(t *testing.T) {
	bothDrivers(t, "id int", func(t *testing.T, db *sql.DB, table string) {
		ctx := t.Context()

		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = tx.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)")
		require.NoError(t, err)
		require.NoError(t, tx.Commit())

		tx, err = db.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = tx.ExecContext(ctx, "INSERT INTO "+table+" VALUES (2)")
		require.NoError(t, err)
		require.NoError(t, tx.Rollback())

		var ids []int
		rows, err := db.QueryContext(ctx, "SELECT id FROM "+table+" ORDER BY id")
		require.NoError(t, err)
		for rows.Next() {
			var id int
			require.NoError(t, rows.Scan(&id))
			ids = append(ids, id)
		}
		require.NoError(t, rows.Err())
		assert.Equal(t, []int{1}, ids)

		levels := map[sql.IsolationLevel]string{
			sql.LevelDefault:        "read committed",
			sql.LevelReadCommitted:  "read committed",
			sql.LevelRepeatableRead: "repeatable read",
			sql.LevelSerializable:   "serializable",
		}
		for level, want := range levels {
			tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: level})
			require.NoError(t, err)
			var got string
			require.NoError(t, tx.QueryRowContext(ctx, "SHOW transaction_isolation").Scan(&got))
			assert.Equal(t, want, got, level.String())
			require.NoError(t, tx.Commit())
		}
		_, err = db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelLinearizable})
		assert.Error(t, err, "linearizable is not supported by PostgreSQL drivers")

		// A read-only transaction refuses writes with the server's 25006.
		tx, err = db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		require.NoError(t, err)
		var ro string
		require.NoError(t, tx.QueryRowContext(ctx, "SHOW transaction_read_only").Scan(&ro))
		assert.Equal(t, "on", ro)
		_, err = tx.ExecContext(ctx, "CREATE TABLE "+table+"_ro (id int)")
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		assert.Equal(t, "25006", pgErr.Code)
		require.NoError(t, tx.Rollback())
	})
}

func TestPreparedStatementReuse(t *testing.T) {
	bothDrivers(t, "id int, v text", func(t *testing.T, db *sql.DB, table string) {
		ctx := t.Context()
		ins, err := db.PrepareContext(ctx, "INSERT INTO "+table+" VALUES ($1, $2)")
		require.NoError(t, err)
		defer ins.Close()
		sel, err := db.PrepareContext(ctx, "SELECT v FROM "+table+" WHERE id = $1")
		require.NoError(t, err)
		defer sel.Close()
		for i := 0; i < 300; i++ {
			_, err := ins.ExecContext(ctx, i, "v"+strconv.Itoa(i))
			require.NoError(t, err)
		}
		for i := 0; i < 300; i += 7 {
			var v string
			require.NoError(t, sel.QueryRowContext(ctx, i).Scan(&v))
			assert.Equal(t, "v"+strconv.Itoa(i), v)
		}
		// The same statement inside a transaction.
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = tx.StmtContext(ctx, ins).ExecContext(ctx, 1000, "tx")
		require.NoError(t, err)
		require.NoError(t, tx.Commit())
		var count int
		require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&count))
		assert.Equal(t, 301, count)

		_, err = db.PrepareContext(ctx, "SELEC broken")
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		assert.Equal(t, "42601", pgErr.Code)
	})
}

func TestSessionStateOnSQLConn(t *testing.T) {
	bothDrivers(t, "", func(t *testing.T, db *sql.DB, table string) {
		ctx := t.Context()
		conn := sqlConn(t, ctx, db)
		_, err := conn.ExecContext(ctx, "SET application_name = 'unified-session-test'")
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, "CREATE TEMP TABLE "+table+"_tmp (id int)")
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, "INSERT INTO "+table+"_tmp VALUES (1)")
		require.NoError(t, err)
		var app string
		require.NoError(t, conn.QueryRowContext(ctx, "SHOW application_name").Scan(&app))
		assert.Equal(t, "unified-session-test", app)
		var n int
		require.NoError(t, conn.QueryRowContext(ctx, "SELECT count(*) FROM "+table+"_tmp").Scan(&n))
		assert.Equal(t, 1, n)
		var locked bool
		require.NoError(t, conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock(4242)").Scan(&locked))
		assert.True(t, locked)
		require.NoError(t, conn.QueryRowContext(ctx, "SELECT pg_advisory_unlock(4242)").Scan(&locked))
		assert.True(t, locked, "the lock is held by the same session")
	})
}

func TestConcurrentUse(t *testing.T) {
	bothDrivers(t, "g int, i int", func(t *testing.T, db *sql.DB, table string) {
		ctx := t.Context()
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for g := 0; g < 16; g++ {
			wg.Go(func() {
				for i := 0; i < 25; i++ {
					if _, err := db.ExecContext(ctx, "INSERT INTO "+table+" VALUES ($1, $2)", g, i); err != nil {
						errs <- err
						return
					}
					var n int
					if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+table+" WHERE g = $1", g).Scan(&n); err != nil {
						errs <- err
						return
					}
					if n != i+1 {
						errs <- fmt.Errorf("goroutine %d: read %d rows after %d inserts", g, n, i+1)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		var total int
		require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&total))
		assert.Equal(t, 16*25, total)
	})
}

func TestContextCancellationMidQuery(t *testing.T) {
	bothDrivers(t, "", func(t *testing.T, db *sql.DB, _ string) {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := db.ExecContext(ctx, "SELECT pg_sleep(10)")
		require.Error(t, err)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Less(t, time.Since(start), 5*time.Second, "the deadline is honoured")
		// The DB is still usable afterwards.
		var one int
		require.NoError(t, db.QueryRowContext(t.Context(), "SELECT 1").Scan(&one))
		assert.Equal(t, 1, one)
	})
}

func TestLargeResultsAndNulls(t *testing.T) {
	bothDrivers(t, "", func(t *testing.T, db *sql.DB, _ string) {
		ctx := t.Context()
		rows, err := db.QueryContext(ctx, "SELECT g, CASE WHEN g % 2 = 0 THEN NULL ELSE g::text END FROM generate_series(1, 100000) g")
		require.NoError(t, err)
		var sum, nulls int64
		for rows.Next() {
			var g int64
			var s sql.NullString
			require.NoError(t, rows.Scan(&g, &s))
			sum += g
			if !s.Valid {
				nulls++
			} else {
				assert.Equal(t, strconv.FormatInt(g, 10), s.String)
			}
		}
		require.NoError(t, rows.Err())
		assert.EqualValues(t, 100000*100001/2, sum)
		assert.EqualValues(t, 50000, nulls)

		var p *int
		require.NoError(t, db.QueryRowContext(ctx, "SELECT NULL::int").Scan(&p))
		assert.Nil(t, p)
	})
}

func TestPgxTypes(t *testing.T) {
	bothDrivers(t, "", func(t *testing.T, db *sql.DB, _ string) {
		ctx := t.Context()
		m := pgtype.NewMap()

		var ints []int64
		require.NoError(t, db.QueryRowContext(ctx, "SELECT $1::int8[]", []int64{1, 2, 3}).Scan(m.SQLScanner(&ints)))
		assert.Equal(t, []int64{1, 2, 3}, ints)

		var js []byte
		require.NoError(t, db.QueryRowContext(ctx, "SELECT $1::jsonb", map[string]any{"a": 1}).Scan(&js))
		var decoded map[string]any
		require.NoError(t, json.Unmarshal(js, &decoded))
		assert.Equal(t, map[string]any{"a": float64(1)}, decoded)

		_, ipnet, err := net.ParseCIDR("10.1.2.0/24")
		require.NoError(t, err)
		var inet string
		require.NoError(t, db.QueryRowContext(ctx, "SELECT $1::cidr::text", ipnet).Scan(&inet))
		assert.Equal(t, "10.1.2.0/24", inet)

		var num pgtype.Numeric
		require.NoError(t, db.QueryRowContext(ctx, "SELECT $1::numeric", pgtype.Numeric{Int: bigInt(12345), Exp: -2, Valid: true}).Scan(&num))
		f, err := num.Float64Value()
		require.NoError(t, err)
		assert.InDelta(t, 123.45, f.Float64, 1e-9)

		var ts pgtype.Timestamptz
		require.NoError(t, db.QueryRowContext(ctx, "SELECT '2026-01-02 03:04:05+00'::timestamptz").Scan(&ts))
		assert.Equal(t, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), ts.Time.UTC())
	})
}

func TestColumnMetadata(t *testing.T) {
	type col struct {
		Name, DBType, ScanType string
		Length                 int64
		HasLength              bool
		Precision, Scale       int64
		HasDecimal             bool
		Nullable, HasNullable  bool
	}
	describe := func(t *testing.T, db *sql.DB) []col {
		rows, err := db.QueryContext(t.Context(), "SELECT 1::int4 AS i, 'x'::varchar(10) AS v, 1.5::numeric(8,3) AS n, now() AS ts, '{}'::jsonb AS j, NULL::bytea AS b")
		require.NoError(t, err)
		defer rows.Close()
		cts, err := rows.ColumnTypes()
		require.NoError(t, err)
		var out []col
		for _, ct := range cts {
			c := col{Name: ct.Name(), DBType: ct.DatabaseTypeName(), ScanType: ct.ScanType().String()}
			c.Length, c.HasLength = ct.Length()
			c.Precision, c.Scale, c.HasDecimal = ct.DecimalSize()
			c.Nullable, c.HasNullable = ct.Nullable()
			out = append(out, c)
		}
		return out
	}
	c := pgcluster.Need(t, cluster)
	primary, err := c.Primary(t.Context())
	require.NoError(t, err)
	ref, err := sql.Open("pgx", c.Node(primary).DSN())
	require.NoError(t, err)
	defer ref.Close()
	want := describe(t, ref)
	got := describe(t, openUnified(t, c))
	assert.Equal(t, want, got)
	assert.Equal(t, "VARCHAR", got[1].DBType)
	assert.Equal(t, "NUMERIC", got[2].DBType)
}

func TestRawCopyFrom(t *testing.T) {
	bothDrivers(t, "id int, v text", func(t *testing.T, db *sql.DB, table string) {
		ctx := t.Context()
		conn := sqlConn(t, ctx, db)
		err := conn.Raw(func(dc any) error {
			var pc *pgx.Conn
			switch c := dc.(type) {
			case *stdlib.Conn:
				pc = c.Conn()
			case *unified.Conn:
				sc, err := c.StdlibConn(ctx, unified.ReadWrite)
				if err != nil {
					return err
				}
				pc = sc.Conn()
			default:
				return fmt.Errorf("unexpected driver conn %T", dc)
			}
			src := make([][]any, 1000)
			for i := range src {
				src[i] = []any{i, "row" + strconv.Itoa(i)}
			}
			n, err := pc.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "v"}, pgx.CopyFromRows(src))
			if err != nil {
				return err
			}
			if n != 1000 {
				return fmt.Errorf("copied %d rows", n)
			}
			return nil
		})
		require.NoError(t, err)
		var count int
		require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&count))
		assert.Equal(t, 1000, count)
	})
}

func TestConnectorLifecycle(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	cfg, err := unified.ParseConfig(c.DSN())
	require.NoError(t, err)
	db, err := unified.OpenDB(cfg)
	require.NoError(t, err)
	conn, ok := unified.ConnectorOf(db)
	require.True(t, ok)
	require.NotNil(t, conn)
	require.NoError(t, db.PingContext(t.Context()))
	require.NoError(t, db.Close())
	// Closing the DB closed the connector: new connections are refused.
	_, err = conn.Connect(t.Context())
	assert.Error(t, err)
	require.NoError(t, conn.Close(), "Close is idempotent")

	other, err := sql.Open("pgx", c.Node(0).DSN())
	require.NoError(t, err)
	defer other.Close()
	_, ok = unified.ConnectorOf(other)
	assert.False(t, ok)
}

func TestWrongDSNFailsFast(t *testing.T) {
	// Nothing listens on these ports: with no primary ever seen, a write
	// fails after one probe round instead of waiting for a failover.
	l1, _ := net.Listen("tcp", "127.0.0.1:0")
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	p1, p2 := l1.Addr().(*net.TCPAddr).Port, l2.Addr().(*net.TCPAddr).Port
	l1.Close()
	l2.Close()
	db, err := sql.Open("unified", fmt.Sprintf("postgres://u:s3cr3t-pw@127.0.0.1:%d,127.0.0.1:%d/db?sslmode=disable&connect_timeout=2", p1, p2))
	require.NoError(t, err)
	defer db.Close()
	start := time.Now()
	_, err = db.ExecContext(t.Context(), "SELECT 1")
	require.Error(t, err)
	assert.ErrorIs(t, err, unified.ErrNoPrimary)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.NotContains(t, err.Error(), "s3cr3t-pw")
	assert.Contains(t, err.Error(), strconv.Itoa(p1))
}

func bigInt(v int64) *big.Int { return big.NewInt(v) }
