package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/unifiedsql/unified/internal/childproc"
)

// Env is the environment variable that says what a test does when it needs
// a cluster and none can be had (no server binaries, or Start failed):
//
//	unset      fail, with the reason and the install hint
//	"skip"     skip, with the reason
//	"require"  fail (what .ci/run sets, so CI says why)
//
// Any other value fails too, naming the value.
const Env = "UNIFIED_TEST_CLUSTER"

// Decide is what a test that needs a cluster does when none can be had for
// reason, given the value of $UNIFIED_TEST_CLUSTER (see [Env]): skip it, or
// fail it, and with what message. Only "skip" skips: a run that could not
// start the cluster must not look like a pass.
func Decide(env, reason string) (skip bool, msg string) {
	switch env {
	case "skip":
		return true, fmt.Sprintf("skipped (%s=skip): no PostgreSQL cluster: %s", Env, reason)
	case "require":
		return false, fmt.Sprintf("no PostgreSQL cluster, and %s=require: %s", Env, reason)
	case "":
		return false, fmt.Sprintf("no PostgreSQL cluster: %s (set %s=skip to skip the tests that need one)", reason, Env)
	default:
		return false, fmt.Sprintf("%s=%q is neither skip nor require; no PostgreSQL cluster: %s", Env, env, reason)
	}
}

// MainWithout is what a TestMain does when the cluster its package's tests
// share cannot be had for reason. With $UNIFIED_TEST_CLUSTER=require it
// prints "prefix: required (...) but unavailable: reason" and returns
// false: the run must fail without running the tests. Otherwise (unset,
// or skip) it prints "prefix: skipping <tests>: reason" and returns true:
// run them, and those that need the cluster skip.
func MainWithout(prefix, tests, reason string) bool {
	if os.Getenv(Env) == "require" {
		fmt.Fprintf(os.Stderr, "%s: required (%s=require) but unavailable: %s\n", prefix, Env, reason)
		return false
	}
	fmt.Fprintf(os.Stderr, "%s: skipping %s: %s\n", prefix, tests, reason)
	return true
}

// Unavailable skips or fails tb as [Decide] says for reason and the
// current $UNIFIED_TEST_CLUSTER; prefix (such as "pgcluster: ") starts the
// message. It does not return.
func Unavailable(tb testing.TB, prefix, reason string) {
	tb.Helper()
	skip, msg := Decide(os.Getenv(Env), reason)
	if skip {
		tb.Skip(prefix + msg)
	}
	tb.Fatal(prefix + msg)
}

// NeedBinaries is for tests that start their own cluster instead of sharing
// Main's: it returns the directory of the PostgreSQL server binaries (see
// FindBinDir), or skips or fails tb as [Decide] says when there is none.
func NeedBinaries(tb testing.TB) string {
	tb.Helper()
	dir, err := FindBinDir()
	if err != nil {
		Unavailable(tb, "pgcluster: ", err.Error())
	}
	return dir
}

