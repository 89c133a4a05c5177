package unified

import (
	"context"
	"database/sql/driver"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/unifiedsql/unified/internal/pgprobe"
)

// Session gives read-your-writes: ReadOnly statements run with a Session
// in their context ([WithSession]) see every write made with the same
// Session before them, even when they run on a replica.
//
// A Session holds a floor: the WAL position (with the timeline and the
// cluster's system identifier) of the last write made with it. A statement
// on the primary run with the Session (an autocommit statement, or a
// transaction's COMMIT, the transaction begun with the Session in its
// context) raises the floor to a WAL position at or after its commit. A
// ReadOnly statement with the Session runs only on a replica, of the same
// cluster and timeline, that has replayed up to the floor; when none has,
// on the primary, read-only. The floor only rises.
//
// A Session travels between requests and processes as a token ([Session.Token],
// [ParseSession]); [SessionHandler] does that for HTTP. The zero value and
// NewSession are an empty session: no floor, reads go wherever their mode
// says. A Session is safe for concurrent use.
//
// Limits: a Session orders one client's writes and reads; reads of
// different sessions may still see commits in different orders on
// different replicas ("Long Fork"). With asynchronous replication a write
// acknowledged by a primary that then fails may be lost, and a Session
// cannot bring it back: after a failover, a token from the old timeline
// sends reads to the new primary, which has every write it acknowledged.
type Session struct {
	mu    sync.Mutex // protects floor
	floor floor
}

// floor is a WAL position in one cluster's history.
type floor struct {
	lsn      uint64
	timeline uint32
	system   uint64 // the cluster's system identifier; 0 when unknown
}

func (f floor) zero() bool { return f.lsn == 0 }

// after reports whether f is later than g: a higher timeline, or the same
// timeline and a higher position. Floors of different clusters do not
// compare: the newer write wins.
func (f floor) after(g floor) bool {
	if f.timeline != g.timeline {
		return f.timeline > g.timeline
	}
	return f.lsn > g.lsn
}

// NewSession returns an empty session.
func NewSession() *Session { return &Session{} }

// raise lifts the floor to f if f is later. An unknown floor (a write whose
// position could not be read) gives way to the next known one on its
// timeline or a later one.
func (s *Session) raise(f floor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.floor
	switch {
	case cur.zero(), f.after(cur):
	case cur.lsn == unknownLSN && f.timeline >= cur.timeline:
	case f.system != 0 && cur.system != 0 && f.system != cur.system:
	default:
		return
	}
	s.floor = f
}

func (s *Session) get() floor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.floor
}

// String describes the floor for logs: "0/16B3F28 on timeline 2", or
// "empty".
func (s *Session) String() string {
	f := s.get()
	if f.zero() {
		return "empty"
	}
	return fmt.Sprintf("%s on timeline %d", pgprobe.FormatLSN(f.lsn), f.timeline)
}

// Token format: base64url (no padding) of version (1 byte), timeline (4),
// LSN (8), system identifier (8), big-endian: 21 bytes, 28 characters.
const (
	tokenVersion = 1
	tokenBytes   = 1 + 4 + 8 + 8
)

var tokenEncoding = base64.RawURLEncoding

// Token returns the session as a short opaque string, safe in a URL, a
// cookie and an HTTP header, for [ParseSession] in another request or
// process. An empty session's token is "".
func (s *Session) Token() string {
	f := s.get()
	if f.zero() {
		return ""
	}
	var b [tokenBytes]byte
	b[0] = tokenVersion
	binary.BigEndian.PutUint32(b[1:], f.timeline)
	binary.BigEndian.PutUint64(b[5:], f.lsn)
	binary.BigEndian.PutUint64(b[13:], f.system)
	return tokenEncoding.EncodeToString(b[:])
}

// ErrBadSession is wrapped by ParseSession's errors.
var ErrBadSession = errors.New("unified: malformed session token")

// ParseSession returns the session a [Session.Token] describes. "" is an
// empty session. A malformed token is an error wrapping [ErrBadSession]
// that says what is wrong with it; it never panics.
func ParseSession(token string) (*Session, error) {
	if token == "" {
		return NewSession(), nil
	}
	if len(token) != tokenEncoding.EncodedLen(tokenBytes) {
		return nil, fmt.Errorf("%w: %d characters, want %d", ErrBadSession, len(token), tokenEncoding.EncodedLen(tokenBytes))
	}
	b, err := tokenEncoding.DecodeString(token)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url", ErrBadSession)
	}
	if b[0] != tokenVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrBadSession, b[0], tokenVersion)
	}
	f := floor{
		timeline: binary.BigEndian.Uint32(b[1:]),
		lsn:      binary.BigEndian.Uint64(b[5:]),
		system:   binary.BigEndian.Uint64(b[13:]),
	}
	if f.lsn == 0 || f.timeline == 0 {
		return nil, fmt.Errorf("%w: no WAL position", ErrBadSession)
	}
	return &Session{floor: f}, nil
}

// WithSession returns a copy of ctx that carries s: statements and
// transactions started with it raise or honour s's floor. A nil s is no
// session.
func WithSession(ctx context.Context, s *Session) context.Context {
	return withHints(ctx, func(h *hints) { h.session = s })
}

// SessionFrom returns the session ctx carries, if any.
func SessionFrom(ctx context.Context) (*Session, bool) {
	s := hintsFrom(ctx).session
	return s, s != nil
}

// SessionHeader is the HTTP header SessionHandler reads and writes.
const SessionHeader = "Unified-Session"

