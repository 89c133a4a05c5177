// Package fakepg is an in-memory PostgreSQL node for tests and benchmarks:
// a database/sql driver with no I/O. A [Node] answers the health probe
// (pgprobe.Query) from a role, WAL position and timeline the test sets,
// runs every other statement as a success (an Exec affects one row, a
// query returns one row of one int64, 1), and fails on demand through
// named hooks, as database/sql's own fakedb_test.go does: [Node.On] arms a
// [Fault] (fail before sending, break after sending, hang, a server error
// with a SQLSTATE, rows that break after N rows) for the next statement of
// a [Kind]. It counts dials and the statements that reached it.
//
// Its connections implement the optional interfaces pgx stdlib's do
// (ExecerContext, QueryerContext, ConnPrepareContext, ConnBeginTx, Pinger,
// SessionResetter, NamedValueChecker), so database/sql takes the same paths
// as with pgx, and like pgx a connection tells whether it is closed or busy
// with open rows, and can be interrupted from another goroutine (IsClosed,
// IsBusy, Interrupt). A statement on a Node with no hook armed, neither
// down nor hung, allocates only its rows: it can stand in for the driver
// in benchmarks of what a wrapping driver adds.
//
// A Node is safe for concurrent use; a connection, like every driver.Conn,
// is used by one goroutine at a time, except Interrupt.
package fakepg

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/unifiedsql/unified/internal/pgprobe"
)

// Kind is the kind of a statement, as hooks and counts see it.
type Kind uint8

const (
	// Any matches every statement kind in [Node.On], Connect and Probe
	// excepted; in [Node.Sent] it counts every statement but probes.
	Any Kind = iota + 1
	Connect
	Probe // the health probe, pgprobe.Query
	Exec
	Query
	Prepare
	Begin
	Commit
	Rollback
	Ping
	numKinds
)

var kindNames = [...]string{Any: "any", Connect: "connect", Probe: "probe", Exec: "exec", Query: "query",
	Prepare: "prepare", Begin: "begin", Commit: "commit", Rollback: "rollback", Ping: "ping"}

func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return "kind?"
}

// State is what a Node's probe answers, and whether it answers at all.
type State struct {
	InRecovery bool   // a replica
	LSN        uint64 // the current WAL position of a primary, the replayed one of a replica
	Timeline   uint32 // 0: unknown (a replica without a WAL receiver)
	// Down: dials are refused (ErrRefused) and the open connections break
	// when it is set.
	Down bool
	// Hung: dials and statements (probes included) reach the node and get
	// no answer, as with a stopped process: they block until their context
	// ends, or their connection is interrupted, or Hung is cleared.
	Hung bool
	// Delay: statements (probes included) are answered that long after
	// they reach the node, as by a slow node or a slow link; one whose
	// context ends first fails as a Hang does.
	Delay time.Duration
}

// ErrRefused is a refused dial: a node that is down.
var ErrRefused error = &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}

// Error is a server error, what *pgconn.PgError is to pgx: classification
// reads its SQLSTATE through the SQLState method.
type Error struct {
	Severity string // ERROR or FATAL
	Code     string // the SQLSTATE
}

func (e *Error) Error() string    { return e.Severity + ": fakepg server error (SQLSTATE " + e.Code + ")" }
func (e *Error) SQLState() string { return e.Code }

// errNotSent is a statement that was not sent: a failed write, or a
// context already done, marked safe to retry as pgconn marks the errors of
// statements that provably never left.
type errNotSent struct{ err error }

func (e errNotSent) Error() string     { return "fakepg: not sent: " + e.err.Error() }
func (e errNotSent) Unwrap() error     { return e.err }
func (e errNotSent) SafeToRetry() bool { return true }

// ErrBusy is what a statement gets on a connection whose rows are still
// open, as pgx's "conn busy": safe to retry, nothing was sent.
var ErrBusy error = errBusy{}

type errBusy struct{}

func (errBusy) Error() string     { return "fakepg: conn busy" }
func (errBusy) SafeToRetry() bool { return true }

// Fault is what a hooked statement meets instead of success. Make one with
// the functions below.
type Fault struct {
	what fault
	err  error
	rows int32
}

type fault uint8

const (
	noFault fault = iota
	badConn
	safeToRetry
	breakAfterSend
	hang
	fail
	fatal
	breakRows
)

// BadConn fails the statement before anything of it is sent, with
// driver.ErrBadConn; the connection is closed (as database/sql expects
// after ErrBadConn).
func BadConn() Fault { return Fault{what: badConn} }

