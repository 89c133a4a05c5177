package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/stdlib"

	"github.com/unifiedsql/unified/internal/sockcheck"
)

// physConn is one physical connection to one node, in one slot of a
// logical connection, and the optional interfaces its driver offers,
// asserted once at dial.
type physConn struct {
	tel      *telemetry
	node     *node
	slot     slot
	readOnly bool // the session cannot write: opened read-only (a read connection)
	dc       driver.Conn
	sc       *stdlib.Conn // nil for a node driver other than pgx
	st       connState    // another node driver's, when it offers one
	execer   driver.ExecerContext
	queryer  driver.QueryerContext
	preparer driver.ConnPrepareContext
	beginner driver.ConnBeginTx
	pinger   driver.Pinger
	resetter driver.SessionResetter
	// sock looks at a pgx connection's socket before an idle session is
	// used again (nil for other drivers): see fit.
	sock *sockcheck.Checker
	// prepFailed: the last call failed in a statement's lazy preparation
	// (prepareError), not in what it then would have run.
	prepFailed bool
	// used: the connection has served a statement. For the primary slot
	// the session is the user's from then on (DESIGN.md §2).
	used bool
	// lastUsed is when the last statement on it ended.
	lastUsed time.Time
	// balance is the Connector's rebalancing count when this read
	// connection was chosen (see Connector.rebalance).
	balance uint64
	// sawPromotion: the replica was promoted and the monitor was told.
	sawPromotion bool
	// active counts what uses the connection now (a statement, open rows,
	// a transaction): the monitor closes only idle ones of a drained node.
	active atomic.Int32
	// callStart is when the statement running on it began, by the
	// Connector's coarse clock (0: none): the monitor probes a node whose
	// statement has stalled out of turn.
	callStart atomic.Int64
	// interrupted is why the monitor closed its socket (see abort).
	interrupted atomic.Pointer[error]
	closed      bool
}

// sockCheckAfter is how long a primary session must have been idle before
// its socket is looked at on reuse. A connection used again within it was
// answering a moment ago; skipping the system call keeps it off the hot
// path of busy connections. If such a connection did die in between, the
// write is reported as ErrCommitUnknown rather than as never sent: less
// precise, never wrong.
const sockCheckAfter = time.Millisecond

// connState is what pgx tells of a connection through *stdlib.Conn and
// another node driver's connection (WithNodeConnector) may tell too:
// whether it is closed (broken), whether it is busy with open rows, and a
// way to interrupt a statement on it from another goroutine, as closing a
// pgx connection's socket does. The in-memory node of the tests
// (internal/fakepg) implements it, so that the facts the attempt loop
// gathers and the monitor's interruption are the same over it as over
// pgx; a connection without it is never seen broken or busy by itself and
// is not interrupted.
type connState interface {
	IsClosed() bool
	IsBusy() bool
	Interrupt()
}

// errNotPgx is returned by StdlibConn for a node with another driver.
var errNotPgx = errors.New("unified: the node's driver is not pgx stdlib")

func newPhysConn(tel *telemetry, n *node, s slot, readOnly bool, dc driver.Conn) *physConn {
	pc := &physConn{tel: tel, node: n, slot: s, readOnly: readOnly, dc: dc}
	pc.execer, _ = dc.(driver.ExecerContext)
	pc.queryer, _ = dc.(driver.QueryerContext)
	pc.preparer, _ = dc.(driver.ConnPrepareContext)
	pc.beginner, _ = dc.(driver.ConnBeginTx)
	pc.pinger, _ = dc.(driver.Pinger)
	pc.resetter, _ = dc.(driver.SessionResetter)
	if sc, ok := dc.(*stdlib.Conn); ok {
		pc.sc = sc
		pc.sock = sockcheck.New(sc.Conn().PgConn().Conn())
	} else if st, ok := dc.(connState); ok {
		pc.st = st
	}
	n.track(pc)
	tel.connCount(n, 1, 0)
	return pc
}

// abort closes the socket from another goroutine (the health monitor's),
// so that a statement in flight on it fails at once, its error prefixed by
// cause (nil: none; see Conn.call). The owner finds the connection broken.
// Only pgx connections and a connState can be aborted.
func (pc *physConn) abort(cause error) {
	if cause != nil {
		pc.interrupted.Store(&cause)
	}
	switch {
	case pc.sc != nil:
		_ = pc.sc.Conn().PgConn().Conn().Close()
	case pc.st != nil:
		pc.st.Interrupt()
	}
}

