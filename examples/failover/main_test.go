package main

import (
	"os"
	"path/filepath"
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

// TestDemo runs the demo as `go -C examples run ./failover -duration 8s`
// would.
func TestDemo(t *testing.T) {
	out := exampletest.Output(t)
	plot := filepath.Join(t.TempDir(), "timeline.svg")
	sum := run(t, out, options{duration: 8 * time.Second, writers: 4, readers: 4, failover: true, sync: true, plot: plot})
	require.NotNil(t, sum)

	assert.Zero(t, sum.Lost, "acknowledged writes lost")
	assert.Zero(t, sum.Duplicates, "ids stored twice")
	assert.Regexp(t, `(?m)^  acknowledged writes lost +0$`, out.String())
	assert.Regexp(t, `(?m)^  duplicates +0$`, out.String())

	// The failover happened and the driver followed it.
	assert.Regexp(t, `>>> SIGKILL node0, the primary`, out.String())
	assert.Regexp(t, `>>> node[12] promoted`, out.String())
	assert.Regexp(t, `(?m)^  failover detected after +\d+ ms`, out.String())
	assert.GreaterOrEqual(t, sum.Detected, time.Duration(0), "unified's Health noticed the crash")
	assert.GreaterOrEqual(t, sum.Resumed, time.Duration(0), "writes resumed on the new primary")
	assert.Positive(t, sum.OutageReadsOK, "reads were served during the outage")

	// -plot drew the timeline with the scenario's events.
	svg, err := os.ReadFile(plot)
	require.NoError(t, err)
	for _, label := range []string{"SIGKILL node0", "accepts writes", "node0 rejoined", "acknowledged writes per second", "p99 latency"} {
		assert.Contains(t, string(svg), label)
	}
}
