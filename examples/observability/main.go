// Command observability shows the metrics unified exports through
// OpenTelemetry, as a Prometheus server would scrape them.
//
//	go -C examples run ./observability [-duration 6s] [-failover=false] [-buckets]
//
// It starts a local PostgreSQL primary with two streaming replicas, installs
// the OpenTelemetry SDK MeterProvider with the Prometheus exporter (on a
// registry of its own), and serves /metrics (promhttp) and /healthz
// ([unified.HealthHandler]) on a loopback port. It opens the database with
// unified.OpenDB(cfg, unified.WithMeterProvider(mp)) and runs a short
// workload: writers INSERT on the primary, concurrent unified.ReadOnly
// readers spread over both replicas, two deliberately failing statements
// (a duplicate key, error_type="23505", and one that ends its own session,
// error_type="commit_unknown") and a read whose replica session is ended
// under it, which unified re-runs (unified_retry_count_total). Midway it kills the primary and
// promotes the most advanced replica, as a failover manager would
// (-failover=false skips that). At the end it scrapes its own /metrics over
// HTTP and prints the db_client_* and unified_* series exactly as the
// exporter wrote them (histogram _bucket lines only with -buckets), a
// summary of operations per node and role taken from them, and the
// /healthz JSON.
//
// What to look for:
//
//   - db_client_operation_duration_seconds_count by server_port and
//     unified_role: writes on the primary (and, after the failover, on the
//     promoted node), reads on the replicas;
//   - error_type="23505" and db_response_status_code="23505" on the failed
//     INSERT;
//   - unified_replica_lag_seconds and unified_replica_lag_bytes per replica;
//   - unified_node_up 0 for the killed node, unified_node_role moving to the
//     promoted one, unified_failover_count_total and
//     unified_failover_duration_seconds.
//
// grafana-dashboard.json, next to this file, is a Grafana dashboard of
// these metrics (import it and pick the Prometheus data source that
// scrapes the application); the test checks that every metric it queries
// is one this example's /metrics exports.
//
// Metric names follow the exporter's default translation: dots become
// underscores, the unit becomes a suffix (_seconds, _bytes), counters end
// in _total. The otel_scope_* labels are left out (WithoutScopeInfo) to keep
// the lines readable.
//
// It needs the PostgreSQL server binaries (Debian: apt-get install
// postgresql; or set UNIFIED_PG_BIN to their directory). Ctrl-C stops the
// cluster and exits.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/examples/internal/demo"
	"github.com/unifiedsql/unified/pgtest"
)

// options are the command-line flags.
type options struct {
	duration time.Duration // how long the workload runs
	failover bool          // kill the primary midway
	buckets  bool          // print the histograms' _bucket lines too
}

// result is what run scraped at the end.
type result struct {
	Metrics   string // the whole /metrics body
	Health    string // the /healthz body
	Failovers uint64 // Stats().Failovers
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 6*time.Second, "how long the workload runs")
	flag.BoolVar(&o.failover, "failover", true, "kill the primary and promote a replica midway")
	flag.BoolVar(&o.buckets, "buckets", false, "also print the histograms' _bucket lines")
	flag.Parse()

	os.Exit(pgtest.Run("observability", func(tb testing.TB) {
		if _, err := run(tb, os.Stdout, o); err != nil {
			tb.Fatal(err)
		}
	}))
}

const (
	table    = "obs_events"
	writers  = 2
	readers  = 4
	opTimout = 10 * time.Second // one statement; writes wait for a new primary within it
)

