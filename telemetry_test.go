package unified_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/fakepg"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

// telPassword is in every test DSN: it must show up in no attribute.
const telPassword = "Tel-s3cret-pw"

// telFixture is a unified DB over an in-memory primary and replicas
// (static roles, as unifiedtest builds it) that record the statements they
// receive, with an SDK meter and span recorder.
type telFixture struct {
	db       *sql.DB
	primary  *fakepg.Node
	replicas []*fakepg.Node
	reader   *sdkmetric.ManualReader
	spans    *tracetest.SpanRecorder
}

type telSettings struct {
	replicas int
	delta    bool // delta temporality: each Collect shows only new points
	traceSQL bool
}

func newTelFixture(t *testing.T, s telSettings) *telFixture {
	t.Helper()
	f := &telFixture{spans: tracetest.NewSpanRecorder()}
	var readerOpts []sdkmetric.ManualReaderOption
	if s.delta {
		readerOpts = append(readerOpts, sdkmetric.WithTemporalitySelector(func(sdkmetric.InstrumentKind) metricdata.Temporality {
			return metricdata.DeltaTemporality
		}))
	}
	f.reader = sdkmetric.NewManualReader(readerOpts...)
	opts := []unified.Option{
		unified.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(f.reader))),
		unified.WithTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(f.spans))),
	}
	if s.traceSQL {
		opts = append(opts, unified.WithSQLInSpans())
	}
	f.primary = &fakepg.Node{}
	hosts := []string{"primary:5432"}
	opts = append(opts, unified.WithNodeConnector(hosts[0], f.primary), unified.WithStaticPrimary(hosts[0]))
	for i := range s.replicas {
		f.replicas = append(f.replicas, &fakepg.Node{})
		hosts = append(hosts, fmt.Sprintf("replica%d:5432", i))
		opts = append(opts, unified.WithNodeConnector(hosts[i+1], f.replicas[i]))
	}
	f.primary.Record()
	for _, r := range f.replicas {
		r.Record()
	}
	cfg, err := unified.ParseConfig("postgres://app:" + telPassword + "@" + strings.Join(hosts, ",") +
		"/appdb?unified_retry_backoff=1ms..2ms")
	require.NoError(t, err)
	f.db, err = unified.OpenDB(cfg, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { f.db.Close() })
	return f
}

// telPoint is one data point of any instrument kind.
type telPoint struct {
	attrs attribute.Set
	value float64 // sum, gauge value, or histogram sum
	count uint64  // histogram count
}

func (p telPoint) attr(key string) (any, bool) {
	v, ok := p.attrs.Value(attribute.Key(key))
	if !ok {
		return nil, false
	}
	return v.AsInterface(), true
}

func (f *telFixture) collect(t *testing.T) map[string][]telPoint {
	t.Helper()
	return telCollect(t, f.reader)
}

func telCollect(t *testing.T, r *sdkmetric.ManualReader) map[string][]telPoint {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.Collect(context.Background(), &rm))
	out := map[string][]telPoint{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					out[m.Name] = append(out[m.Name], telPoint{attrs: dp.Attributes, value: dp.Sum, count: dp.Count})
				}
			case metricdata.Sum[int64]:
				out[m.Name] = telValues(out[m.Name], d.DataPoints)
			case metricdata.Sum[float64]:
				out[m.Name] = telValues(out[m.Name], d.DataPoints)
			case metricdata.Gauge[int64]:
				out[m.Name] = telValues(out[m.Name], d.DataPoints)
			case metricdata.Gauge[float64]:
				out[m.Name] = telValues(out[m.Name], d.DataPoints)
			default:
				t.Fatalf("%s: unexpected data %T", m.Name, m.Data)
			}
		}
	}
	return out
}

// telValues appends the points of a sum or a gauge.
func telValues[N int64 | float64](ps []telPoint, dps []metricdata.DataPoint[N]) []telPoint {
	for _, dp := range dps {
		ps = append(ps, telPoint{attrs: dp.Attributes, value: float64(dp.Value)})
	}
	return ps
}

// telFind returns the points of name whose attributes include every key/value
// of want.
func telFind(ps []telPoint, want map[string]any) []telPoint {
	var out []telPoint
next:
	for _, p := range ps {
		for k, v := range want {
			if got, ok := p.attr(k); !ok || got != v {
				continue next
			}
		}
		out = append(out, p)
	}
	return out
}

