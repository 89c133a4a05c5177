// Package workload is the failover workload and its judge, shared by the
// root package's failover tests, the demo (examples/failover) and
// cmd/failoverbench: writers INSERT unique ids into a table without a unique
// constraint (so a write stored twice shows), readers ask which node
// answers, every outcome is recorded, and the judge compares what the
// clients were told with the ids the new primary holds.
//
// Judge and the methods of Outcomes are pure functions of the recorded
// outcomes and the ground truth; Start (the runner), CreateTable and
// IDCounts do the I/O. IDCounts reads the ground truth through a plain pgx
// connection, never through unified.
package workload

import (
	"errors"
	"slices"
	"time"

	"github.com/unifiedsql/unified"
)

// Write is what one INSERT returned.
type Write struct {
	ID   int64
	At   time.Time     // when it returned
	Took time.Duration // from the call to its return
	Err  error         // nil: acknowledged
}

// Read is what one read returned.
type Read struct {
	At   time.Time
	Took time.Duration
	Node int // index of the node that answered; -1 when it failed or the node is not known
	Err  error
}

// Outcomes is everything the clients were told, in the order they were
// told it.
type Outcomes struct {
	Writes []Write
	Reads  []Read
}

// maxSamples is how many distinct error messages a Verdict keeps per kind.
const maxSamples = 5

// Verdict is what the database holds compared with what the clients were
// told.
type Verdict struct {
	Acked         int // writes that returned nil
	Unknown       int // writes that returned an error wrapping unified.ErrCommitUnknown
	UnknownStored int // ... and were in fact stored
	Failed        int // writes that returned another error
	FailedStored  int // ... and were stored all the same: unflagged, never acceptable for unified
	Lost          int // acknowledged but not stored
	Duplicates    int // ids stored more than once

	// Reads in the window given to Judge.
	ReadsOK, ReadsFailed int
	ReadsByNode          map[int]int // node index -> successful reads

	// The first distinct messages (up to 5 each) of the unknown and the
	// failed writes and of the failed reads in the window.
	UnknownErrors, FailedErrors, ReadErrors []string
}

// Judge compares the outcomes with stored, the number of rows of each id
// on the node that is now the primary (IDCounts). Reads are counted when
// from <= At <= to; a zero from or to leaves that side open.
func Judge(o Outcomes, stored map[int64]int, from, to time.Time) Verdict {
	v := Verdict{ReadsByNode: map[int]int{}}
	for _, n := range stored {
		if n > 1 {
			v.Duplicates++
		}
	}
	for _, w := range o.Writes {
		in := stored[w.ID] > 0
		switch {
		case w.Err == nil:
			v.Acked++
			if !in {
				v.Lost++
			}
		case errors.Is(w.Err, unified.ErrCommitUnknown):
			v.Unknown++
			if in {
				v.UnknownStored++
			}
			v.UnknownErrors = sample(v.UnknownErrors, w.Err)
		default:
			v.Failed++
			if in {
				v.FailedStored++
			}
			v.FailedErrors = sample(v.FailedErrors, w.Err)
		}
	}
	for _, r := range o.Reads {
		if !from.IsZero() && r.At.Before(from) || !to.IsZero() && r.At.After(to) {
			continue
		}
		if r.Err != nil {
			v.ReadsFailed++
			v.ReadErrors = sample(v.ReadErrors, r.Err)
			continue
		}
		v.ReadsOK++
		v.ReadsByNode[r.Node]++
	}
	return v
}

func sample(msgs []string, err error) []string {
	if msg := err.Error(); len(msgs) < maxSamples && !slices.Contains(msgs, msg) {
		return append(msgs, msg)
	}
	return msgs
}

// Samples returns up to n of the verdict's error messages: unknown writes
// first, then failed writes, then failed reads.
func (v Verdict) Samples(n int) []string {
	all := slices.Concat(v.UnknownErrors, v.FailedErrors, v.ReadErrors)
	return all[:min(n, len(all))]
}

// AckedSince counts the writes acknowledged at or after t.
func (o Outcomes) AckedSince(t time.Time) int {
	n := 0
	for _, w := range o.Writes {
		if w.Err == nil && !w.At.Before(t) {
			n++
		}
	}
	return n
}

// FirstAckAfter returns when the first write acknowledged at or after t
// was, or zero if none was.
func (o Outcomes) FirstAckAfter(t time.Time) time.Time {
	var first time.Time
	for _, w := range o.Writes {
		if w.Err == nil && !w.At.Before(t) && (first.IsZero() || w.At.Before(first)) {
			first = w.At
		}
	}
	return first
}

// Recovery is how writes came back after a promotion.
type Recovery struct {
	// Resumed is the first acknowledgement at or after the promotion and
	// before the deadline; zero if there was none.
	Resumed time.Time
	// LongestOutage is the longest gap between consecutive acknowledged
	// writes; when writes did not resume, the last gap runs to the end.
	LongestOutage time.Duration
}

// Recovery measures the writes' recovery from a promotion at promoted; a
// zero deadline is none, end is when the workload stopped.
func (o Outcomes) Recovery(promoted, deadline, end time.Time) Recovery {
	var r Recovery
	if first := o.FirstAckAfter(promoted); !first.IsZero() && (deadline.IsZero() || first.Before(deadline)) {
		r.Resumed = first
	}
	var acks []time.Time
	for _, w := range o.Writes {
		if w.Err == nil && (!r.Resumed.IsZero() || w.At.Before(promoted)) {
			acks = append(acks, w.At)
		}
	}
	slices.SortFunc(acks, time.Time.Compare)
	if r.Resumed.IsZero() {
		acks = append(acks, end) // writes never resumed: the outage lasts to the end
	}
	for i := 1; i < len(acks); i++ {
		r.LongestOutage = max(r.LongestOutage, acks[i].Sub(acks[i-1]))
	}
	return r
}
