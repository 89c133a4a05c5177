package faultproxy

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pgEnv names a running PostgreSQL server for the optional test against a
// real server, as a pgx connection string; the test creates and drops a
// table. The real-cluster tests of the driver live elsewhere (pgcluster).
const pgEnv = "UNIFIED_FAULTPROXY_DSN"

// pgThroughProxy returns the direct config and one that goes through a new
// proxy to the same server, without TLS so the proxy can read the stream.
func pgThroughProxy(t *testing.T) (direct *pgx.ConnConfig, proxied *pgx.ConnConfig, p *Proxy) {
	t.Helper()
	dsn := os.Getenv(pgEnv)
	if dsn == "" {
		t.Skipf("set %s to a PostgreSQL connection string to run this test", pgEnv)
	}
	direct, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	p = newProxy(t, net.JoinHostPort(direct.Host, strconv.Itoa(int(direct.Port))))
	proxied = direct.Copy()
	proxied.Host, proxied.Port = "127.0.0.1", uint16(p.Port())
	proxied.TLSConfig, proxied.Fallbacks = nil, nil
	return direct, proxied, p
}

func pgConnect(t *testing.T, ctx context.Context, cfg *pgx.ConnConfig) *pgx.Conn {
	t.Helper()
	c, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func TestPostgres(t *testing.T) {
	direct, proxied, p := pgThroughProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := pgConnect(t, ctx, direct)
	table := fmt.Sprintf("faultproxy_%d", time.Now().UnixNano())
	_, err := admin.Exec(ctx, "create table "+table+" (id int primary key)")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "drop table "+table) })
	count := func(id int) int {
		var n int
		require.NoError(t, admin.QueryRow(ctx, "select count(*) from "+table+" where id = $1", id).Scan(&n))
		return n
	}

	t.Run("commit is cut but committed", func(t *testing.T) {
		c := pgConnect(t, ctx, proxied)
		tx, err := c.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, "insert into "+table+" values ($1)", 1)
		require.NoError(t, err)
		p.CutAfterCommit()
		require.Error(t, tx.Commit(ctx))
		assert.Equal(t, 1, p.Cuts())
		assert.Equal(t, 1, count(1), "the COMMIT ran before the client saw the drop")
	})

	t.Run("extended-protocol insert is cut after it ran", func(t *testing.T) {
		c := pgConnect(t, ctx, proxied)
		p.CutAfter(func(q string) bool { return strings.HasPrefix(q, "insert into "+table) })
		_, err := c.Exec(ctx, "insert into "+table+" values ($1)", 2) // pgx: prepare, then execute
		require.Error(t, err)
		assert.Equal(t, 2, p.Cuts())
		assert.Equal(t, 1, count(2))
	})

	t.Run("latency", func(t *testing.T) {
		c := pgConnect(t, ctx, proxied)
		const d = 50 * time.Millisecond
		p.SetLatency(d)
		defer p.Pass()
		start := time.Now()
		require.NoError(t, c.Ping(ctx))
		assert.GreaterOrEqual(t, time.Since(start), 2*d)
	})

	t.Run("blackhole then pass", func(t *testing.T) {
		c := pgConnect(t, ctx, proxied)
		p.Blackhole()
		qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer qcancel()
		require.Error(t, c.Ping(qctx))
		p.Pass()
		require.NoError(t, pgConnect(t, ctx, proxied).Ping(ctx))
	})

	t.Run("reset all", func(t *testing.T) {
		c := pgConnect(t, ctx, proxied)
		require.NoError(t, c.Ping(ctx))
		p.ResetAll()
		require.Error(t, c.Ping(ctx))
		require.NoError(t, pgConnect(t, ctx, proxied).Ping(ctx))
	})
}