func telSpanAttr(s sdktrace.ReadOnlySpan, key string) (any, bool) {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.AsInterface(), true
		}
	}
	return nil, false
}

func TestTelemetryOperationMetrics(t *testing.T) {
	f := newTelFixture(t, telSettings{replicas: 1})
	ctx := t.Context()
	ro := unified.WithMode(ctx, unified.ReadOnly)

	var n int
	require.NoError(t, f.db.QueryRowContext(ro, "  select n from t").Scan(&n))
	_, err := f.db.ExecContext(ctx, "INSERT INTO t VALUES (1)")
	require.NoError(t, err)
	f.primary.On(fakepg.Exec, fakepg.Fail(&pgconn.PgError{Severity: "ERROR", Code: "23505", Message: "duplicate key"}))
	_, err = f.db.ExecContext(ctx, "UPDATE t SET n = 2")
	require.Error(t, err)
	f.primary.On(fakepg.Exec, fakepg.Fail(errors.New("boom")))
	_, err = f.db.ExecContext(unified.WithMode(ctx, unified.Batch), "DELETE FROM t")
	require.Error(t, err)
	tx, err := f.db.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	require.NoError(t, f.db.PingContext(ctx))
	assert.Equal(t, []string{"exec INSERT INTO t VALUES (1)", "exec UPDATE t SET n = 2", "exec DELETE FROM t",
		"begin", "commit", "ping"}, f.primary.Recorded())
	assert.Equal(t, []string{"query   select n from t"}, f.replicas[0].Recorded())

	ps := f.collect(t)["db.client.operation.duration"]
	common := map[string]any{"db.system.name": "postgresql", "db.namespace": "appdb", "server.port": int64(5432)}
	for _, tc := range []struct {
		op, addr, mode, role, errType string
	}{
		{"SELECT", "replica0", "read-only", "replica", ""},
		{"INSERT", "primary", "read-write", "primary", ""},
		{"UPDATE", "primary", "read-write", "primary", "23505"},
		{"DELETE", "primary", "batch", "primary", "_OTHER"},
		{"BEGIN", "primary", "read-write", "primary", ""},
		{"COMMIT", "primary", "read-write", "primary", ""},
		{"PING", "primary", "read-write", "primary", ""},
	} {
		t.Run(tc.op, func(t *testing.T) {
			got := telFind(ps, map[string]any{"db.operation.name": tc.op})
			require.Len(t, got, 1, "%v", ps)
			p := got[0]
			assert.EqualValues(t, 1, p.count)
			want := map[string]any{
				"server.address": tc.addr,
				"unified.mode":   tc.mode, "unified.role": tc.role,
			}
			for k, v := range common {
				want[k] = v
			}
			for k, v := range want {
				got, ok := p.attr(k)
				assert.True(t, ok, "%s missing", k)
				assert.Equal(t, v, got, k)
			}
			et, ok := p.attr("error.type")
			if tc.errType == "" {
				assert.False(t, ok, "error.type on success: %v", et)
			} else {
				assert.Equal(t, tc.errType, et)
			}
			code, ok := p.attr("db.response.status_code")
			if tc.errType == "23505" {
				assert.Equal(t, "23505", code)
			} else {
				assert.False(t, ok, "status code %v", code)
			}
		})
	}
}

