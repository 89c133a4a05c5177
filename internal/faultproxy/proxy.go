package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

const (
	bufSize     = 32 << 10
	dialTimeout = 5 * time.Second
	// acceptBackoff is the pause after a failed Accept that is not the
	// listener closing (EMFILE and the like), so the loop does not spin.
	acceptBackoff = 10 * time.Millisecond
)

// mode decides what happens to connections accepted from now on.
type mode int32

const (
	modePass      mode = iota + 1 // dial the target and forward
	modeBlackhole                 // keep the connection, forward nothing
	modeRefuse                    // close right after accept
)

// Proxy is a TCP proxy from a loopback port to one target with switchable
// faults. Make one with [New]; stop it with [Proxy.Close]. All methods are
// safe for concurrent use, including with connections in flight.
//
// The faults fall in three groups that combine freely:
//   - the mode for new connections, set by [Proxy.Pass], [Proxy.Blackhole]
//     and [Proxy.Refuse] (the last call wins; Blackhole also kills the
//     connections already open);
//   - the latency, set by [Proxy.SetLatency], for existing and new
//     connections alike;
//   - one-shot actions on the connections open at the time of the call:
//     [Proxy.ResetAll], [Proxy.CloseAll], and the armed cut of
//     [Proxy.CutAfterCommit] and [Proxy.CutAfter].
type Proxy struct {
	target string
	ln     *net.TCPListener
	ctx    context.Context // canceled by Close: ends dials, sleeps and links
	cancel context.CancelFunc

	mode    atomic.Int32 // a mode; written under mu so new links see it consistently
	latency atomic.Int64 // time.Duration added to each forwarded chunk
	cut     atomic.Pointer[cutRequest]
	cuts    atomic.Int64

	wg        sync.WaitGroup // every goroutine the proxy started
	closeOnce sync.Once
	closeErr  error

	mu     sync.Mutex // protects following fields
	closed bool
	links  map[*link]struct{}
}

// New starts a proxy listening on 127.0.0.1 at a free port, forwarding every
// accepted connection to target (host:port, such as "127.0.0.1:5432"), dialed
// anew for each client connection (a client whose dial fails is reset). It
// starts in pass mode. The caller must call [Proxy.Close].
func New(target string) (*Proxy, error) { return NewOn("127.0.0.1:0", target) }

// NewOn is New listening on listen (host:port; port 0 picks a free one),
// for a test that needs the proxy at a given address, such as another
// loopback address on the port of a real server.
func NewOn(listen, target string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("faultproxy: target %q: %w", target, err)
	}
	la, err := net.ResolveTCPAddr("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen address %q: %w", listen, err)
	}
	ln, err := net.ListenTCP("tcp", la)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target: target,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		links:  make(map[*link]struct{}),
	}
	p.mode.Store(int32(modePass))
	p.wg.Go(p.acceptLoop)
	return p, nil
}

// Addr returns the address clients connect to, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port returns the port of [Proxy.Addr].
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Pass restores normal forwarding: new connections are dialed and forwarded,
// the latency goes back to zero and an armed cut is disarmed. Connections
// that were blackholed stay dead (whatever they sent meanwhile is lost, so
// their protocol stream could not resume anyway) until a peer closes them or
// [Proxy.ResetAll], [Proxy.CloseAll] or [Proxy.Close] does. Connections that
// only had latency go on without it.
func (p *Proxy) Pass() {
	p.setMode(modePass)
	p.latency.Store(0)
	p.cut.Store(nil)
}

// SetLatency delays every chunk forwarded from now on, in both directions, on
// existing and new connections, by d; d <= 0 removes the delay. Each
// direction of a connection is one loop that reads a chunk, holds it for d
// and then writes it, reading nothing meanwhile: a request and its answer
// take at least 2d more than without the proxy, and a stream of n chunks
// takes at least n·d, as over a slow link. A chunk already being held keeps
// the delay it started with.
func (p *Proxy) SetLatency(d time.Duration) {
	p.latency.Store(int64(max(d, 0)))
}

