package faultproxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	ioTimeout   = 5 * time.Second        // for what must succeed
	quietPeriod = 200 * time.Millisecond // for what must not happen
)

// echoServer is the target for the generic tests: it writes back what it
// reads and records how each connection ended.
type echoServer struct {
	ln       net.Listener
	wg       sync.WaitGroup
	accepted atomic.Int32
	ended    chan error // the read error that ended each connection (io.EOF for a FIN)
	once     sync.Once

	mu    sync.Mutex // protects following fields
	conns map[net.Conn]struct{}
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	e := &echoServer{ln: ln, ended: make(chan error, 64), conns: map[net.Conn]struct{}{}}
	e.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			e.mu.Lock()
			e.conns[c] = struct{}{}
			e.mu.Unlock()
			e.wg.Go(func() { e.echo(c) })
		}
	})
	t.Cleanup(e.Close)
	return e
}

func (e *echoServer) echo(c net.Conn) {
	defer func() {
		e.mu.Lock()
		delete(e.conns, c)
		e.mu.Unlock()
		_ = c.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			select {
			case e.ended <- err:
			default:
			}
			return
		}
	}
}

func (e *echoServer) addr() string { return e.ln.Addr().String() }

func (e *echoServer) Close() {
	e.once.Do(func() {
		_ = e.ln.Close()
		e.mu.Lock()
		for c := range e.conns {
			_ = c.Close()
		}
		e.mu.Unlock()
		e.wg.Wait()
	})
}

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.Close()) })
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.TCPConn)
}

// connected starts an echo server and a proxy to it, and returns them
// and a client connection through the proxy that has made a round trip.
func connected(t *testing.T) (*echoServer, *Proxy, *net.TCPConn) {
	t.Helper()
	e := startEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p.Addr())
	require.NoError(t, roundTrip(c, "warm", ioTimeout))
	return e, p, c
}

// roundTrip sends msg and reads it back, or returns the error.
func roundTrip(c net.Conn, msg string, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return errors.New("echo mismatch: " + string(got))
	}
	return nil
}

// readErr reads once and returns the error (nil if data came).
func readErr(c net.Conn, timeout time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	_, err := c.Read(make([]byte, 1))
	return err
}

func TestNewRejectsBadTarget(t *testing.T) {
	_, err := New("no-port")
	require.Error(t, err)
}

func TestPassForwardsInOrder(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	assert.Equal(t, p.Addr(), net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port())))

	c := dial(t, p.Addr())
	require.NoError(t, roundTrip(c, "hello", ioTimeout))
	assert.Equal(t, 1, p.Conns())

	// A few megabytes both ways at once arrive intact and in order.
	payload := make([]byte, 4<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var werr error
	var wg sync.WaitGroup
	wg.Go(func() { _, werr = c.Write(payload) })
	got := make([]byte, len(payload))
	_, rerr := io.ReadFull(c, got)
	wg.Wait()
	require.NoError(t, werr)
	require.NoError(t, rerr)
	assert.True(t, bytes.Equal(payload, got))
}

func TestHalfCloseIsPassedOn(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p.Addr())
	_, err := c.Write([]byte("bye"))
	require.NoError(t, err)
	require.NoError(t, c.CloseWrite())
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	got, err := io.ReadAll(c) // the echo server sees EOF, answers, closes; so do we
	require.NoError(t, err)
	assert.Equal(t, "bye", string(got))
	assert.Eventually(t, func() bool { return p.Conns() == 0 }, ioTimeout, 5*time.Millisecond)
}

func TestLatency(t *testing.T) {
	const d = 40 * time.Millisecond
	_, p, c := connected(t)

	p.SetLatency(d) // an existing connection is slowed too
	start := time.Now()
	require.NoError(t, roundTrip(c, "ping", ioTimeout))
	assert.GreaterOrEqual(t, time.Since(start), 2*d, "one delay each way")

	c2 := dial(t, p.Addr())
	start = time.Now()
	require.NoError(t, roundTrip(c2, "ping", ioTimeout))
	assert.GreaterOrEqual(t, time.Since(start), 2*d)

	p.Pass() // clears the latency
	require.NoError(t, roundTrip(c, "fast", ioTimeout))
}

