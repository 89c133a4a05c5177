// Command unified prints a PostgreSQL cluster as the unified driver sees it:
// one row per node with its role, state, replication lag, probe round trip,
// timeline, circuit breaker and last probe error, like patronictl list.
//
//	unified [-watch] [-interval 1s] [-timeout 5s] [-json] DSN
//
// DSN is what sql.Open("unified", DSN) takes: a multi-host pgx/libpq
// connection string with optional unified_* parameters. Without the
// argument, $UNIFIED_DSN is used, which keeps a password out of the process
// list. The password is never printed.
//
// Each frame waits at most -timeout for the first probe of every node. With
// -watch a frame is printed every -interval until SIGINT or SIGTERM; on a
// terminal the screen is cleared between frames, otherwise frames are
// separated by a blank line. With -json each frame is the JSON document that
// unified.HealthHandler serves, on one line.
//
// Exit status: 0 when a primary can serve writes (Health.Writable), 1 when
// not (with -watch, as of the last frame), 2 on a usage or DSN error.
package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/unifiedsql/unified"
)

// Exit statuses.
const (
	exitWritable   = 0
	exitNoPrimary  = 1
	exitUsageOrDSN = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv("UNIFIED_DSN"), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the command without its process: arguments, the $UNIFIED_DSN
// value, the outputs; ctx ends at SIGINT/SIGTERM. It returns the exit status.
func run(ctx context.Context, args []string, envDSN string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("unified", flag.ContinueOnError)
	fs.SetOutput(stderr)
	watch := fs.Bool("watch", false, "print a frame every -interval until interrupted")
	interval := fs.Duration("interval", time.Second, "time between frames with -watch")
	timeout := fs.Duration("timeout", 5*time.Second, "how long a frame waits for the first probe of every node")
	asJSON := fs.Bool("json", false, "print each frame as the JSON document of unified.HealthHandler")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: unified [-watch] [-interval 1s] [-timeout 5s] [-json] DSN\n\n"+
			"Prints the cluster's nodes as the unified driver sees them. DSN defaults to $UNIFIED_DSN.\n"+
			"Exit status: 0 when a primary can serve writes, 1 when not, 2 on a usage or DSN error.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsageOrDSN
	}
	dsn := envDSN
	switch fs.NArg() {
	case 0:
	case 1:
		dsn = fs.Arg(0)
	default:
		fmt.Fprintf(stderr, "unified: one DSN expected, got %d arguments\n", fs.NArg())
		fs.Usage()
		return exitUsageOrDSN
	}
	if dsn == "" {
		fmt.Fprintln(stderr, "unified: no DSN: pass it as the argument or in $UNIFIED_DSN")
		fs.Usage()
		return exitUsageOrDSN
	}
	if *interval <= 0 || *timeout <= 0 {
		fmt.Fprintln(stderr, "unified: -interval and -timeout must be positive")
		return exitUsageOrDSN
	}

	// sql.Open parses the DSN (its errors never contain the password) and
	// opens nothing; the first Health starts the monitor.
	db, err := sql.Open(unified.DriverName, dsn)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsageOrDSN
	}
	defer db.Close()
	c, ok := unified.ConnectorOf(db)
	if !ok {
		fmt.Fprintln(stderr, "unified: the DSN did not give a unified connector")
		return exitUsageOrDSN
	}
	handler := unified.HealthHandler(db)
	clearScreen := *watch && isTerminal(stdout)

	code := exitNoPrimary // until a frame says otherwise
	var ticker *time.Ticker
	if *watch {
		ticker = time.NewTicker(*interval)
		defer ticker.Stop()
	}
	for frame := 0; ; frame++ {
		fctx, cancel := context.WithTimeout(ctx, *timeout)
		var out []byte
		var writable bool
		if *asJSON {
			out, writable = jsonFrame(fctx, handler)
		} else {
			h := c.Health(fctx)
			out, writable = []byte(formatTable(h)), h.Writable
		}
		cancel()
		if ctx.Err() != nil && frame > 0 {
			return code // interrupted mid-frame: keep the last full frame
		}
		code = exitNoPrimary
		if writable {
			code = exitWritable
		}
		switch {
		case clearScreen:
			io.WriteString(stdout, "\x1b[H\x1b[2J")
		case frame > 0:
			io.WriteString(stdout, "\n")
		}
		if *watch && !*asJSON {
			fmt.Fprintf(stdout, "%s  (every %v)\n", time.Now().Format(time.DateTime), *interval)
		}
		stdout.Write(out)
		if !*watch {
			return code
		}
		select {
		case <-ctx.Done():
			return code
		case <-ticker.C:
		}
	}
}

