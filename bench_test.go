package unified_test

// Benchmarks. Run them all, compared with benchstat and summarised in
// bench/out/results.md, with bench/run; see bench/README.md.
//
// BenchmarkOverhead measures what unified adds per statement with no I/O:
// an in-memory driver (internal/fakepg) alone ("direct") and behind
// unified ("unified"). The other benchmarks send real traffic to the
// package's local cluster (TestMain) and skip without PostgreSQL binaries.
// Sub-benchmark names end in the implementation (direct, pgx, pgbouncer,
// unified) so that bench/run can put them side by side.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/fakepg"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// ---- statement overhead, no I/O ----

// benchOverheadDB returns a DB over in-memory nodes: the driver alone (impl
// "direct") or behind unified with a static primary "a:5432" and replica
// "b:5432" (impl "unified"), and the connectors of both nodes (the direct
// DB uses the first).
func benchOverheadDB(b *testing.B, impl string) (db *sql.DB, primary, replica *fakepg.Node) {
	b.Helper()
	primary, replica = &fakepg.Node{}, &fakepg.Node{}
	switch impl {
	case "direct":
		db = sql.OpenDB(primary)
	case "unified":
		cfg, err := unified.ParseConfig("postgres://bench@a:5432,b:5432/bench")
		if err != nil {
			b.Fatal(err)
		}
		db, err = unified.OpenDB(cfg,
			unified.WithNodeConnector("a:5432", primary),
			unified.WithNodeConnector("b:5432", replica),
			unified.WithStaticPrimary("a:5432"))
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() { _ = db.Close() })
	return db, primary, replica
}

// BenchmarkOverhead compares one statement through database/sql on the
// in-memory driver alone (direct) and behind unified. The difference is
// unified's cost per statement (budget: 300 ns and 1 allocation).
func BenchmarkOverhead(b *testing.B) {
	const (
		insert = "INSERT INTO t (v) VALUES ($1)"
		point  = "SELECT v FROM t WHERE id = $1"
	)
	ops := []struct {
		name string
		run  func(b *testing.B, db *sql.DB)
	}{
		{"Exec", func(b *testing.B, db *sql.DB) {
			ctx := context.Background()
			benchStatements(b, func() error {
				_, err := db.ExecContext(ctx, insert, 7)
				return err
			})
		}},
		{"QueryScan", func(b *testing.B, db *sql.DB) {
			ctx := context.Background()
			var v int64
			benchStatements(b, func() error { return db.QueryRowContext(ctx, point, 7).Scan(&v) })
		}},
		{"PrepareExec", func(b *testing.B, db *sql.DB) { // prepared once, executed b.N times
			ctx := context.Background()
			st, err := db.PrepareContext(ctx, insert)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			benchStatements(b, func() error {
				_, err := st.ExecContext(ctx, 7)
				return err
			})
		}},
		{"BeginCommit", func(b *testing.B, db *sql.DB) {
			ctx := context.Background()
			benchStatements(b, func() error {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					return err
				}
				return tx.Commit()
			})
		}},
		{"ReadOnlyQueryScan", func(b *testing.B, db *sql.DB) {
			ctx := unified.WithMode(context.Background(), unified.ReadOnly)
			var v int64
			benchStatements(b, func() error { return db.QueryRowContext(ctx, point, 7).Scan(&v) })
		}},
	}
	for _, op := range ops {
		b.Run(op.name, func(b *testing.B) {
			for _, impl := range []string{"direct", "unified"} {
				b.Run(impl, func(b *testing.B) {
					db, primary, replica := benchOverheadDB(b, impl)
					b.ReportAllocs()
					op.run(b, db)
					if impl == "unified" && op.name == "ReadOnlyQueryScan" && (primary.Dials() != 0 || replica.Dials() == 0) {
						b.Fatalf("ReadOnly reads did not go to the replica: primary dials %d, replica dials %d", primary.Dials(), replica.Dials())
					}
				})
			}
		})
	}
}

