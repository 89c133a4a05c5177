package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/workload"
)

// timelines writes a file as cmd/failoverbench -timeline does, with two
// trials.
func timelines(t *testing.T) string {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var tls []workload.Timeline
	for _, title := range []string{"kill, unified, trial 1", "kill, pgx, trial 1"} {
		o := workload.Outcomes{Writes: []workload.Write{{ID: 1, At: t0.Add(10 * time.Millisecond), Took: time.Millisecond}}}
		tls = append(tls, o.Timeline(workload.TimelineSpec{
			Title: title, Start: t0, End: t0.Add(time.Second), Step: 50 * time.Millisecond,
			Nodes:     []string{"node0", "node1", "node2"},
			Primaries: []workload.PrimarySince{{At: t0, Node: 0}},
			Events:    []workload.Event{{At: t0.Add(500 * time.Millisecond), Kind: workload.MarkFault, Label: "SIGKILL node0"}},
		}))
	}
	b, err := json.Marshal(tls)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "t.json")
	require.NoError(t, os.WriteFile(path, b, 0o644))
	return path
}

func TestRun(t *testing.T) {
	in := timelines(t)
	out := filepath.Join(t.TempDir(), "t.svg")
	var stderr bytes.Buffer
	require.Equal(t, 0, run([]string{"-in", in, "-out", out, "-match", "pgx"}, &stderr), stderr.String())
	assert.Contains(t, stderr.String(), "1 timelines drawn")
	svg, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Contains(t, string(svg), "kill, pgx, trial 1")
	assert.NotContains(t, string(svg), "kill, unified, trial 1")

	stderr.Reset()
	assert.Equal(t, 1, run([]string{"-in", in, "-out", out, "-match", "hang"}, &stderr))
	assert.Contains(t, stderr.String(), `no timeline (of 2) has "hang"`)
	stderr.Reset()
	assert.Equal(t, 2, run([]string{"-in", in}, &stderr))
	assert.Contains(t, stderr.String(), "usage:")
}
