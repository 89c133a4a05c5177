package main

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/examples/internal/exampletest"
	"gorm.io/gorm"
)

func TestMain(m *testing.M) {
	// PrepareStmt's statement cache (gorm.io/gorm/internal/lru) starts a
	// goroutine that GORM never stops: "done channel is never closed"
	// (lru.go, GORM v1.31).
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("gorm.io/gorm/internal/lru.NewLRU[...].func1"))
}

// TestExample runs the example as `go -C examples run ./gorm` would: every
// GORM call works, and its errors translate, before and after a failover
// on the same *gorm.DB; the Create loop on the Conn-opened DB failed only
// where pgx fails too.
func TestExample(t *testing.T) {
	res := exampletest.Run(t, run)

	for name, s := range map[string]steps{"before": res.Before, "after": res.After} {
		assert.Len(t, s.Author.Books, 2, name)
		assert.EqualValues(t, 4, s.TxBooks, name)
		assert.True(t, errors.Is(s.Duplicate, gorm.ErrDuplicatedKey), "%s: %v", name, s.Duplicate)
		assert.True(t, errors.Is(s.ForeignKey, gorm.ErrForeignKeyViolated), "%s: %v", name, s.ForeignKey)
		assert.True(t, s.ReadOnReplica, "%s: ReadOnly read on a replica, port %d", name, s.ReadPort)
	}

	assert.NoError(t, res.Failover.Survived())
}