// benchStatements runs stmt in a b.Loop and reports, besides the wall
// time, the CPU time of the whole process per statement (cpu-ns/op): on a
// machine shared with other work the wall time includes waiting for a CPU,
// the CPU time does not.
func benchStatements(b *testing.B, stmt func() error) {
	cpu0 := benchCPU()
	for b.Loop() {
		if err := stmt(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}

// benchCPU returns the CPU time (user + system, every thread) this process
// has used.
func benchCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ---- real traffic on the local cluster ----

// Tables of the cluster benchmarks, created once per process.
const (
	benchKVRows     = 10_000
	benchSelectOne  = "SELECT 1"
	benchPointQuery = "SELECT v FROM bench_kv WHERE id = $1"
	benchInsertRow  = "INSERT INTO bench_ins (v) VALUES ($1)"
)

var benchTables struct {
	once     sync.Once
	err      error
	primary  int
	replicas []int
}

// needBenchCluster returns the shared cluster (skipping without one), the
// index of its primary and of its replicas, with the benchmark tables
// created and replayed on every replica.
func needBenchCluster(b *testing.B) (c *pgcluster.Cluster, primary int, replicas []int) {
	b.Helper()
	c = pgcluster.Need(b, cluster)
	t := &benchTables
	t.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if t.primary, t.err = c.Primary(ctx); t.err != nil {
			return
		}
		t.err = c.Exec(ctx, t.primary, fmt.Sprintf(`
			DROP TABLE IF EXISTS bench_kv, bench_ins;
			CREATE TABLE bench_kv (id int PRIMARY KEY, v bigint NOT NULL);
			INSERT INTO bench_kv SELECT g, g * 7 FROM generate_series(1, %d) g;
			CREATE TABLE bench_ins (id bigserial PRIMARY KEY, v bigint NOT NULL);
			ANALYZE bench_kv;`, benchKVRows))
		if t.err != nil {
			return
		}
		for i := range c.Len() {
			if i == t.primary {
				continue
			}
			if t.err = c.WaitCatchUp(ctx, i, t.primary); t.err != nil {
				return
			}
			t.replicas = append(t.replicas, i)
		}
	})
	if t.err != nil {
		b.Fatalf("benchmark tables: %v", t.err)
	}
	return c, t.primary, t.replicas
}

// benchOpenPgx opens pgx stdlib on one DSN.
func benchOpenPgx(b *testing.B, dsn string) *sql.DB {
	b.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	return db
}

