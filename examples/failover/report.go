package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/workload"
	"github.com/unifiedsql/unified/pgtest"
)

// console serialises the output of the goroutines and stamps events with
// the time since the workload started.
type console struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time // set by startClock before the workload starts
}

func newConsole(w io.Writer) *console { return &console{w: w} }

func (c *console) startClock() { c.start = time.Now() }

func (c *console) elapsed(t time.Time) time.Duration { return t.Sub(c.start) }

// say prints a line without a time stamp.
func (c *console) say(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.w, format+"\n", args...)
}

// event prints a line stamped with when it happened.
func (c *console) event(at time.Time, format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.w, "[%6.2fs] "+format+"\n", append([]any{c.elapsed(at).Seconds()}, args...)...)
}

// nodeNames translates between node indexes, names (node0...), ports and
// the "host:port" names unified uses.
type nodeNames struct {
	names  []string
	byPrt  map[int]int
	byName map[string]int
}

func newNodeNames(cl *pgtest.Cluster) *nodeNames {
	n := &nodeNames{byPrt: map[int]int{}, byName: map[string]int{}}
	for i := 0; i < cl.Len(); i++ {
		n.names = append(n.names, cl.Node(i).Name())
		n.byPrt[cl.Node(i).Port()] = i
		n.byName[cl.Node(i).Addr()] = i
	}
	return n
}

func (n *nodeNames) name(i int) string {
	if i < 0 || i >= len(n.names) {
		return "?"
	}
	return n.names[i]
}

// byAddr returns the index of the node unified calls addr ("host:port"),
// or -1.
func (n *nodeNames) byAddr(addr string) int {
	if i, ok := n.byName[addr]; ok {
		return i
	}
	return -1
}

// tally is what happened during one second, for the live line: the
// difference of two workload.Counts.
type tally struct {
	writesOK, writesFailed, writesUnknown int
	readsOK                               []int // per node index
	readsFailed                           int
}

func since(now, before workload.Counts, nodes int) tally {
	t := tally{
		writesOK:      now.WritesOK - before.WritesOK,
		writesUnknown: now.WritesUnknown - before.WritesUnknown,
		readsFailed:   now.ReadsFailed - before.ReadsFailed,
		readsOK:       make([]int, nodes),
	}
	t.writesFailed = t.writesUnknown + now.WritesFailed - before.WritesFailed
	for i := range t.readsOK {
		t.readsOK[i] = now.ReadsOK[i] - before.ReadsOK[i]
	}
	return t
}

// primaryWatch polls unified's view of the cluster every 5 ms and records
// each change of primary, so the summary can say when the driver noticed
// the crash.
type primaryWatch struct {
	nodes *nodeNames
	con   *console

	mu      sync.Mutex // protects following fields
	latest  unified.Health
	changes []primaryChange
}

type primaryChange struct {
	at      time.Time
	primary int // node index; -1 = no primary
}

func (w *primaryWatch) run(ctx context.Context, c *unified.Connector) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	current := -2 // not seen yet
	for {
		h := c.Health(ctx)
		now := time.Now()
		p := -1
		if h.Primary != "" {
			p = w.nodes.byAddr(h.Primary)
		}
		w.mu.Lock()
		w.latest = h
		changed := !h.At.IsZero() && p != current
		if changed {
			w.changes = append(w.changes, primaryChange{at: now, primary: p})
			current = p
		}
		w.mu.Unlock()
		if changed {
			if p < 0 {
				w.con.event(now, "unified: no primary (writes wait for one)")
			} else {
				w.con.event(now, "unified: primary is %s", w.nodes.name(p))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (w *primaryWatch) health() unified.Health {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.latest
}

// firstChangeAfter returns the first change of primary after t.
func (w *primaryWatch) firstChangeAfter(t time.Time) (primaryChange, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.changes {
		if c.at.After(t) {
			return c, true
		}
	}
	return primaryChange{}, false
}

// changesAfter returns the changes of primary after t.
func (w *primaryWatch) changesAfter(t time.Time) []primaryChange {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []primaryChange
	for _, c := range w.changes {
		if c.at.After(t) {
			out = append(out, c)
		}
	}
	return out
}

// printEverySecond prints the live line until ctx ends.
func printEverySecond(ctx context.Context, con *console, load *workload.Run, watch *primaryWatch, nodes *nodeNames) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	before := load.Counts()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			c := load.Counts()
			con.event(now, "%s", liveLine(since(c, before, len(nodes.names)), watch.health(), nodes))
			before = c
		}
	}
}

// liveLine is, for example:
//
//	primary node0 | writes 1534 ok, 0 failed (0 unknown) | reads node1/replica 812, node2/replica 790, 0 failed | lag node1 0s 0B, node2 2ms 1.2kB
func liveLine(t tally, h unified.Health, nodes *nodeNames) string {
	role := make([]string, len(t.readsOK))
	for i := range role {
		role[i] = "unknown"
	}
	var lag []string
	for _, n := range h.Nodes {
		i := nodes.byAddr(n.Name)
		if i < 0 || i >= len(role) {
			continue
		}
		switch n.State {
		case "down", "fenced":
			role[i] = n.State
		default:
			role[i] = n.Role
		}
		if role[i] == "replica" {
			lag = append(lag, fmt.Sprintf("%s %v %s", nodes.name(i), n.Lag.Round(time.Millisecond), byteSize(n.LagBytes)))
		}
	}
	primary := "none"
	if h.Primary != "" {
		primary = nodes.name(nodes.byAddr(h.Primary))
	}
	var reads []string
	for i, n := range t.readsOK {
		if n > 0 || role[i] == "replica" {
			reads = append(reads, fmt.Sprintf("%s/%s %d", nodes.name(i), role[i], n))
		}
	}
	reads = append(reads, fmt.Sprintf("%d failed", t.readsFailed))
	return fmt.Sprintf("primary %s | writes %d ok, %d failed (%d unknown) | reads %s | lag %s",
		primary, t.writesOK, t.writesFailed, t.writesUnknown, strings.Join(reads, ", "), strings.Join(lag, ", "))
}

