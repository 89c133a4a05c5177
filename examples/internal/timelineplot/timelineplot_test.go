package timelineplot

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/unifiedsql/unified/internal/workload"
)

// synthetic is a timeline of a failover at 1 s in a 3 s run.
func synthetic() workload.Timeline {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var o workload.Outcomes
	for i := range 3000 {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		var err error
		if i >= 1000 && i < 1080 {
			continue // the outage
		}
		o.Writes = append(o.Writes, workload.Write{ID: int64(i), At: at, Took: time.Millisecond, Err: err})
		o.Reads = append(o.Reads, workload.Read{At: at, Took: 500 * time.Microsecond, Node: 1 + i%2})
	}
	return o.Timeline(workload.TimelineSpec{
		Title: "synthetic <&>", Start: t0, End: t0.Add(3 * time.Second), Step: 50 * time.Millisecond,
		Nodes:     []string{"node0", "node1", "node2"},
		Primaries: []workload.PrimarySince{{At: t0, Node: 0}, {At: t0.Add(1080 * time.Millisecond), Node: 1}},
		Events: []workload.Event{
			{At: t0.Add(time.Second), Kind: workload.MarkFault, Label: "SIGKILL node0"},
			{At: t0.Add(1080 * time.Millisecond), Kind: workload.MarkPromoted, Label: "node1 promoted"},
		},
	})
}

func TestSave(t *testing.T) {
	dir := t.TempDir()
	tl := synthetic()

	svg := filepath.Join(dir, "t.svg")
	require.NoError(t, Save(svg, tl, tl))
	b, err := os.ReadFile(svg)
	require.NoError(t, err)
	assert.True(t, bytes.HasPrefix(bytes.TrimSpace(b), []byte("<?xml")), "an SVG document")
	assert.Contains(t, string(b), "SIGKILL node0")
	assert.Contains(t, string(b), "synthetic &lt;&amp;&gt;", "text is escaped")

	pngPath := filepath.Join(dir, "t.png")
	require.NoError(t, Save(pngPath, tl))
	f, err := os.Open(pngPath)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	assert.Greater(t, img.Bounds().Dx(), 100)

	assert.ErrorContains(t, Save(filepath.Join(dir, "t.txt"), tl), ".svg, .png, .pdf")
	assert.ErrorContains(t, Save(filepath.Join(dir, "t.svg")), "no timeline")
}