// benchOpenUnified opens unified on dsn and waits until its health monitor
// sees a writable primary and wantReplicas replicas up, so reads are
// routed as the benchmark intends from the first statement.
func benchOpenUnified(b *testing.B, dsn string, wantReplicas int) *sql.DB {
	b.Helper()
	db, err := sql.Open("unified", dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	uc, _ := unified.ConnectorOf(db)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		h := uc.Health(ctx)
		up := 0
		for _, n := range h.Nodes {
			if n.Role == "replica" && n.State == "up" {
				up++
			}
		}
		if h.Writable && up == wantReplicas {
			return db
		}
		select {
		case <-ctx.Done():
			b.Fatalf("unified never saw a writable primary and %d replicas up: %+v", wantReplicas, h)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// benchQuerier is what the operations need: *sql.DB and *sql.Conn have it.
type benchQuerier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// benchOp is one operation of a cluster benchmark; r is its goroutine's
// own random source.
type benchOp func(ctx context.Context, q benchQuerier, r *rand.Rand) error

func benchSelect1(ctx context.Context, q benchQuerier, _ *rand.Rand) error {
	var n int
	return q.QueryRowContext(ctx, benchSelectOne).Scan(&n)
}

func benchPointSelect(ctx context.Context, q benchQuerier, r *rand.Rand) error {
	var v int64
	return q.QueryRowContext(ctx, benchPointQuery, r.IntN(benchKVRows)+1).Scan(&v)
}

func benchInsert(ctx context.Context, q benchQuerier, r *rand.Rand) error {
	_, err := q.ExecContext(ctx, benchInsertRow, r.Int64())
	return err
}

// benchRunConc runs b.N operations on db from exactly conc goroutines, each
// doing its share, with the pool sized to conc, and reports throughput
// (ops/s), the median and 99th percentile latency (µs) and the CPU time of
// this process (the client: database/sql, the driver, unified's monitor)
// per operation; the servers' CPU time is not in it.
func benchRunConc(b *testing.B, ctx context.Context, db *sql.DB, conc int, op benchOp) {
	b.Helper()
	db.SetMaxOpenConns(conc)
	db.SetMaxIdleConns(conc)
	benchWarmUp(b, ctx, db, conc, op)

	lat := make([]time.Duration, b.N)
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	b.ResetTimer()
	cpu0 := benchCPU()
	start := time.Now()
	for g := range conc {
		lo, hi := g*b.N/conc, (g+1)*b.N/conc
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), uint64(b.N)))
			for i := lo; i < hi; i++ {
				t0 := time.Now()
				if err := op(ctx, db, r); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := benchCPU() - cpu0
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	slices.Sort(lat)
	pct := func(p int) float64 { return float64(lat[(len(lat)-1)*p/100]) / float64(time.Microsecond) }
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(pct(50), "p50-us")
	b.ReportMetric(pct(99), "p99-us")
	b.ReportMetric(float64(cpu)/float64(time.Microsecond)/float64(b.N), "client-cpu-us/op")
}

// benchWarmUp makes the pool hold conc connections that have each run op once,
// so dials and statement preparation stay out of the measurement.
func benchWarmUp(b *testing.B, ctx context.Context, db *sql.DB, conc int, op benchOp) {
	b.Helper()
	r := rand.New(rand.NewPCG(0, 0))
	conns := make([]*sql.Conn, 0, conc)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range conc {
		c, err := db.Conn(ctx)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		if err := op(ctx, c, r); err != nil {
			b.Fatal(err)
		}
	}
}

var benchConcurrency = []int{1, 8, 32}

// benchPgxVsUnified runs op at each of benchConcurrency through pgx stdlib straight to
// the primary and through unified over the whole cluster.
func benchPgxVsUnified(b *testing.B, op benchOp) {
	c, primary, replicas := needBenchCluster(b)
	dbs := []struct {
		impl string
		db   *sql.DB
	}{
		{"pgx", benchOpenPgx(b, c.Node(primary).DSN())},
		{"unified", benchOpenUnified(b, c.DSN(), len(replicas))},
	}
	ctx := context.Background()
	for _, conc := range benchConcurrency {
		b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) {
			for _, d := range dbs {
				b.Run(d.impl, func(b *testing.B) { benchRunConc(b, ctx, d.db, conc, op) })
			}
		})
	}
}

// BenchmarkSelect1 is SELECT 1 on the primary: the driver's and the
// round trip's cost with no work in the server.
func BenchmarkSelect1(b *testing.B) { benchPgxVsUnified(b, benchSelect1) }

// BenchmarkPointSelect reads one row by primary key from a 10k-row table
// (default mode: on the primary).
func BenchmarkPointSelect(b *testing.B) { benchPgxVsUnified(b, benchPointSelect) }

// BenchmarkInsert inserts one row per statement (autocommit).
func BenchmarkInsert(b *testing.B) { benchPgxVsUnified(b, benchInsert) }

// BenchmarkReadScaling runs ReadOnly point selects through unified at
// conc=8 with 0, 1 and 2 replicas in the DSN (0: reads fall back to the
// primary). On a machine with few cores every node competes for the same
// CPUs, so more replicas cannot add throughput there.
func BenchmarkReadScaling(b *testing.B) {
	c, primary, replicas := needBenchCluster(b)
	ctx := unified.WithMode(context.Background(), unified.ReadOnly)
	for n := 0; n <= len(replicas); n++ {
		b.Run("replicas="+strconv.Itoa(n), func(b *testing.B) {
			db := benchOpenUnified(b, c.DSNOrder(append([]int{primary}, replicas[:n]...)), n)
			b.Run("unified", func(b *testing.B) { benchRunConc(b, ctx, db, 8, benchPointSelect) })
			uc, _ := unified.ConnectorOf(db)
			if fb := uc.Stats().ReadFallbacks; (n == 0) != (fb > 0) {
				b.Errorf("replicas=%d: %d read connections fell back to the primary", n, fb)
			}
		})
	}
}