// CtxT returns a context that ends after d or with the test, for a test's
// calls into its cluster.
func CtxT(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

// Main runs a test package's tests with a cluster shared by the tests that
// need one; call it from TestMain:
//
//	var cluster *pgcluster.Cluster
//
//	func TestMain(m *testing.M) { os.Exit(pgcluster.Main(m, pgcluster.Options{}, &cluster)) }
//
// Main starts nothing itself: the first [Need] starts the cluster (once per
// test binary, whatever the number of tests and goroutines asking) and
// stores it in *c, so `go test -run TestPure` starts no server. A cluster
// that cannot be started is remembered, and every Need then skips or fails
// its test as [Decide] says. After the tests Main closes the cluster, if
// one was started (*c keeps pointing to the closed cluster), then, when
// the tests passed, fails the run if a goroutine is still running that
// leaks do not ignore (see [CheckLeaks]), and returns the exit code; when
// tests were skipped for want of a cluster it says so on stderr. While it
// runs, SIGINT and SIGTERM cancel a start in progress, close the cluster
// and exit the process, so Ctrl-C leaves no server behind.
func Main(m *testing.M, opts Options, c **Cluster, leaks ...goleak.Option) int {
	s := newShared(opts, c, Start)
	setCurrent(s)
	defer setCurrent(nil)

	stopSignals := childproc.OnInterrupt(func(sig os.Signal) {
		fmt.Fprintf(os.Stderr, "pgcluster: %v: stopping the cluster\n", sig)
		_ = s.close()
		os.Exit(1)
	})
	code := m.Run()
	stopSignals()
	if n, reason := s.skipped(); n > 0 {
		fmt.Fprintf(os.Stderr, "pgcluster: %d tests that need the cluster were skipped (%s=skip): %s\n", n, Env, reason)
	}
	if err := s.close(); err != nil {
		fmt.Fprintf(os.Stderr, "pgcluster: close: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return CheckLeaks(code, leaks...)
}

// CheckLeaks is the goroutine check that ends [Main] and patroni.Main,
// for a TestMain that has more to close after them: when code is 0 (the
// tests passed and everything closed cleanly) it returns 1, naming the
// goroutines on stderr, if any is still running that leaks (goleak
// options) do not ignore; otherwise it returns code.
func CheckLeaks(code int, leaks ...goleak.Option) int {
	if code != 0 {
		return code
	}
	if err := goleak.Find(leaks...); err != nil {
		fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
		return 1
	}
	return 0
}

// Need returns the package's shared cluster, starting it on the first call
// (see [Main]); c is the variable Main fills, returned as it is when it is
// already set. Without a cluster it skips or fails t as [Decide] says; a
// test package whose TestMain does not call Main fails.
func Need(t testing.TB, c *Cluster) *Cluster {
	t.Helper()
	if c != nil {
		return c
	}
	s := current()
	if s == nil {
		t.Fatal("pgcluster: Need without a cluster: call pgcluster.Main from TestMain")
	}
	return s.need(t)
}

var (
	currentMu sync.Mutex
	currentS  *shared // the Main running in this test binary
)

func setCurrent(s *shared) {
	currentMu.Lock()
	currentS = s
	currentMu.Unlock()
}

func current() *shared {
	currentMu.Lock()
	defer currentMu.Unlock()
	return currentS
}

// startTimeout bounds the start of the shared cluster.
const startTimeout = 2 * time.Minute

// shared is the cluster of one test binary: started by the first need,
// closed by close.
type shared struct {
	opts   Options
	dst    **Cluster // where the started cluster is stored; may be nil
	start  func(context.Context, Options) (*Cluster, error)
	ctx    context.Context // cancelled by close: stops a start in progress
	cancel context.CancelFunc
	once   sync.Once // the start attempt; close uses it to wait for one in progress

	mu       sync.Mutex // protects following fields
	cl       *Cluster
	err      error // why there is no cluster
	closed   bool
	nSkipped int
}

func newShared(opts Options, dst **Cluster, start func(context.Context, Options) (*Cluster, error)) *shared {
	ctx, cancel := context.WithCancel(context.Background())
	return &shared{opts: opts, dst: dst, start: start, ctx: ctx, cancel: cancel}
}

// get starts the cluster on its first call and returns it, or why there is
// none.
func (s *shared) get() (*Cluster, error) {
	s.once.Do(func() {
		cl, err := s.startOnce()
		s.mu.Lock()
		defer s.mu.Unlock()
		switch {
		case err != nil:
			s.err = err
		case s.closed: // closed while it started
			_ = cl.Close()
			s.err = errors.New("interrupted")
		default:
			s.cl = cl
			if s.dst != nil {
				*s.dst = cl
			}
		}
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cl == nil && s.err == nil {
		return nil, errors.New("the tests are over") // closed before any start
	}
	return s.cl, s.err
}

func (s *shared) startOnce() (*Cluster, error) {
	opts := s.opts
	if opts.BinDir == "" {
		dir, err := FindBinDir()
		if err != nil {
			return nil, err
		}
		opts.BinDir = dir
	}
	ctx, cancel := context.WithTimeout(s.ctx, startTimeout)
	defer cancel()
	cl, err := s.start(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("cannot start the cluster: %w", err)
	}
	return cl, nil
}

// need is Need for this binary's cluster.
func (s *shared) need(tb testing.TB) *Cluster {
	tb.Helper()
	cl, err := s.get()
	if err != nil {
		if skip, _ := Decide(os.Getenv(Env), ""); skip {
			s.mu.Lock()
			s.nSkipped++
			s.mu.Unlock()
		}
		Unavailable(tb, "pgcluster: ", err.Error())
	}
	return cl
}

// skipped returns how many tests need skipped, and why.
func (s *shared) skipped() (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		return s.nSkipped, ""
	}
	return s.nSkipped, s.err.Error()
}

// close cancels a start in progress and waits for it, prevents any later
// start, and closes the cluster if one was started. It may be called more
// than once.
func (s *shared) close() error {
	s.mu.Lock()
	s.closed = true
	cl := s.cl
	s.mu.Unlock()
	s.cancel()
	// Waits for a start in progress (which, seeing closed, closes what it
	// started); none begins after this.
	s.once.Do(func() {})
	if cl != nil {
		return cl.Close()
	}
	return nil
}
