package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/unifiedsql/unified/internal/childproc"
)

// faultable starts a test that faults the shared cluster: the cluster,
// restored when the test ends, and a context of d.
func faultable(t *testing.T, d time.Duration) (*Cluster, context.Context) {
	t.Helper()
	c := Need(t, cluster)
	restoreAfter(t, c)
	return c, CtxT(t, d)
}

// restoreAfter restores the topology when the test ends.
func restoreAfter(t *testing.T, c *Cluster) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start := time.Now()
		if err := c.Restore(ctx); err != nil {
			t.Errorf("Restore: %v", err)
			dumpLogs(t, c)
			return
		}
		t.Logf("Restore took %v", time.Since(start).Round(time.Millisecond))
	})
}

// dumpLogs logs the tail of every node's server log.
func dumpLogs(t *testing.T, c *Cluster) {
	for i := range c.Len() {
		t.Logf("---- %s log:\n%s", c.Node(i).Name, c.LogTail(i, 40))
	}
}

// table makes a fresh table on the primary named after the test.
func table(t *testing.T, c *Cluster, primary int) string {
	name := strings.ToLower(strings.NewReplacer("/", "_", "-", "_").Replace(t.Name()))
	require.NoError(t, c.Exec(CtxT(t, 10*time.Second), primary,
		fmt.Sprintf("DROP TABLE IF EXISTS %s; CREATE TABLE %s (id int PRIMARY KEY, v text)", name, name)))
	return name
}

func count(t *testing.T, c *Cluster, i int, tbl string, id int) int {
	var n int
	require.NoError(t, c.QueryRow(CtxT(t, 5*time.Second), i, "SELECT count(*) FROM "+tbl+" WHERE id = $1", id).Scan(&n))
	return n
}

func TestDSN(t *testing.T) {
	c := Need(t, cluster)
	require.Equal(t, 3, c.Len())
	n0, n1, n2 := c.Node(0), c.Node(1), c.Node(2)
	assert.Nil(t, c.Node(3))
	assert.Nil(t, c.Node(-1))
	for i, n := range []*Node{n0, n1, n2} {
		assert.Equal(t, i, n.Index)
		assert.Equal(t, fmt.Sprintf("node%d", i), n.Name)
		assert.Equal(t, "127.0.0.1", n.Host)
		assert.Equal(t, fmt.Sprintf("127.0.0.1:%d", n.Port), n.Addr())
		assert.Equal(t, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", n.Port), n.DSN())
		assert.DirExists(t, n.DataDir)
	}
	assert.Equal(t, fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable", n0.Port, n1.Port, n2.Port), c.DSN())
	assert.Equal(t, fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write&connect_timeout=2", n2.Port, n0.Port),
		c.DSNOrder([]int{2, 0}, "target_session_attrs=read-write", "connect_timeout=2"))

	// pgx understands the multi-host URL and lands on the primary.
	cfg, err := pgx.ParseConfig(c.DSNOrder([]int{2, 1, 0}, "target_session_attrs=read-write"))
	require.NoError(t, err)
	conn, err := pgx.ConnectConfig(CtxT(t, 10*time.Second), cfg)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var rec bool
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT pg_is_in_recovery()").Scan(&rec))
	assert.False(t, rec)
	assert.Equal(t, n0.Port, conn.PgConn().Conn().RemoteAddr().(*net.TCPAddr).Port)
}

func TestReplication(t *testing.T) {
	c := Need(t, cluster)
	ctx := CtxT(t, 30*time.Second)
	p, err := c.Primary(ctx)
	require.NoError(t, err)
	require.Equal(t, 0, p)
	for i := range c.Len() {
		rec, err := c.InRecovery(ctx, i)
		require.NoError(t, err)
		assert.Equal(t, i != 0, rec, "node%d in recovery", i)
	}
	var names []string
	require.NoError(t, c.QueryRow(ctx, 0,
		"SELECT array_agg(application_name ORDER BY application_name) FROM pg_stat_replication WHERE state = 'streaming'").Scan(&names))
	assert.Equal(t, []string{"node1", "node2"}, names)

	tbl := table(t, c, 0)
	require.NoError(t, c.Exec(ctx, 0, "INSERT INTO "+tbl+" VALUES ($1, $2)", 1, "one"))
	for _, i := range []int{1, 2} {
		require.NoError(t, c.WaitCatchUp(ctx, i, 0))
		var v string
		require.NoError(t, c.QueryRow(ctx, i, "SELECT v FROM "+tbl+" WHERE id = 1").Scan(&v))
		assert.Equal(t, "one", v)
	}
	// A standby refuses writes.
	err = c.Exec(ctx, 1, "INSERT INTO "+tbl+" VALUES (2, 'two')")
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "25006", pgErr.Code)

	// Errors: bad index, connect error surfaces from Scan.
	assert.Error(t, c.Exec(ctx, 7, "SELECT 1"))
	var x int
	assert.Error(t, c.QueryRow(ctx, 7, "SELECT 1").Scan(&x))
	assert.ErrorIs(t, c.QueryRow(ctx, 0, "SELECT 1 WHERE false").Scan(&x), pgx.ErrNoRows)
}

func TestKillAndStart(t *testing.T) {
	c, ctx := faultable(t, 30*time.Second)
	tbl := table(t, c, 0)
	pid := c.PID(0)
	require.NotZero(t, pid)

	require.NoError(t, c.Kill(0))
	assert.False(t, c.Running(0))
	assert.Error(t, syscall.Kill(pid, 0), "postmaster still exists")
	err := c.Exec(ctx, 0, "SELECT 1")
	require.Error(t, err)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED)
	assert.Error(t, c.Kill(0), "killing a dead node")

	require.NoError(t, c.Start(ctx, 0))
	assert.NotEqual(t, pid, c.PID(0))
	rec, err := c.InRecovery(ctx, 0)
	require.NoError(t, err)
	assert.False(t, rec)
	require.NoError(t, c.Exec(ctx, 0, "INSERT INTO "+tbl+" VALUES (1, 'after crash')"))
	// The replicas reconnect on their own.
	for _, i := range []int{1, 2} {
		require.NoError(t, c.waitStreaming(ctx, i, 0, -1))
		require.NoError(t, c.WaitCatchUp(ctx, i, 0))
		assert.Equal(t, 1, count(t, c, i, tbl, 1))
	}
}