// jsonFrame returns the document HealthHandler serves, so that the
// command's -json and the HTTP endpoint share one schema, and whether its
// status said writes can be served.
func jsonFrame(ctx context.Context, h http.Handler) ([]byte, bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "/healthz", nil)
	if err != nil {
		panic(err) // a constant, valid request
	}
	w := &bufferedResponse{header: http.Header{}}
	h.ServeHTTP(w, req)
	return w.body.Bytes(), w.code == http.StatusOK
}

// bufferedResponse is an in-memory http.ResponseWriter.
type bufferedResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (w *bufferedResponse) Header() http.Header { return w.header }
func (w *bufferedResponse) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *bufferedResponse) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// formatTable renders h as a boxed table, one row per node in DSN order,
// then a summary line. Lag is blank for the primary, for nodes not up and
// when no primary is known (it is unknown then); RTT and timeline are blank
// when there is no successful probe to show.
func formatTable(h unified.Health) string {
	header := []string{"NODE", "SOURCE", "ROLE", "STATE", "LAG", "RTT", "TIMELINE", "BREAKER", "LAST ERROR"}
	rightAligned := []bool{false, false, false, false, true, true, true, false, false}
	rows := [][]string{header}
	for _, n := range h.Nodes {
		probed := n.State != "down" && n.State != "unknown"
		var lag, rtt, tl string
		if probed && n.Role == "replica" && h.Primary != "" {
			lag = formatBytes(n.LagBytes) + ", " + n.Lag.Round(time.Millisecond).String()
		}
		if probed && n.RTT > 0 {
			rtt = n.RTT.Round(10 * time.Microsecond).String()
		}
		if n.Timeline > 0 {
			tl = strconv.FormatUint(uint64(n.Timeline), 10)
		}
		rows = append(rows, []string{n.Name, n.Source, n.Role, n.State, lag, rtt, tl, n.Breaker, nodeError(n)})
	}

	widths := make([]int, len(header))
	for _, r := range rows {
		for i, cell := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	var b strings.Builder
	rule := func() {
		for _, w := range widths {
			b.WriteString("+")
			b.WriteString(strings.Repeat("-", w+2))
		}
		b.WriteString("+\n")
	}
	rule()
	for i, r := range rows {
		for j, cell := range r {
			pad := strings.Repeat(" ", widths[j]-utf8.RuneCountInString(cell))
			b.WriteString("| ")
			if rightAligned[j] && i > 0 {
				b.WriteString(pad + cell)
			} else {
				b.WriteString(cell + pad)
			}
			b.WriteString(" ")
		}
		b.WriteString("|\n")
		if i == 0 {
			rule()
		}
	}
	rule()

	primary, age := h.Primary, "no probe yet"
	if primary == "" {
		primary = "none"
	}
	if !h.At.IsZero() {
		age = h.Age.Round(time.Millisecond).String()
	}
	fmt.Fprintf(&b, "primary: %s  writable: %s  readable: %s  topology age: %s\n", primary, yesNo(h.Writable), yesNo(h.Readable), age)
	return b.String()
}

// nodeError is n's last error on one line, without the "unified: probe on
// <node>: " prefix that repeats the row's node.
func nodeError(n unified.NodeHealth) string {
	e := strings.TrimPrefix(n.LastError, "unified: probe on "+n.Name+": ")
	return strings.Join(strings.Fields(e), " ")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// formatBytes renders a WAL distance in binary units: 0 B, 512 B, 8.0 KiB,
// 1.5 MiB.
func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