// SafeToRetry fails the statement before anything of it is sent, with an
// error marked safe to retry (a SafeToRetry() bool method, as pgconn's
// write errors) wrapping EPIPE; the connection is closed.
func SafeToRetry() Fault { return Fault{what: safeToRetry} }

// BreakAfterSend lets the statement reach the node (it counts), then
// breaks the connection: io.ErrUnexpectedEOF, and the connection is closed.
func BreakAfterSend() Fault { return Fault{what: breakAfterSend} }

// Hang lets the statement reach the node and never answers: it blocks
// until its context ends (the error is the context's and the connection is
// closed, as pgx closes a connection canceled mid-statement) or the
// connection is interrupted (io.ErrUnexpectedEOF). COMMIT and ROLLBACK
// have no context: only an interruption ends them.
func Hang() Fault { return Fault{what: hang} }

// Fail makes the node answer the statement with err; the connection lives.
func Fail(err error) Fault { return Fault{what: fail, err: err} }

// ServerError makes the node answer the statement with an *Error of SQLSTATE
// code; the connection lives.
func ServerError(code string) Fault { return Fail(&Error{Severity: "ERROR", Code: code}) }

// Fatal makes the node answer the statement with a FATAL *Error of
// SQLSTATE code (57P01 admin_shutdown, say) and close the session.
func Fatal(code string) Fault { return Fault{what: fatal, err: &Error{Severity: "FATAL", Code: code}} }

// BreakRowsAfter makes a query return n rows, then break the connection:
// the next Next returns io.ErrUnexpectedEOF and the connection is closed.
// For any other kind it is BreakAfterSend.
func BreakRowsAfter(n int) Fault { return Fault{what: breakRows, rows: int32(n)} }

type hook struct {
	kind  Kind
	fault Fault
}

// Node is one in-memory PostgreSQL server and a driver.Connector to it.
// The zero value is a primary, up, with no hook armed.
type Node struct {
	dials atomic.Int64
	sent  [numKinds]atomic.Int64
	// eventful: a hook is armed, the node is down or hung, or statements
	// are recorded: statements take mu. Otherwise they succeed without it.
	eventful atomic.Bool

	mu        sync.Mutex // protects following fields
	state     State
	hooks     []hook
	conns     map[*conn]struct{} // open connections, broken when the node goes down
	changed   chan struct{}      // closed and replaced at every Set: wakes hung statements
	probes    []time.Time
	recording bool
	recorded  []string
}

var _ driver.Connector = (*Node)(nil)

// New returns a node in state s.
func New(s State) *Node {
	n := &Node{}
	n.Set(func(st *State) { *st = s })
	return n
}

// Set changes the node's state. Setting Down breaks the open connections.
func (n *Node) Set(edit func(*State)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	edit(&n.state)
	if n.state.Down {
		for c := range n.conns {
			c.breakConn()
		}
	}
	if n.changed != nil {
		close(n.changed)
	}
	n.changed = make(chan struct{})
	n.updateLocked()
}

// State returns the node's state.
func (n *Node) State() State {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state
}

// On arms a hook: the next statement of kind k (Any: of any kind but
// Connect and Probe) meets f. Hooks fire once each, in the order they were
// armed. On Connect, Hang blocks the dial until its context ends, Fail,
// ServerError and Fatal fail it with their error, and any other fault
// refuses it (ErrRefused).
func (n *Node) On(k Kind, f Fault) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.hooks = append(n.hooks, hook{kind: k, fault: f})
	n.updateLocked()
}

// Record starts keeping the statements that reach the node (probes
// excepted), for Recorded.
func (n *Node) Record() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.recording = true
	n.updateLocked()
}

// Recorded returns the statements that reached the node since Record, as
// "kind query" ("exec INSERT INTO t VALUES ($1)", "begin", "commit").
func (n *Node) Recorded() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.recorded...)
}

// Dials is how many connections were asked of the node, refused ones
// included.
func (n *Node) Dials() int { return int(n.dials.Load()) }

// Open is how many connections to the node are open (not closed by their
// client; a broken one counts until it is closed).
func (n *Node) Open() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.conns)
}

// Sent is how many statements of kind k reached the node (Any: all but
// probes). A statement that failed before sending (BadConn, SafeToRetry,
// ErrBusy, a closed connection) did not.
func (n *Node) Sent(k Kind) int {
	if k != Any {
		return int(n.sent[k].Load())
	}
	total := 0
	for k := Exec; k < numKinds; k++ {
		total += int(n.sent[k].Load())
	}
	return total
}