func TestTelemetryNodeInstruments(t *testing.T) {
	f := newTelFixture(t, telSettings{replicas: 2})
	m := f.collect(t)
	nodes := map[string]int64{"primary:5432": 1, "replica0:5432": 2, "replica1:5432": 2}
	for node, role := range nodes {
		sel := map[string]any{"unified.node": node}
		for name, want := range map[string]float64{
			"unified.node.up": 1, "unified.node.role": float64(role), "unified.breaker.state": 0, "unified.node.rtt": 0,
		} {
			got := telFind(m[name], sel)
			if assert.Len(t, got, 1, "%s %s", name, node) {
				assert.Equal(t, want, got[0].value, "%s %s", name, node)
				addr, _ := got[0].attr("server.address")
				assert.Equal(t, strings.TrimSuffix(node, ":5432"), addr)
			}
		}
		lag := telFind(m["unified.replica.lag"], sel)
		lagBytes := telFind(m["unified.replica.lag_bytes"], sel)
		if role == 2 {
			assert.Len(t, lag, 1, node)
			assert.Len(t, lagBytes, 1, node)
		} else {
			assert.Empty(t, lag, "no lag for the primary")
			assert.Empty(t, lagBytes, "no lag for the primary")
		}
		roleName := map[int64]string{1: "primary", 2: "replica"}[role]
		for _, state := range []string{"idle", "used"} {
			got := telFind(m["db.client.connection.count"], map[string]any{
				"unified.node": node, "db.client.connection.state": state,
				"db.client.connection.pool.name": node, "unified.role": roleName,
			})
			assert.Len(t, got, 1, "connection count %s %s", node, state)
		}
	}

	// Close unregisters the callback: no more node observations.
	require.NoError(t, f.db.Close())
	m = f.collect(t)
	assert.Empty(t, m["unified.node.up"])
	assert.Empty(t, m["unified.breaker.state"])
}

// connCount sums db.client.connection.count for node in state.
func connCount(m map[string][]telPoint, node, state string) float64 {
	sum := 0.0
	for _, p := range telFind(m["db.client.connection.count"], map[string]any{"unified.node": node, "db.client.connection.state": state}) {
		sum += p.value
	}
	return sum
}

func TestTelemetryConnectionCount(t *testing.T) {
	f := newTelFixture(t, telSettings{replicas: 1})
	ctx := t.Context()
	var n int
	require.NoError(t, f.db.QueryRowContext(unified.WithMode(ctx, unified.ReadOnly), "SELECT 1").Scan(&n))
	tx, err := f.db.BeginTx(ctx, nil)
	require.NoError(t, err)

	m := f.collect(t)
	// One logical connection holds the transaction's primary connection;
	// the read's replica connection is back in the pool.
	assert.EqualValues(t, 1, connCount(m, "primary:5432", "used"), "the transaction's connection")
	assert.EqualValues(t, 0, connCount(m, "primary:5432", "idle"))
	assert.EqualValues(t, 0, connCount(m, "replica0:5432", "used"))
	assert.EqualValues(t, 1, connCount(m, "replica0:5432", "idle"))

	require.NoError(t, tx.Commit())
	m = f.collect(t)
	assert.EqualValues(t, 0, connCount(m, "primary:5432", "used"))
	assert.EqualValues(t, 1, connCount(m, "primary:5432", "idle"))

	// A broken connection is closed and replaced: still one open.
	f.primary.On(fakepg.Exec, fakepg.BadConn())
	_, err = f.db.ExecContext(ctx, "INSERT INTO t VALUES (1)")
	require.NoError(t, err)
	assert.Equal(t, 2, f.primary.Dials())
	m = f.collect(t)
	assert.EqualValues(t, 1, connCount(m, "primary:5432", "idle")+connCount(m, "primary:5432", "used"))

	// Closing the pool closes the physical connections.
	f.db.SetMaxIdleConns(0)
	m = f.collect(t)
	for _, node := range []string{"primary:5432", "replica0:5432"} {
		assert.EqualValues(t, 0, connCount(m, node, "idle")+connCount(m, node, "used"), node)
	}
}