func TestHangContinue(t *testing.T) {
	c, ctx := faultable(t, 30*time.Second)
	// A session opened before the hang must hang too: backends are not in
	// the postmaster's process group.
	before, err := c.Connect(ctx, 1)
	require.NoError(t, err)
	defer before.Close(context.Background())
	require.NoError(t, c.Hang(1))
	assert.True(t, c.Hung(1))
	ectx, ecancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = before.Exec(ectx, "SELECT 1")
	ecancel()
	require.Error(t, err, "an existing session does not answer while the node hangs")

	qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	start := time.Now()
	var one int
	err = c.QueryRow(qctx, 1, "SELECT 1").Scan(&one)
	cancel()
	took := time.Since(start)
	require.Error(t, err)
	assert.True(t, errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err), "%v", err)
	assert.Less(t, took, 2*time.Second)
	assert.GreaterOrEqual(t, took, 250*time.Millisecond)

	require.NoError(t, c.Continue(1))
	assert.False(t, c.Hung(1))
	require.NoError(t, c.QueryRow(ctx, 1, "SELECT 1").Scan(&one))
	assert.Equal(t, 1, one)
}

func TestStopModes(t *testing.T) {
	c, ctx := faultable(t, 30*time.Second)
	assert.Error(t, c.Stop(2, "nicely"))
	for _, mode := range []string{"smart", "fast", "immediate"} {
		pid := c.PID(2)
		require.NoError(t, c.Stop(2, mode), mode)
		assert.False(t, c.Running(2))
		assert.Error(t, syscall.Kill(pid, 0), "%s: postmaster still exists", mode)
		assert.Empty(t, childproc.GroupMembers(pid), "%s: processes left", mode)
		require.NoError(t, c.Stop(2, mode), "stopping a stopped node")
		require.NoError(t, c.Start(ctx, 2), mode)
		require.NoError(t, c.waitStreaming(ctx, 2, 0, -1), mode)
	}
	require.NoError(t, c.Start(ctx, 2), "starting a running node")
}

