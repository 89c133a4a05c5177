// Package sockcheck tells, without blocking and without sending anything,
// whether an idle client connection can still carry a request: a peer that
// closed it, reset it, or sent something unasked (PostgreSQL's FATAL
// "terminating connection due to administrator command" to an idle session)
// makes it unfit. A request written on such a connection would fail after
// it was sent, so its outcome would look unknown although the server never
// saw it; checking first turns that into a clean "not sent".
package sockcheck

import (
	"net"
	"syscall"
)

// Checker peeks at one connection's socket. Make it once per connection
// (New allocates); Unfit does not allocate. A Checker is used by one
// goroutine at a time.
type Checker struct {
	raw    syscall.RawConn
	fn     func(fd uintptr)
	unfit  bool
	buf    [1]byte
	usable bool
}

// New returns a Checker for c (a TCP or Unix connection, or a TLS
// connection over one). For connections it cannot inspect, Unfit always
// reports false.
func New(c net.Conn) *Checker {
	ch := &Checker{}
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return ch
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return ch
	}
	ch.raw, ch.usable = raw, true
	ch.fn = func(fd uintptr) { ch.unfit = peek(fd, ch.buf[:]) }
	return ch
}

// Unfit reports whether the connection is closed, reset, or has unread data
// waiting while it should be idle.
func (ch *Checker) Unfit() bool {
	if ch == nil || !ch.usable {
		return false
	}
	ch.unfit = false
	// Control, not Read: it takes no read lock, so it neither waits for nor
	// disturbs a read the driver may have pending in the background (pgx
	// reads in the background after a slow write). Such a read may consume
	// what the server sent before we peek: the check is best effort.
	if err := ch.raw.Control(ch.fn); err != nil {
		return true // the connection is closed on our side
	}
	return ch.unfit
}
