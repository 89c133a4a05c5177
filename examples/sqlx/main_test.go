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

// TestExample runs the example as `go -C examples run ./sqlx` would: every
// sqlx call works before and after a failover on the same *sqlx.DB, and
// the only operations that failed were in flight on the killed primary.
func TestExample(t *testing.T) {
	res := exampletest.Run(t, run)

	for name, s := range map[string]steps{"before": res.Before, "after": res.After} {
		assert.NotZero(t, s.Got.ID, name)
		assert.Len(t, s.Some, 2, name)
		assert.Equal(t, "SELECT id, owner, balance FROM accounts WHERE owner IN ($1, $2) ORDER BY id", s.InQuery, name)
		assert.NotEmpty(t, s.Rich, name)
		for _, a := range s.Rich {
			assert.GreaterOrEqual(t, a.Balance, int64(200), name)
		}
	}
	assert.Len(t, res.Before.All, 2)
	assert.Len(t, res.After.All, 4, "the rows written before the failover are on the new primary")
	assert.True(t, res.Before.OnReplica, "ReadOnly read served by a replica, port %d", res.Before.ReadPort)
	assert.True(t, res.After.OnReplica, "ReadOnly read served by a replica after the failover, port %d", res.After.ReadPort)

	assert.NoError(t, res.Failover.Survived())
}
