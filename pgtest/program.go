package pgtest

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"testing"
)

// Run runs f with a testing.TB of its own, for using pgtest from a program
// (a demo, a tool, an Example) rather than a test, and returns the exit
// status: 0 when f returned without failing, 1 when it failed or skipped
// (a program that could not do its work did not succeed).
//
// The TB behaves as a test's does: Log and Error print "name: message" to
// stderr; Fatal, FailNow and Skip end f's goroutine (runtime.Goexit, so
// f's deferred calls run); Cleanup functions run after f, last registered
// first, so Start's Close runs whatever happened; TempDir is removed
// afterwards. Its Context is cancelled by SIGINT or SIGTERM, which makes a
// pgtest method in progress fail, f end and the cluster close (a second
// signal kills the process the usual way) and, as in a test, just before
// the Cleanup functions run.
//
//	func main() {
//		os.Exit(pgtest.Run("demo", func(tb testing.TB) {
//			c := pgtest.Start(tb)
//			// ... use c.DSN() ...
//		}))
//	}
func Run(name string, f func(tb testing.TB)) int { return run(name, os.Stderr, f) }

// run is Run printing to out.
func run(name string, out io.Writer, f func(tb testing.TB)) int {
	sig, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(sig, stopSignals) // the first signal only cancels
	ctx, cancel := context.WithCancel(sig)
	p := &program{name: name, ctx: ctx, out: out}
	p.run(f)
	stopSignals() // from here a signal kills the process
	cancel()
	for {
		fn := p.popCleanup()
		if fn == nil {
			break
		}
		p.run(func(testing.TB) { fn() })
	}
	if p.Failed() || p.Skipped() {
		return 1
	}
	return 0
}

// program is the TB of Run.
type program struct {
	// testing.TB holds nothing: it is there for the interface's unexported
	// method, which nothing calls. Every exported method is defined below.
	testing.TB

	name string
	ctx  context.Context
	out  io.Writer

	mu       sync.Mutex // protects following fields
	failed   bool
	skipped  bool
	cleanups []func()
}

// run calls f in a goroutine of its own, so that FailNow can end it with
// runtime.Goexit, and waits for it.
func (p *program) run(f func(testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(p)
	}()
	<-done
}

func (p *program) popCleanup() func() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.cleanups) == 0 {
		return nil
	}
	fn := p.cleanups[len(p.cleanups)-1]
	p.cleanups = p.cleanups[:len(p.cleanups)-1]
	return fn
}

func (p *program) Cleanup(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cleanups = append(p.cleanups, f)
}

func (p *program) Log(args ...any) { fmt.Fprintln(p.out, p.name+": "+fmt.Sprint(args...)) }

func (p *program) Logf(format string, args ...any) {
	fmt.Fprintln(p.out, p.name+": "+fmt.Sprintf(format, args...))
}

func (p *program) Error(args ...any)                 { p.Log(args...); p.Fail() }
func (p *program) Errorf(format string, args ...any) { p.Logf(format, args...); p.Fail() }
func (p *program) Fatal(args ...any)                 { p.Log(args...); p.FailNow() }
func (p *program) Fatalf(format string, args ...any) { p.Logf(format, args...); p.FailNow() }
func (p *program) Skip(args ...any)                  { p.Log(args...); p.SkipNow() }
func (p *program) Skipf(format string, args ...any)  { p.Logf(format, args...); p.SkipNow() }

func (p *program) Fail() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failed = true
}

func (p *program) FailNow() {
	p.Fail()
	runtime.Goexit()
}

func (p *program) Failed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

func (p *program) SkipNow() {
	p.mu.Lock()
	p.skipped = true
	p.mu.Unlock()
	runtime.Goexit()
}

func (p *program) Skipped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.skipped
}

func (p *program) Helper()                  {}
func (p *program) Name() string             { return p.name }
func (p *program) Context() context.Context { return p.ctx }
func (p *program) Output() io.Writer        { return p.out }
func (p *program) Attr(key, value string)   { p.Logf("%s: %s", key, value) }
func (p *program) ArtifactDir() string      { return p.TempDir() }

func (p *program) TempDir() string {
	dir, err := os.MkdirTemp("", p.name+"-")
	if err != nil {
		p.Fatalf("TempDir: %v", err)
	}
	p.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (p *program) Setenv(key, value string) {
	old, had := os.LookupEnv(key)
	if err := os.Setenv(key, value); err != nil {
		p.Fatalf("Setenv: %v", err)
	}
	p.Cleanup(func() {
		if had {
			os.Setenv(key, old)
		} else {
			os.Unsetenv(key)
		}
	})
}

func (p *program) Chdir(dir string) {
	old, err := os.Getwd()
	if err != nil {
		p.Fatalf("Chdir: %v", err)
	}
	if err := os.Chdir(dir); err != nil {
		p.Fatalf("Chdir: %v", err)
	}
	p.Cleanup(func() { os.Chdir(old) })
}