// Blackhole makes the target look hung (TCP alive, no answer) to every
// connection open now and every one accepted until the mode changes: the
// proxy keeps reading from both sides, so the peers' writes do not block,
// and forwards nothing, not even a close from the server. New connections
// are accepted but never dialed through. A blackholed connection stays
// blackholed for its whole life, even after [Proxy.Pass]; it ends when its
// client closes it or through [Proxy.ResetAll], [Proxy.CloseAll] or
// [Proxy.Close].
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode.Store(int32(modeBlackhole))
	for l := range p.links {
		l.blackholed.Store(true)
	}
}

// Refuse makes every connection accepted from now on be closed (FIN) at once,
// without dialing the target: the client's connect succeeds and its first
// read returns EOF. Connections already open carry on as they were. It lasts
// until [Proxy.Pass] or [Proxy.Blackhole].
func (p *Proxy) Refuse() { p.setMode(modeRefuse) }

// ResetAll aborts every connection open now with a TCP RST to both the client
// and the target (SO_LINGER 0), so both see "connection reset by peer". It
// returns once those connections are gone from [Proxy.Conns]. New connections
// are handled by the current mode as before.
func (p *Proxy) ResetAll() { p.closeLinks(true) }

// CloseAll closes every connection open now on both sides gracefully (FIN),
// so the client and the target read EOF. It returns once those connections
// are gone from [Proxy.Conns]. New connections are handled by the current
// mode as before.
func (p *Proxy) CloseAll() { p.closeLinks(false) }

// CutAfterCommit arms a one-shot cut of the first connection on which the
// client sends a COMMIT (see [IsCommit]) in a simple-protocol Query or an
// extended-protocol Parse. It is CutAfter(IsCommit); see [Proxy.CutAfter].
// pgx's Tx.Commit sends a simple-protocol "commit".
func (p *Proxy) CutAfterCommit() { p.CutAfter(IsCommit) }

// CutAfter arms a one-shot cut on the first client statement, on any
// connection, for which match returns true, replacing any cut armed before;
// CutAfter(nil) disarms. [Proxy.Pass] disarms too.
//
// A simple-protocol Query 'Q' is matched on its text and the cut happens right
// after it. An extended-protocol Parse 'P' is matched on its SQL, and the cut
// waits until that statement has been bound, executed and followed by a Sync
// 'S', so the statement really runs on the server (pgx prepares with
// Parse-Describe-Sync and executes with Bind-Execute-Sync later). Only a Parse
// seen while armed counts: a statement prepared on the connection before is
// not recognized when it is executed again.
//
// The cut: the client's bytes up to and including the matching Query or that
// Sync are forwarded, and nothing after them; the target's side is
// half-closed (FIN), and everything the target sends from then on is
// discarded until the target closes its side, which PostgreSQL does once it
// has processed the statement and read the EOF. Only then is [Proxy.Cuts]
// incremented and the client's side closed. So no reply reaches the client,
// and when the client sees its connection drop, the statement has already run
// to completion on the server: a test can check the outcome without racing.
// If the target never closes (hung server), the client waits until
// [Proxy.ResetAll], [Proxy.CloseAll] or [Proxy.Close].
//
// The cut disarms as soon as one connection starts cutting. Only connections
// whose stream can be read are watched: after TLS or GSS encryption is
// negotiated (sslmode=prefer against a server with ssl=on) the proxy passes
// bytes unexamined, so clients meant to be cut need sslmode=disable or a
// server without TLS. match runs on the forwarding goroutines, possibly
// concurrently: it must be safe for concurrent use and quick.
func (p *Proxy) CutAfter(match func(query string) bool) {
	p.CutAfterReply(match, 0)
}

// CutAfterReply is [Proxy.CutAfter], except that the first keep bytes the
// target sends once the cut has started still reach the client; the rest
// is discarded. It breaks a connection in the middle of a reply: for an
// INSERT ... RETURNING with enough rows, the client gets the first rows,
// then loses the connection, while the server has run the statement to its
// end and committed it. keep <= 0 is CutAfter.
func (p *Proxy) CutAfterReply(match func(query string) bool, keep int) {
	if match == nil {
		p.cut.Store(nil)
		return
	}
	p.cut.Store(&cutRequest{match: match, keep: max(keep, 0)})
}

// Cuts returns how many connections have been cut by [Proxy.CutAfter] or
// [Proxy.CutAfterCommit] so far. A cut counts before its client's side is
// closed, so a client that saw its connection drop from a cut sees it
// counted.
func (p *Proxy) Cuts() int { return int(p.cuts.Load()) }