// ProbeTimes returns when each probe reached the node.
func (n *Node) ProbeTimes() []time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]time.Time(nil), n.probes...)
}

func (n *Node) updateLocked() {
	n.eventful.Store(len(n.hooks) > 0 || n.state.Down || n.state.Hung || n.state.Delay > 0 || n.recording)
}

// takeLocked removes and returns the first hook for kind k.
func (n *Node) takeLocked(k Kind) Fault {
	for i, h := range n.hooks {
		if h.kind == k || (h.kind == Any && k != Connect && k != Probe) {
			n.hooks = append(n.hooks[:i], n.hooks[i+1:]...)
			n.updateLocked()
			return h.fault
		}
	}
	return Fault{}
}

// Driver returns a driver whose Open connects to n; the name is ignored.
func (n *Node) Driver() driver.Driver { return nodeDriver{n} }

type nodeDriver struct{ n *Node }

func (d nodeDriver) Open(string) (driver.Conn, error) { return d.n.Connect(context.Background()) }

// Connect opens a connection to the node: refused while it is down, held
// while it is hung, and as a Connect hook says.
func (n *Node) Connect(ctx context.Context) (driver.Conn, error) {
	n.dials.Add(1)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !n.eventful.Load() {
		return n.open(), nil
	}
	n.mu.Lock()
	f := n.takeLocked(Connect)
	down := n.state.Down
	n.mu.Unlock()
	switch {
	case f.what == hang:
		<-ctx.Done()
		return nil, ctx.Err()
	case f.what == fail || f.what == fatal:
		return nil, f.err
	case f.what != noFault || down:
		return nil, ErrRefused
	}
	if err := n.waitHung(ctx, nil); err != nil {
		return nil, err
	}
	return n.open(), nil
}

func (n *Node) open() *conn {
	c := &conn{node: n, gone: make(chan struct{})}
	n.mu.Lock()
	if n.conns == nil {
		n.conns = make(map[*conn]struct{})
	}
	n.conns[c] = struct{}{}
	n.mu.Unlock()
	return c
}

// waitHung blocks while the node is hung, until ctx ends or gone is
// closed (the connection broke).
func (n *Node) waitHung(ctx context.Context, gone <-chan struct{}) error {
	for {
		n.mu.Lock()
		hung, changed := n.state.Hung, n.changed
		n.mu.Unlock()
		if !hung {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-gone:
			return io.ErrUnexpectedEOF
		}
	}
}

// conn is one connection to a Node.
type conn struct {
	node *Node
	// closed is set by Close and breakConn; gone is closed with it, to wake
	// a hung statement. Interrupt and Node.Set break a connection from
	// other goroutines.
	closed    atomic.Bool
	gone      chan struct{}
	breakOnce sync.Once
	busy      bool // rows are open
	inTx      bool // a driver.Tx is open
	block     bool // a transaction block begun by a BEGIN statement
}

// The interfaces pgx stdlib's Conn implements, and what pgx tells of a
// connection through *stdlib.Conn.
var _ interface {
	driver.Conn
	driver.ConnPrepareContext
	driver.ConnBeginTx
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.NamedValueChecker
	driver.SessionResetter
	IsClosed() bool
	IsBusy() bool
	Interrupt()
	TxStatus() byte
} = (*conn)(nil)

// breakConn closes the connection; safe from any goroutine.
func (c *conn) breakConn() {
	c.breakOnce.Do(func() {
		c.closed.Store(true)
		close(c.gone)
	})
}

// Interrupt breaks the connection from another goroutine, as closing a
// pgx connection's socket does: a statement blocked on it returns at once.
func (c *conn) Interrupt() { c.breakConn() }

// IsClosed reports whether the connection is closed or broken.
func (c *conn) IsClosed() bool { return c.closed.Load() }

// TxStatus is the session's transaction status as pgconn tells it: 'T'
// inside a transaction (a driver.Tx, or a block an Exec of BEGIN or START
// TRANSACTION opened and one of COMMIT, END, ROLLBACK or ABORT closes),
// else 'I'.
func (c *conn) TxStatus() byte {
	if c.inTx || c.block {
		return 'T'
	}
	return 'I'
}

