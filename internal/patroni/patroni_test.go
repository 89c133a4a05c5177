package patroni

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/pgcluster"
)

// One cluster for the test binary: starting one takes seconds, its
// failovers tens of seconds, so the tests share it and each leaves it
// healthy.
var cluster *Cluster

var etcd3 = flag.Bool("patroni.etcd3", false, "run the cluster with Patroni's etcd v3 client, which loses acknowledged writes in TestHangResumeKeepsNewLeader (patroni#2689)")

func TestMain(m *testing.M) {
	flag.Parse()
	opts := Options{Synchronous: true}
	if *etcd3 {
		opts.DCS = EtcdV3
	}
	if testing.Verbose() {
		opts.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000 ")+f+"\n", a...) }
	}
	os.Exit(Main(m, opts, &cluster)) // also fails when Close leaves a process or a goroutine
}

// healthyLeader starts a failover test: the shared cluster, healthy (and
// healed when the test ends), a context of d and the current leader.
func healthyLeader(t *testing.T, d time.Duration) (*Cluster, context.Context, int) {
	t.Helper()
	c := Need(t, cluster)
	ctx := pgcluster.CtxT(t, d)
	require.NoError(t, c.WaitHealthy(ctx))
	healthyAfter(t, c)
	leader, err := c.Leader(ctx)
	require.NoError(t, err)
	return c, ctx, leader
}

// leadsAndLostNothing ends a failover test: node want leads (why says
// what that shows) and no commit w saw acknowledged is missing from it
// (note adds to that message).
func leadsAndLostNothing(ctx context.Context, t *testing.T, c *Cluster, w *writer, want int, why, note string) {
	t.Helper()
	l, err := c.Leader(ctx)
	require.NoError(t, err)
	assert.Equal(t, want, l, why)
	lost := w.lost(ctx, t)
	assert.Empty(t, lost, "acknowledged commits lost"+note)
	t.Logf("%d commits acknowledged, %d lost", len(w.commits()), len(lost))
}

// healthyAfter brings the cluster back to health when the test ends:
// resumes a hung node, starts a crashed one, waits for the rejoin.
func healthyAfter(t *testing.T, c *Cluster) {
	t.Cleanup(func() {
		if dir := os.Getenv("UNIFIED_PATRONI_LOGS"); dir != "" {
			saveLogs(t, c, dir)
		}
		if t.Failed() {
			dumpLogs(t, c)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Heal(ctx); err != nil {
			t.Errorf("healing the cluster after the test: %v", err)
			dumpLogs(t, c)
		}
	})
}

// saveLogs copies every node's whole log into dir (named by
// $UNIFIED_PATRONI_LOGS), to read after Close removed the cluster.
func saveLogs(t *testing.T, c *Cluster, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Log(err)
		return
	}
	for i := range c.Len() {
		if b, err := os.ReadFile(c.Node(i).LogPath()); err == nil {
			_ = os.WriteFile(filepath.Join(dir, t.Name()+"-"+c.Node(i).Name+".log"), b, 0o644)
		}
	}
}

// dumpLogs logs the tail of every node's log.
func dumpLogs(t *testing.T, c *Cluster) {
	for i := range c.Len() {
		t.Logf("---- %s log:\n%s", c.Node(i).Name, c.LogTail(i, 40))
	}
}

// syncStandby returns the leader's synchronous standby.
func syncStandby(ctx context.Context, t *testing.T, c *Cluster, leader int) int {
	t.Helper()
	conn, err := c.Connect(ctx, leader)
	require.NoError(t, err)
	defer closeConn(conn)
	var name string
	require.NoError(t, conn.QueryRow(ctx, "SELECT application_name FROM pg_stat_replication WHERE sync_state = 'sync'").Scan(&name))
	for i := range c.Len() {
		if c.Node(i).Name == name {
			return i
		}
	}
	t.Fatalf("unknown synchronous standby %q", name)
	return -1
}

