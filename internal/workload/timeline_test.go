package workload

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTimeline(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	o := Outcomes{
		Writes: []Write{
			{ID: 1, At: at(10), Took: ms(2)},                    // bucket 0, node0 (the first primary)
			{ID: 2, At: at(50), Took: ms(4)},                    // bucket 0, node0
			{ID: 3, At: at(120), Took: ms(30), Err: errUnknown}, // bucket 1: commit unknown
			{ID: 4, At: at(150), Took: ms(90), Err: errEOF},     // bucket 1: another error
			{ID: 5, At: at(250), Took: ms(5)},                   // bucket 2, node1 (promoted at 200)
			{ID: 6, At: at(400), Took: ms(1)},                   // after End: left out
		},
		Reads: []Read{
			{At: at(20), Took: ms(1), Node: 1},
			{At: at(30), Took: ms(3), Node: 2},
			{At: at(130), Took: ms(7), Node: -1, Err: errEOF},
			{At: at(-5), Took: ms(1), Node: 1}, // before Start: left out
		},
	}
	tl := o.Timeline(TimelineSpec{
		Title: "t", Start: at(0), End: at(300), Step: ms(100),
		Nodes:     []string{"node0", "node1", "node2"},
		Primaries: []PrimarySince{{At: at(0), Node: 0}, {At: at(200), Node: 1}},
		Events: []Event{
			{At: at(200), Kind: MarkPromoted, Label: "node1 promoted"},
			{At: at(100), Kind: MarkFault, Label: "SIGKILL node0"},
			{At: at(900), Kind: MarkRejoined, Label: "too late"},
		},
	})
	assert.Equal(t, "t", tl.Title)
	assert.Equal(t, 0.1, tl.StepSeconds)
	require.Len(t, tl.Buckets, 3)
	b0, b1, b2 := tl.Buckets[0], tl.Buckets[1], tl.Buckets[2]
	assert.Equal(t, []float64{20, 0, 0}, b0.Writes, "2 writes in 100 ms")
	assert.Equal(t, []float64{0, 10, 10}, b0.Reads)
	assert.Equal(t, 4.0, b0.WriteP99MS)
	assert.Equal(t, 3.0, b0.ReadP99MS)
	assert.Zero(t, b0.WriteErrors)

	assert.Equal(t, []float64{0, 0, 0}, b1.Writes)
	assert.Equal(t, 20.0, b1.WriteErrors)
	assert.Equal(t, 10.0, b1.CommitUnknown)
	assert.Equal(t, 10.0, b1.ReadErrors)
	assert.Equal(t, 90.0, b1.WriteP99MS)

	assert.Equal(t, []float64{0, 10, 0}, b2.Writes, "after the promotion writes count for node1")
	assert.Zero(t, b2.ReadP99MS, "no read returned")
	assert.InDelta(t, 0.2, b2.T, 1e-9)

	assert.Equal(t, []Mark{
		{T: 0.1, Kind: MarkFault, Label: "SIGKILL node0"},
		{T: 0.2, Kind: MarkPromoted, Label: "node1 promoted"},
	}, tl.Marks)
}

func TestP99(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 200; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	assert.Equal(t, 198.0, p99MS(d))
	assert.Equal(t, 7.0, p99MS([]time.Duration{7 * time.Millisecond}))
	assert.Zero(t, p99MS(nil))
}

func TestPrimaryAt(t *testing.T) {
	ps := []PrimarySince{{At: at(100), Node: 0}, {At: at(200), Node: 2}}
	assert.Equal(t, 0, primaryAt(ps, at(50)), "before the first entry: the first")
	assert.Equal(t, 0, primaryAt(ps, at(199)))
	assert.Equal(t, 2, primaryAt(ps, at(200)))
	assert.Equal(t, -1, primaryAt(nil, at(0)))
}
