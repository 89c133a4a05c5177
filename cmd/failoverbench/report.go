package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
)

// row is one line of the table: a scenario and a driver over all trials.
type row struct {
	Scenario string `json:"scenario"`
	Driver   string `json:"driver"`
	Trials   int    `json:"trials"`
	// NoRecovery counts trials where writes did not resume within -bound.
	NoRecovery int `json:"no_recovery"`
	// RecoveryMedianMS and RecoveryMaxMS are nil when that trial (the
	// median one, or any) did not recover.
	RecoveryMedianMS *float64 `json:"recovery_median_ms"`
	RecoveryMaxMS    *float64 `json:"recovery_max_ms"`
	OutageMedianMS   float64  `json:"longest_outage_median_ms"`

	outageReads // summed over the trials

	Lost          int `json:"lost"`
	Dup           int `json:"dup"`
	Unflagged     int `json:"unflagged"`
	Flagged       int `json:"flagged"`
	FlaggedStored int `json:"flagged_stored"`
}

func aggregate(trials []trialResult, scenarios, drivers []string) []row {
	var rows []row
	for _, s := range scenarios {
		for _, d := range drivers {
			r := row{Scenario: s, Driver: d}
			var rec []*float64
			var outage []float64
			for _, t := range trials {
				if t.Scenario != s || t.Driver != d {
					continue
				}
				r.Trials++
				if t.RecoveryMS == nil {
					r.NoRecovery++
				}
				rec = append(rec, t.RecoveryMS)
				outage = append(outage, t.LongestOutageMS)
				r.outageReads.add(t.outageReads)
				r.Lost += t.Lost
				r.Dup += t.Dup
				r.Unflagged += t.Unflagged
				r.Flagged += t.Flagged
				r.FlaggedStored += t.FlaggedStored
			}
			if r.Trials == 0 {
				continue
			}
			// A trial without recovery sorts last, as an infinite time.
			slices.SortFunc(rec, func(a, b *float64) int {
				switch {
				case a == nil && b == nil:
					return 0
				case a == nil:
					return 1
				case b == nil:
					return -1
				}
				return cmp.Compare(*a, *b)
			})
			r.RecoveryMedianMS = rec[(len(rec)-1)/2] // the lower median for an even count
			r.RecoveryMaxMS = rec[len(rec)-1]
			slices.Sort(outage)
			r.OutageMedianMS = outage[(len(outage)-1)/2]
			rows = append(rows, r)
		}
	}
	return rows
}

func writeTable(w io.Writer, cfg config, pgVersion string, rows []row) {
	repl := "asynchronous replication"
	if cfg.sync {
		repl = "synchronous (ANY 1) replication"
	}
	writeMarkdown(w, cfg, "Failover", repl, pgVersion, "", columns(scenarioName, nil), rows)
}

// column is one column of the Markdown table.
type column struct {
	head, align string
	cell        func(row) string
}

// columns are the table's columns, the scenario named by name; extra,
// when not nil, stands after the driver (the failover manager's part).
func columns(name func(string) string, extra *column) []column {
	cols := []column{
		{"scenario", "---", func(r row) string { return name(r.Scenario) }},
		{"driver", "---", func(r row) string { return r.Driver }},
	}
	if extra != nil {
		cols = append(cols, *extra)
	}
	count := func(n func(row) int) func(row) string {
		return func(r row) string { return strconv.Itoa(n(r)) }
	}
	return append(cols,
		column{"client recovery median", "--:", func(r row) string { return recovery(r.RecoveryMedianMS) }},
		column{"client recovery max", "--:", func(r row) string {
			if r.NoRecovery > 0 {
				return fmt.Sprintf("no recovery (%d/%d)", r.NoRecovery, r.Trials)
			}
			return recovery(r.RecoveryMaxMS)
		}},
		column{"longest write outage (median)", "--:", func(r row) string { return msText(r.OutageMedianMS) }},
		column{"reads ok during outage", "--:", func(r row) string { return readShare(r.ReadsOK, r.ReadsFailed) }},
		column{"read spread", "---", func(r row) string { return spread(r.ReadsByNode, r.ReadsOK) }},
		column{"lost", "--:", count(func(r row) int { return r.Lost })},
		column{"dup", "--:", count(func(r row) int { return r.Dup })},
		column{"unflagged", "--:", count(func(r row) int { return r.Unflagged })},
		column{"flagged (stored)", "--:", func(r row) string { return fmt.Sprintf("%d (%d)", r.Flagged, r.FlaggedStored) }},
	)
}

// writeMarkdown writes the table's three lines of setting, title first
// and repl the replication, measure before the write deadline, then the
// table of rows in cols.
func writeMarkdown(w io.Writer, cfg config, title, repl, pgVersion, measure string, cols []column, rows []row) {
	params := "driver defaults"
	if len(cfg.unifiedParams) > 0 {
		params = strings.Join(cfg.unifiedParams, "&")
	}
	fmt.Fprintf(w, "%s: %d trials per row, %d writers + %d readers, %s, PostgreSQL %s, %d CPUs.\n",
		title, cfg.trials, cfg.writers, cfg.readers, repl, pgVersion, runtime.NumCPU())
	fmt.Fprintf(w, "unified: %s; pgx: connect_timeout=2, target_session_attrs=read-write (writers) / prefer-standby (readers).\n", params)
	fmt.Fprintf(w, "%sWrite deadline %v; no recovery = no write acknowledged within %v of the promotion.\n\n", measure, cfg.writeTimeout, cfg.bound)
	heads, aligns := make([]string, len(cols)), make([]string, len(cols))
	for i, c := range cols {
		heads[i], aligns[i] = c.head, c.align
	}
	fmt.Fprintf(w, "| %s |\n", strings.Join(heads, " | "))
	fmt.Fprintf(w, "|%s|\n", strings.Join(aligns, "|"))
	for _, r := range rows {
		cells := make([]string, len(cols))
		for i, c := range cols {
			cells[i] = c.cell(r)
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
	}
}

func scenarioName(s string) string {
	switch s {
	case "kill":
		return "kill (SIGKILL)"
	case "hang":
		return "hang (SIGSTOP)"
	}
	return s
}

func recovery(v *float64) string {
	if v == nil {
		return "no recovery"
	}
	return msText(*v)
}

func msText(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f s", v/1000)
	}
	return fmt.Sprintf("%.0f ms", v)
}

func readShare(ok, failed int) string {
	if ok+failed == 0 {
		return "no reads"
	}
	return fmt.Sprintf("%.2f %% of %d", 100*float64(ok)/float64(ok+failed), ok+failed)
}

func spread(byNode map[string]int, total int) string {
	if total == 0 {
		return "-"
	}
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(byNode)) {
		parts = append(parts, fmt.Sprintf("%s %.0f %%", n, 100*float64(byNode[n])/float64(total)))
	}
	return strings.Join(parts, ", ")
}

func writeJSON(w io.Writer, cfg config, pgVersion string, trials []trialResult, rows []row) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		Trials        int           `json:"trials_per_row"`
		Writers       int           `json:"writers"`
		Readers       int           `json:"readers"`
		Synchronous   bool          `json:"synchronous"`
		PostgreSQL    string        `json:"postgresql"`
		UnifiedParams []string      `json:"unified_params"`
		WriteTimeout  string        `json:"write_timeout"`
		Bound         string        `json:"bound"`
		Rows          []row         `json:"rows"`
		Results       []trialResult `json:"results"`
	}{cfg.trials, cfg.writers, cfg.readers, cfg.sync, pgVersion, cfg.unifiedParams,
		cfg.writeTimeout.String(), cfg.bound.String(), rows, trials})
}