// Conns returns the number of client connections the proxy holds now, whether
// forwarding, dialing, blackholed or being cut.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Close stops listening, closes every connection on both sides, and waits
// for every goroutine of the proxy to end. It is idempotent: later calls
// wait for the first one and return its result, the error of closing the
// listener.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.cancel()
		p.closeErr = p.ln.Close()
		p.shutdownLinks(false, true)
		p.wg.Wait()
	})
	return p.closeErr
}

func (p *Proxy) setMode(m mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode.Store(int32(m))
}

// closeLinks shuts down the links open now and waits until they are gone.
func (p *Proxy) closeLinks(reset bool) {
	for _, l := range p.shutdownLinks(reset, false) {
		<-l.finished
	}
}

// shutdownLinks shuts down (with a RST when reset) the links open now and
// returns them; closing marks the proxy closed in the same critical
// section, so that no link is added after the snapshot.
func (p *Proxy) shutdownLinks(reset, closing bool) []*link {
	p.mu.Lock()
	if closing {
		p.closed = true
	}
	links := slices.Collect(maps.Keys(p.links))
	p.mu.Unlock()
	for _, l := range links {
		l.shutdown(reset)
	}
	return links
}

func (p *Proxy) acceptLoop() {
	for {
		c, err := p.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(acceptBackoff):
			}
			continue
		}
		if mode(p.mode.Load()) == modeRefuse {
			_ = c.CloseWrite() // EOF for the client even if it already sent its startup packet
			_ = c.Close()
			continue
		}
		if l := p.register(c); l != nil {
			p.wg.Go(func() { p.serve(l) })
		}
	}
}

// register adds a link for an accepted client, or closes the client and
// returns nil if the proxy is closed.
func (p *Proxy) register(c *net.TCPConn) *link {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return nil
	}
	ctx, cancel := context.WithCancel(p.ctx)
	l := &link{
		p:        p,
		client:   c,
		ctx:      ctx,
		cancel:   cancel,
		finished: make(chan struct{}),
		fe:       newFrontend(),
	}
	l.blackholed.Store(mode(p.mode.Load()) == modeBlackhole)
	p.links[l] = struct{}{}
	return l
}

// serve runs one link to its end: dial, forward both ways, finish a cut.
func (p *Proxy) serve(l *link) {
	defer func() {
		// Out of Conns before the client can see the close.
		p.mu.Lock()
		delete(p.links, l)
		p.mu.Unlock()
		l.shutdown(false)
		close(l.finished)
	}()
	if l.blackholed.Load() {
		l.toServer() // only discards: the "host" never answers
		return
	}
	d := net.Dialer{Timeout: dialTimeout}
	c, err := d.DialContext(l.ctx, "tcp", p.target)
	if err != nil {
		l.shutdown(true) // the client sees a reset, as from a dead host
		return
	}
	if !l.attach(c.(*net.TCPConn)) {
		return
	}
	toClientDone := make(chan struct{})
	p.wg.Go(func() {
		defer close(toClientDone)
		l.toClient()
	})
	l.toServer()
	<-toClientDone
	if l.cutting.Load() {
		p.cuts.Add(1) // before the client's side closes, in the deferred shutdown
	}
}

// link is one client connection and its connection to the target.
type link struct {
	p        *Proxy
	client   *net.TCPConn
	ctx      context.Context // canceled by shutdown
	cancel   context.CancelFunc
	finished chan struct{} // closed when serve has returned
	fe       *frontend     // used by the toServer loop only

	blackholed  atomic.Bool
	negotiating atomic.Bool   // an SSLRequest/GSSENCRequest awaits the server's answer
	answer      atomic.Uint32 // that answer byte; 0 while unknown
	cutting     atomic.Bool   // a cut started: nothing more goes to the client
	keep        atomic.Int64  // bytes of the reply still forwarded during a cut

	mu     sync.Mutex // protects following fields
	server *net.TCPConn
	closed bool
}

// attach sets the connection to the target, or closes it and returns false
// if the link was shut down meanwhile.
func (l *link) attach(c *net.TCPConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = c.Close()
		return false
	}
	l.server = c
	return true
}

