package workload

import (
	"cmp"
	"errors"
	"math"
	"slices"
	"time"

	"github.com/unifiedsql/unified"
)

// Timeline is a run as time series, for a picture of a failover: what
// happened in each step of the run, with the run's events marked. It is
// what cmd/failoverbench writes with -timeline (a JSON array of them) and
// what examples/failoverplot and the demo's -plot draw. Times are seconds
// since Start; rates are per second; latencies are milliseconds.
type Timeline struct {
	Title string    `json:"title"`
	Start time.Time `json:"start"`
	// StepSeconds is the width of a bucket.
	StepSeconds float64 `json:"step_seconds"`
	// Nodes are the node names, by index; the per-node series follow them.
	Nodes   []string `json:"nodes"`
	Buckets []Bucket `json:"buckets"`
	Marks   []Mark   `json:"marks"`
}

// Bucket is one step of a Timeline: the operations that returned in
// [T, T+StepSeconds).
type Bucket struct {
	T float64 `json:"t"`
	// Writes: acknowledged writes per second on each node. A write does
	// not say where it ran: it is counted for the node that was the
	// primary when it returned (TimelineSpec.Primaries).
	Writes []float64 `json:"writes_per_s"`
	// Reads: successful reads per second by the node that answered.
	Reads []float64 `json:"reads_per_s"`
	// WriteErrors counts every failed write, CommitUnknown those of them
	// that wrapped unified.ErrCommitUnknown; ReadErrors the failed reads.
	WriteErrors   float64 `json:"write_errors_per_s"`
	CommitUnknown float64 `json:"commit_unknown_per_s"`
	ReadErrors    float64 `json:"read_errors_per_s"`
	// WriteP99MS and ReadP99MS are the 99th percentile of how long the
	// writes and the reads (failed ones included) took; 0 when none
	// returned.
	WriteP99MS float64 `json:"write_p99_ms"`
	ReadP99MS  float64 `json:"read_p99_ms"`
}

// Mark is an event of the run.
type Mark struct {
	T     float64 `json:"t"`
	Kind  string  `json:"kind"` // one of the Mark* kinds
	Label string  `json:"label"`
}

// The kinds of Mark.
const (
	MarkFault    = "fault"    // the primary was killed or hung
	MarkPromoted = "promoted" // the new primary first accepted writes
	MarkRejoined = "rejoined" // the old primary streams again, as a replica
	MarkObserved = "observed" // what the driver saw (no primary, a new primary)
)

// Event is a Mark before it is placed on the timeline.
type Event struct {
	At    time.Time
	Kind  string
	Label string
}

// PrimarySince says node Node was the primary from At on.
type PrimarySince struct {
	At   time.Time
	Node int
}

// TimelineSpec shapes Outcomes.Timeline.
type TimelineSpec struct {
	Title      string
	Start, End time.Time
	Step       time.Duration // default 100 ms
	Nodes      []string
	// Primaries, sorted by At: the primary over time, for the writes'
	// node. A write that returned before the first entry counts for it.
	Primaries []PrimarySince
	Events    []Event
}

// Timeline buckets the outcomes that returned between s.Start and s.End.
func (o Outcomes) Timeline(s TimelineSpec) Timeline {
	if s.Step <= 0 {
		s.Step = 100 * time.Millisecond
	}
	n := max(1, int(math.Ceil(float64(s.End.Sub(s.Start))/float64(s.Step))))
	tl := Timeline{Title: s.Title, Start: s.Start, StepSeconds: s.Step.Seconds(), Nodes: s.Nodes, Buckets: make([]Bucket, n), Marks: []Mark{}}
	perSec := 1 / s.Step.Seconds()
	wlat, rlat := make([][]time.Duration, n), make([][]time.Duration, n)
	for i := range tl.Buckets {
		tl.Buckets[i] = Bucket{T: float64(i) * tl.StepSeconds, Writes: make([]float64, len(s.Nodes)), Reads: make([]float64, len(s.Nodes))}
	}
	// place returns the bucket of an outcome that returned at, after took,
	// and adds took to that bucket's latencies lat; nil outside the span.
	place := func(at time.Time, took time.Duration, lat [][]time.Duration) *Bucket {
		if at.Before(s.Start) || !at.Before(s.End) {
			return nil
		}
		i := min(n-1, int(at.Sub(s.Start)/s.Step))
		lat[i] = append(lat[i], took)
		return &tl.Buckets[i]
	}
	for _, w := range o.Writes {
		b := place(w.At, w.Took, wlat)
		if b == nil {
			continue
		}
		switch {
		case w.Err == nil:
			if p := primaryAt(s.Primaries, w.At); p >= 0 && p < len(b.Writes) {
				b.Writes[p] += perSec
			}
		case errors.Is(w.Err, unified.ErrCommitUnknown):
			b.CommitUnknown += perSec
			b.WriteErrors += perSec
		default:
			b.WriteErrors += perSec
		}
	}
	for _, r := range o.Reads {
		b := place(r.At, r.Took, rlat)
		if b == nil {
			continue
		}
		switch {
		case r.Err != nil:
			b.ReadErrors += perSec
		case r.Node >= 0 && r.Node < len(b.Reads):
			b.Reads[r.Node] += perSec
		}
	}
	for i := range tl.Buckets {
		tl.Buckets[i].WriteP99MS = p99MS(wlat[i])
		tl.Buckets[i].ReadP99MS = p99MS(rlat[i])
	}
	for _, e := range s.Events {
		if e.At.Before(s.Start) || e.At.After(s.End) {
			continue
		}
		tl.Marks = append(tl.Marks, Mark{T: e.At.Sub(s.Start).Seconds(), Kind: e.Kind, Label: e.Label})
	}
	slices.SortStableFunc(tl.Marks, func(a, b Mark) int { return cmp.Compare(a.T, b.T) })
	return tl
}

// primaryAt is the node of the last entry at or before t (the first
// entry's before it); -1 with no entries.
func primaryAt(ps []PrimarySince, t time.Time) int {
	p := -1
	for i, e := range ps {
		if i == 0 || !e.At.After(t) {
			p = e.Node
		}
	}
	return p
}

// p99MS is the nearest-rank 99th percentile in milliseconds; 0 for none.
func p99MS(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	rank := int(math.Ceil(0.99*float64(len(d)))) - 1
	return float64(d[max(0, rank)].Microseconds()) / 1000
}