// SessionHandler wraps next so that each request runs with a Session: the
// one whose token the request's Unified-Session header carries (a missing
// or malformed token is an empty session), in the request's context
// ([WithSession]). The response carries the session's token, as it is when
// the response headers are written, in its own Unified-Session header, for
// the client to send back with its next request. Writes made after the
// handler has started writing the body do not reach that header.
func SessionHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := ParseSession(r.Header.Get(SessionHeader))
		if err != nil {
			s = NewSession()
		}
		sw := &sessionWriter{ResponseWriter: w, s: s}
		next.ServeHTTP(sw, r.WithContext(WithSession(r.Context(), s)))
		sw.header()
	})
}

// sessionWriter writes the session header before the first byte.
type sessionWriter struct {
	http.ResponseWriter
	s    *Session
	done bool
}

func (w *sessionWriter) header() {
	if w.done {
		return
	}
	w.done = true
	if tok := w.s.Token(); tok != "" {
		w.ResponseWriter.Header().Set(SessionHeader, tok)
	}
}

func (w *sessionWriter) WriteHeader(code int) {
	w.header()
	w.ResponseWriter.WriteHeader(code)
}

func (w *sessionWriter) Write(b []byte) (int, error) {
	w.header()
	return w.ResponseWriter.Write(b)
}

// Flush passes http.Flusher on.
func (w *sessionWriter) Flush() {
	w.header()
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the wrapped writer.
func (w *sessionWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// insertLSNQuery is the statement a write with a session runs after it
// committed to learn its floor: the WAL insert position is at or after the
// commit record once the commit returned (the flush position is not, with
// synchronous_commit off).
const insertLSNQuery = "SELECT pg_current_wal_insert_lsn()::text"

// unknownLSN is the floor of a session whose write committed but whose
// position could not be read: no replica reaches it, so its reads go to the
// primary until a later write of the session replaces it.
const unknownLSN = ^uint64(0)

// capture raises sess's floor after a write committed on pc, a primary
// session: one more statement on the same connection (autocommit writes
// pay this round trip; a COMMIT learns it in the same round trip, see
// commitWithFloor).
func (c *Conn) capture(ctx context.Context, pc *physConn, sess *Session) {
	if pc.inTxBlock() {
		// The caller sent BEGIN itself: nothing is committed yet, and a
		// statement of ours would run inside its transaction (a SET
		// TRANSACTION after it would fail). Its COMMIT raises the floor.
		return
	}
	lsn, err := queryLSN(ctx, pc, insertLSNQuery)
	if err != nil {
		c.c.log.Warn("unified: the session's floor after a write is unknown; its reads go to the primary until its next write", "node", pc.node.name, "error", err)
		lsn = unknownLSN
	}
	sess.raise(c.floorAt(pc.node, lsn))
}

// floorAt is a floor at lsn on node n's timeline and cluster, as the
// current topology knows them.
func (c *Conn) floorAt(n *node, lsn uint64) floor {
	f := floor{lsn: lsn}
	v := c.c.viewNow()
	if i := v.index(n); i >= 0 {
		f.timeline, f.system = v.s.Nodes[i].Timeline, v.s.Nodes[i].SystemID
	}
	return f
}

// commitWithFloorQuery commits and reads the floor in one round trip: two
// statements in one simple-protocol message run one after the other, the
// SELECT in a transaction of its own after the COMMIT (inside the same
// implicit transaction it would read a position before the commit
// record).
const commitWithFloorQuery = "COMMIT; " + insertLSNQuery

// commitWithFloor commits the transaction open on pc and raises sess's
// floor to a position at or after its commit record, in one round trip on
// a pgx connection (two on another driver). It returns what pgx's
// Tx.Commit would: pgx.ErrTxCommitRollback when the server rolled the
// transaction back.
func (c *Conn) commitWithFloor(ctx context.Context, pc *physConn, inner driver.Tx, sess *Session) error {
	if pc.sc == nil {
		if err := inner.Commit(); err != nil {
			return err
		}
		c.capture(ctx, pc, sess)
		return nil
	}
	pg := pc.sc.Conn().PgConn()
	results, err := pg.Exec(ctx, commitWithFloorQuery).ReadAll()
	if err != nil {
		if pg.TxStatus() != 'I' {
			_ = pc.sc.Conn().Close(ctx) // as pgx: a connection left in a transaction is closed
		}
		if len(results) > 0 && results[0].Err == nil && results[0].CommandTag.String() == "COMMIT" {
			// Committed; only reading the floor failed.
			sess.raise(c.floorAt(pc.node, unknownLSN))
			return nil
		}
		return err
	}
	if len(results) != 2 || results[0].CommandTag.String() != "COMMIT" {
		return pgx.ErrTxCommitRollback
	}
	lsn := unknownLSN
	if rows := results[1].Rows; len(rows) == 1 && len(rows[0]) == 1 {
		if l, err := pgprobe.ParseLSN(string(rows[0][0])); err == nil {
			lsn = l
		}
	}
	sess.raise(c.floorAt(pc.node, lsn))
	return nil
}

// sessionReason says why a session read was served where it was; it is the
// unified.session.reason attribute.
type sessionReason uint8

const (
	sessionReplayed      sessionReason = iota // a replica had replayed the floor
	sessionNotReplayed                        // none had: the primary
	sessionOtherTimeline                      // the floor is of another timeline or cluster: the primary
	sessionNoReplica                          // no replica may serve the read: the primary
	numSessionReasons
)

var sessionReasonNames = [...]string{"replayed", "not_replayed", "other_timeline", "no_replica"}

func (r sessionReason) String() string { return sessionReasonNames[r] }
