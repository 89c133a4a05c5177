package unified_test

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/unifiedtest"
)

// These tests route through mocked nodes (package unifiedtest): which node
// gets a statement is asserted by which mock's expectation it meets.

func TestRoutingByMode(t *testing.T) {
	db, mocks := unifiedtest.New(t, unifiedtest.Replicas(1))
	ctx := context.Background()

	mocks.Primary().ExpectExec("INSERT INTO t").WithArgs(1).WillReturnResult(sqlmock.NewResult(0, 1))
	mocks.Primary().ExpectExec("UPDATE t").WillReturnResult(sqlmock.NewResult(0, 1))
	mocks.Replica(0).ExpectQuery("SELECT v FROM t").WillReturnRows(sqlmock.NewRows([]string{"v"}).AddRow("x"))
	mocks.Primary().ExpectExec("DELETE FROM t").WillReturnResult(sqlmock.NewResult(0, 1))

	_, err := db.ExecContext(ctx, "INSERT INTO t VALUES ($1)", 1)
	require.NoError(t, err)
	_, err = db.ExecContext(unified.WithMode(ctx, unified.ReadWrite), "UPDATE t SET v = 1")
	require.NoError(t, err)
	var v string
	require.NoError(t, db.QueryRowContext(unified.WithMode(ctx, unified.ReadOnly), "SELECT v FROM t").Scan(&v))
	assert.Equal(t, "x", v)
	_, err = db.ExecContext(unified.WithMode(ctx, unified.Batch), "DELETE FROM t")
	require.NoError(t, err)
	require.NoError(t, mocks.ExpectationsWereMet())
}

func TestTransactionalModeNeedsTransaction(t *testing.T) {
	db, mocks := unifiedtest.New(t, unifiedtest.Replicas(1))
	ctx := unified.WithMode(context.Background(), unified.Transactional)

	_, err := db.ExecContext(ctx, "INSERT INTO t VALUES (1)")
	assert.ErrorIs(t, err, unified.ErrNotInTransaction)
	_, err = db.QueryContext(ctx, "SELECT 1")
	assert.ErrorIs(t, err, unified.ErrNotInTransaction)

	mocks.Primary().ExpectBegin()
	mocks.Primary().ExpectExec("INSERT INTO t").WillReturnResult(sqlmock.NewResult(0, 1))
	mocks.Primary().ExpectCommit()
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	_, err = tx.ExecContext(ctx, "INSERT INTO t VALUES (1)")
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	require.NoError(t, mocks.ExpectationsWereMet())
}

func TestReadOnlyTransactionStaysOnOneReplica(t *testing.T) {
	db, mocks := unifiedtest.New(t, unifiedtest.Replicas(1))
	ctx := context.Background()
	r := mocks.Replica(0)
	r.ExpectBegin()
	r.ExpectQuery("SELECT a").WillReturnRows(sqlmock.NewRows([]string{"a"}).AddRow(1))
	// A statement with another mode inside the transaction still runs on
	// the transaction's connection.
	r.ExpectQuery("SELECT b").WillReturnRows(sqlmock.NewRows([]string{"b"}).AddRow(2))
	r.ExpectCommit()

	tx, err := db.BeginTx(unified.WithMode(ctx, unified.ReadOnly), &sql.TxOptions{ReadOnly: true})
	require.NoError(t, err)
	var a, b int
	require.NoError(t, tx.QueryRowContext(ctx, "SELECT a").Scan(&a))
	require.NoError(t, tx.QueryRowContext(unified.WithMode(ctx, unified.ReadWrite), "SELECT b").Scan(&b))
	require.NoError(t, tx.Commit())
	assert.Equal(t, []int{1, 2}, []int{a, b})
	require.NoError(t, mocks.ExpectationsWereMet())
}

func TestReadModeContextBeginsOnReplica(t *testing.T) {
	db, mocks := unifiedtest.New(t, unifiedtest.Replicas(1))
	ctx := unified.WithMode(context.Background(), unified.ReadOnly)
	mocks.Replica(0).ExpectBegin()
	mocks.Replica(0).ExpectRollback()
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback())
	require.NoError(t, mocks.ExpectationsWereMet())
}

func TestReadFallback(t *testing.T) {
	t.Run("primary", func(t *testing.T) {
		db, mocks := unifiedtest.New(t, unifiedtest.Replicas(0))
		mocks.Primary().ExpectQuery("SELECT 1").WillReturnRows(sqlmock.NewRows([]string{"x"}).AddRow(1))
		var x int
		require.NoError(t, db.QueryRowContext(unified.WithMode(context.Background(), unified.ReadOnly), "SELECT 1").Scan(&x))
		require.NoError(t, mocks.ExpectationsWereMet())
	})
	t.Run("error", func(t *testing.T) {
		db, mocks := unifiedtest.New(t, unifiedtest.Replicas(0), unifiedtest.Params("unified_read_fallback=error"))
		var x int
		err := db.QueryRowContext(unified.WithMode(context.Background(), unified.ReadOnly), "SELECT 1").Scan(&x)
		assert.ErrorIs(t, err, unified.ErrNoReplica)
		require.NoError(t, mocks.ExpectationsWereMet())
	})
}

// What the node's driver answered comes back as it is (pgx's own values,
// invariant 5); a connection that broke is the driver's own error, a
// NodeError naming the node and the operation.
func TestNodeErrorsAndDriverErrors(t *testing.T) {
	db, mocks := unifiedtest.New(t, unifiedtest.Replicas(1))
	boom := errors.New("boom")
	mocks.Primary().ExpectExec("INSERT").WillReturnError(boom)
	_, err := db.ExecContext(context.Background(), "INSERT INTO t VALUES (1)")
	assert.Same(t, boom, err, "the node driver's error, unwrapped")

	mocks.Primary().ExpectExec("UPDATE").WillReturnError(io.ErrUnexpectedEOF)
	_, err = db.ExecContext(context.Background(), "UPDATE t SET x = 1")
	require.Error(t, err)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.ErrorIs(t, err, unified.ErrCommitUnknown, "an autocommit statement whose connection broke after it was sent")
	var ne *unified.NodeError
	require.ErrorAs(t, err, &ne)
	assert.Equal(t, "primary:5432", ne.Node)
	assert.Equal(t, "exec", ne.Op)
	require.NoError(t, mocks.ExpectationsWereMet())
}

func TestPreparedStatementPreparesPerRole(t *testing.T) {
	db, mocks := unifiedtest.New(t, unifiedtest.Replicas(1))
	ctx := context.Background()
	db.SetMaxOpenConns(1) // one logical connection: both roles on it
	mocks.Primary().ExpectPrepare("SELECT v").WillBeClosed().ExpectQuery().WithArgs(1).WillReturnRows(sqlmock.NewRows([]string{"v"}).AddRow("p"))
	mocks.Replica(0).ExpectPrepare("SELECT v").WillBeClosed().ExpectQuery().WithArgs(2).WillReturnRows(sqlmock.NewRows([]string{"v"}).AddRow("r"))

	st, err := db.PrepareContext(ctx, "SELECT v FROM t WHERE id = $1")
	require.NoError(t, err)
	var v string
	require.NoError(t, st.QueryRowContext(ctx, 1).Scan(&v))
	assert.Equal(t, "p", v)
	require.NoError(t, st.QueryRowContext(unified.WithMode(ctx, unified.ReadOnly), 2).Scan(&v))
	assert.Equal(t, "r", v)
	require.NoError(t, st.Close())
	require.NoError(t, mocks.ExpectationsWereMet())
}