// startsWith reports whether query begins with keyword, in any case.
func startsWith(query, keyword string) bool {
	return len(query) >= len(keyword) && strings.EqualFold(query[:len(keyword)], keyword)
}

// IsBusy reports whether rows of a query are still open on it.
func (c *conn) IsBusy() bool { return c.busy }

// send is the start of every statement of kind k: it fails what cannot be
// sent (a closed connection, one busy with rows, a context already done:
// pgx checks it first), counts what is, and applies the hook or the node's
// state. It returns the fault the statement met after sending (noFault, or
// breakRows for a query).
func (c *conn) send(ctx context.Context, k Kind, query string) (Fault, error) {
	if c.closed.Load() {
		return Fault{}, driver.ErrBadConn
	}
	if c.busy {
		return Fault{}, ErrBusy
	}
	if err := ctx.Err(); err != nil {
		return Fault{}, errNotSent{err}
	}
	n := c.node
	if !n.eventful.Load() && k != Probe {
		n.sent[k].Add(1)
		return Fault{}, nil
	}
	n.mu.Lock()
	f := n.takeLocked(k)
	switch f.what {
	case badConn, safeToRetry:
		n.mu.Unlock()
		c.breakConn()
		if f.what == badConn {
			return Fault{}, driver.ErrBadConn
		}
		return Fault{}, errNotSent{syscall.EPIPE}
	}
	n.sent[k].Add(1)
	delay := n.state.Delay
	if k == Probe {
		n.probes = append(n.probes, time.Now())
	} else if n.recording {
		rec := k.String()
		if query != "" {
			rec += " " + query
		}
		n.recorded = append(n.recorded, rec)
	}
	n.mu.Unlock()

	if err := n.waitHung(ctx, c.gone); err != nil {
		c.breakConn()
		return Fault{}, err
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			c.breakConn()
			return Fault{}, ctx.Err()
		case <-c.gone:
			return Fault{}, io.ErrUnexpectedEOF
		}
	}
	switch f.what {
	case breakAfterSend:
		c.breakConn()
		return Fault{}, io.ErrUnexpectedEOF
	case hang:
		select {
		case <-ctx.Done():
			c.breakConn()
			return Fault{}, ctx.Err()
		case <-c.gone:
			return Fault{}, io.ErrUnexpectedEOF
		}
	case fail:
		return Fault{}, f.err
	case fatal:
		c.breakConn()
		return Fault{}, f.err
	case breakRows:
		if k != Query && k != Probe {
			c.breakConn()
			return Fault{}, io.ErrUnexpectedEOF
		}
	}
	return f, nil
}

// result is every Exec's result. A package variable: returning it does not
// allocate.
var result driver.Result = driver.RowsAffected(1)

func (c *conn) ExecContext(ctx context.Context, query string, _ []driver.NamedValue) (driver.Result, error) {
	if _, err := c.send(ctx, Exec, query); err != nil {
		return nil, err
	}
	switch {
	case startsWith(query, "BEGIN"), startsWith(query, "START TRANSACTION"):
		c.block = true
	case startsWith(query, "COMMIT"), startsWith(query, "END"), startsWith(query, "ROLLBACK"), startsWith(query, "ABORT"):
		c.block = false
	}
	return result, nil
}

func (c *conn) QueryContext(ctx context.Context, query string, _ []driver.NamedValue) (driver.Rows, error) {
	if query == pgprobe.Query || query == pgprobe.QueryAgain {
		return c.probe(ctx)
	}
	return c.query(ctx, query)
}

func (c *conn) query(ctx context.Context, query string) (driver.Rows, error) {
	f, err := c.send(ctx, Query, query)
	if err != nil {
		return nil, err
	}
	c.busy = true
	if f.what == breakRows {
		return &rows{c: c, left: f.rows, breaks: true}, nil
	}
	return &rows{c: c, left: 1}, nil
}

func (c *conn) probe(ctx context.Context) (driver.Rows, error) {
	f, err := c.send(ctx, Probe, pgprobe.Query)
	if err != nil {
		return nil, err
	}
	st := c.node.State()
	c.busy = true
	r := &probeRows{rows: rows{c: c, left: 1}, row: [...]driver.Value{
		st.InRecovery, pgprobe.FormatLSN(st.LSN), int64(st.Timeline), nil, nil, nil}}
	if f.what == breakRows {
		r.left, r.breaks = f.rows, true
	}
	return r, nil
}

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if _, err := c.send(ctx, Prepare, query); err != nil {
		return nil, err
	}
	return &stmt{c: c, query: query}, nil
}