func TestTelemetryRetryAndTrace(t *testing.T) {
	f := newTelFixture(t, telSettings{replicas: 1})
	ctx := t.Context()
	// ErrBadConn: nothing reached the server, so the write is re-sent.
	f.primary.On(fakepg.Exec, fakepg.BadConn())
	_, err := f.db.ExecContext(ctx, "insert into t values (1)")
	require.NoError(t, err)
	f.primary.On(fakepg.Query, fakepg.Fail(&pgconn.PgError{Severity: "ERROR", Code: "42P01", Message: "no such table"}))
	_, err = f.db.QueryContext(ctx, "/* hint */ SELECT * FROM missing")
	require.Error(t, err)
	assert.Equal(t, 2, f.primary.Dials(), "the write tried twice")
	assert.Equal(t, []string{"exec insert into t values (1)", "query /* hint */ SELECT * FROM missing"}, f.primary.Recorded(),
		"and reached the node once")

	spans := f.spans.Ended()
	require.Len(t, spans, 2)
	ins, sel := spans[0], spans[1]
	assert.Equal(t, "INSERT", ins.Name())
	assert.Equal(t, trace.SpanKindClient, ins.SpanKind())
	assert.Equal(t, codes.Unset, ins.Status().Code)
	for k, v := range map[string]any{
		"db.system.name": "postgresql", "db.operation.name": "INSERT", "server.address": "primary",
		"server.port": int64(5432), "unified.node": "primary:5432", "unified.role": "primary", "unified.mode": "read-write",
	} {
		got, ok := telSpanAttr(ins, k)
		assert.True(t, ok, k)
		assert.Equal(t, v, got, k)
	}
	_, ok := telSpanAttr(ins, "db.query.text")
	assert.False(t, ok, "SQL text without WithSQLInSpans")
	require.Len(t, ins.Events(), 1)
	assert.Equal(t, "unified.retry", ins.Events()[0].Name)
	assert.Equal(t, []attribute.KeyValue{attribute.String("unified.retry.reason", "not_sent")}, ins.Events()[0].Attributes)

	assert.Equal(t, "SELECT", sel.Name())
	assert.Equal(t, codes.Error, sel.Status().Code)
	assert.Equal(t, "42P01", sel.Status().Description)
	et, _ := telSpanAttr(sel, "error.type")
	assert.Equal(t, "42P01", et)

	m := f.collect(t)
	retries := telFind(m["unified.retry.count"], map[string]any{"unified.retry.reason": "not_sent"})
	require.Len(t, retries, 1)
	assert.EqualValues(t, 1, retries[0].value)
	// One INSERT operation, however many attempts.
	ins2 := telFind(m["db.client.operation.duration"], map[string]any{"db.operation.name": "INSERT"})
	require.Len(t, ins2, 1)
	assert.EqualValues(t, 1, ins2[0].count)
}

