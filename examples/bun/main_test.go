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

// TestExample runs the example as `go -C examples run ./bun` would: every
// bun call works before and after a failover on the same *bun.DB, and the
// inserts failed only where pgx fails too.
func TestExample(t *testing.T) {
	res := exampletest.Run(t, run)

	for name, s := range map[string]steps{"before": res.Before, "after": res.After} {
		for _, it := range s.Inserted {
			assert.NotZero(t, it.ID, "%s: RETURNING filled the id", name)
		}
		assert.Len(t, s.Plenty, 2, name)
		assert.Equal(t, 42, s.Qty, name)
		assert.True(t, s.ReadOnRepl, "%s: ReadOnly transaction on a replica, port %d", name, s.ReadPort)
	}

	assert.NoError(t, res.Failover.Survived())
}
