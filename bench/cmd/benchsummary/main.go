// Command benchsummary turns `go test -bench` output of unified's
// benchmarks into Markdown tables of medians, one table per benchmark,
// with the implementations (the last part of each sub-benchmark name:
// direct, pgx, pgbouncer, unified) side by side and unified compared with
// each of the others: the difference per statement for time and
// allocations, the ratio for throughput. bench/run calls it; benchstat
// gives the confidence intervals next to it.
//
//	go run ./bench/cmd/benchsummary overhead.txt cluster.txt > summary.md
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The per-statement budget of unified over the driver it wraps, and of
// its client CPU per SELECT 1 against pgx's (issue 15's targets).
const (
	budgetNs       = 300
	budgetAllocs   = 0
	budgetCPURatio = 1.03
)

// bench is one benchmark function's results.
type bench struct {
	name    string
	configs []string // sub-benchmark configurations, in order of appearance
	impls   []string // implementations, in order of appearance
	// values[config][impl][unit] are the samples, one per run.
	values map[string]map[string]map[string][]float64
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchsummary FILE...")
		os.Exit(2)
	}
	var (
		order   []string
		benches = map[string]*bench{}
	)
	for _, path := range os.Args[1:] {
		f, err := os.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		err = parse(f, func(name, config, impl string, metrics map[string]float64) {
			b := benches[name]
			if b == nil {
				b = &bench{name: name, values: map[string]map[string]map[string][]float64{}}
				benches[name] = b
				order = append(order, name)
			}
			if b.values[config] == nil {
				b.values[config] = map[string]map[string][]float64{}
				b.configs = append(b.configs, config)
			}
			if b.values[config][impl] == nil {
				b.values[config][impl] = map[string][]float64{}
			}
			if !slices.Contains(b.impls, impl) {
				b.impls = append(b.impls, impl)
			}
			for unit, v := range metrics {
				b.values[config][impl][unit] = append(b.values[config][impl][unit], v)
			}
		})
		f.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			os.Exit(1)
		}
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	writeTargets(w, benches)
	for _, name := range order {
		writeTable(w, benches[name])
	}
}

// paired returns, round by round, f of unified's and other's samples of
// unit in config (the i-th sample of each is round i: bench/run runs every
// implementation once per round).
func paired(b *bench, config, other, unit string, f func(u, o float64) float64) []float64 {
	if b == nil {
		return nil
	}
	u, o := b.values[config]["unified"][unit], b.values[config][other][unit]
	var out []float64
	for i := range min(len(u), len(o)) {
		out = append(out, f(u[i], o[i]))
	}
	return out
}

// spread formats the median of xs and its range over the rounds.
func spread(xs []float64, format string) string {
	if len(xs) == 0 {
		return "–"
	}
	return fmt.Sprintf(format+" ("+format+" … "+format+", %d rounds)", median(xs), slices.Min(xs), slices.Max(xs), len(xs))
}

// writeTargets writes the statement-path rows of issue 15's table: what
// unified adds per statement on the in-memory driver (CPU ns and
// allocations, round by round against the driver alone) and its client
// CPU per SELECT 1 at 8 goroutines as a ratio to pgx's in the same round.
func writeTargets(w io.Writer, benches map[string]*bench) {
	fmt.Fprintf(w, "## Targets\n\nMedian over the rounds, with the range; each round compares the implementations run in it.\n\n")
	fmt.Fprintf(w, "| measure | unified | target | met |\n| :--- | ---: | ---: | :---: |\n")
	met := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	if b := benches["Overhead"]; b != nil {
		for _, config := range b.configs {
			dcpu := paired(b, config, "direct", "cpu-ns/op", func(u, o float64) float64 { return u - o })
			dalloc := paired(b, config, "direct", "allocs/op", func(u, o float64) float64 { return u - o })
			if len(dcpu) == 0 {
				continue
			}
			fmt.Fprintf(w, "| added CPU per statement, %s | %s ns, %+.0f allocs | ≤ +%d ns, +%d allocs | %s |\n",
				config, spread(dcpu, "%+.0f"), median(dalloc), budgetNs, budgetAllocs,
				met(median(dcpu) <= budgetNs && slices.Max(dalloc) <= budgetAllocs))
		}
	}
	if b := benches["Select1"]; b != nil {
		ratio := paired(b, "conc=8", "pgx", "client-cpu-us/op", func(u, o float64) float64 { return u / o })
		if len(ratio) > 0 {
			fmt.Fprintf(w, "| client CPU per SELECT 1 at 8 goroutines, unified/pgx | %s | ≤ %.2f | %s |\n",
				spread(ratio, "%.3f"), budgetCPURatio, met(median(ratio) <= budgetCPURatio))
		}
	}
	fmt.Fprintln(w)
}