// shutdown closes both sides, with an RST if reset, and wakes the link's
// loops. Only the first call acts.
func (l *link) shutdown(reset bool) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	srv := l.server
	l.mu.Unlock()
	l.cancel()
	for _, c := range []*net.TCPConn{l.client, srv} {
		if c == nil {
			continue
		}
		if reset {
			_ = c.SetLinger(0)
		} else {
			// FIN first: even if unread data makes Close send an RST, the
			// peer reads EOF before it.
			_ = c.CloseWrite()
		}
		_ = c.Close()
	}
}

// delay holds the current chunk for the proxy's latency. It reports false if
// the link was shut down meanwhile.
func (l *link) delay(t *time.Timer) bool {
	d := time.Duration(l.p.latency.Load())
	if d <= 0 {
		return true
	}
	t.Reset(d)
	select {
	case <-t.C:
		return true
	case <-l.ctx.Done():
		t.Stop()
		return false
	}
}

// toServer forwards client→target, watching the protocol for an armed cut.
// l.server is nil for a link blackholed from the start.
func (l *link) toServer() {
	buf := make([]byte, bufSize)
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		n, err := l.client.Read(buf)
		if n > 0 && !l.blackholed.Load() {
			if !l.delay(t) {
				return
			}
			if !l.blackholed.Load() {
				cut, werr := l.forwardToServer(buf[:n])
				if werr != nil {
					l.shutdown(true)
					return
				}
				if cut {
					return // serve finishes the cut once the target has closed
				}
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF) && !l.blackholed.Load():
			_ = l.server.CloseWrite() // pass the client's FIN on
			return
		case errors.Is(err, io.EOF):
			l.shutdown(false) // the client left a hung host: nothing to keep
			return
		default:
			l.shutdown(true)
			return
		}
	}
}

// forwardToServer writes p to the target in order, stopping early if the
// armed cut is met in it; then it reports cut=true and has half-closed the
// target's side.
func (l *link) forwardToServer(p []byte) (cut bool, err error) {
	for len(p) > 0 {
		if l.fe.state == stateAnswer {
			l.fe.answer(byte(l.answer.Load()))
		}
		req := l.p.cut.Load()
		n, ev := l.fe.scan(p, req)
		switch ev {
		case eventNegotiate:
			l.answer.Store(0)
			l.negotiating.Store(true) // before the request reaches the server
		case eventCut:
			if l.p.cut.CompareAndSwap(req, nil) {
				l.keep.Store(int64(req.keep))
				l.cutting.Store(true) // before the statement reaches the server
				if _, err := l.server.Write(p[:n]); err != nil {
					return true, nil // the target is gone: the cut still stands
				}
				_ = l.server.CloseWrite()
				return true, nil
			}
		}
		if _, err := l.server.Write(p[:n]); err != nil {
			return false, err
		}
		p = p[n:]
	}
	return false, nil
}

// toClient forwards target→client, noting the answer to an SSLRequest or
// GSSENCRequest for the toServer loop's scanner.
func (l *link) toClient() {
	buf := make([]byte, bufSize)
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		n, err := l.server.Read(buf)
		if n > 0 {
			if l.negotiating.CompareAndSwap(true, false) {
				l.answer.Store(uint32(buf[0])) // before the client can see it and go on
			}
			if l.cutting.Load() && !l.blackholed.Load() {
				if k := int(min(l.keep.Load(), int64(n))); k > 0 {
					l.keep.Add(int64(-k))
					if _, werr := l.client.Write(buf[:k]); werr != nil {
						l.shutdown(true)
						return
					}
				}
			} else if !l.blackholed.Load() {
				if !l.delay(t) {
					return
				}
				// Checked again: a cut or blackhole may have started while
				// the chunk was held.
				if !l.cutting.Load() && !l.blackholed.Load() {
					if _, werr := l.client.Write(buf[:n]); werr != nil {
						l.shutdown(true)
						return
					}
				}
			}
		}
		switch {
		case err == nil:
		case l.cutting.Load() || l.blackholed.Load():
			return // serve closes a cut link; a hung host never says goodbye
		case errors.Is(err, io.EOF):
			_ = l.client.CloseWrite() // pass the target's FIN on
			return
		default:
			l.shutdown(true)
			return
		}
	}
}
