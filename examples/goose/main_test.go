package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/examples/internal/exampletest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestExample runs the example as `go -C examples run ./goose` would: the
// Up that a failover interrupts fails and leaves nothing half-done; the
// next Up, on the same *sql.DB, takes the lock on the new primary and
// finishes.
func TestExample(t *testing.T) {
	res := exampletest.Run(t, run)

	assert.EqualValues(t, 2, res.VersionBefore)
	assert.Equal(t, 1, res.LocksDuringRun, "goose's session lock held while migration 3 ran")
	assert.Error(t, res.Interrupted)
	assert.EqualValues(t, 2, res.VersionAfterFail, "migration 3's transaction did not commit")
	assert.Zero(t, res.LocksAfterFailover, "no advisory lock on the new primary")
	assert.Equal(t, []int64{3, 4}, res.Applied)
	assert.EqualValues(t, 4, res.VersionAfter)
	assert.Equal(t, 2, res.Backfilled)
}