func TestBlackhole(t *testing.T) {
	e, p, before := connected(t)

	p.Blackhole()
	err := roundTrip(before, "anyone?", quietPeriod)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "an existing connection gets no answer")

	during := dial(t, p.Addr())
	// The proxy keeps reading, so a large write does not block.
	_ = during.SetWriteDeadline(time.Now().Add(ioTimeout))
	_, err = during.Write(make([]byte, 8<<20))
	require.NoError(t, err)
	require.ErrorIs(t, readErr(during, quietPeriod), os.ErrDeadlineExceeded)
	assert.EqualValues(t, 1, e.accepted.Load(), "a blackholed new connection is never dialed through")
	assert.Equal(t, 2, p.Conns())

	p.Pass()
	after := dial(t, p.Addr())
	require.NoError(t, roundTrip(after, "back", ioTimeout), "new connections work after Pass")
	require.ErrorIs(t, roundTrip(before, "still?", quietPeriod), os.ErrDeadlineExceeded,
		"blackholed connections stay dead")

	// A blackholed connection goes away when its client closes it.
	require.NoError(t, during.Close())
	require.NoError(t, before.Close())
	assert.Eventually(t, func() bool { return p.Conns() == 1 }, ioTimeout, 5*time.Millisecond)
}

func TestRefuse(t *testing.T) {
	e, p, before := connected(t)

	p.Refuse()
	refused := dial(t, p.Addr())
	_, _ = refused.Write(startup()) // even with unread data the client reads EOF
	require.ErrorIs(t, readErr(refused, ioTimeout), io.EOF)
	require.NoError(t, roundTrip(before, "still works", ioTimeout))
	assert.EqualValues(t, 1, e.accepted.Load())

	p.Pass()
	require.NoError(t, roundTrip(dial(t, p.Addr()), "y", ioTimeout))
}

// TestResetAllCloseAll: ResetAll aborts every open connection with a RST
// on both sides, CloseAll closes them with a FIN; either returns once they
// are gone, and new connections pass again.
func TestResetAllCloseAll(t *testing.T) {
	for _, tc := range []struct {
		name       string
		do         func(*Proxy)
		want       error
		targetSees string
	}{
		{"ResetAll", (*Proxy).ResetAll, syscall.ECONNRESET, "the target is reset too"},
		{"CloseAll", (*Proxy).CloseAll, io.EOF, "the target sees a FIN too"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, p, c := connected(t)

			tc.do(p)
			assert.Equal(t, 0, p.Conns(), "gone when %s returns", tc.name)
			require.ErrorIs(t, readErr(c, ioTimeout), tc.want)
			select {
			case err := <-e.ended:
				require.ErrorIs(t, err, tc.want, tc.targetSees)
			case <-time.After(ioTimeout):
				t.Fatal("the target's connection did not end")
			}
			require.NoError(t, roundTrip(dial(t, p.Addr()), "new", ioTimeout))
		})
	}
}

func TestTargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	target := ln.Addr().String()
	require.NoError(t, ln.Close())

	p := newProxy(t, target)
	// The reset may come before or after the client's connect completes.
	c, err := net.DialTimeout("tcp", p.Addr(), ioTimeout)
	if err == nil {
		err = readErr(c, ioTimeout)
		_ = c.Close()
	}
	require.ErrorIs(t, err, syscall.ECONNRESET)
	assert.Eventually(t, func() bool { return p.Conns() == 0 }, ioTimeout, 5*time.Millisecond)
}

func TestCloseEndsEverythingAndIsIdempotent(t *testing.T) {
	e := startEcho(t)
	p, err := New(e.addr())
	require.NoError(t, err)
	c := dial(t, p.Addr())
	require.NoError(t, roundTrip(c, "x", ioTimeout))
	idle := dial(t, p.Addr())
	require.NoError(t, roundTrip(idle, "y", ioTimeout))

	p.SetLatency(time.Hour)
	_, err = c.Write([]byte("held for an hour"))
	require.NoError(t, err)

	done := make(chan error, 2)
	go func() { done <- p.Close() }()
	go func() { done <- p.Close() }()
	for range 2 {
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(ioTimeout):
			t.Fatal("Close did not return")
		}
	}
	require.NoError(t, p.Close())
	assert.Equal(t, 0, p.Conns())
	require.Error(t, readErr(idle, ioTimeout))
	_, err = net.DialTimeout("tcp", p.Addr(), ioTimeout)
	require.Error(t, err, "no longer listening")

	require.NoError(t, c.Close())
	require.NoError(t, idle.Close())
	e.Close()
	goleak.VerifyNone(t)
}

// fakeBackend speaks just enough of the PostgreSQL backend protocol to carry
// the cut tests: it answers negotiation with a fixed byte, accepts any
// startup, answers a Query with CommandComplete and ReadyForQuery and a Sync
// with ReadyForQuery, and records every message and each end of stream.
type fakeBackend struct {
	ln        net.Listener
	sslAnswer byte
	msgs      chan backendMsg
	wg        sync.WaitGroup
}

