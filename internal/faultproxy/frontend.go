package faultproxy

import (
	"bytes"
	"encoding/binary"
	"strings"
)

// Codes of the untyped packets a client may open a connection with. The code
// is the second int32 of the packet; a v3 StartupMessage carries the protocol
// version instead (major 3 in the upper 16 bits).
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104

	// maxStartupLen is PostgreSQL's MAX_STARTUP_PACKET_LENGTH: anything
	// longer is not a startup packet (a direct TLS ClientHello, garbage).
	maxStartupLen = 10000
	// maxNameCapture bounds what is kept of a Bind or Close body: only the
	// names at its start are needed, never the parameter values.
	maxNameCapture = 1024
	// keepCapture is the largest capture buffer kept for the next message; a
	// larger one (a huge query) is dropped so it does not pin memory.
	keepCapture = 64 << 10
)

// IsCommit reports whether query, as sent in a simple-protocol Query or an
// extended-protocol Parse message, is a COMMIT: its trimmed text is, ignoring
// case and the spacing between words, "commit", "end", "commit transaction",
// "commit work", "end transaction" or "end work", optionally followed by one
// ";". COMMIT AND CHAIN and COMMIT PREPARED are not COMMITs here. It is the
// matcher [Proxy.CutAfterCommit] arms.
func IsCommit(query string) bool {
	q := strings.TrimSpace(query)
	if len(q) > 64 {
		return false // cheap exit for real statements
	}
	q = strings.TrimSpace(strings.TrimSuffix(q, ";"))
	f := strings.Fields(q)
	switch len(f) {
	case 1:
		return strings.EqualFold(f[0], "commit") || strings.EqualFold(f[0], "end")
	case 2:
		return (strings.EqualFold(f[0], "commit") || strings.EqualFold(f[0], "end")) &&
			(strings.EqualFold(f[1], "transaction") || strings.EqualFold(f[1], "work"))
	}
	return false
}

// cutRequest is one arming of a cut. Its identity matters: a connection may
// cut only if the request it matched is still the armed one, which a
// compare-and-swap on [Proxy.cut] settles between connections.
type cutRequest struct {
	match func(query string) bool
	// keep is how many bytes of the target's reply still reach the client
	// once the cut has started (CutAfterReply); 0 for CutAfter.
	keep int
}

// scanState is where the frontend scanner is in the client's byte stream.
type scanState uint8

const (
	// stateStartup expects an untyped packet: StartupMessage, SSLRequest,
	// GSSENCRequest or CancelRequest.
	stateStartup scanState = iota + 1
	// stateAnswer: an SSLRequest or GSSENCRequest was sent and the server's
	// one-byte answer decides what follows (see frontend.answer).
	stateAnswer
	// stateTyped expects typed messages: type byte, int32 length, body.
	stateTyped
	// statePass: the stream can no longer be read (TLS or GSS encryption was
	// negotiated, an unknown protocol, broken framing); bytes pass unexamined.
	statePass
)

// event is what scan stopped at.
type event uint8

const (
	// eventNone: every byte was consumed and nothing needs the caller.
	eventNone event = iota
	// eventNegotiate: an SSLRequest or GSSENCRequest ends at the returned
	// offset. The caller forwards it and reports the server's answer through
	// frontend.answer before scanning more.
	eventNegotiate
	// eventCut: the armed cut condition holds once the bytes up to the
	// returned offset have reached the server.
	eventCut
)

// pendingStmt is a prepared statement whose Parse matched the armed cut.
// The cut waits for it to be bound, executed, and followed by a Sync, so the
// statement really runs; a Parse-Describe-Sync round trip alone (pgx
// prepares that way) executes nothing.
type pendingStmt struct {
	req      *cutRequest
	name     string
	bound    bool // a Bind of the statement was seen
	executed bool // an Execute followed that Bind
}

// frontend follows the PostgreSQL v3 frontend protocol framing of one
// client→server stream and finds where an armed cut condition is met.
// Message boundaries may fall anywhere in the chunks it is fed.
//
// Unarmed, it only walks message headers (five bytes a message) and skips
// bodies by their length; bodies are copied only while a cut is armed, and
// only for the message types that can match (Query, Parse, and Bind, Close of
// a pending statement). A frontend is used by one goroutine.
type frontend struct {
	state  scanState
	hdr    [8]byte // header being assembled
	hdrN   int     // bytes of hdr filled
	need   int     // header size: 8 untyped (length, code), 5 typed (type, length)
	typ    byte    // type of the current typed message
	code   uint32  // code of the current untyped packet
	remain int     // body bytes of the current message not yet seen

	capReq   *cutRequest // the request the body is being captured for; nil = no capture
	capLimit int         // capture at most this many body bytes; < 0 = all
	body     []byte      // captured body
	pending  *pendingStmt
}

func newFrontend() *frontend {
	return &frontend{state: stateStartup, need: 8}
}