func (pc *physConn) close() {
	if pc.closed {
		return
	}
	pc.closed = true
	pc.node.untrack(pc)
	pc.tel.connCount(pc.node, -1, 0)
	_ = pc.dc.Close()
}

// inTxBlock reports whether the session is inside a transaction block:
// pgx's transaction status, or that of another driver's connection that
// tells it (TxStatus, as pgconn's: 'I' idle). Outside a driver.Tx this is
// a BEGIN statement the caller sent itself.
func (pc *physConn) inTxBlock() bool {
	if pc.sc != nil {
		return pc.sc.Conn().PgConn().TxStatus() != 'I'
	}
	if t, ok := pc.dc.(interface{ TxStatus() byte }); ok {
		return t.TxStatus() != 'I'
	}
	return false
}

// broken reports whether the driver says the connection is gone (pgx
// closes a connection whose network failed or whose context was canceled
// mid-query).
func (pc *physConn) broken() bool {
	switch {
	case pc.closed:
		return true
	case pc.sc != nil:
		return pc.sc.Conn().IsClosed()
	default:
		return pc.st != nil && pc.st.IsClosed()
	}
}

// standby reports whether the server said, in its in_hot_standby
// parameter (PostgreSQL 14 and later send it at connect and whenever it
// changes), that it is in recovery. It reads what pgx last received: no
// round trip.
func (pc *physConn) standby() bool {
	return pc.sc != nil && pc.sc.Conn().PgConn().ParameterStatus("in_hot_standby") == "on"
}

// promoted reports whether a replica's session was told, with its last
// reply, that the server left recovery (in_hot_standby went off).
func (pc *physConn) promoted() bool {
	return pc.sc != nil && pc.slot == slotRead && pc.sc.Conn().PgConn().ParameterStatus("in_hot_standby") == "off"
}

// busy reports whether the connection is still busy with rows the caller
// left open: pgx fails any other statement on it with "conn busy".
func (pc *physConn) busy() bool {
	if pc.sc != nil {
		return pc.sc.Conn().PgConn().IsBusy()
	}
	return pc.st != nil && pc.st.IsBusy()
}

// fit reports whether an idle session can carry a request: not broken, and
// after sockCheckAfter of idleness its socket shows no sign that the server
// ended the session (closed, reset, or an ErrorResponse waiting). NOTIFY,
// notices and ParameterStatus messages waiting on it are not such a sign.
func (pc *physConn) fit() bool {
	if pc.broken() {
		return false
	}
	return pc.sock == nil || time.Since(pc.lastUsed) < sockCheckAfter || !pc.sock.Unfit()
}

func (pc *physConn) exec(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if pc.execer == nil {
		return nil, driver.ErrSkip // database/sql falls back to Prepare+Exec
	}
	return pc.execer.ExecContext(ctx, query, args)
}

func (pc *physConn) query(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if pc.queryer == nil {
		return nil, driver.ErrSkip
	}
	return pc.queryer.QueryContext(ctx, query, args)
}

func (pc *physConn) prepare(ctx context.Context, query string) (driver.Stmt, error) {
	if pc.preparer != nil {
		return pc.preparer.PrepareContext(ctx, query)
	}
	return pc.dc.Prepare(query)
}

func (pc *physConn) begin(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if pc.beginner != nil {
		return pc.beginner.BeginTx(ctx, opts)
	}
	if opts.Isolation != 0 || opts.ReadOnly {
		return nil, fmt.Errorf("unified: node driver %T does not support transaction options", pc.dc)
	}
	return pc.dc.Begin() //nolint:staticcheck // the node driver has no BeginTx
}

func (pc *physConn) ping(ctx context.Context) error {
	if pc.pinger == nil {
		return nil
	}
	return pc.pinger.Ping(ctx)
}

// reset passes database/sql's ResetSession on (pgx pings a session idle
// for more than a second and refuses one left inside a transaction).
func (pc *physConn) reset(ctx context.Context) error {
	if pc.resetter == nil {
		return nil
	}
	return pc.resetter.ResetSession(ctx)
}