// backendMsg is a message the fake backend received; typ 0 is the end of a
// client's stream, recorded before the backend closes that connection.
type backendMsg struct {
	typ  byte
	body string
}

func startBackend(t *testing.T, sslAnswer byte) *fakeBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &fakeBackend{ln: ln, sslAnswer: sslAnswer, msgs: make(chan backendMsg, 1024)}
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			b.wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					_ = c.Close()
				}()
				b.serve(c)
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func readyForQuery() []byte { return typedBackend('Z', []byte{'I'}) }

func typedBackend(typ byte, body []byte) []byte { return typed(typ, body) }

func (b *fakeBackend) serve(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		if code := binary.BigEndian.Uint32(hdr[4:]); code == codeSSLRequest || code == codeGSSENCRequest {
			if _, err := c.Write([]byte{b.sslAnswer}); err != nil {
				return
			}
			continue
		}
		if _, err := io.CopyN(io.Discard, r, int64(n)-8); err != nil {
			return
		}
		break
	}
	if _, err := c.Write(append(typedBackend('R', be32(0)), readyForQuery()...)); err != nil {
		return
	}
	for {
		typ, err := r.ReadByte()
		if err != nil {
			b.msgs <- backendMsg{}
			return
		}
		var l [4]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			b.msgs <- backendMsg{}
			return
		}
		body := make([]byte, binary.BigEndian.Uint32(l[:])-4)
		if _, err := io.ReadFull(r, body); err != nil {
			b.msgs <- backendMsg{}
			return
		}
		b.msgs <- backendMsg{typ: typ, body: string(body)}
		var reply []byte
		switch typ {
		case 'Q':
			reply = append(typedBackend('C', cz("OK")), readyForQuery()...)
		case 'S':
			reply = readyForQuery()
		case 'X':
			return
		}
		if reply != nil {
			if _, err := c.Write(reply); err != nil {
				return
			}
		}
	}
}

// next returns the next message the backend received.
func (b *fakeBackend) next(t *testing.T) backendMsg {
	t.Helper()
	select {
	case m := <-b.msgs:
		return m
	case <-time.After(ioTimeout):
		t.Fatal("backend received nothing")
		return backendMsg{}
	}
}

func (b *fakeBackend) addr() string { return b.ln.Addr().String() }

// pgClient is a hand-driven frontend.
type pgClient struct {
	t *testing.T
	c *net.TCPConn
	r *bufio.Reader
}

func connectPG(t *testing.T, addr string, sslRequestFirst bool) *pgClient {
	t.Helper()
	c := dial(t, addr)
	pc := &pgClient{t: t, c: c, r: bufio.NewReader(c)}
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	if sslRequestFirst {
		_, err := c.Write(sslRequest())
		require.NoError(t, err)
		_, err = pc.r.ReadByte()
		require.NoError(t, err)
	}
	_, err := c.Write(startup())
	require.NoError(t, err)
	require.NoError(t, pc.untilReady())
	return pc
}

// send writes the messages one small write at a time, so they straddle reads.
func (pc *pgClient) send(msgs ...[]byte) {
	pc.t.Helper()
	b := bytes.Join(msgs, nil)
	for len(b) > 0 {
		k := min(3, len(b))
		_, err := pc.c.Write(b[:k])
		require.NoError(pc.t, err)
		b = b[k:]
	}
}

// sendRacingCut is send for bytes that may follow a cut: the proxy may close
// the connection before the client has written them all, so a write error
// (broken pipe, reset) is expected and ignored.
func (pc *pgClient) sendRacingCut(msgs ...[]byte) {
	b := bytes.Join(msgs, nil)
	for len(b) > 0 {
		k := min(3, len(b))
		if _, err := pc.c.Write(b[:k]); err != nil {
			return
		}
		b = b[k:]
	}
}

// untilReady reads backend messages up to ReadyForQuery.
func (pc *pgClient) untilReady() error {
	_ = pc.c.SetReadDeadline(time.Now().Add(ioTimeout))
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(pc.r, hdr[:]); err != nil {
			return err
		}
		if _, err := io.CopyN(io.Discard, pc.r, int64(binary.BigEndian.Uint32(hdr[1:]))-4); err != nil {
			return err
		}
		if hdr[0] == 'Z' {
			return nil
		}
	}
}

