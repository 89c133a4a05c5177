package benchdriver_test

import (
	"context"
	"database/sql"
	"testing"

	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/internal/benchdriver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRoundTrip(t *testing.T) {
	c := &benchdriver.Connector{}
	db := sql.OpenDB(c)
	defer db.Close()
	ctx := context.Background()

	res, err := db.ExecContext(ctx, "INSERT INTO t VALUES ($1)", 7)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Errorf("RowsAffected = %d, want 1", n)
	}

	var v int64
	if err := db.QueryRowContext(ctx, "SELECT v", 7).Scan(&v); err != nil || v != 1 {
		t.Errorf("QueryRow = %d, %v; want 1, nil", v, err)
	}
	rows, err := db.QueryContext(ctx, "SELECT v")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Close(); err != nil || n != 1 {
		t.Errorf("rows = %d, close error %v; want 1 row", n, err)
	}

	st, err := db.PrepareContext(ctx, "UPDATE t SET v = $1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.ExecContext(ctx, 1); err != nil {
		t.Error(err)
	}
	if err := st.QueryRowContext(ctx).Scan(&v); err != nil {
		t.Error(err)
	}
	_ = st.Close()

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM t"); err != nil {
		t.Error(err)
	}
	if err := tx.Commit(); err != nil {
		t.Error(err)
	}
	if err := db.PingContext(ctx); err != nil {
		t.Error(err)
	}
	if c.Conns() < 1 {
		t.Errorf("Conns = %d, want >= 1", c.Conns())
	}
}
