//go:build linux && amd64

package netns

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// need skips the test where namespaces cannot be made, or fails it with
// UNIFIED_TEST_CLUSTER=require.
func need(t *testing.T) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("UNIFIED_TEST_CLUSTER") == "require" {
			t.Fatalf("%v (UNIFIED_TEST_CLUSTER=require)", err)
		}
		t.Skipf("skipping: %v", err)
	}
}

// inNS runs f on a thread switched into namespace ns: sockets f creates
// belong to it.
func inNS(t *testing.T, ns string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fd, err := syscall.Open(filepath.Join(netnsDir, ns), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer syscall.Close(fd)
		if _, _, errno := syscall.RawSyscall(sysSetns, uintptr(fd), syscall.CLONE_NEWNET, 0); errno != 0 {
			t.Error(errno)
			return
		}
		f()
	}()
	<-done
}

// echo serves l until it is closed, then closes every connection it
// accepted (one whose FIN a fault dropped would otherwise linger).
func echo(l net.Listener) {
	var conns []net.Conn
	var wg sync.WaitGroup
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		conns = append(conns, c)
		wg.Go(func() { _, _ = io.Copy(c, c) })
	}
}

// roundTrip writes a byte and reads it back within d.
func roundTrip(c net.Conn, d time.Duration) (time.Duration, error) {
	start := time.Now()
	_ = c.SetDeadline(start.Add(d))
	if _, err := c.Write([]byte{1}); err != nil {
		return 0, err
	}
	_, err := io.ReadFull(c, make([]byte, 1))
	return time.Since(start), err
}

func TestLinksFaultsAndCleanup(t *testing.T) {
	need(t)
	n, err := New([]string{"h0", "h1"}, t.Logf)
	require.NoError(t, err)
	defer n.Close()
	h0, h1 := n.Host("h0"), n.Host("h1")
	var l net.Listener
	inNS(t, h0.NS, func() { l, err = net.Listen("tcp", net.JoinHostPort(h0.Addr.String(), "0")) })
	require.NoError(t, err)
	served := make(chan struct{})
	go func() { echo(l); close(served) }()
	defer func() { l.Close(); <-served }()

	c, err := net.DialTimeout("tcp", l.Addr().String(), 2*time.Second)
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, n.Client().String(), c.LocalAddr().(*net.TCPAddr).IP.String(), "the client's address")
	rtt, err := roundTrip(c, time.Second)
	require.NoError(t, err)
	assert.Less(t, rtt, 100*time.Millisecond)

	h0.Link.Set(Impairment{Delay: 100 * time.Millisecond})
	rtt, err = roundTrip(c, 2*time.Second)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, rtt, 200*time.Millisecond, "100 ms each way")
	t.Logf("delayed round trip %v", rtt)

	h0.Link.Set(Impairment{Drop: true})
	_, err = roundTrip(c, 500*time.Millisecond)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout(), "a cut is silent: %v", err)
	h0.Link.Heal()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadFull(c, make([]byte, 1)) // the byte sent into the cut, retransmitted
	require.NoError(t, err, "the connection survives the cut")

	// Host to host over the bridge, and Isolate.
	dial := func() (err error) {
		inNS(t, h1.NS, func() {
			var c net.Conn
			if c, err = net.DialTimeout("tcp", l.Addr().String(), 500*time.Millisecond); err == nil {
				c.Close()
			}
		})
		return err
	}
	require.NoError(t, dial())
	require.NoError(t, n.Isolate(h0))
	assert.Error(t, dial(), "isolated")
	_, err = roundTrip(c, time.Second)
	assert.NoError(t, err, "the client still reaches an isolated host")
	require.NoError(t, n.Rejoin(h0))
	// The bridge port comes back, and h1 resolves h0's address again.
	deadline := time.Now().Add(10 * time.Second)
	for err = dial(); err != nil && time.Now().Before(deadline); err = dial() {
	}
	require.NoError(t, err, "rejoined")

	c.Close()
	require.NoError(t, n.Close())
	assert.Empty(t, Own(), "namespaces left")
}

func TestSweepDeletesStaleNamespaces(t *testing.T) {
	need(t)
	name := Prefix + "999999999-stale" // no such pid
	require.NoError(t, ip("netns", "add", name))
	Sweep(t.Logf)
	_, err := os.Stat(filepath.Join(netnsDir, name))
	assert.True(t, os.IsNotExist(err), "stale namespace swept: %v", err)
}

// sysSetns is setns(2) on linux/amd64 (the syscall package lacks the name).
const sysSetns = 308