// TestFailover: primary crash, promote, re-point, rejoin; Restore (in
// cleanup) then switches back to node 0.
func TestFailover(t *testing.T) {
	c, ctx := faultable(t, 60*time.Second)
	tbl := table(t, c, 0)
	require.NoError(t, c.WaitCatchUp(ctx, 1, 0))
	require.NoError(t, c.WaitCatchUp(ctx, 2, 0))

	require.NoError(t, c.Kill(0))
	promoted, err := c.Promote(ctx, 1)
	require.NoError(t, err)
	rec, err := c.InRecovery(ctx, 1)
	require.NoError(t, err)
	assert.False(t, rec)
	require.NoError(t, c.Exec(ctx, 1, "INSERT INTO "+tbl+" VALUES (1, 'on node1')"))
	wrote := time.Now()
	assert.True(t, promoted.Before(wrote))
	_, err = c.Promote(ctx, 1)
	assert.Error(t, err, "promoting a primary")

	require.NoError(t, c.Repoint(ctx, 2, 1))
	require.NoError(t, c.Exec(ctx, 1, "INSERT INTO "+tbl+" VALUES (2, 'after repoint')"))
	require.NoError(t, c.WaitCatchUp(ctx, 2, 1))
	assert.Equal(t, 1, count(t, c, 2, tbl, 2))

	require.NoError(t, c.Rejoin(ctx, 0, 1))
	rec, err = c.InRecovery(ctx, 0)
	require.NoError(t, err)
	assert.True(t, rec)
	ok, err := c.Streaming(ctx, 0, 1)
	require.NoError(t, err)
	assert.True(t, ok)
	require.NoError(t, c.Exec(ctx, 1, "INSERT INTO "+tbl+" VALUES (3, 'after rejoin')"))
	require.NoError(t, c.WaitCatchUp(ctx, 0, 1))
	assert.Equal(t, 1, count(t, c, 0, tbl, 3))
	p, err := c.Primary(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, p)
}

func TestPauseResumeReplay(t *testing.T) {
	c, ctx := faultable(t, 30*time.Second)
	tbl := table(t, c, 0)
	require.NoError(t, c.WaitCatchUp(ctx, 1, 0))
	require.NoError(t, c.PauseReplay(ctx, 1))

	lsn := func(i int, q string) string {
		var s string
		require.NoError(t, c.QueryRow(ctx, i, "SELECT ("+q+")::text").Scan(&s))
		return s
	}
	before := lsn(1, "pg_last_wal_replay_lsn()")
	require.NoError(t, c.Exec(ctx, 0, "INSERT INTO "+tbl+" SELECT g, 'x' FROM generate_series(1, 1000) g"))
	require.NoError(t, c.WaitCatchUp(ctx, 2, 0)) // node2 replays, node1 only receives
	target := lsn(0, "pg_current_wal_lsn()")
	// node1 has received the WAL...
	require.Eventually(t, func() bool {
		var ok bool
		err := c.QueryRow(ctx, 1, "SELECT pg_last_wal_receive_lsn() >= $1::text::pg_lsn", target).Scan(&ok)
		return err == nil && ok
	}, 10*time.Second, 5*time.Millisecond)
	// ...but not replayed it: the lag grows.
	assert.Equal(t, before, lsn(1, "pg_last_wal_replay_lsn()"))
	var lag int64
	require.NoError(t, c.QueryRow(ctx, 1, "SELECT pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())::bigint", target).Scan(&lag))
	assert.Greater(t, lag, int64(0))
	assert.Equal(t, 0, count(t, c, 1, tbl, 1000))
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	assert.Error(t, c.WaitCatchUp(short, 1, 0))
	cancel()

	require.NoError(t, c.ResumeReplay(ctx, 1))
	require.NoError(t, c.WaitCatchUp(ctx, 1, 0))
	assert.Equal(t, 1, count(t, c, 1, tbl, 1000))
}

func TestSetSynchronous(t *testing.T) {
	c, ctx := faultable(t, 30*time.Second)
	states := func() []string {
		var s []string
		require.NoError(t, c.QueryRow(ctx, 0, "SELECT array_agg(sync_state::text ORDER BY application_name) FROM pg_stat_replication").Scan(&s))
		return s
	}
	require.NoError(t, c.SetSynchronous(ctx, 0, true))
	var names string
	require.NoError(t, c.QueryRow(ctx, 0, "SHOW synchronous_standby_names").Scan(&names))
	assert.Equal(t, SyncStandbyNames, names)
	for _, s := range states() {
		assert.Contains(t, []string{"sync", "quorum"}, s)
	}
	tbl := table(t, c, 0) // commits need a standby's answer now
	require.NoError(t, c.Exec(ctx, 0, "INSERT INTO "+tbl+" VALUES (1, 'sync')"))

	require.NoError(t, c.SetSynchronous(ctx, 0, false))
	assert.Equal(t, []string{"async", "async"}, states())
}

