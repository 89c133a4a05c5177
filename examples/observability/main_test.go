package main

import (
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/examples/internal/exampletest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestExample runs the example as `go -C examples run ./observability
// -duration 3s` would, and checks what it scraped from its own /metrics.
func TestExample(t *testing.T) {
	out := exampletest.Output(t)
	res, err := run(t, out, options{duration: 3 * time.Second, failover: true})
	require.NoError(t, err)
	m := res.Metrics

	// Per-node traffic: operations served by the primary and by replicas,
	// with the node's address and port.
	assert.Regexp(t, `(?m)^db_client_operation_duration_seconds_count\{[^}]*server_port="\d+"[^}]*unified_role="primary"[^}]*\} [1-9]`, m)
	assert.Regexp(t, `(?m)^db_client_operation_duration_seconds_count\{[^}]*server_port="\d+"[^}]*unified_role="replica"[^}]*\} [1-9]`, m)
	assert.Regexp(t, `(?m)^db_client_operation_duration_seconds_count\{[^}]*error_type="23505"`, m, "the failed INSERT")
	// Replica lag, and the failover.
	assert.Regexp(t, `(?m)^unified_replica_lag_seconds\{[^}]*server_port="\d+"`, m)
	assert.Regexp(t, `(?m)^unified_replica_lag_bytes\{`, m)
	fo := regexp.MustCompile(`(?m)^unified_failover_count_total(?:\{[^}]*\})? (\S+)$`).FindStringSubmatch(m)
	if assert.NotNil(t, fo, "unified_failover_count_total series") {
		n, err := strconv.ParseFloat(fo[1], 64)
		require.NoError(t, err)
		assert.GreaterOrEqual(t, n, 1.0, "failovers counted")
	}
	assert.GreaterOrEqual(t, res.Failovers, uint64(1))

	// What the example prints.
	assert.Contains(t, out.String(), "--- GET /metrics")
	assert.Contains(t, out.String(), `"primary": "127.0.0.1:`, "the /healthz JSON names the new primary")
	assert.NotRegexp(t, `(?m)^# HELP (?:go|process|promhttp)_`, out.String(), "only db_client_* and unified_* series are printed")
	assert.Regexp(t, `(?m)^unified_commit_unknown_count_total\{[^}]*\} [1-9]`, m, "the statement that ended its session")

	// The Grafana dashboard queries only what the driver exported here.
	t.Run("dashboard", func(t *testing.T) { checkDashboard(t, m) })
}