func TestCutAfterCommit(t *testing.T) {
	b := startBackend(t, 'N')
	p := newProxy(t, b.addr())
	pc := connectPG(t, p.Addr(), true)
	other := connectPG(t, p.Addr(), false)

	pc.send(query("insert into t values (1)"))
	require.NoError(t, pc.untilReady())
	assert.Equal(t, byte('Q'), b.next(t).typ)

	p.CutAfterCommit()
	pc.sendRacingCut(query("COMMIT;"), query("select 'pipelined, never forwarded'"))
	err := pc.untilReady()
	require.ErrorIs(t, err, io.EOF, "no reply reaches the client")

	// By the time the client saw the drop, the server had the COMMIT and
	// its stream had ended: nothing races the test's next look.
	assert.Equal(t, backendMsg{typ: 'Q', body: "COMMIT;\x00"}, b.next(t))
	select {
	case m := <-b.msgs:
		assert.Equal(t, backendMsg{}, m, "the server's stream ended right after the COMMIT")
	default:
		t.Fatal("the client saw the cut before the server finished")
	}
	assert.Equal(t, 1, p.Cuts())

	// Disarmed after one cut: another connection commits normally.
	other.send(query("commit"))
	require.NoError(t, other.untilReady())
	assert.Equal(t, byte('Q'), b.next(t).typ)
	assert.Equal(t, 1, p.Cuts())
	assert.Equal(t, 1, p.Conns())
}

func TestCutAfterExtendedWaitsForExecution(t *testing.T) {
	b := startBackend(t, 'N')
	p := newProxy(t, b.addr())
	pc := connectPG(t, p.Addr(), false)
	p.SetLatency(5 * time.Millisecond) // cuts work with latency too

	p.CutAfter(func(q string) bool { return q == "insert into t values ($1)" })
	pc.send(parse("s1", "insert into t values ($1)"), describe('S', "s1"), syncMsg())
	require.NoError(t, pc.untilReady(), "preparing executes nothing: no cut yet")
	pc.send(bind("", "s1"), describe('P', ""), execute(""), syncMsg())
	require.ErrorIs(t, pc.untilReady(), io.EOF)

	var got []byte
	for m := b.next(t); m.typ != 0; m = b.next(t) {
		got = append(got, m.typ)
	}
	assert.Equal(t, "PDSBDES", string(got))
	assert.Equal(t, 1, p.Cuts())
}

func TestCutDisarmedByPass(t *testing.T) {
	b := startBackend(t, 'N')
	p := newProxy(t, b.addr())
	pc := connectPG(t, p.Addr(), false)
	p.CutAfterCommit()
	p.Pass()
	pc.send(query("commit"))
	require.NoError(t, pc.untilReady())
	assert.Equal(t, 0, p.Cuts())

	p.CutAfterCommit()
	p.CutAfter(nil)
	pc.send(query("commit"))
	require.NoError(t, pc.untilReady())
	assert.Equal(t, 0, p.Cuts())
}

func TestNoCutAfterTLS(t *testing.T) {
	b := startBackend(t, 'S') // "TLS accepted": from here the proxy cannot read the stream
	p := newProxy(t, b.addr())
	pc := connectPG(t, p.Addr(), true)
	p.CutAfterCommit()
	pc.send(query("commit"))
	require.NoError(t, pc.untilReady())
	assert.Equal(t, 0, p.Cuts())
}

func TestCutAfterReplyKeepsTheFirstBytes(t *testing.T) {
	b := startBackend(t, 'N')
	p := newProxy(t, b.addr())
	pc := connectPG(t, p.Addr(), false)

	// The fake backend answers a Query with CommandComplete "OK" (8 bytes)
	// and ReadyForQuery (6 bytes): keep the first message only.
	p.CutAfterReply(func(q string) bool { return q == "insert into t values (1) returning id" }, 8)
	pc.sendRacingCut(query("insert into t values (1) returning id"))
	_ = pc.c.SetReadDeadline(time.Now().Add(ioTimeout))
	var hdr [5]byte
	_, err := io.ReadFull(pc.r, hdr[:])
	require.NoError(t, err, "the kept bytes reach the client")
	assert.Equal(t, byte('C'), hdr[0])
	_, err = io.CopyN(io.Discard, pc.r, int64(binary.BigEndian.Uint32(hdr[1:]))-4)
	require.NoError(t, err)
	_, err = pc.r.ReadByte()
	require.ErrorIs(t, err, io.EOF, "nothing after the kept bytes: ReadyForQuery never arrives")
	assert.Equal(t, byte('Q'), b.next(t).typ, "the statement reached the server")
	assert.Equal(t, 1, p.Cuts())
}
