package unifiedtest_test

import (
	"context"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/unifiedtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestUnmetExpectationsNameTheNode(t *testing.T) {
	_, mocks := unifiedtest.New(t)
	mocks.Replica(1).ExpectQuery("SELECT 1")
	err := mocks.ExpectationsWereMet()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "replica 1")
}

func TestWriteOnReplicaMockIsCaught(t *testing.T) {
	db, mocks := unifiedtest.New(t, unifiedtest.Replicas(1))
	// The test expects the write on the replica: unified sends it to the
	// primary, whose mock has no such expectation.
	mocks.Replica(0).ExpectExec("INSERT").WillReturnResult(sqlmock.NewResult(0, 1))
	_, err := db.ExecContext(context.Background(), "INSERT INTO t VALUES (1)")
	require.Error(t, err, "the primary's mock did not expect it")
	assert.Contains(t, err.Error(), "was not expected", "the mock's own error, as the node driver returned it")
	met := mocks.ExpectationsWereMet()
	require.Error(t, met)
	assert.Contains(t, met.Error(), "replica 0:", "the unmet expectation names its node")
}

func TestDBOutlivesConnectionChurn(t *testing.T) {
	db, mocks := unifiedtest.New(t, unifiedtest.Replicas(1))
	db.SetMaxIdleConns(0) // every statement closes its connection
	for i := 0; i < 3; i++ {
		mocks.Primary().ExpectExec("UPDATE").WillReturnResult(sqlmock.NewResult(0, 1))
		_, err := db.ExecContext(context.Background(), "UPDATE t SET v = 1")
		require.NoError(t, err, "sqlmock's DSN survives its connections closing")
	}
	require.NoError(t, mocks.ExpectationsWereMet())
}

func TestParamsReachTheConfig(t *testing.T) {
	db, mocks := unifiedtest.New(t, unifiedtest.Replicas(0), unifiedtest.Params("unified_read_fallback=error"))
	err := db.QueryRowContext(unified.WithMode(context.Background(), unified.ReadOnly), "SELECT 1").Scan(new(int))
	assert.ErrorIs(t, err, unified.ErrNoReplica)
	require.NoError(t, mocks.ExpectationsWereMet())
}