func TestWriteHBA(t *testing.T) {
	c := Need(t, cluster)
	ctx := CtxT(t, 30*time.Second)
	t.Cleanup(func() { assert.NoError(t, c.WriteHBA(context.Background(), 0, nil)) })
	require.NoError(t, c.Exec(ctx, 0, "DROP ROLE IF EXISTS app; CREATE ROLE app LOGIN"))
	connectAs := func(user string) error {
		cfg, err := connConfig(c.Node(0), user)
		require.NoError(t, err)
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			conn.Close(ctx)
		}
		return err
	}
	require.NoError(t, connectAs("app"))

	require.NoError(t, c.WriteHBA(ctx, 0, append([]string{"host all app 127.0.0.1/32 reject"}, DefaultHBA...)))
	err := connectAs("app")
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Contains(t, []string{"28000", "28P01"}, pgErr.Code)
	require.NoError(t, connectAs("postgres"))

	require.NoError(t, c.WriteHBA(ctx, 0, nil))
	require.NoError(t, connectAs("app"))
	assert.True(t, c.hbaIsDefault(0))
}

// TestRestore faults the cluster in several ways at once and restores it.
func TestRestore(t *testing.T) {
	c := Need(t, cluster)
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, c)
		}
	})
	ctx := CtxT(t, 60*time.Second)
	tbl := table(t, c, 0)
	// Split brain: node2 promoted while node0 is still primary; node1
	// stopped; node0 synchronous with a pg_hba rejecting nobody useful.
	_, err := c.Promote(ctx, 2)
	require.NoError(t, err)
	require.NoError(t, c.Exec(ctx, 2, "INSERT INTO "+tbl+" VALUES (99, 'diverged')"))
	require.NoError(t, c.Stop(1, "immediate"))
	require.NoError(t, c.SetSynchronous(ctx, 0, false))
	require.NoError(t, c.WriteHBA(ctx, 0, append([]string{"host all app 127.0.0.1/32 reject"}, DefaultHBA...)))
	_, err = c.Primary(ctx)
	require.Error(t, err)

	start := time.Now()
	require.NoError(t, c.Restore(ctx))
	t.Logf("Restore took %v", time.Since(start).Round(time.Millisecond))
	checkInitialShape(t, c)
	assert.Equal(t, 0, count(t, c, 2, tbl, 99), "node2's diverged row survived the rejoin")

	// A hung primary and paused standby.
	require.NoError(t, c.PauseReplay(ctx, 1))
	require.NoError(t, c.Hang(0))
	require.NoError(t, c.Restore(ctx))
	checkInitialShape(t, c)

	// Node 0 crashed and its data directory is unusable: a standby is
	// promoted, node 0 rebuilt from it and switched back to.
	require.NoError(t, c.Kill(0))
	require.NoError(t, os.Remove(filepath.Join(c.Node(0).DataDir, "global", "pg_control")))
	start = time.Now()
	require.NoError(t, c.Restore(ctx))
	t.Logf("Restore took %v", time.Since(start).Round(time.Millisecond))
	checkInitialShape(t, c)
}

