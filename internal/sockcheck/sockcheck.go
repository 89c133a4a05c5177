// Package sockcheck tells, without blocking and without sending anything,
// whether an idle PostgreSQL client connection can still carry a request:
// a server that closed or reset it, or that sent an ErrorResponse while it
// was idle (the FATAL of a terminated session, of a fast shutdown), makes it
// unfit. A request written on such a connection would fail after it was
// sent, so its outcome would look unknown although the server never saw it;
// checking first turns that into a clean "not sent".
//
// Messages a server sends to an idle session on its own, NotificationResponse
// (NOTIFY to a session that ran LISTEN), NoticeResponse and ParameterStatus,
// do not make it unfit: the session goes on, and the driver reads them with
// its next reply.
//
// How: on Linux, one poll(2) with POLLRDHUP says whether the server closed
// its side, even behind unread data; elsewhere a peek can see the close only
// when nothing is unread. When data waits on a plaintext connection, its
// message headers are read with MSG_PEEK (nothing is consumed) to find an
// ErrorResponse; a TLS connection's records cannot be read, so there only
// the close counts.
package sockcheck

import (
	"net"
	"syscall"
)

// peekSize bounds how much waiting data is looked at: enough for a few
// NOTIFY or ParameterStatus messages; an ErrorResponse further back is not
// seen (the close that follows it is, on Linux).
const peekSize = 512

// Checker looks at one connection's socket. Make it once per connection
// (New allocates); Unfit does not allocate. A Checker is used by one
// goroutine at a time.
type Checker struct {
	raw       syscall.RawConn
	fn        func(fd uintptr)
	plaintext bool // the bytes on the socket are the protocol's own (no TLS)
	unfit     bool
	buf       [peekSize]byte
	usable    bool
}

// New returns a Checker for c (a TCP or Unix connection, or a TLS
// connection over one). For connections it cannot inspect, Unfit always
// reports false.
func New(c net.Conn) *Checker {
	ch := &Checker{plaintext: true}
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = tc.NetConn()
		ch.plaintext = false
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
	ch.fn = func(fd uintptr) { ch.unfit = inspect(fd, ch.buf[:], ch.plaintext) }
	return ch
}

// Unfit reports whether the connection is closed (on either side), reset,
// or has an ErrorResponse waiting while it should be idle.
func (ch *Checker) Unfit() bool {
	if ch == nil || !ch.usable {
		return false
	}
	ch.unfit = false
	// Control, not Read: it takes no read lock, so it neither waits for nor
	// disturbs a read the driver may have pending in the background (pgx
	// reads in the background after a slow write). Such a read may consume
	// what the server sent before we look: the check is best effort.
	if err := ch.raw.Control(ch.fn); err != nil {
		return true // the connection is closed on our side
	}
	return ch.unfit
}

// inspect looks at fd: closed or reset, or waiting data that says the
// session is over.
func inspect(fd uintptr, buf []byte, plaintext bool) bool {
	closed, readable := pollClosed(fd)
	if closed || !readable {
		return closed
	}
	n, eof, ok := peek(fd, buf)
	switch {
	case !ok:
		return false // nothing after all (raced a background read), or EINTR
	case eof:
		return true
	case !plaintext:
		return false // TLS records: only a close would tell
	}
	return !onlyAsync(buf[:n])
}

// onlyAsync reports whether the complete messages at the start of b are all
// ones a server sends to an idle session without ending it. A message cut
// off at the end of b counts by its type byte alone.
func onlyAsync(b []byte) bool {
	for len(b) > 0 {
		switch b[0] {
		case 'A', 'N', 'S': // NotificationResponse, NoticeResponse, ParameterStatus
		default:
			return false // ErrorResponse, or nothing an idle session expects
		}
		if len(b) < 5 {
			return true
		}
		l := int(b[1])<<24 | int(b[2])<<16 | int(b[3])<<8 | int(b[4])
		if l < 4 {
			return false // not a protocol message
		}
		if 1+l >= len(b) {
			return true
		}
		b = b[1+l:]
	}
	return true
}
