package unified_test

import (
	"context"
	"database/sql/driver"
	"testing"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/pgcluster"
	"github.com/unifiedsql/unified/internal/pgprobe"
)

// The probe's two queries on real servers: QueryAgain answers what Query
// does but the identity (system identifier, start time), which it leaves
// to the first answer on the connection.
func TestProbeQueriesOnRealNodes(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	ctx := t.Context()
	for i := range c.Len() {
		dc, err := stdlib.GetDefaultDriver().(driver.DriverContext).OpenConnector(c.Node(i).DSN())
		require.NoError(t, err)
		conn, err := dc.Connect(ctx)
		require.NoError(t, err)
		q := conn.(driver.QueryerContext)
		first, err := pgprobe.Run(ctx, q)
		require.NoError(t, err)
		again, err := pgprobe.RunAgain(context.Background(), q)
		require.NoError(t, err)
		assert.NotZero(t, first.SystemID, "node %d", i)
		assert.NotEmpty(t, first.Started, "node %d", i)
		assert.Zero(t, again.SystemID, "node %d: not asked again", i)
		assert.Empty(t, again.Started, "node %d", i)
		assert.Equal(t, first.InRecovery, again.InRecovery, "node %d", i)
		assert.Equal(t, first.Timeline, again.Timeline, "node %d", i)
		assert.NotZero(t, again.Timeline, "node %d", i)
		assert.GreaterOrEqual(t, again.LSN, first.LSN, "node %d", i)
		require.NoError(t, conn.Close())
	}
}
