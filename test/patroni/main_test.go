// Package patroni holds the failover scenarios under a real Patroni:
// leader crash, leader hang, switchover, replica crash, and a soak of
// failovers in a row, each through one sql.Open("unified", ...) with 8
// writers and 4 ReadOnly readers judged by internal/workload. One Patroni
// cluster (synchronous_mode) serves the whole test binary; every test
// leaves it healthy.
//
// # What "lost" means here
//
// A write is lost when unified acknowledged it and the leader at the end
// of the test does not hold it. Patroni (synchronous_mode, not strict)
// clears synchronous_standby_names just before it promotes and sets it
// again a loop after a replica streams from the new leader (about 3 s
// measured): commits acknowledged in that window are on the new leader
// alone. In these scenarios no second fault hits that window, so such
// writes must survive like any other and count as lost if they do not;
// each promotion also measures the window and reports how many
// acknowledgements fell in it ("at risk": a crash of the new leader's
// disk in the window would lose them). TestCrashAsynchronous runs the
// crash with Patroni's synchronous_mode off: there the judge can show
// acknowledged writes lost.
package patroni

import (
	"bytes"
	"context"
	"database/sql"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	_ "github.com/unifiedsql/unified" // the "unified" driver
	"github.com/unifiedsql/unified/internal/patroni"
	"github.com/unifiedsql/unified/internal/patroni/patronitest"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

var cluster *patroni.Cluster

var (
	ctxT         = pgcluster.CtxT
	waitFor      = patronitest.WaitFor
	ports        = patronitest.Ports
	readShare    = patronitest.ReadShare
	verifyNoLeak = patronitest.VerifyNoLeak
)

var (
	soak  = flag.Int("soak", 3, "failovers in TestSoak, alternating crash, hang and switchover of the leader (CI: 3; the full soak: -soak=30)")
	async = flag.Bool("patroni.async", true, "run TestCrashAsynchronous (a crash with Patroni's synchronous_mode off, where acknowledged writes may be lost)")
)

func TestMain(m *testing.M) {
	flag.Parse()
	opts := patroni.Options{Synchronous: true}
	if testing.Verbose() {
		opts.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000 ")+f+"\n", a...) }
	}
	os.Exit(patroni.Main(m, opts, &cluster)) // also fails when Close leaves a process or a goroutine
}

// appName marks the test's unified connections on the servers, so that a
// test can check none is left after Close.
const appName = "unified-scenario"

// dsnParams are unified's settings for Patroni: probes every 200 ms, and
// a write waits for a new primary longer than Patroni takes to elect one
// (ttl 20 s after a crash, about 22 s after a hang).
var dsnParams = []string{
	"unified_health_interval=200ms",
	"unified_health_timeout=500ms",
	"unified_failover_timeout=30s",
	"application_name=" + appName,
}

// writeTimeout bounds one INSERT of the workload: above the failover
// timeout, so that writes wait through an election and fail only with
// unified's own errors.
const writeTimeout = 40 * time.Second

// healthyAfter brings the cluster back to health when the test ends:
// resumes a hung node, starts a crashed one, waits for the rejoin.
func healthyAfter(t *testing.T, c *patroni.Cluster) {
	t.Cleanup(func() {
		if t.Failed() {
			for i := range c.Len() {
				t.Logf("---- %s log:\n%s", c.Node(i).Name, c.LogTail(i, 40))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Heal(ctx); err != nil {
			t.Errorf("healing the cluster after the test: %v", err)
		}
	})
}

// openDB opens the scenario's unified DB over the three nodes; the test
// closes it itself (to check what Close leaves), and the cleanup closes
// it again in case the test stopped early.
func openDB(t *testing.T, c *patroni.Cluster, extra ...string) *sql.DB {
	t.Helper()
	db, err := sql.Open("unified", c.DSN(append(append([]string(nil), dsnParams...), extra...)...))
	require.NoError(t, err)
	db.SetMaxIdleConns(16)
	t.Cleanup(func() { db.Close() })
	return db
}

// syncStandby returns the synchronous standby of leader l, or -1.
func syncStandby(ctx context.Context, t *testing.T, c *patroni.Cluster, l int) int {
	t.Helper()
	conn, err := c.Connect(ctx, l)
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(ctx))
	var name string
	require.NoError(t, conn.QueryRow(ctx, "SELECT coalesce(min(application_name), '') FROM pg_stat_replication WHERE sync_state = 'sync'").Scan(&name))
	for i := range c.Len() {
		if c.Node(i).Name == name {
			return i
		}
	}
	return -1
}

// asyncWindow polls node i's synchronous_standby_names from the promotion
// at until Patroni sets it again and returns when that was (zero if it
// never was within 30 s or ctx ended). Run it in a goroutine.
func asyncWindow(ctx context.Context, c *patroni.Cluster, i int) time.Time {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			conn, _ = c.Connect(ctx, i)
		}
		if conn != nil {
			var names string
			if err := conn.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&names); err != nil {
				conn.Close(context.WithoutCancel(ctx))
				conn = nil
			} else if names != "" {
				return time.Now()
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Millisecond):
		}
	}
	return time.Time{}
}

// noConnectionsLeft waits up to 5 s until no node has a backend of the
// test's unified DB (application_name appName): Close closed every
// physical and probe connection. Hung or stopped nodes are skipped.
func noConnectionsLeft(t *testing.T, c *patroni.Cluster) {
	t.Helper()
	patronitest.NoConnectionsLeft(t, c, appName, 5*time.Second)
}

// patchConfig changes Patroni's dynamic configuration through the
// leader's REST API (PATCH /config), for example {"synchronous_mode":
// false}.
func patchConfig(ctx context.Context, c *patroni.Cluster, leader int, body string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, c.Node(leader).RESTURL()+"/config", bytes.NewBufferString(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("PATCH /config %s: HTTP %d", strings.TrimSpace(body), resp.StatusCode)
	}
	return nil
}
