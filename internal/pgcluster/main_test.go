package pgcluster

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/unifiedsql/unified/internal/childproc"
)

// cluster is started by the first Need (see Main); nil until then.
var cluster *Cluster

func TestMain(m *testing.M) {
	flag.Parse()
	opts := Options{}
	if testing.Verbose() {
		opts.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000 ")+f+"\n", a...) }
	}
	code := Main(m, opts, &cluster) // also fails when a goroutine is left
	if cluster != nil {
		// Close (done by Main) must leave no process of the cluster behind.
		for _, n := range cluster.nodes {
			if n.proc != nil && syscall.Kill(n.proc.PID, 0) != syscall.ESRCH {
				fmt.Fprintf(os.Stderr, "pgcluster: %s: postmaster %d alive after Close\n", n.Name, n.proc.PID)
				code = 1
			}
			if n.pgid != 0 && len(childproc.GroupMembers(n.pgid)) > 0 {
				fmt.Fprintf(os.Stderr, "pgcluster: %s: processes left after Close: %v\n", n.Name, childproc.GroupMembers(n.pgid))
				code = 1
			}
		}
	}
	os.Exit(code)
}

func TestDecide(t *testing.T) {
	const reason = "no PostgreSQL server binaries found: install them"
	tests := []struct {
		env      string
		skip     bool
		contains []string
	}{
		{env: "", skip: false, contains: []string{reason, "UNIFIED_TEST_CLUSTER=skip to skip"}},
		{env: "skip", skip: true, contains: []string{reason, "skipped (UNIFIED_TEST_CLUSTER=skip)"}},
		{env: "require", skip: false, contains: []string{reason, "UNIFIED_TEST_CLUSTER=require"}},
		{env: "Skip", skip: false, contains: []string{reason, `UNIFIED_TEST_CLUSTER="Skip" is neither skip nor require`}},
		{env: "1", skip: false, contains: []string{reason, `"1" is neither`}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.env), func(t *testing.T) {
			skip, msg := Decide(tt.env, reason)
			assert.Equal(t, tt.skip, skip)
			for _, s := range tt.contains {
				assert.Contains(t, msg, s)
			}
		})
	}
}

// fakeStart counts its calls and returns cl, err after release is closed.
type fakeStart struct {
	calls   atomic.Int32
	release chan struct{}
	cl      *Cluster
	err     error
}

func (f *fakeStart) start(ctx context.Context, _ Options) (*Cluster, error) {
	f.calls.Add(1)
	select {
	case <-f.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return f.cl, f.err
}

// closedCluster is a Cluster whose Close does nothing and succeeds.
func closedCluster() *Cluster {
	c := &Cluster{closed: true, closeDone: make(chan struct{})}
	close(c.closeDone)
	return c
}

func TestSharedStartsOnce(t *testing.T) {
	f := &fakeStart{release: make(chan struct{}), cl: closedCluster()}
	var dst *Cluster
	s := newShared(Options{BinDir: "/bin"}, &dst, f.start)
	var wg sync.WaitGroup
	got := make([]*Cluster, 8)
	for i := range got {
		wg.Go(func() { got[i] = s.need(t) })
	}
	time.Sleep(10 * time.Millisecond) // let them pile up on the start
	close(f.release)
	wg.Wait()
	assert.Equal(t, int32(1), f.calls.Load(), "one start for all the tests")
	for _, c := range got {
		assert.Same(t, f.cl, c)
	}
	assert.Same(t, f.cl, dst, "Main's variable is set")
	require.NoError(t, s.close())
	require.NoError(t, s.close(), "close twice")
}

func TestSharedNoStartWithoutNeed(t *testing.T) {
	f := &fakeStart{release: make(chan struct{})}
	s := newShared(Options{BinDir: "/bin"}, nil, f.start)
	require.NoError(t, s.close())
	assert.Zero(t, f.calls.Load())
	_, err := s.get()
	require.Error(t, err, "no start after close")
	assert.Zero(t, f.calls.Load())
}

func TestSharedStartErrorSkipsWhenAsked(t *testing.T) {
	t.Setenv(Env, "skip")
	f := &fakeStart{release: make(chan struct{}), err: errors.New("initdb failed")}
	close(f.release)
	s := newShared(Options{BinDir: "/bin"}, nil, f.start)
	ran := 0
	for range 3 {
		t.Run("needs a cluster", func(t *testing.T) {
			s.need(t)
			ran++
		})
	}
	assert.Zero(t, ran, "need skipped every test")
	assert.Equal(t, int32(1), f.calls.Load(), "a failed start is not retried")
	n, reason := s.skipped()
	assert.Equal(t, 3, n)
	assert.Contains(t, reason, "cannot start the cluster: initdb failed")
	require.NoError(t, s.close())
}

func TestSharedCloseCancelsStart(t *testing.T) {
	f := &fakeStart{release: make(chan struct{})} // never released: only ctx ends it
	s := newShared(Options{BinDir: "/bin"}, nil, f.start)
	errc := make(chan error, 1)
	go func() {
		_, err := s.get()
		errc <- err
	}()
	require.Eventually(t, func() bool { return f.calls.Load() == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, s.close())
	err := <-errc
	require.ErrorIs(t, err, context.Canceled)
}

func TestNeedReturnsSetCluster(t *testing.T) {
	cl := closedCluster()
	assert.Same(t, cl, Need(t, cl), "a cluster already set is returned as it is")
}
