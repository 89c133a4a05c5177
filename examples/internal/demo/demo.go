// Package demo holds the small pieces the example programs share that are
// not what they show: running an example's run function as a program,
// pausing on a context, a node's role, and the list of a cluster's nodes.
package demo

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/unifiedsql/unified/pgtest"
)

// Main runs run as the command name does, outside a test: with a
// testing.TB from [pgtest.Run], which stops the cluster at the end, and
// what it prints on stdout. A run that returns an error fails, and the
// process exits 1; Main does not return.
func Main[R any](name string, run func(tb testing.TB, out io.Writer) (R, error)) {
	os.Exit(pgtest.Run(name, func(tb testing.TB) {
		if _, err := run(tb, os.Stdout); err != nil {
			tb.Fatal(err)
		}
	}))
}

// Sleep waits d or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Role is "primary" for the primary of cl, "replica" for its other
// nodes.
func Role(cl *pgtest.Cluster, i int) string {
	if i == cl.Primary() {
		return "primary"
	}
	return "replica"
}

// PrintNodes writes a line per node of cl to w: its name, address and
// role.
func PrintNodes(w io.Writer, cl *pgtest.Cluster) {
	for i := range cl.Len() {
		fmt.Fprintf(w, "  %s  %s  %s\n", cl.Node(i).Name(), cl.Node(i).Addr(), Role(cl, i))
	}
}