// summary is the verdict of a run.
type summary struct {
	Failover bool
	Sync     bool
	Killed   string // the old primary
	Promoted string // the new primary
	// PromotedAfter: from the kill to the new primary accepting writes
	// (the failover manager's part).
	PromotedAfter time.Duration
	// Detected: from the kill to unified's Health first showing another
	// primary or none; -1 if it never did. DetectedAs says which.
	Detected   time.Duration
	DetectedAs string
	// Resumed: from the promotion to the first acknowledged write; -1 if
	// no write was acknowledged after it.
	Resumed time.Duration

	// Reads completed between the kill and the first write after the
	// promotion (the whole run without -failover).
	OutageReads, OutageReadsOK int
	OutageReadsByNode          map[string]int

	Acked         int // writes that returned nil
	Unknown       int // writes that returned an error wrapping ErrCommitUnknown
	UnknownStored int // ... and were in fact stored
	Failed        int // writes that returned another error
	FailedStored  int // ... and were nonetheless stored (unflagged: should be 0)
	Lost          int // acknowledged but not stored on the new primary
	Duplicates    int // ids stored more than once
	// A few of the errors: ErrCommitUnknown ones, others.
	UnknownSamples, FailedSamples []string
}

// summarize judges the run (workload.Judge) and times the failover; end
// is when the load stopped.
func summarize(o workload.Outcomes, stored map[int64]int, sc *scenario, watch *primaryWatch, nodes *nodeNames, failover, sync bool, end time.Time) *summary {
	s := &summary{Failover: failover, Sync: sync, Detected: -1, Resumed: -1, OutageReadsByNode: map[string]int{}}
	from, to := time.Time{}, end
	if failover {
		s.Killed, s.Promoted = nodes.name(sc.killed), nodes.name(sc.promoted)
		s.PromotedAfter = sc.promotedAt.Sub(sc.killedAt)
		if c, ok := watch.firstChangeAfter(sc.killedAt); ok {
			s.Detected = c.at.Sub(sc.killedAt)
			s.DetectedAs = "no primary"
			if c.primary >= 0 {
				s.DetectedAs = "primary " + nodes.name(c.primary)
			}
		}
		from = sc.killedAt
		if first := o.FirstAckAfter(sc.promotedAt); !first.IsZero() {
			s.Resumed = first.Sub(sc.promotedAt)
			to = first
		}
	}
	v := workload.Judge(o, stored, from, to)
	s.Acked, s.Unknown, s.UnknownStored, s.Failed, s.FailedStored = v.Acked, v.Unknown, v.UnknownStored, v.Failed, v.FailedStored
	s.Lost, s.Duplicates = v.Lost, v.Duplicates
	s.UnknownSamples, s.FailedSamples = v.UnknownErrors[:min(2, len(v.UnknownErrors))], v.FailedErrors[:min(2, len(v.FailedErrors))]
	s.OutageReads, s.OutageReadsOK = v.ReadsOK+v.ReadsFailed, v.ReadsOK
	for i, n := range v.ReadsByNode {
		s.OutageReadsByNode[nodes.name(i)] += n
	}
	return s
}

func (s *summary) print(con *console) {
	p := func(label, format string, args ...any) { con.say("  %-27s "+format, append([]any{label}, args...)...) }
	con.say("\nsummary")
	if s.Failover {
		if s.Detected >= 0 {
			p("failover detected after", "%v (SIGKILL of %s -> unified's Health showed %s)", ms(s.Detected), s.Killed, s.DetectedAs)
		} else {
			p("failover detected", "never (unified's Health kept showing %s)", s.Killed)
		}
		p("new primary", "%s, accepting writes %v after the kill (the failover manager's part)", s.Promoted, ms(s.PromotedAfter))
		if s.Resumed >= 0 {
			p("writes resumed", "%v after the promotion", ms(s.Resumed))
		} else {
			p("writes resumed", "never")
		}
	}
	label := "reads during the outage"
	if !s.Failover {
		label = "reads"
	}
	var byNode []string
	for _, n := range slices.Sorted(maps.Keys(s.OutageReadsByNode)) {
		byNode = append(byNode, fmt.Sprintf("%s %d", n, s.OutageReadsByNode[n]))
	}
	p(label, "%s of %d succeeded (%s)", percent(s.OutageReadsOK, s.OutageReads), s.OutageReads, strings.Join(byNode, ", "))
	p("writes acknowledged", "%d", s.Acked)
	p("ambiguous writes", "%d returned ErrCommitUnknown (%d of them in fact committed)", s.Unknown, s.UnknownStored)
	for _, e := range s.UnknownSamples {
		p("", "e.g. %s", e)
	}
	p("other failed writes", "%d (%d of them stored)", s.Failed, s.FailedStored)
	for _, e := range s.FailedSamples {
		p("", "e.g. %s", e)
	}
	p("acknowledged writes lost", "%d", s.Lost)
	if s.Lost > 0 && !s.Sync {
		p("", "asynchronous replication: the crashed primary acknowledged commits that no replica had received; run with -sync")
	}
	p("duplicates", "%d", s.Duplicates)
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%d ms", d.Round(time.Millisecond).Milliseconds())
}

func percent(n, of int) string {
	if of == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f %%", 100*float64(n)/float64(of))
}

func byteSize(n uint64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fkB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