func TestTelemetryCommitUnknownAndFallback(t *testing.T) {
	f := newTelFixture(t, telSettings{replicas: 0})
	ctx := t.Context()
	// The connection breaks after the write was sent: outcome unknown.
	f.primary.On(fakepg.Exec, fakepg.BreakAfterSend())
	_, err := f.db.ExecContext(ctx, "INSERT INTO t VALUES (1)")
	require.ErrorIs(t, err, unified.ErrCommitUnknown)
	// No replica: a read falls back to the primary, on a session made
	// read-only first.
	var n int
	require.NoError(t, f.db.QueryRowContext(unified.WithMode(ctx, unified.ReadOnly), "SELECT 1").Scan(&n))
	assert.Equal(t, []string{"exec INSERT INTO t VALUES (1)",
		"exec SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "query SELECT 1"}, f.primary.Recorded())

	m := f.collect(t)
	cu := m["unified.commit_unknown.count"]
	require.Len(t, cu, 1)
	assert.EqualValues(t, 1, cu[0].value)
	ins := telFind(m["db.client.operation.duration"], map[string]any{"db.operation.name": "INSERT", "error.type": "commit_unknown"})
	assert.Len(t, ins, 1)

	fb := telFind(m["unified.read.fallback"], map[string]any{"unified.node": "primary:5432"})
	require.Len(t, fb, 1)
	assert.EqualValues(t, 1, fb[0].value)
	sel := telFind(m["db.client.operation.duration"], map[string]any{
		"db.operation.name": "SELECT", "unified.mode": "read-only", "unified.role": "primary", "server.address": "primary",
	})
	assert.Len(t, sel, 1, "a read that fell back is recorded on the primary")
}

// A ReadOnly transaction with no replica runs on the primary's read-only
// session: its BEGIN, like its statements, is recorded on the primary and
// counted as a fallback (the BEGIN was labelled replica and not counted).
func TestTelemetryFallbackTransaction(t *testing.T) {
	f := newTelFixture(t, telSettings{replicas: 0})
	ctx := unified.WithMode(t.Context(), unified.ReadOnly)
	tx, err := f.db.BeginTx(ctx, nil)
	require.NoError(t, err)
	var n int
	require.NoError(t, tx.QueryRowContext(ctx, "SELECT 1").Scan(&n))
	require.NoError(t, tx.Commit())

	m := f.collect(t)
	for _, name := range []string{"BEGIN", "SELECT", "COMMIT"} {
		got := telFind(m["db.client.operation.duration"], map[string]any{
			"db.operation.name": name, "unified.role": "primary", "server.address": "primary",
		})
		assert.Len(t, got, 1, "%s recorded on the primary", name)
	}
	fb := telFind(m["unified.read.fallback"], map[string]any{"unified.node": "primary:5432"})
	require.Len(t, fb, 1)
	assert.EqualValues(t, 3, fb[0].value, "BEGIN, SELECT and COMMIT each served by the primary")
}

// TestTelemetryNoSecrets scans every attribute, name and description of
// every metric and span for the password, the SQL text and a parameter.
func TestTelemetryNoSecrets(t *testing.T) {
	const query = "SELECT secret_col FROM secret_tbl WHERE k = $1"
	const param = "param-value-4711"
	for _, traceSQL := range []bool{false, true} {
		t.Run(fmt.Sprintf("traceSQL=%v", traceSQL), func(t *testing.T) {
			f := newTelFixture(t, telSettings{replicas: 1, traceSQL: traceSQL})
			ctx := t.Context()
			var v string
			require.NoError(t, f.db.QueryRowContext(unified.WithMode(ctx, unified.ReadOnly), query, param).Scan(&v))
			// An error whose message holds everything it must not leak.
			f.primary.On(fakepg.Query, fakepg.Fail(fmt.Errorf("password %s for %s (%s)", telPassword, query, param)))
			_, err := f.db.QueryContext(ctx, query, param)
			require.Error(t, err)

			var seen []string
			scan := func(where, s string) {
				assert.NotContains(t, s, telPassword, where)
				assert.NotContains(t, s, param, where)
				if strings.Contains(s, "secret_") {
					seen = append(seen, where)
				}
			}
			for name, ps := range f.collect(t) {
				scan("metric name", name)
				for _, p := range ps {
					for _, kv := range p.attrs.ToSlice() {
						scan(name+" "+string(kv.Key), kv.Value.Emit())
					}
				}
			}
			spans := f.spans.Ended()
			require.Len(t, spans, 2)
			for _, s := range spans {
				scan("span name", s.Name())
				scan("span status", s.Status().Description)
				for _, kv := range s.Attributes() {
					scan("span "+string(kv.Key), kv.Value.Emit())
				}
				for _, e := range s.Events() {
					scan("event name", e.Name)
					for _, kv := range e.Attributes {
						scan("event "+string(kv.Key), kv.Value.Emit())
					}
				}
				text, ok := telSpanAttr(s, "db.query.text")
				assert.Equal(t, traceSQL, ok)
				if ok {
					assert.Equal(t, query, text)
				}
			}
			if traceSQL {
				assert.Equal(t, []string{"span db.query.text", "span db.query.text"}, seen)
			} else {
				assert.Empty(t, seen)
			}
		})
	}
}

func TestTelemetryOperationName(t *testing.T) {
	f := newTelFixture(t, telSettings{delta: true})
	ctx := t.Context()
	for _, tc := range []struct {
		query, want string // want "": no db.operation.name
	}{
		{"SELECT 1", "SELECT"},
		{"select 1", "SELECT"},
		{"SeLeCt 1", "SELECT"},
		{" \t\r\n\fupdate t set a = 1", "UPDATE"},
		{"-- a comment\n  -- another\ninsert into t values (1)", "INSERT"},
		{"/* c */delete from t", "DELETE"},
		{"/* outer /* nested */ still comment */ WITH x AS (SELECT 1) SELECT * FROM x", "WITH"},
		{"(SELECT 1) UNION (SELECT 2)", "SELECT"},
		{"select*from t", "SELECT"},
		{"VACUUM ANALYZE t", "VACUUM"},
		{"begin", "BEGIN"},
		{"notacommand 1", "NOTACOMMAND"},
		{"averyveryverylongfirstword x", "_OTHER"},
		{"", ""},
		{"   ", ""},
		{"-- only a comment", ""},
		{"/* unterminated", ""},
		{"1 + 1", ""},
		{"élan", ""},
		{"$1", ""},
	} {
		t.Run(tc.query, func(t *testing.T) {
			f.spans.Reset()
			_, err := f.db.ExecContext(ctx, tc.query)
			require.NoError(t, err)
			ps := f.collect(t)["db.client.operation.duration"]
			require.Len(t, ps, 1)
			got, ok := ps[0].attr("db.operation.name")
			if tc.want == "" {
				assert.False(t, ok, "got %v", got)
			} else {
				assert.Equal(t, tc.want, got)
			}
			spans := f.spans.Ended()
			require.Len(t, spans, 1)
			wantName := tc.want
			if wantName == "" || wantName == "_OTHER" {
				wantName = "postgresql"
			}
			assert.Equal(t, wantName, spans[0].Name())
		})
	}
}

// TestTelemetryOperationNameCap: first words that are not PostgreSQL
// commands are user-controlled; past the cap they become "_OTHER", and
// commands are still named.
func TestTelemetryOperationNameCap(t *testing.T) {
	f := newTelFixture(t, telSettings{})
	ctx := t.Context()
	for i := 0; i < 100; i++ {
		_, err := f.db.ExecContext(ctx, fmt.Sprintf("zz%c%c x", 'a'+i/26, 'a'+i%26))
		require.NoError(t, err)
	}
	_, err := f.db.ExecContext(ctx, "select 1")
	require.NoError(t, err)

	names := map[string]uint64{}
	for _, p := range f.collect(t)["db.client.operation.duration"] {
		name, _ := p.attr("db.operation.name")
		names[name.(string)] += p.count
	}
	assert.EqualValues(t, 1, names["SELECT"])
	assert.EqualValues(t, 100-64, names["_OTHER"])
	assert.Len(t, names, 64+2)
	assert.EqualValues(t, 1, names["ZZAA"])
}

// telOpenFake opens a unified DB over one in-memory node.
func telOpenFake(tb testing.TB, opts ...unified.Option) *sql.DB {
	tb.Helper()
	cfg, err := unified.ParseConfig("postgres://bench@fake:5432/bench")
	require.NoError(tb, err)
	opts = append(opts, unified.WithNodeConnector("fake:5432", &fakepg.Node{}), unified.WithStaticPrimary("fake:5432"))
	db, err := unified.OpenDB(cfg, opts...)
	require.NoError(tb, err)
	tb.Cleanup(func() { db.Close() })
	return db
}

func telSelectOne(tb testing.TB, db *sql.DB, ctx context.Context) {
	var n int
	if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
		tb.Fatal(err)
	}
}

// TestTelemetryMetricsAllocateNothing: with an SDK, recording a statement
// allocates nothing beyond what it allocates with metrics off.
func TestTelemetryMetricsAllocateNothing(t *testing.T) {
	ctx := t.Context()
	// AllocsPerRun counts every goroutine's allocations: the least of a
	// few rounds leaves out what another test's goroutines allocated
	// meanwhile (an allocation of the statement path is in every round).
	allocs := func(opts ...unified.Option) float64 {
		db := telOpenFake(t, opts...)
		telSelectOne(t, db, ctx) // warm the pool and the caches
		least := math.Inf(1)
		for range 5 {
			least = min(least, testing.AllocsPerRun(200, func() { telSelectOne(t, db, ctx) }))
		}
		return least
	}
	off := allocs(unified.WithMeterProvider(noop.NewMeterProvider()))
	global := allocs()
	on := allocs(unified.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))))
	t.Logf("allocs per SELECT: metrics off %.0f, global provider (unset) %.0f, SDK %.0f", off, global, on)
	if poolDropsItems() {
		t.Skip("sync.Pool drops items (as under -race): the SDK's pooled exemplars allocate, counts are not comparable")
	}
	assert.LessOrEqual(t, global, off, "the unset global provider allocates")
	assert.LessOrEqual(t, on, off, "the SDK path allocates")
}

