package main

import (
	"time"

	"github.com/unifiedsql/unified/internal/workload"
)

// timeline is the run for -plot: the outcomes from start to end in 100 ms
// steps, the writes counted for the node that was the primary when they
// returned (the first primary until the promotion, the promoted node
// after it), and the scenario's events with the changes of primary that
// unified's Health showed after the kill.
func timeline(o workload.Outcomes, sc *scenario, watch *primaryWatch, nodes *nodeNames, firstPrimary int, start, end time.Time, failover bool) workload.Timeline {
	spec := workload.TimelineSpec{
		Title: "examples/failover", Start: start, End: end, Step: 100 * time.Millisecond,
		Nodes:     nodes.names,
		Primaries: []workload.PrimarySince{{At: start, Node: firstPrimary}},
	}
	if failover {
		spec.Primaries = append(spec.Primaries, workload.PrimarySince{At: sc.promotedAt, Node: sc.promoted})
		spec.Events = append(spec.Events,
			workload.Event{At: sc.killedAt, Kind: workload.MarkFault, Label: "SIGKILL " + nodes.name(sc.killed)},
			workload.Event{At: sc.promotedAt, Kind: workload.MarkPromoted, Label: nodes.name(sc.promoted) + " accepts writes"},
		)
		if !sc.rejoinedAt.IsZero() {
			spec.Events = append(spec.Events, workload.Event{At: sc.rejoinedAt, Kind: workload.MarkRejoined, Label: nodes.name(sc.killed) + " rejoined"})
		}
		for _, c := range watch.changesAfter(sc.killedAt) {
			label := "unified: no primary"
			if c.primary >= 0 {
				label = "unified: primary " + nodes.name(c.primary)
			}
			spec.Events = append(spec.Events, workload.Event{At: c.at, Kind: workload.MarkObserved, Label: label})
		}
	}
	return o.Timeline(spec)
}