// TestStartFailure: a node that cannot start fails Start with its log tail
// and leaves neither processes nor the directory behind.
func TestStartFailure(t *testing.T) {
	c0 := Need(t, cluster)
	tmp, err := os.MkdirTemp("", "pgcltest-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(tmp) })
	require.NoError(t, os.Chmod(tmp, 0o755))
	// A stale directory of a dead owner is swept by the next Start.
	stale := filepath.Join(tmp, "pgcluster-stale")
	require.NoError(t, os.MkdirAll(filepath.Join(stale, "node0"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(stale, ownerFile), []byte("999999999 1\n"), 0o644))

	c, err := Start(CtxT(t, 30*time.Second), Options{BinDir: c0.bin, TempDir: tmp, ExtraConf: []string{"no_such_setting = 1"}})
	require.Error(t, err)
	assert.Nil(t, c)
	assert.Contains(t, err.Error(), "no_such_setting")
	left, _ := filepath.Glob(filepath.Join(tmp, "pgcluster-*"))
	assert.Empty(t, left)

	if os.Geteuid() == 0 {
		// As root, a TempDir the postgres user cannot reach is refused
		// with a clear error.
		_, err := Start(CtxT(t, 30*time.Second), Options{BinDir: c0.bin, TempDir: t.TempDir()})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "not searchable")
	}
}

// checkInitialShape: node 0 primary, both replicas streaming from it and
// replaying, synchronous off, default pg_hba.
func checkInitialShape(t *testing.T, c *Cluster) {
	t.Helper()
	ctx := CtxT(t, 30*time.Second)
	p, err := c.Primary(ctx)
	require.NoError(t, err)
	require.Equal(t, 0, p)
	var names []string
	require.NoError(t, c.QueryRow(ctx, 0,
		"SELECT array_agg(application_name ORDER BY application_name) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'async'").Scan(&names))
	assert.Equal(t, []string{"node1", "node2"}, names)
	var sync string
	require.NoError(t, c.QueryRow(ctx, 0, "SHOW synchronous_standby_names").Scan(&sync))
	assert.Empty(t, sync)
	tbl := table(t, c, 0)
	require.NoError(t, c.Exec(ctx, 0, "INSERT INTO "+tbl+" VALUES (1, 'x')"))
	for i := 1; i < c.Len(); i++ {
		assert.False(t, c.Hung(i))
		assert.True(t, c.hbaIsDefault(i))
		require.NoError(t, c.WaitCatchUp(ctx, i, 0))
		assert.Equal(t, 1, count(t, c, i, tbl, 1))
	}
}

// TestCloseLeavesNothing starts a second, small, synchronous cluster with
// extra settings, leaves a node hung and a killed node's backends behind,
// and checks Close cleans up.
func TestCloseLeavesNothing(t *testing.T) {
	c0 := Need(t, cluster)
	ctx := CtxT(t, 30*time.Second)
	c, err := Start(ctx, Options{Replicas: 1, BinDir: c0.bin, Synchronous: true, ExtraConf: []string{"work_mem = '8MB'"}})
	require.NoError(t, err)
	defer c.Close()
	var state string
	require.NoError(t, c.QueryRow(ctx, 0, "SELECT sync_state FROM pg_stat_replication").Scan(&state))
	assert.Equal(t, "quorum", state)
	var wm string
	require.NoError(t, c.QueryRow(ctx, 1, "SHOW work_mem").Scan(&wm))
	assert.Equal(t, "8MB", wm)
	pids := []int{c.PID(0), c.PID(1)}
	// An open session, so the killed postmaster leaves a backend behind.
	conn, err := c.Connect(ctx, 0)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var dsm string
	require.NoError(t, c.QueryRow(ctx, 0, "SHOW dynamic_shared_memory_type").Scan(&dsm))
	assert.Equal(t, "mmap", dsm, "DSM segments in /dev/shm would outlive a crash")
	pidFile, err := os.ReadFile(filepath.Join(c.Node(0).DataDir, "postmaster.pid"))
	require.NoError(t, err)
	var shmKey int64
	_, err = fmt.Sscan(strings.Split(string(pidFile), "\n")[6], &shmKey)
	require.NoError(t, err)
	require.NoError(t, c.Kill(0))
	require.NoError(t, c.Hang(1))
	base := c.BaseDir()
	assert.True(t, shmExists(shmKey), "a killed postmaster leaves its SysV segment")

	require.NoError(t, c.Close())
	require.NoError(t, c.Close(), "second Close")
	for _, pid := range pids {
		assert.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "postmaster %d survived Close", pid)
		assert.Empty(t, childproc.GroupMembers(pid), "processes of group %d survived Close", pid)
	}
	assert.NoDirExists(t, base)
	assert.False(t, shmExists(shmKey), "Close left the killed node's SysV segment")
	assert.ErrorIs(t, c.Start(ctx, 0), errClosed)
}

func TestFindBinDir(t *testing.T) {
	t.Setenv("UNIFIED_PG_BIN", "/nonexistent")
	_, err := FindBinDir()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "UNIFIED_PG_BIN")
}

func TestFindBinDirFromEnv(t *testing.T) {
	bin := NeedBinaries(t)
	t.Setenv("UNIFIED_PG_BIN", bin)
	dir, err := FindBinDir()
	require.NoError(t, err)
	assert.Equal(t, bin, dir)
}

func TestStandbyAndPrimary(t *testing.T) {
	c := &Cluster{nodes: []*Node{{Name: "node0"}, {Name: "node1"}}}
	tests := []struct {
		name       string
		i, primary int
		err        string
	}{
		{name: "ok", i: 1, primary: 0},
		{name: "no standby", i: 2, primary: 0, err: "pgcluster: no node 2 (cluster has 2)"},
		{name: "no primary", i: 1, primary: -1, err: "pgcluster: no node -1 (cluster has 2)"},
		{name: "itself", i: 1, primary: 1, err: "pgcluster: cannot rejoin node1 to itself"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, p, err := c.standbyAndPrimary("rejoin", tt.i, tt.primary)
			if tt.err != "" {
				require.EqualError(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Same(t, c.nodes[tt.i], n)
			assert.Same(t, c.nodes[tt.primary], p)
		})
	}
}