// parse reads benchmark result lines ("BenchmarkX/a/b-2  N  v unit  v unit
// ...") and calls add for each, with the GOMAXPROCS suffix removed.
func parse(r io.Reader, add func(name, config, impl string, metrics map[string]float64)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		full := f[0]
		if i := strings.LastIndexByte(full, '-'); i > 0 {
			if _, err := strconv.Atoi(full[i+1:]); err == nil {
				full = full[:i]
			}
		}
		parts := strings.Split(strings.TrimPrefix(full, "Benchmark"), "/")
		if len(parts) < 2 {
			continue // not one of ours: no implementation part
		}
		metrics := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return fmt.Errorf("%q: %w", sc.Text(), err)
			}
			metrics[f[i+1]] = v
		}
		add(parts[0], strings.Join(parts[1:len(parts)-1], "/"), parts[len(parts)-1], metrics)
	}
	return sc.Err()
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// writeTable writes one benchmark's table: throughput and latency when it
// reports ops/s, else time, bytes and allocations per operation.
func writeTable(w io.Writer, b *bench) {
	throughput := false
	runs := 0
	for _, c := range b.values {
		for _, m := range c {
			if _, ok := m["ops/s"]; ok {
				throughput = true
			}
			runs = max(runs, len(m["ns/op"]))
		}
	}
	var others []string // the implementations unified is compared with
	if slices.Contains(b.impls, "unified") {
		for _, impl := range b.impls {
			if impl != "unified" {
				others = append(others, impl)
			}
		}
	}

	type metric struct{ unit, title, format string }
	metrics := []metric{{"ns/op", "ns/op", "%.0f"}, {"cpu-ns/op", "CPU ns/op", "%.0f"}, {"allocs/op", "allocs/op", "%.0f"}}
	if throughput {
		metrics = []metric{{"ops/s", "ops/s", "%.0f"}, {"p50-us", "p50 µs", "%.0f"}, {"p99-us", "p99 µs", "%.0f"}, {"client-cpu-us/op", "client CPU µs/op", "%.1f"}}
	}

	fmt.Fprintf(w, "### %s\n\nMedian of %d runs.\n\n", b.name, runs)
	head := []string{"config"}
	for _, impl := range b.impls {
		for _, m := range metrics {
			head = append(head, impl+" "+m.title)
		}
	}
	for _, o := range others {
		if throughput {
			head = append(head, "unified/"+o+" ops/s", "Δ client CPU µs/op vs "+o)
		} else {
			head = append(head, "Δ ns vs "+o, "Δ CPU ns vs "+o, "Δ allocs vs "+o, "Δ B vs "+o, "within budget")
		}
	}
	fmt.Fprintf(w, "| %s |\n| :--- |%s\n", strings.Join(head, " | "), strings.Repeat(" ---: |", len(head)-1))

	for _, config := range b.configs {
		med := func(impl, unit string) (float64, bool) {
			xs := b.values[config][impl][unit]
			return median(xs), len(xs) > 0
		}
		row := []string{config}
		if config == "" {
			row[0] = "–"
		}
		for _, impl := range b.impls {
			for _, m := range metrics {
				if v, ok := med(impl, m.unit); ok {
					row = append(row, fmt.Sprintf(m.format, v))
				} else {
					row = append(row, "–")
				}
			}
		}
		// diff formats unified's median minus o's for unit, or "–".
		diff := func(o, unit, format string) (string, float64, bool) {
			u, ok1 := med("unified", unit)
			v, ok2 := med(o, unit)
			if !ok1 || !ok2 {
				return "–", 0, false
			}
			return fmt.Sprintf(format, u-v), u - v, true
		}
		for _, o := range others {
			if throughput {
				u, ok1 := med("unified", "ops/s")
				v, ok2 := med(o, "ops/s")
				ratio := "–"
				if ok1 && ok2 && v > 0 {
					ratio = fmt.Sprintf("%.2f", u/v)
				}
				dcpu, _, _ := diff(o, "client-cpu-us/op", "%+.1f")
				row = append(row, ratio, dcpu)
				continue
			}
			dns, dnsV, _ := diff(o, "ns/op", "%+.0f")
			dcpu, dcpuV, okCPU := diff(o, "cpu-ns/op", "%+.0f")
			dallocs, dallocsV, _ := diff(o, "allocs/op", "%+.0f")
			dbytes, _, _ := diff(o, "B/op", "%+.0f")
			// The budget is judged on CPU time when measured: wall time
			// on a shared machine includes waiting for a CPU.
			cost := dnsV
			if okCPU {
				cost = dcpuV
			}
			within := "yes"
			if cost > budgetNs || dallocsV > budgetAllocs {
				within = "**no**"
			}
			row = append(row, dns, dcpu, dallocs, dbytes, within)
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
	}
	fmt.Fprintln(w)
}