// run is the whole example; out receives everything it prints. The HTTP
// server and the DB are closed before it returns, the cluster (started with
// pgtest, which reports its own failures through tb) by tb's cleanup.
func run(tb testing.TB, out io.Writer, o options) (*result, error) {
	ctx := tb.Context()
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }

	say("starting a local PostgreSQL primary + 2 streaming replicas ...")
	cl := pgtest.Start(tb, pgtest.Replicas(2))
	demo.PrintNodes(out, cl)

	// OpenTelemetry: the SDK MeterProvider, read by the Prometheus exporter
	// into a registry of our own (not prometheus.DefaultRegisterer).
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	defer func() { _ = mp.Shutdown(context.Background()) }() // nothing to flush: Prometheus pulls

	cfg, err := unified.ParseConfig(cl.DSN() + "&unified_health_interval=200ms")
	if err != nil {
		return nil, err
	}
	db, err := unified.OpenDB(cfg, unified.WithMeterProvider(mp))
	if err != nil {
		return nil, err
	}
	defer db.Close()
	db.SetMaxIdleConns(writers + readers + 2) // keep the readers' connections (and their replicas)
	connector, _ := unified.ConnectorOf(db)

	// /metrics and /healthz on a loopback port.
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/healthz", unified.HealthHandler(db))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	var serving sync.WaitGroup
	serving.Go(func() { _ = srv.Serve(ln) })
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		serving.Wait()
	}()
	base := "http://" + ln.Addr().String()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	say("\nserving %s/metrics and %s/healthz", base, base)

	// Set up, and the one statement that fails on purpose.
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+table+" (id bigserial PRIMARY KEY, writer int NOT NULL, at timestamptz NOT NULL DEFAULT now())"); err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO "+table+" (id, writer) VALUES (-1, -1)"); err != nil {
		return nil, err
	}
	_, err = db.ExecContext(ctx, "INSERT INTO "+table+" (id, writer) VALUES (-1, -1)")
	if err == nil {
		return nil, errors.New("the duplicate INSERT succeeded")
	}
	say("a duplicate INSERT, on purpose: %v", err)
	// A statement that ends its own session: the connection breaks after
	// it was sent, so the client cannot know whether it took effect
	// (error_type="commit_unknown", unified_commit_unknown_count_total).
	_, err = db.ExecContext(ctx, "SELECT pg_terminate_backend(pg_backend_pid())")
	if !errors.Is(err, unified.ErrCommitUnknown) {
		return nil, fmt.Errorf("a statement that ended its session returned %v, not ErrCommitUnknown", err)
	}
	say("a statement that ends its own session, on purpose: %v", err)
	if err := readAcrossLostSession(ctx, db, connector, cl); err != nil {
		return nil, err
	}
	say("a read whose replica session was ended under it: re-run by unified (unified_retry_count_total)")

	// The workload.
	say("\n%d writers INSERT (no mode: the primary), %d readers SELECT with unified.ReadOnly (the replicas), for %v", writers, readers, o.duration)
	var stats workStats
	stopLoad := make(chan struct{})
	var load sync.WaitGroup
	halt := sync.OnceFunc(func() {
		close(stopLoad)
		load.Wait()
	})
	defer halt() // also when a pgtest method fails the run
	for w := range writers {
		load.Go(func() { write(ctx, stopLoad, db, w, &stats) })
	}
	for range readers {
		load.Go(func() { read(ctx, stopLoad, db, &stats) })
	}
	start := time.Now()
	var scenarioErr error
	if demo.Sleep(ctx, 3*o.duration/10) {
		// Under load, the replicas trail the primary a little.
		snap, err := get(ctx, client, base+"/metrics")
		if err != nil {
			scenarioErr = err
		} else {
			say("\nmid-workload scrape, replica lag under load:\n%s", grep(snap, "unified_replica_lag_"))
		}
	}
	if scenarioErr == nil && o.failover && demo.Sleep(ctx, 4*o.duration/10-time.Since(start)) {
		scenarioErr = killAndFailOver(cl, say)
	}
	if scenarioErr == nil {
		demo.Sleep(ctx, o.duration-time.Since(start))
	}
	halt()
	if err := ctx.Err(); err != nil {
		say("\ninterrupted: stopping the cluster")
		return nil, err
	}
	if scenarioErr != nil {
		return nil, scenarioErr
	}
	say("workload done: %d writes (%d failed), %d reads (%d failed)",
		stats.writes.Load(), stats.writesFailed.Load(), stats.reads.Load(), stats.readsFailed.Load())

	// Let the health monitor see the end state: the failover counted, a
	// primary known, the surviving replica probed with its lag.
	settle(ctx, connector, o.failover)

	metrics, err := get(ctx, client, base+"/metrics")
	if err != nil {
		return nil, err
	}
	health, err := get(ctx, client, base+"/healthz")
	if err != nil {
		return nil, err
	}

	omitted := "; _bucket lines omitted, -buckets shows them"
	if o.buckets {
		omitted = ""
	}
	say("\n--- GET /metrics (db_client_* and unified_* series%s) ---", omitted)
	say("%s", filterMetrics(metrics, o.buckets))
	say("--- operations per node (sum of db_client_operation_duration_seconds_count) ---")
	printPerNode(out, metrics, cl)
	say("\n--- GET /healthz ---")
	var pretty bytes.Buffer
	if json.Indent(&pretty, []byte(health), "", "  ") == nil {
		health = pretty.String()
	}
	say("%s", health)
	say("\nstopping the cluster")
	return &result{Metrics: metrics, Health: health, Failovers: connector.Stats().Failovers}, nil
}

