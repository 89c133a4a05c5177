package pgcluster

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RequireEnv is the environment variable that, set to "require", turns a
// missing or failing cluster into a test failure instead of a skip.
const RequireEnv = "UNIFIED_TEST_CLUSTER"

var (
	skipMu     sync.Mutex
	skipReason = "no cluster: pgcluster.Main was not used in TestMain"
)

// Main runs a test package's tests with a shared cluster; call it from
// TestMain:
//
//	var cluster *pgcluster.Cluster
//
//	func TestMain(m *testing.M) { os.Exit(pgcluster.Main(m, pgcluster.Options{}, &cluster)) }
//
// It finds the binaries and starts the cluster into *c. Without binaries,
// or when Start fails, it prints "pgcluster: skipping cluster tests:
// <reason>" and runs the tests with *c nil (Need skips them), unless
// $UNIFIED_TEST_CLUSTER is "require": then it prints the reason and
// returns 1 without running them. After the tests it closes the cluster
// (*c keeps pointing to the closed cluster) and returns the exit code.
// While it runs, SIGINT and SIGTERM close the cluster and exit the
// process, so Ctrl-C leaves no server behind.
func Main(m *testing.M, opts Options, c **Cluster) int {
	required := os.Getenv(RequireEnv) == "require"
	skip := func(reason string) int {
		if required {
			fmt.Fprintf(os.Stderr, "pgcluster: cluster required (%s=require) but unavailable: %s\n", RequireEnv, reason)
			return 1
		}
		fmt.Fprintf(os.Stderr, "pgcluster: skipping cluster tests: %s\n", reason)
		setSkipReason(reason)
		*c = nil
		return m.Run()
	}
	if opts.BinDir == "" {
		dir, err := FindBinDir()
		if err != nil {
			return skip(err.Error())
		}
		opts.BinDir = dir
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var (
		mu          sync.Mutex
		cur         *Cluster
		interrupted bool
	)
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case s := <-sigc:
			mu.Lock()
			interrupted = true
			cl := cur
			mu.Unlock()
			cancel() // a Start in progress cleans up and Main returns
			if cl != nil {
				fmt.Fprintf(os.Stderr, "pgcluster: %v: stopping the cluster\n", s)
				_ = cl.Close()
				os.Exit(1)
			}
		case <-stop:
		}
	})
	defer func() {
		signal.Stop(sigc)
		close(stop)
		wg.Wait()
	}()

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
		fmt.Fprintln(os.Stderr, "pgcluster: interrupted")
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
		fmt.Fprintf(os.Stderr, "pgcluster: close: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

func setSkipReason(r string) {
	skipMu.Lock()
	skipReason = r
	skipMu.Unlock()
}

// Need returns c, or skips the test with the reason there is no cluster
// when c is nil.
func Need(t testing.TB, c *Cluster) *Cluster {
	t.Helper()
	if c == nil {
		skipMu.Lock()
		r := skipReason
		skipMu.Unlock()
		t.Skip("pgcluster: skipping cluster test: " + r)
	}
	return c
}

// NeedBinaries is for tests that start their own cluster (an example's run
// function) instead of sharing Main's: it skips t when the PostgreSQL server
// binaries are missing, or fails it when $UNIFIED_TEST_CLUSTER is "require".
func NeedBinaries(t testing.TB) {
	t.Helper()
	if _, err := FindBinDir(); err != nil {
		if os.Getenv(RequireEnv) == "require" {
			t.Fatalf("pgcluster: cluster required (%s=require) but unavailable: %v", RequireEnv, err)
		}
		t.Skip("pgcluster: skipping cluster test: ", err)
	}
}
