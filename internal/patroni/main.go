package patroni

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/internal/childproc"
	"github.com/unifiedsql/unified/internal/pgcluster"
)

var (
	skipMu     sync.Mutex
	skipReason = "no cluster: patroni.Main was not used in TestMain"
)

// Main runs a test package's tests with one shared cluster; call it from
// TestMain:
//
//	var cluster *patroni.Cluster
//
//	func TestMain(m *testing.M) { os.Exit(patroni.Main(m, patroni.Options{}, &cluster)) }
//
// It starts the cluster into *c. When patroni, etcd or the PostgreSQL
// binaries are missing, or Start fails, it prints "patroni: skipping
// Patroni tests: <reason>" (which names the Debian packages to install)
// and runs the tests with *c nil, so that Need skips them; unless
// $UNIFIED_TEST_CLUSTER is "require": then it prints the reason and
// returns 1 without running them. After the tests it closes the cluster
// (*c keeps pointing to the closed cluster) and returns the exit code,
// 1 if Close failed or left a process of the cluster running, or if the
// tests passed (with a cluster or skipped) and a goroutine that leaks do
// not ignore is still running (see [pgcluster.CheckLeaks]). While it
// runs, SIGINT and SIGTERM close the cluster and exit, so Ctrl-C leaves
// nothing running.
func Main(m *testing.M, opts Options, c **Cluster, leaks ...goleak.Option) int {
	return pgcluster.CheckLeaks(runTests(m, opts, c), leaks...)
}

// runTests is Main but for the goroutine check, which comes after its
// signal handler has stopped.
func runTests(m *testing.M, opts Options, c **Cluster) int {
	skip := func(reason string) int {
		if !pgcluster.MainWithout("patroni", "Patroni tests", reason) {
			return 1
		}
		skipMu.Lock()
		skipReason = reason
		skipMu.Unlock()
		*c = nil
		return m.Run()
	}
	if _, _, _, err := Binaries(); err != nil {
		return skip(err.Error())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var (
		mu          sync.Mutex
		cur         *Cluster
		interrupted bool
	)
	stopSignals := childproc.OnInterrupt(func(s os.Signal) {
		mu.Lock()
		interrupted = true
		cl := cur
		mu.Unlock()
		cancel() // a Start in progress cleans up and Main returns
		if cl != nil {
			fmt.Fprintf(os.Stderr, "patroni: %v: stopping the cluster\n", s)
			_ = cl.Close()
			os.Exit(1)
		}
	})
	defer stopSignals()

	cl, err := Start(ctx, opts)
	mu.Lock()
	if err == nil && !interrupted {
		cur = cl
	}
	gone := interrupted
	mu.Unlock()
	if gone {
		if cl != nil {
			_ = cl.Close()
		}
		fmt.Fprintln(os.Stderr, "patroni: interrupted")
		return 1
	}
	if err != nil {
		return skip("cannot start the cluster: " + err.Error())
	}
	*c = cl
	code := m.Run()
	mu.Lock()
	cur = nil
	mu.Unlock()
	if err := cl.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "patroni: close: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	// Close must leave no etcd, Patroni or PostgreSQL process behind.
	if left := ProcessesIn(cl.BaseDir()); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "patroni: processes left after Close: %v\n", left)
		code = 1
	}
	return code
}

// Need returns c, or skips the test with the reason there is no cluster
// (which names what to install) when c is nil.
func Need(t testing.TB, c *Cluster) *Cluster {
	t.Helper()
	if c == nil {
		skipMu.Lock()
		r := skipReason
		skipMu.Unlock()
		t.Skip("patroni: skipping Patroni test: " + r)
	}
	return c
}