// asyncWindow measures how long after at (when node i became writable)
// its synchronous_standby_names stays empty: Patroni clears it just before
// it promotes and sets it again in a later loop, once a replica streams
// from the new leader; commits are asynchronous meanwhile. emptyFirst
// tells whether it was empty when first read. It fails the test if it is
// not set again within 15 s.
func asyncWindow(ctx context.Context, t *testing.T, c *Cluster, i int, at time.Time) (window time.Duration, emptyFirst bool) {
	t.Helper()
	conn, err := c.Connect(ctx, i)
	require.NoError(t, err)
	defer closeConn(conn)
	deadline := time.Now().Add(15 * time.Second)
	for first := true; ; first = false {
		var names string
		require.NoError(t, conn.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&names))
		if names != "" {
			return time.Since(at), emptyFirst
		}
		if first {
			emptyFirst = true
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: synchronous_standby_names still empty %v after promotion", c.Node(i).Name, time.Since(at))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// writer inserts rows 1, 2, 3... one at a time, each in its own
// transaction, into the leader it finds (a running, not hung, node out of
// recovery), and records which commits were acknowledged and how long
// each took. A failed insert is not retried: its row may or may not
// exist, the next one has a new key.
type writer struct {
	c     *Cluster
	table string
	stop  chan struct{}
	wg    sync.WaitGroup

	mu    sync.Mutex // protects following fields
	acked []commit
}

type commit struct {
	k          int64
	start, end time.Time
	node       int
}

func startWriter(ctx context.Context, t *testing.T, c *Cluster) *writer {
	t.Helper()
	l, err := c.Leader(ctx)
	require.NoError(t, err)
	w := &writer{c: c, table: strings.ToLower(t.Name()), stop: make(chan struct{})}
	conn, err := c.Connect(ctx, l)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "DROP TABLE IF EXISTS "+w.table+"; CREATE TABLE "+w.table+" (k bigint PRIMARY KEY)")
	closeConn(conn)
	require.NoError(t, err)
	w.wg.Go(w.run)
	t.Cleanup(w.halt)
	return w
}

func (w *writer) run() {
	var conn *pgx.Conn
	node := -1
	defer func() {
		if conn != nil {
			closeConn(conn)
		}
	}()
	for k := int64(1); ; k++ {
		select {
		case <-w.stop:
			return
		default:
		}
		if conn == nil {
			conn, node = w.connectLeader()
			if conn == nil {
				k--
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		start := time.Now()
		_, err := conn.Exec(ctx, "INSERT INTO "+w.table+" VALUES ($1)", k)
		cancel()
		if err != nil {
			closeConn(conn)
			conn = nil
			continue
		}
		w.mu.Lock()
		w.acked = append(w.acked, commit{k, start, time.Now(), node})
		w.mu.Unlock()
	}
}

func (w *writer) connectLeader() (*pgx.Conn, int) {
	for i := range w.c.Len() {
		if !w.c.Running(i) || w.c.Hung(i) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := w.c.Connect(ctx, i)
		if err == nil {
			var rec bool
			if err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err == nil && !rec {
				cancel()
				return conn, i
			}
			closeConn(conn)
		}
		cancel()
	}
	return nil, -1
}

func (w *writer) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.wg.Wait()
}

func (w *writer) commits() []commit {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acked)
}

// waitAcked waits until n more commits are acknowledged.
func (w *writer) waitAcked(t *testing.T, n int, d time.Duration) {
	t.Helper()
	want := len(w.commits()) + n
	deadline := time.Now().Add(d)
	for len(w.commits()) < want {
		if time.Now().After(deadline) {
			t.Fatalf("writer: fewer than %d commits acknowledged in %v", n, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lost stops the writer and returns the acknowledged rows the leader does
// not have.
func (w *writer) lost(ctx context.Context, t *testing.T) []int64 {
	t.Helper()
	w.halt()
	l, err := w.c.Leader(ctx)
	require.NoError(t, err)
	conn, err := w.c.Connect(ctx, l)
	require.NoError(t, err)
	defer closeConn(conn)
	rows, err := conn.Query(ctx, "SELECT k FROM "+w.table)
	require.NoError(t, err)
	have := map[int64]bool{}
	for rows.Next() {
		var k int64
		require.NoError(t, rows.Scan(&k))
		have[k] = true
	}
	require.NoError(t, rows.Err())
	var lost []int64
	for _, cm := range w.commits() {
		if !have[cm.k] {
			lost = append(lost, cm.k)
		}
	}
	return lost
}

// between counts the commits acknowledged between from and to.
func (w *writer) between(from, to time.Time) int {
	n := 0
	for _, cm := range w.commits() {
		if cm.end.After(from) && cm.end.Before(to) {
			n++
		}
	}
	return n
}

// slowestAfter returns the longest commit that ended after at, and how
// many commits it considered.
func (w *writer) slowestAfter(at time.Time) (time.Duration, int) {
	var worst time.Duration
	n := 0
	for _, cm := range w.commits() {
		if cm.end.After(at) {
			n++
			worst = max(worst, cm.end.Sub(cm.start))
		}
	}
	return worst, n
}