// answer tells the scanner the server's one-byte answer to an SSLRequest or
// GSSENCRequest. 'N' means the client goes on in plain text with another
// untyped packet; anything else ('S', an error, 0 for "unknown") means the
// stream is encrypted or unreadable from here on. It is a no-op outside
// stateAnswer.
func (f *frontend) answer(b byte) {
	if f.state != stateAnswer {
		return
	}
	if b == 'N' {
		f.state, f.need, f.hdrN = stateStartup, 8, 0
		return
	}
	f.state = statePass
}

// scan consumes p up to the first event and returns how many bytes it
// consumed and the event at that offset. With eventNone all of p was
// consumed. req is the currently armed cut, nil if none; it is read at each
// message's start and end, so arming mid-message takes effect from the next
// message.
func (f *frontend) scan(p []byte, req *cutRequest) (int, event) {
	i := 0
	for i < len(p) {
		if f.state == stateAnswer {
			// Bytes before the answer is known: a client that did not wait
			// (direct TLS, a pipelining client) cannot be followed.
			f.state = statePass
		}
		if f.state == statePass {
			return len(p), eventNone
		}
		if f.hdrN < f.need {
			k := copy(f.hdr[f.hdrN:f.need], p[i:])
			f.hdrN += k
			i += k
			if f.hdrN < f.need {
				return len(p), eventNone
			}
			f.begin(req)
			if f.state == statePass {
				return len(p), eventNone
			}
		}
		k := min(f.remain, len(p)-i)
		if f.capReq != nil && k > 0 {
			f.capture(p[i : i+k])
		}
		f.remain -= k
		i += k
		if f.remain > 0 {
			return len(p), eventNone
		}
		if ev := f.end(req); ev != eventNone {
			return i, ev
		}
	}
	return len(p), eventNone
}

// begin interprets a complete header and decides whether to capture the body.
func (f *frontend) begin(req *cutRequest) {
	f.capReq = nil
	if f.state == stateStartup {
		n := binary.BigEndian.Uint32(f.hdr[0:4])
		if n < 8 || n > maxStartupLen {
			f.state = statePass
			return
		}
		f.code = binary.BigEndian.Uint32(f.hdr[4:8])
		f.remain = int(n) - 8
		return
	}
	f.typ = f.hdr[0]
	n := binary.BigEndian.Uint32(f.hdr[1:5])
	if n < 4 {
		f.state = statePass
		return
	}
	f.remain = int(n) - 4
	if f.pending != nil && f.pending.req != req {
		f.pending = nil // disarmed or re-armed since the Parse matched
	}
	if req == nil {
		return
	}
	switch f.typ {
	case 'Q', 'P':
		f.startCapture(req, -1)
	case 'B', 'C':
		if f.pending != nil {
			f.startCapture(req, maxNameCapture)
		}
	}
}

func (f *frontend) startCapture(req *cutRequest, limit int) {
	f.capReq, f.capLimit = req, limit
	if cap(f.body) > keepCapture {
		f.body = nil
	}
	f.body = f.body[:0]
}

func (f *frontend) capture(b []byte) {
	if f.capLimit >= 0 {
		b = b[:min(len(b), f.capLimit-len(f.body))]
	}
	f.body = append(f.body, b...)
}

// end handles a complete message and resets for the next header.
func (f *frontend) end(req *cutRequest) event {
	f.hdrN = 0
	if f.state == stateStartup {
		switch {
		case f.code == codeSSLRequest || f.code == codeGSSENCRequest:
			f.state = stateAnswer
			return eventNegotiate
		case f.code>>16 == 3:
			f.state, f.need = stateTyped, 5
		default: // CancelRequest (nothing follows it) or an unknown protocol
			f.state = statePass
		}
		return eventNone
	}
	captured := f.capReq != nil && f.capReq == req
	f.capReq = nil
	switch f.typ {
	case 'Q':
		if captured {
			if q, _, ok := cstring(f.body); ok && req.match(q) {
				return eventCut
			}
		}
	case 'P':
		if !captured {
			break
		}
		name, rest, ok := cstring(f.body)
		if !ok {
			break
		}
		q, _, ok := cstring(rest)
		switch {
		case ok && req.match(q):
			f.pending = &pendingStmt{req: req, name: name}
		case f.pending != nil && !f.pending.executed && f.pending.name == name:
			f.pending = nil // the matched statement was replaced before it ran
		}
	case 'B':
		if captured && f.pending != nil {
			_, rest, _ := cstring(f.body)
			if stmt, _, ok := cstring(rest); ok && stmt == f.pending.name {
				f.pending.bound = true
			}
		}
	case 'E':
		if f.pending != nil && f.pending.bound {
			f.pending.executed = true
		}
	case 'C':
		if captured && f.pending != nil && !f.pending.executed && len(f.body) > 0 && f.body[0] == 'S' {
			if name, _, ok := cstring(f.body[1:]); ok && name == f.pending.name {
				f.pending = nil
			}
		}
	case 'S':
		if f.pending != nil && f.pending.executed {
			f.pending = nil
			return eventCut
		}
	}
	return eventNone
}

// cstring splits a NUL-terminated string off the front of b.
func cstring(b []byte) (s string, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}