// BenchmarkReadOnlySelect1 compares a ReadOnly SELECT 1 through unified
// (over the whole cluster, so on a replica) with pgx stdlib straight to one
// replica.
func BenchmarkReadOnlySelect1(b *testing.B) {
	c, _, replicas := needBenchCluster(b)
	dbs := []struct {
		impl string
		db   *sql.DB
	}{
		{"pgx", benchOpenPgx(b, c.Node(replicas[0]).DSN())},
		{"unified", benchOpenUnified(b, c.DSN(), len(replicas))},
	}
	ctx := unified.WithMode(context.Background(), unified.ReadOnly)
	for _, conc := range []int{1, 8} {
		b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) {
			for _, d := range dbs {
				b.Run(d.impl, func(b *testing.B) { benchRunConc(b, ctx, d.db, conc, benchSelect1) })
			}
		})
	}
}

// ---- PgBouncer ----

// benchPgBouncerEnv names a PgBouncer DSN (in transaction pooling mode, in front
// of the cluster's primary) for BenchmarkPgBouncer. Without it the
// benchmark starts its own pgbouncer from $PATH or /usr/sbin, and skips
// when there is none.
const benchPgBouncerEnv = "UNIFIED_BENCH_PGBOUNCER_DSN"

// BenchmarkPgBouncer compares SELECT 1 at conc=8 through pgx → PgBouncer
// (transaction pooling, 8 server connections) with unified straight to the
// cluster, and pgx straight to the primary as the reference. pgx talks to
// PgBouncer with the simple protocol: PgBouncer 1.18 cannot keep the named
// prepared statements of pgx's default mode across transactions.
func BenchmarkPgBouncer(b *testing.B) {
	const conc = 8
	c, primary, replicas := needBenchCluster(b)
	bouncer := os.Getenv(benchPgBouncerEnv)
	if bouncer == "" {
		bouncer = benchStartPgBouncer(b, c.Node(primary), conc)
	}
	dbs := []struct {
		impl string
		db   *sql.DB
	}{
		{"pgbouncer", benchOpenPgx(b, bouncer)},
		{"unified", benchOpenUnified(b, c.DSN(), len(replicas))},
		{"pgx", benchOpenPgx(b, c.Node(primary).DSN())},
	}
	ctx := context.Background()
	b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) {
		for _, d := range dbs {
			b.Run(d.impl, func(b *testing.B) { benchRunConc(b, ctx, d.db, conc, benchSelect1) })
		}
	})
}

// benchStartPgBouncer runs pgbouncer in transaction pooling mode with trust
// authentication on a free loopback port in front of upstream, as the
// postgres user when root (pgbouncer refuses to run as root), and stops it
// when b ends (and, through Pdeathsig, if this process dies). It returns
// the pgx DSN through it.
func benchStartPgBouncer(b *testing.B, upstream *pgcluster.Node, poolSize int) string {
	b.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/pgbouncer"); serr != nil {
			b.Skipf("pgbouncer not found (install it: apt-get install pgbouncer), and %s is not set", benchPgBouncerEnv)
		}
		bin = "/usr/sbin/pgbouncer"
	}
	dir, err := os.MkdirTemp("", "unified-pgbouncer-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			b.Skipf("pgbouncer cannot run as root and there is no postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		attr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
		if err := os.Chown(dir, uid, gid); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	port, err := benchFreePort()
	if err != nil {
		b.Fatal(err)
	}
	ini := filepath.Join(dir, "pgbouncer.ini")
	logPath := filepath.Join(dir, "pgbouncer.log")
	conf := fmt.Sprintf(`[databases]
postgres = host=%s port=%d dbname=postgres user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
default_pool_size = %d
min_pool_size = %d
max_client_conn = 200
logfile = %s
log_connections = 0
log_disconnections = 0
`, upstream.Host, upstream.Port, port, filepath.Join(dir, "userlist.txt"), poolSize, poolSize, logPath)
	for name, content := range map[string]string{"pgbouncer.ini": conf, "userlist.txt": `"postgres" ""` + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	cmd := exec.Command(bin, ini)
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		b.Fatalf("start pgbouncer: %v", err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	b.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})

	dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&default_query_exec_mode=simple_protocol", port)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = db.PingContext(ctx)
		cancel()
		if err == nil {
			return dsn
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			b.Fatalf("pgbouncer exited: %v\n%s", waitErr, log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			b.Fatalf("pgbouncer not accepting connections on port %d: %v\n%s", port, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// benchFreePort returns a TCP port that was free on 127.0.0.1 a moment
// ago.
func benchFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("not a TCP address")
	}
	return addr.Port, nil
}