type workStats struct {
	writes, writesFailed, reads, readsFailed atomic.Int64
}

// write INSERTs rows until stop is closed.
func write(ctx context.Context, stop <-chan struct{}, db *sql.DB, writer int, st *workStats) {
	for !stopped(ctx, stop) {
		wctx, cancel := context.WithTimeout(ctx, opTimout)
		_, err := db.ExecContext(wctx, "INSERT INTO "+table+" (writer) VALUES ($1)", writer)
		cancel()
		st.writes.Add(1)
		if err != nil {
			st.writesFailed.Add(1)
			demo.Sleep(ctx, 5*time.Millisecond) // don't spin on a persistent error
		}
	}
}

// read runs read-only queries until stop is closed. Concurrent readers
// hold several connections, which unified spreads over the replicas.
func read(ctx context.Context, stop <-chan struct{}, db *sql.DB, st *workStats) {
	ro := unified.WithMode(ctx, unified.ReadOnly)
	for !stopped(ctx, stop) {
		rctx, cancel := context.WithTimeout(ro, opTimout)
		var n sql.NullInt64
		err := db.QueryRowContext(rctx, "SELECT max(id) FROM "+table).Scan(&n)
		cancel()
		st.reads.Add(1)
		if err != nil {
			st.readsFailed.Add(1)
			demo.Sleep(ctx, 5*time.Millisecond)
		}
	}
}

// readAcrossLostSession ends, from outside, the replica session of a read
// in progress; unified re-runs the read on another session (a ReadOnly
// read outside a transaction that returned no row yet is safe to repeat),
// which unified.retry.count records.
func readAcrossLostSession(ctx context.Context, db *sql.DB, c *unified.Connector, cl *pgtest.Cluster) error {
	conn, err := db.Conn(ctx) // one logical connection: it keeps its read session
	if err != nil {
		return err
	}
	defer conn.Close()
	ro := unified.WithMode(ctx, unified.ReadOnly)
	var pid, port int
	if err := conn.QueryRowContext(ro, "SELECT pg_backend_pid(), inet_server_port()").Scan(&pid, &port); err != nil {
		return err
	}
	node := -1
	for i := range cl.Len() {
		if cl.Node(i).Port() == port {
			node = i
		}
	}
	if node < 0 {
		return fmt.Errorf("the read came from port %d, no node of the cluster", port)
	}
	admin, err := pgx.Connect(ctx, cl.Node(node).DSN())
	if err != nil {
		return err
	}
	defer admin.Close(context.WithoutCancel(ctx))

	before := c.Stats().Retries
	done := make(chan error, 1)
	go func() {
		var n int
		done <- conn.QueryRowContext(ro, "SELECT 1 FROM pg_sleep(0.5)").Scan(&n)
	}()
	for running := false; !running; {
		err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep(0.5)%' AND state = 'active')", pid).Scan(&running)
		if err != nil {
			return err
		}
		if !running && !demo.Sleep(ctx, 2*time.Millisecond) {
			return ctx.Err()
		}
	}
	if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
		return err
	}
	if err := <-done; err != nil {
		return fmt.Errorf("the read whose session ended: %w", err)
	}
	if c.Stats().Retries == before {
		return errors.New("the read whose session ended was not retried")
	}
	return nil
}

// killAndFailOver SIGKILLs the primary and fails over: the replica that
// received the most WAL is promoted, the other re-pointed to it (rewound
// when it cannot follow).
func killAndFailOver(cl *pgtest.Cluster, say func(string, ...any)) error {
	old := cl.Primary()
	killedAt := time.Now()
	say(">>> SIGKILL %s, the primary", cl.Node(old).Name())
	cl.Kill(old)
	target, err := cl.FailOver()
	if err != nil {
		return err
	}
	say(">>> %s promoted (%v after the kill); the other replica follows it",
		cl.Node(target).Name(), cl.Node(target).PromotedAt().Sub(killedAt).Round(time.Millisecond))
	return nil
}

