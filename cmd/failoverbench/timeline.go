package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/unifiedsql/unified/internal/pgcluster"
	"github.com/unifiedsql/unified/internal/workload"
)

// With -timeline file.json, every trial is also kept as a
// workload.Timeline (50 ms steps, from the start of the warm-up to the end
// of the trial, the fault and the promotion marked), and the file gets
// them all as a JSON array. examples/failoverplot draws it:
//
//	go run ./cmd/failoverbench -trials 1 -timeline t.json
//	go -C examples run ./failoverplot -in t.json -out t.svg
//
// Writes are counted for the node that was the primary when they
// returned: the faulted node until the promotion, the promoted one after.

// timelineStep is the width of a timeline bucket.
const timelineStep = 50 * time.Millisecond

// trialTimeline is one trial as a Timeline; start is when the load began.
func trialTimeline(r trialResult, o workload.Outcomes, cl *pgcluster.Cluster, faulted, promoted int, start, faultAt, promotedAt, end time.Time) *workload.Timeline {
	var nodes []string
	for i := 0; i < cl.Len(); i++ {
		nodes = append(nodes, cl.Node(i).Name)
	}
	fault := "SIGKILL "
	if r.Scenario == "hang" {
		fault = "SIGSTOP "
	}
	tl := o.Timeline(workload.TimelineSpec{
		Title: fmt.Sprintf("%s, %s, trial %d", r.Scenario, r.Driver, r.Trial),
		Start: start, End: end, Step: timelineStep,
		Nodes:     nodes,
		Primaries: []workload.PrimarySince{{At: start, Node: faulted}, {At: promotedAt, Node: promoted}},
		Events: []workload.Event{
			{At: faultAt, Kind: workload.MarkFault, Label: fault + nodes[faulted]},
			{At: promotedAt, Kind: workload.MarkPromoted, Label: nodes[promoted] + " accepts writes"},
		},
	})
	return &tl
}

// writeTimelines writes the trials' timelines to path as a JSON array.
func writeTimelines(path string, trials []trialResult) error {
	tls := []workload.Timeline{}
	for _, t := range trials {
		if t.timeline != nil {
			tls = append(tls, *t.timeline)
		}
	}
	b, err := json.Marshal(tls)
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