func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

// BeginTx begins a transaction; a second one before the first ends is an
// error, as with a server session.
func (c *conn) BeginTx(ctx context.Context, _ driver.TxOptions) (driver.Tx, error) {
	if c.inTx && !c.closed.Load() {
		return nil, errors.New("fakepg: a transaction is already open")
	}
	if _, err := c.send(ctx, Begin, ""); err != nil {
		return nil, err
	}
	c.inTx = true
	return tx{c}, nil
}

// Ping fails as pgx's does: any failure closes the connection and is
// driver.ErrBadConn.
func (c *conn) Ping(ctx context.Context) error {
	if _, err := c.send(ctx, Ping, ""); err != nil {
		c.breakConn()
		return driver.ErrBadConn
	}
	return nil
}

// ResetSession refuses a closed connection.
func (c *conn) ResetSession(context.Context) error {
	if c.closed.Load() {
		return driver.ErrBadConn
	}
	return nil
}

// CheckNamedValue accepts every argument unconverted, as pgx stdlib does.
func (c *conn) CheckNamedValue(*driver.NamedValue) error { return nil }

func (c *conn) Close() error {
	c.breakConn()
	n := c.node
	n.mu.Lock()
	delete(n.conns, c)
	n.mu.Unlock()
	return nil
}

// tx is pointer-shaped: returning it as a driver.Tx does not allocate.
type tx struct{ c *conn }

func (t tx) Commit() error   { return t.end(Commit) }
func (t tx) Rollback() error { return t.end(Rollback) }

func (t tx) end(k Kind) error {
	t.c.inTx = false
	_, err := t.c.send(context.Background(), k, "")
	return err
}

// stmt is a statement prepared on a conn.
type stmt struct {
	c     *conn
	query string
}

var _ interface {
	driver.StmtExecContext
	driver.StmtQueryContext
} = (*stmt)(nil)

func (s *stmt) Close() error  { return nil }
func (s *stmt) NumInput() int { return -1 } // database/sql does not check the count

func (s *stmt) Exec([]driver.Value) (driver.Result, error) {
	return s.c.ExecContext(context.Background(), s.query, nil)
}

func (s *stmt) Query([]driver.Value) (driver.Rows, error) {
	return s.c.query(context.Background(), s.query)
}

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.c.ExecContext(ctx, s.query, args)
}

func (s *stmt) QueryContext(ctx context.Context, _ []driver.NamedValue) (driver.Rows, error) {
	return s.c.query(ctx, s.query)
}

// rows are a query's: left rows of one int64 (1), then io.EOF, or a
// broken connection when breaks is set. Small: a query allocates them.
type rows struct {
	c      *conn
	left   int32
	breaks bool
	done   bool
	broke  bool // Next met the broken connection: Close says it again, as pgx's rows do
}

// columns are a query's: one column, as SELECT 1 has.
var columns = []string{"?column?"}

func (r *rows) Columns() []string { return columns }

func (r *rows) Close() error {
	r.finish()
	if r.broke {
		return io.ErrUnexpectedEOF
	}
	return nil
}

func (r *rows) finish() {
	if !r.done {
		r.done = true
		r.c.busy = false
	}
}

func (r *rows) Next(dest []driver.Value) error {
	if err := r.next(); err != nil {
		return err
	}
	dest[0] = int64(1) // small integers convert to an interface without allocating
	return nil
}

// next moves to the next row, or ends the rows.
func (r *rows) next() error {
	switch {
	case r.done:
		return io.EOF
	case r.c.closed.Load():
		r.finish()
		r.broke = true
		return io.ErrUnexpectedEOF
	case r.left == 0 && r.breaks:
		r.finish()
		r.broke = true
		r.c.breakConn()
		return io.ErrUnexpectedEOF
	case r.left == 0:
		r.finish()
		return io.EOF
	}
	r.left--
	return nil
}

// probeRows are the probe's answer: one row of pgprobe.Query's columns.
type probeRows struct {
	rows
	row [6]driver.Value
}

// probeColumns are pgprobe.Query's.
var probeColumns = []string{"in_recovery", "lsn", "timeline", "system", "started", "senders"}

func (r *probeRows) Columns() []string { return probeColumns }

func (r *probeRows) Next(dest []driver.Value) error {
	if err := r.next(); err != nil {
		return err
	}
	copy(dest, r.row[:])
	return nil
}