// settle waits (up to 10 s) until the Connector has counted the failover
// (when there was one), knows a primary and has the lag of a live replica,
// then for two more probe intervals so that the gauges are fresh.
func settle(ctx context.Context, c *unified.Connector, failover bool) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		st := c.Stats()
		replica := slices.ContainsFunc(st.Health.Nodes, func(n unified.NodeHealth) bool {
			return n.Role == "replica" && n.State == "up"
		})
		if st.Health.Primary != "" && replica && (!failover || st.Failovers > 0) {
			break
		}
		if !demo.Sleep(ctx, 50*time.Millisecond) {
			return
		}
	}
	demo.Sleep(ctx, 400*time.Millisecond)
}

// get returns the body of a GET of url.
func get(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	// /healthz answers 503 when the cluster cannot serve: still worth showing.
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusServiceUnavailable {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return string(body), nil
}

// filterMetrics keeps the db_client_* and unified_* lines of a Prometheus
// text exposition (with their # HELP and # TYPE lines), without the
// histograms' _bucket lines unless buckets is set.
func filterMetrics(text string, buckets bool) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name := line
		if rest, ok := strings.CutPrefix(line, "# HELP "); ok {
			name = rest
		} else if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name = rest
		}
		if !strings.HasPrefix(name, "db_client_") && !strings.HasPrefix(name, "unified_") {
			continue
		}
		if !buckets && metricName(line) != "" && strings.HasSuffix(metricName(line), "_bucket") {
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// grep returns the sample lines of text that start with prefix.
func grep(text, prefix string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// metricName returns the name of a sample line, "" for a comment.
func metricName(line string) string {
	if strings.HasPrefix(line, "#") {
		return ""
	}
	if i := strings.IndexAny(line, "{ "); i >= 0 {
		return line[:i]
	}
	return line
}

var (
	sampleRE = regexp.MustCompile(`^(\w+)\{(.*)\} (\S+)$`)
	labelRE  = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)
)

// samples returns the samples of the metric name in a Prometheus text
// exposition: their labels and values.
func samples(text, name string) (labels []map[string]string, values []float64) {
	for line := range strings.SplitSeq(text, "\n") {
		m := sampleRE.FindStringSubmatch(line)
		if m == nil || m[1] != name {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		l := map[string]string{}
		for _, kv := range labelRE.FindAllStringSubmatch(m[2], -1) {
			l[kv[1]] = kv[2]
		}
		labels, values = append(labels, l), append(values, v)
	}
	return labels, values
}

// printPerNode sums db_client_operation_duration_seconds_count by node and
// role, and by operation name within them.
func printPerNode(out io.Writer, metrics string, cl *pgtest.Cluster) {
	type key struct{ port, role string }
	total := map[key]float64{}
	byOp := map[key]map[string]float64{}
	labels, values := samples(metrics, "db_client_operation_duration_seconds_count")
	for i, l := range labels {
		k := key{l["server_port"], l["unified_role"]}
		total[k] += values[i]
		if byOp[k] == nil {
			byOp[k] = map[string]float64{}
		}
		op := l["db_operation_name"]
		if e := l["error_type"]; e != "" {
			op += " error_type=" + e
		}
		byOp[k][op] += values[i]
	}
	nodeName := map[string]string{}
	for i := 0; i < cl.Len(); i++ {
		nodeName[strconv.Itoa(cl.Node(i).Port())] = cl.Node(i).Name()
	}
	keys := slices.SortedFunc(maps.Keys(total), func(a, b key) int { return cmp.Or(cmp.Compare(a.port, b.port), cmp.Compare(a.role, b.role)) })
	for _, k := range keys {
		name := cmp.Or(nodeName[k.port], "(no node)")
		var parts []string
		for _, op := range slices.Sorted(maps.Keys(byOp[k])) {
			parts = append(parts, fmt.Sprintf("%s %.0f", op, byOp[k][op]))
		}
		fmt.Fprintf(out, "  %-6s server_port=%-5s unified_role=%-8s %6.0f  (%s)\n",
			name, cmp.Or(k.port, "-"), k.role, total[k], strings.Join(parts, ", "))
	}
}

func stopped(ctx context.Context, stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	case <-ctx.Done():
		return true
	default:
		return false
	}
}
