package unified_test

import (
	"database/sql"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

func TestRegister(t *testing.T) {
	a, err := unified.ParseConfig("postgres://app@db1,db2/shop")
	require.NoError(t, err)
	b, err := unified.ParseConfig("postgres://app@db1,db2/shop?unified_retry_max=5")
	require.NoError(t, err)
	t.Cleanup(func() { unified.Unregister("registry-test") })

	require.NoError(t, unified.Register("registry-test", a))
	require.NoError(t, unified.Register("registry-test", a.Copy()), "the same config again is a no-op")
	err = unified.Register("registry-test", b)
	assert.ErrorIs(t, err, unified.ErrAlreadyRegistered)
	assert.Contains(t, err.Error(), "registry-test")

	unified.Unregister("registry-test")
	require.NoError(t, unified.Register("registry-test", b), "a name is free again after Unregister")
	unified.Unregister("never-registered") // a no-op

	assert.Error(t, unified.Register("", a))
	assert.Error(t, unified.Register("x", nil))
	assert.Error(t, unified.Register("x", a, unified.WithNodeConnector("db1:5432", nil)))
}

func TestOpenRegisteredName(t *testing.T) {
	c := pgcluster.Need(t, cluster)
	cfg, err := unified.ParseConfig(c.DSN())
	require.NoError(t, err)
	require.NoError(t, unified.Register("registry-cluster", cfg))
	t.Cleanup(func() { unified.Unregister("registry-cluster") })

	db, err := sql.Open("unified", "registry-cluster")
	require.NoError(t, err)
	defer db.Close()
	primary, err := c.Primary(t.Context())
	require.NoError(t, err)
	assert.Equal(t, c.Node(primary).Port, serverPort(t, t.Context(), db))
}