// poolDropsItems reports whether sync.Pool discards items at random, which
// it does on purpose under the race detector.
func poolDropsItems() bool {
	var p sync.Pool
	for i := 0; i < 100; i++ {
		p.Put(new(int))
		if p.Get() == nil {
			return true
		}
	}
	return false
}

// BenchmarkTelemetryOverhead measures a SELECT 1 against an in-memory node:
// the node driver alone, then through unified with metrics off (a no-op
// provider), with the global provider no SDK was installed in, with an SDK
// meter, and with an SDK meter and tracer.
func BenchmarkTelemetryOverhead(b *testing.B) {
	ctx := context.Background()
	sdk := func() unified.Option {
		return unified.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader())))
	}
	for _, bc := range []struct {
		name string
		open func(b *testing.B) *sql.DB
	}{
		{"driver-only", func(b *testing.B) *sql.DB {
			db := sql.OpenDB(&fakepg.Node{})
			b.Cleanup(func() { db.Close() })
			return db
		}},
		{"metrics-noop", func(b *testing.B) *sql.DB { return telOpenFake(b, unified.WithMeterProvider(noop.NewMeterProvider())) }},
		{"metrics-global-unset", func(b *testing.B) *sql.DB { return telOpenFake(b) }},
		{"metrics-sdk", func(b *testing.B) *sql.DB { return telOpenFake(b, sdk()) }},
		{"metrics-sdk+traces", func(b *testing.B) *sql.DB {
			return telOpenFake(b, sdk(), unified.WithTracerProvider(sdktrace.NewTracerProvider()))
		}},
		// A real SELECT 1 on the cluster's primary, over loopback.
		{"postgres/metrics-noop", func(b *testing.B) *sql.DB {
			return telOpenCluster(b, unified.WithMeterProvider(noop.NewMeterProvider()))
		}},
		{"postgres/metrics-sdk", func(b *testing.B) *sql.DB { return telOpenCluster(b, sdk()) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			db := bc.open(b)
			b.ReportAllocs()
			for b.Loop() {
				telSelectOne(b, db, ctx)
			}
		})
	}
}

