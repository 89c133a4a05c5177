package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/unifiedsql/unified"
	"github.com/unifiedsql/unified/internal/pgcluster"
	"github.com/unifiedsql/unified/internal/workload"
)

// With -saturate D, after the trials, the
// command runs unified's workload on the healthy cluster for D with every
// CPU of the machine kept busy by spinning goroutines (spinnersPerCPU per
// CPU, beside the servers and the workload), and watches the Connector's Health every
// 10 ms: a node shown down, or a change of primary, is a false alarm (no
// fault was made). It is the check that hang detection's short probe
// deadlines (see the root package's probe.go) do not mark nodes down when
// the client itself is the slow one.

// spinnersPerCPU: spinning goroutines per CPU. Go preempts a running
// goroutine every 10 ms, so with four per CPU a ready probe goroutine may
// wait some 40 ms for a CPU, near the probes' 50 ms deadline floor: a
// client that is the slow one.
const spinnersPerCPU = 4

// saturation is the result of one saturated run.
type saturation struct {
	Duration   time.Duration
	Spinners   int
	LoadAvg    string // /proc/loadavg's first field, at the end
	Acked      int
	ReadsOK    int
	Failed     int      // statements that failed
	FalseDowns int      // Health polls showing a node down
	Nodes      []string // the nodes shown down, once each
	Changes    int      // changes of the primary
}

func runSaturation(ctx context.Context, cl *pgcluster.Cluster, cfg config, d time.Duration) (saturation, error) {
	s := saturation{Duration: d, Spinners: spinnersPerCPU * runtime.NumCPU()}
	db, _, err := openDBs(cl, cfg, "unified")
	if err != nil {
		return s, err
	}
	defer db.Close()
	conn, ok := unified.ConnectorOf(db)
	if !ok {
		return s, fmt.Errorf("not a unified DB")
	}
	if err := workload.CreateTable(ctx, db, "fb_saturate"); err != nil {
		return s, err
	}
	w := workload.Start(ctx, db, db, workload.Config{
		Table: "fb_saturate", Writers: cfg.writers, Readers: cfg.readers,
		WriteTimeout: cfg.writeTimeout, ReadTimeout: 2 * time.Second,
		WritePause: 2 * time.Millisecond, ReadPause: time.Millisecond,
	})
	defer w.Stop()
	if !sleep(ctx, time.Second) { // the round trips known before the CPUs fill
		return s, ctx.Err()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range s.Spinners {
		wg.Go(func() {
			for x := 0; ; x++ {
				if x%1_000_000 == 0 {
					select {
					case <-stop:
						return
					default:
					}
				}
			}
		})
	}
	primary := conn.Health(ctx).Primary
	seen := map[string]bool{}
	end := time.Now().Add(d)
	for time.Now().Before(end) && ctx.Err() == nil {
		h := conn.Health(ctx)
		for _, n := range h.Nodes {
			if n.State == "down" {
				s.FalseDowns++
				if !seen[n.Name] {
					seen[n.Name] = true
					s.Nodes = append(s.Nodes, n.Name)
				}
			}
		}
		if h.Primary != primary {
			s.Changes++
			primary = h.Primary
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		s.LoadAvg = strings.Fields(string(b))[0]
	}
	out := w.Stop()
	v := workload.Judge(out, nil, time.Time{}, time.Time{})
	s.Acked, s.ReadsOK, s.Failed = v.Acked, v.ReadsOK, v.Failed+v.Unknown+v.ReadsFailed
	return s, ctx.Err()
}

func writeSaturation(w io.Writer, s saturation) {
	fmt.Fprintf(w, "\nSaturated run (no fault): %v with %d spinning goroutines beside the cluster and the workload (load average %s at the end): "+
		"nodes wrongly shown down in %d Health polls (every 10 ms) %v, primary changes %d; acknowledged writes %d, reads %d, failed statements %d.\n",
		s.Duration, s.Spinners, s.LoadAvg, s.FalseDowns, s.Nodes, s.Changes, s.Acked, s.ReadsOK, s.Failed)
}
