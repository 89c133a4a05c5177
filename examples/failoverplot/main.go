// Command failoverplot draws the timelines that cmd/failoverbench writes
// with -timeline: one column per trial (scenario, driver, trial number),
// four panels in each: acknowledged writes per second by node, successful
// reads per second by node, errors per second, p99 latency; the fault and
// the moment the promoted node accepted writes are marked.
//
//	go run ./cmd/failoverbench -trials 1 -sync -timeline t.json
//	go -C examples run ./failoverplot -in ../t.json -out ../t.svg [-match hang]
//
// (With go -C examples, relative paths are taken from examples/.) The
// format follows the extension of -out: .svg, .png or .pdf. -match keeps
// the trials whose title contains it ("kill", "pgx", "trial 2"). The
// drawing is examples/internal/timelineplot's, the same as the demo's
// (go -C examples run ./failover -plot file.svg).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/unifiedsql/unified/examples/internal/timelineplot"
	"github.com/unifiedsql/unified/internal/workload"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run is the command; it returns the exit status (2 for a usage error).
func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("failoverplot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "", "the JSON file of cmd/failoverbench -timeline")
	out := fs.String("out", "", "the picture to write: .svg, .png or .pdf")
	match := fs.String("match", "", "draw only the trials whose title contains this")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *in == "" || *out == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: failoverplot -in timelines.json -out picture.svg [-match text]")
		return 2
	}
	tls, err := load(*in, *match)
	if err == nil {
		err = timelineplot.Save(*out, tls...)
	}
	if err != nil {
		fmt.Fprintln(stderr, "failoverplot:", err)
		return 1
	}
	fmt.Fprintf(stderr, "failoverplot: %d timelines drawn into %s\n", len(tls), *out)
	return 0
}

// load reads the timelines of path whose title contains match.
func load(path, match string) ([]workload.Timeline, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var all []workload.Timeline
	if err := json.Unmarshal(b, &all); err != nil {
		return nil, fmt.Errorf("%s: not a cmd/failoverbench -timeline file: %w", path, err)
	}
	var tls []workload.Timeline
	for _, tl := range all {
		if strings.Contains(tl.Title, match) {
			tls = append(tls, tl)
		}
	}
	if len(tls) == 0 {
		return nil, fmt.Errorf("%s: no timeline (of %d) has %q in its title", path, len(all), match)
	}
	return tls, nil
}