func telOpenCluster(b *testing.B, opts ...unified.Option) *sql.DB {
	c := pgcluster.Need(b, cluster)
	cfg, err := unified.ParseConfig(c.DSN())
	require.NoError(b, err)
	db, err := unified.OpenDB(cfg, opts...)
	require.NoError(b, err)
	b.Cleanup(func() { db.Close() })
	return db
}

// TestTelemetryFailoverCluster runs reads and writes on the real cluster,
// kills the primary, promotes a replica and checks what the metrics say.
func TestTelemetryFailoverCluster(t *testing.T) {
	c, primary := faultable(t, "")
	ctx := t.Context()
	var other int

	reader := sdkmetric.NewManualReader()
	cfg, err := unified.ParseConfig(c.DSN("unified_health_interval=100ms"))
	require.NoError(t, err)
	db, err := unified.OpenDB(cfg, unified.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })

	_, err = db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS telemetry_failover (id serial PRIMARY KEY)")
	require.NoError(t, err)
	ro := unified.WithMode(ctx, unified.ReadOnly)
	for i := 0; i < 20; i++ {
		_, err := db.ExecContext(ctx, "INSERT INTO telemetry_failover DEFAULT VALUES")
		require.NoError(t, err)
		serverPort(t, ro, db)
	}

	m := telCollect(t, reader)
	replicaReads := 0.0
	for _, p := range telFind(m["db.client.operation.duration"], map[string]any{"unified.mode": "read-only", "db.operation.name": "SELECT"}) {
		role, _ := p.attr("unified.role")
		port, _ := p.attr("server.port")
		assert.Equal(t, "replica", role)
		assert.NotEqual(t, int64(c.Node(primary).Port), port, "a read recorded on the primary")
		replicaReads += float64(p.count)
	}
	assert.EqualValues(t, 20, replicaReads, "reads recorded on replica nodes")
	inserts := telFind(m["db.client.operation.duration"], map[string]any{
		"db.operation.name": "INSERT", "unified.role": "primary", "server.port": int64(c.Node(primary).Port),
	})
	require.Len(t, inserts, 1)
	assert.EqualValues(t, 20, inserts[0].count)

	require.NoError(t, c.Kill(primary))
	other, _, _, err = c.FailOver(ctx, primary)
	require.NoError(t, err)
	waitFor(t, 30*time.Second, func() bool {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := db.ExecContext(wctx, "INSERT INTO telemetry_failover DEFAULT VALUES")
		return err == nil
	}, "writes to resume on node %d", other)
	for i := 0; i < 5; i++ {
		_, err := db.ExecContext(ctx, "INSERT INTO telemetry_failover DEFAULT VALUES")
		require.NoError(t, err)
	}

	m = telCollect(t, reader)
	fc := m["unified.failover.count"]
	require.Len(t, fc, 1)
	assert.EqualValues(t, 1, fc[0].value)
	fd := m["unified.failover.duration"]
	require.Len(t, fd, 1)
	assert.EqualValues(t, 1, fd[0].count)
	assert.Positive(t, fd[0].value)
	t.Logf("failover duration %.3fs", fd[0].value)
	for i := 0; i < c.Len(); i++ {
		sel := map[string]any{"unified.node": c.Node(i).Addr()}
		assert.Len(t, telFind(m["unified.breaker.state"], sel), 1, "breaker state of node %d", i)
	}
	role := telFind(m["unified.node.role"], map[string]any{"unified.node": c.Node(other).Addr()})
	require.Len(t, role, 1)
	assert.EqualValues(t, 1, role[0].value, "node %d is the primary", other)
	up := telFind(m["unified.node.up"], map[string]any{"unified.node": c.Node(primary).Addr()})
	require.Len(t, up, 1)
	assert.EqualValues(t, 0, up[0].value, "the killed node is down")
	resumed := telFind(m["db.client.operation.duration"], map[string]any{
		"db.operation.name": "INSERT", "server.port": int64(c.Node(other).Port), "unified.role": "primary",
	})
	require.Len(t, resumed, 1)
	assert.GreaterOrEqual(t, resumed[0].count, uint64(5))
}

// legacyConnector's connections have neither ExecerContext nor
// QueryerContext: database/sql falls back to Prepare + Query after
// unified's QueryContext returns driver.ErrSkip.
type legacyConnector struct{}

func (legacyConnector) Connect(context.Context) (driver.Conn, error) { return legacyConn{}, nil }
func (legacyConnector) ConnectReadOnly(context.Context) (driver.Conn, error) {
	return legacyConn{}, nil
}
func (legacyConnector) Driver() driver.Driver { return nil }

type legacyConn struct{}

func (legacyConn) Prepare(string) (driver.Stmt, error) { return legacyStmt{}, nil }
func (legacyConn) Close() error                        { return nil }
func (legacyConn) Begin() (driver.Tx, error)           { return nil, io.EOF }

type legacyStmt struct{}

func (legacyStmt) Close() error                               { return nil }
func (legacyStmt) NumInput() int                              { return -1 }
func (legacyStmt) Exec([]driver.Value) (driver.Result, error) { return driver.RowsAffected(0), nil }
func (legacyStmt) Query([]driver.Value) (driver.Rows, error)  { return &legacyRows{}, nil }

func (legacyStmt) ExecContext(context.Context, []driver.NamedValue) (driver.Result, error) {
	return driver.RowsAffected(0), nil
}
func (legacyStmt) QueryContext(context.Context, []driver.NamedValue) (driver.Rows, error) {
	return &legacyRows{}, nil
}

type legacyRows struct{ done bool }

func (*legacyRows) Columns() []string { return []string{"n"} }
func (*legacyRows) Close() error      { return nil }
func (r *legacyRows) Next(d []driver.Value) error {
	if r.done {
		return io.EOF
	}
	r.done = true
	d[0] = int64(1)
	return nil
}

func TestReadFallbackNotCountedForErrSkip(t *testing.T) {
	cfg, err := unified.ParseConfig("postgres://app@legacy:5432/app")
	require.NoError(t, err)
	db, err := unified.OpenDB(cfg, unified.WithNodeConnector("legacy:5432", legacyConnector{}), unified.WithStaticPrimary("legacy:5432"))
	require.NoError(t, err)
	defer db.Close()
	var n int
	require.NoError(t, db.QueryRowContext(unified.WithMode(t.Context(), unified.ReadOnly), "SELECT 1").Scan(&n))
	c, _ := unified.ConnectorOf(db)
	// database/sql runs it as Prepare + Query after the ErrSkip: two
	// operations served by the primary, the ErrSkip itself none (it was
	// counted too: 3).
	assert.EqualValues(t, 2, c.Stats().ReadFallbacks)
}
