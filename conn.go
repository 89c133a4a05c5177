package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5/stdlib"

	"github.com/unifiedsql/unified/internal/sockcheck"
	"github.com/unifiedsql/unified/internal/topology"
)

// role indexes the physical connections of a logical one.
type role uint8

const (
	rolePrimary role = iota // writes, default mode, Batch, Transactional
	roleReader              // ReadOnly: a replica, or the primary opened read-only as fallback
)

// Conn is a logical connection: what database/sql pools. It holds at most one
// physical connection per role, each opened on first need: one to the
// primary and one for reads (to a replica, or to the primary opened with
// default_transaction_read_only=on when reads fall back to it). Every
// statement is routed by its mode; a transaction stays on the physical
// connection it began on.
//
// Code that sets no mode only ever opens the primary connection, so session
// state (SET, temporary tables, advisory locks) behaves as with pgx stdlib.
//
// Like every driver.Conn, a Conn is used by one goroutine at a time;
// database/sql guarantees that. Reach it with (*sql.Conn).Raw:
//
//	err := sqlConn.Raw(func(dc any) error {
//		pc, err := dc.(*unified.Conn).StdlibConn(ctx, unified.ReadWrite)
//		if err != nil {
//			return err
//		}
//		_, err = pc.Conn().CopyFrom(ctx, pgx.Identifier{"t"}, cols, src)
//		return err
//	})
type Conn struct {
	c    *Connector
	phys [2]*physConn
	tx   *tx // the open transaction (&txState), nil outside one
	// txState holds the open transaction's state, so BeginTx allocates
	// nothing.
	txState tx

	closed        bool
	ownsConnector bool // opened by Driver.Open: Close closes the Connector too
}

// The interfaces pgx stdlib's Conn implements, plus Validator. The parity
// test compares this list with pgx by reflection.
var (
	_ driver.Conn               = (*Conn)(nil)
	_ driver.ConnPrepareContext = (*Conn)(nil)
	_ driver.ConnBeginTx        = (*Conn)(nil)
	_ driver.ExecerContext      = (*Conn)(nil)
	_ driver.QueryerContext     = (*Conn)(nil)
	_ driver.Pinger             = (*Conn)(nil)
	_ driver.NamedValueChecker  = (*Conn)(nil)
	_ driver.SessionResetter    = (*Conn)(nil)
	_ driver.Validator          = (*Conn)(nil)
)

// physConn is one physical connection to one node and the optional
// interfaces it offers, asserted once at dial.
type physConn struct {
	tel      *telemetry
	node     *node
	readOnly bool // opened with default_transaction_read_only=on
	dc       driver.Conn
	execer   driver.ExecerContext
	queryer  driver.QueryerContext
	preparer driver.ConnPrepareContext
	beginner driver.ConnBeginTx
	pinger   driver.Pinger
	resetter driver.SessionResetter
	// sock peeks at a pgx connection's socket before it is reused for a
	// write (nil for other drivers): see stale.
	sock *sockcheck.Checker
	// abort closes the socket from another goroutine, interrupting a
	// statement in flight (nil for drivers other than pgx); see
	// node.abortWriters.
	abort func()
	// lastUsed is when the last statement on it ended (zero: never used).
	lastUsed time.Time
	closed   bool
}

// sockCheckAfter is how long a primary connection must have been idle before
// its socket is peeked at on reuse. A connection used again within it was
// answering a moment ago; skipping the system call keeps it off the hot path
// of busy connections. If such a connection did die in between, the write
// is reported as ErrCommitUnknown rather than retried: less precise, never
// wrong.
const sockCheckAfter = time.Millisecond

func newPhysConn(tel *telemetry, n *node, readOnly bool, dc driver.Conn) *physConn {
	pc := &physConn{tel: tel, node: n, readOnly: readOnly, dc: dc}
	pc.execer, _ = dc.(driver.ExecerContext)
	pc.queryer, _ = dc.(driver.QueryerContext)
	pc.preparer, _ = dc.(driver.ConnPrepareContext)
	pc.beginner, _ = dc.(driver.ConnBeginTx)
	pc.pinger, _ = dc.(driver.Pinger)
	pc.resetter, _ = dc.(driver.SessionResetter)
	if sc, ok := dc.(*stdlib.Conn); ok && !readOnly {
		raw := sc.Conn().PgConn().Conn()
		pc.sock = sockcheck.New(raw)
		pc.abort = func() { _ = raw.Close() }
		n.trackWriter(pc)
	}
	tel.physOpened(n)
	return pc
}

func (pc *physConn) close() {
	if !pc.closed {
		pc.closed = true
		if pc.abort != nil {
			pc.node.untrackWriter(pc)
		}
		pc.tel.physClosed(pc.node)
		_ = pc.dc.Close()
	}
}

// broken reports whether the driver says the connection is gone (pgx closes
// a connection whose network failed or whose context was canceled mid-query).
func (pc *physConn) broken() bool {
	if pc.closed {
		return true
	}
	if sc, ok := pc.dc.(*stdlib.Conn); ok {
		return sc.Conn().IsClosed()
	}
	return false
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

// mode is the statement's mode: the context's, else the default.
func (c *Conn) mode(ctx context.Context) Mode {
	if m, ok := ModeFrom(ctx); ok {
		return m
	}
	return c.c.cfg.DefaultMode
}

func roleOf(m Mode) role {
	if m == ReadOnly {
		return roleReader
	}
	return rolePrimary
}

func (c *Conn) drop(r role) {
	if pc := c.phys[r]; pc != nil {
		pc.close()
		c.phys[r] = nil
	}
}

// stale reports whether pc may no longer serve its role under snapshot s: a
// primary connection whose node lost the primary role (invariant 1), a read
// connection whose replica is no longer eligible, or a fallback read
// connection while a replica is available again.
func (c *Conn) stale(r role, pc *physConn, s *topology.Snapshot) bool {
	if pc.broken() {
		return true
	}
	if s == nil {
		return false
	}
	if r == rolePrimary {
		return s.Primary != pc.node.index
	}
	if pc.readOnly && s.Primary == pc.node.index {
		// A fallback read connection on the primary: keep it only while no
		// replica is eligible.
		return pickReplica(s, PolicyRoundRobin, 0, c.c.breakerAllows) >= 0
	}
	return !replicaEligible(s, pc.node.index)
}

// physFor returns the physical connection for role r, opening or replacing it
// as the current topology requires. exclude is a node that just failed this
// statement (-1: none); it is avoided for reads.
func (c *Conn) physFor(ctx context.Context, r role, exclude int, rec *opRecord) (*physConn, error) {
	if c.closed {
		return nil, driver.ErrBadConn
	}
	s := c.c.snapshot()
	if pc := c.phys[r]; pc != nil {
		// Before a primary connection idle for sockCheckAfter is reused,
		// one non-blocking peek at its socket: if the server closed it or
		// sent an unasked message
		// (the FATAL of a terminated idle session, as in a fast shutdown),
		// a statement sent on it would fail after it was sent and its
		// outcome would look unknown although the server never saw it.
		// Reads need no such check: they are re-run on another node.
		if !c.stale(r, pc, s) && pc.node.index != exclude &&
			(pc.sock == nil || time.Since(pc.lastUsed) < sockCheckAfter || !pc.sock.Unfit()) {
			return pc, nil
		}
		c.drop(r)
	}
	var (
		n        *node
		readOnly = r == roleReader
		err      error
	)
	if r == rolePrimary {
		if s == nil || s.Primary < 0 {
			start := time.Now()
			s, err = c.c.waitPrimary(ctx)
			if rec != nil {
				rec.failoverWait(time.Since(start))
			}
			if err != nil {
				return nil, err
			}
		}
		n = c.c.nodes[s.Primary]
	} else {
		if n, err = c.c.readNode(ctx, exclude); err != nil {
			return nil, err
		}
	}
	connector := n.rw
	if readOnly {
		connector = n.ro
	}
	done, err := n.breaker.allow(n.name)
	if err != nil {
		return nil, err
	}
	dc, err := connector.Connect(ctx)
	done(ctx, err)
	if err != nil {
		return nil, &NodeError{Node: n.name, Op: "connect", Err: err}
	}
	pc := newPhysConn(c.c.tel, n, readOnly, dc)
	c.phys[r] = pc
	return pc, nil
}

// readNode picks the node for a new read connection: an eligible replica,
// else the primary (unified_read_fallback=primary) or ErrNoReplica.
func (c *Connector) readNode(ctx context.Context, exclude int) (*node, error) {
	s := c.snapshot()
	if s == nil && c.mon != nil {
		var err error
		if s, err = c.waitFirstSnapshot(ctx); err != nil {
			return nil, err
		}
	}
	allowed := func(i int) bool { return i != exclude && c.breakerAllows(i) }
	var cursor uint64
	if c.cfg.ReplicaPolicy == PolicyRandom {
		cursor = rand.Uint64()
	} else {
		cursor = c.rr.Add(1)
	}
	if i := pickReplica(s, c.cfg.ReplicaPolicy, cursor, allowed); i >= 0 {
		return c.nodes[i], nil
	}
	if exclude >= 0 {
		// The node that just failed this read is the only eligible one:
		// try it again rather than fall back (or fail) for a blip.
		if i := pickReplica(s, c.cfg.ReplicaPolicy, cursor, c.breakerAllows); i >= 0 {
			return c.nodes[i], nil
		}
	}
	if c.cfg.ReadFallback == FallbackError {
		return nil, ErrNoReplica
	}
	s, err := c.waitPrimary(ctx)
	if err != nil {
		return nil, err
	}
	c.counters.readFallbacks.Add(1)
	return c.nodes[s.Primary], nil
}

// ExecContext runs query on the node its mode routes to (on the
// transaction's connection inside one).
func (c *Conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	release, err := c.admit(ctx)
	if err != nil {
		return nil, err
	}
	if release != nil {
		defer release()
	}
	var res driver.Result
	err = c.run(ctx, opExec, query, func(pc *physConn) (err error) {
		res, err = pc.exec(ctx, query, args)
		return err
	})
	return res, err
}

// QueryContext runs query like ExecContext. The rows are the physical
// driver's own, unwrapped, so column metadata is pgx's.
func (c *Conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	release, err := c.admit(ctx)
	if err != nil {
		return nil, err
	}
	var rows driver.Rows
	err = c.run(ctx, opQuery, query, func(pc *physConn) (err error) {
		rows, err = pc.query(ctx, query, args)
		return err
	})
	return holdUntilClose(rows, err, release)
}

// admit takes a Batch bulkhead token for a statement outside a transaction
// (a Batch transaction holds one from BeginTx to its end).
func (c *Conn) admit(ctx context.Context) (func(), error) {
	if c.tx != nil || c.c.batch == nil {
		return nil, nil
	}
	return c.c.admitBatch(ctx, c.mode(ctx))
}

// holdUntilClose keeps a bulkhead token until the rows are closed. Without a
// token the rows are returned unwrapped.
func holdUntilClose(rows driver.Rows, err error, release func()) (driver.Rows, error) {
	if release == nil {
		return rows, err
	}
	if err != nil {
		release()
		return nil, err
	}
	return &heldRows{Rows: rows, release: release}, nil
}

// PrepareContext prepares query on the connection the context routes to, so
// a syntax error shows at Prepare as with pgx; executions with another mode
// prepare again, lazily, on their own connection.
func (c *Conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	st := &stmt{conn: c, query: query}
	var (
		first driver.Stmt
		on    *physConn
	)
	err := c.runAny(ctx, opPrepare, query, func(pc *physConn) (err error) {
		first, err = pc.prepare(ctx, query)
		on = pc
		return err
	})
	if err != nil {
		return nil, err
	}
	st.numInput = first.NumInput()
	st.prepared = append(st.prepared, preparedOn{pc: on, st: first})
	return st, nil
}

// Prepare is PrepareContext with a background context.
func (c *Conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// BeginTx begins a transaction on the primary, or on a replica when
// opts.ReadOnly is set or the context's mode is ReadOnly. Every statement of
// the transaction runs on that physical connection until Commit or
// Rollback, whatever its own context says.
func (c *Conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if c.tx != nil {
		return nil, errors.New("unified: a transaction is already open on this connection")
	}
	m := c.mode(ctx)
	r := rolePrimary
	if opts.ReadOnly || m == ReadOnly {
		r = roleReader
	}
	var release func()
	if c.c.batch != nil && m == Batch {
		var err error
		if release, err = c.c.admitBatch(ctx, m); err != nil {
			return nil, err
		}
	}
	var inner driver.Tx
	var on *physConn
	err := c.runRole(ctx, opBegin, "BEGIN", m, r, func(pc *physConn) (err error) {
		on = pc
		if pc.beginner != nil {
			inner, err = pc.beginner.BeginTx(ctx, opts)
			return err
		}
		if opts.Isolation != 0 || opts.ReadOnly {
			return fmt.Errorf("unified: node driver %T does not support transaction options", pc.dc)
		}
		inner, err = pc.dc.Begin() //nolint:staticcheck // the node driver has no BeginTx
		return err
	})
	if err != nil {
		if release != nil {
			release()
		}
		return nil, err
	}
	// The transaction lives in the Conn (one at a time): no allocation.
	c.txState = tx{c: c, pc: on, inner: inner, readOnly: r == roleReader || opts.ReadOnly, mode: m, release: release,
		parent: c.c.tel.spanParent(ctx)}
	c.tx = &c.txState
	c.c.tel.physUsed(on.node)
	return c.tx, nil
}

// Begin is BeginTx with a background context and default options.
func (c *Conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

// Ping checks the connection the context's mode routes to, opening it if
// needed. Like pgx, a failed ping reports driver.ErrBadConn so that
// database/sql discards the connection.
func (c *Conn) Ping(ctx context.Context) error {
	return c.runAny(ctx, opPing, "", func(pc *physConn) error {
		if pc.pinger == nil {
			return nil
		}
		return pc.pinger.Ping(ctx)
	})
}

// CheckNamedValue accepts every argument when every node is pgx (pgx
// supports its own types, sql.Scanner and driver.Valuer natively), so
// []int64, maps and pgtype values reach pgx exactly as through pgx stdlib.
// With another node driver (WithNodeConnector), arguments get
// database/sql's default conversion, which is what go-sqlmock expects.
func (c *Conn) CheckNamedValue(*driver.NamedValue) error {
	if c.c.pgxArgs {
		return nil
	}
	return driver.ErrSkip
}

// ResetSession is called by database/sql before a pooled connection is
// reused. It closes physical connections that the topology no longer
// allows (a primary connection to a demoted node) and passes the reset on
// to the others; one whose reset fails is closed and reopened on next need,
// so the logical connection stays usable.
func (c *Conn) ResetSession(ctx context.Context) error {
	if c.closed {
		return driver.ErrBadConn
	}
	s := c.c.snapshot()
	for r, pc := range c.phys {
		if pc == nil {
			continue
		}
		if c.stale(role(r), pc, s) {
			c.drop(role(r))
			continue
		}
		if pc.resetter != nil {
			if err := pc.resetter.ResetSession(ctx); err != nil {
				c.drop(role(r))
				if !errors.Is(err, driver.ErrBadConn) {
					return err
				}
			}
		}
	}
	return nil
}

// IsValid is called by database/sql before a connection goes back to the
// pool; it reports whether the logical connection can be reused. It does no
// work: physical connections the topology no longer allows are dropped by
// ResetSession when the connection is next taken from the pool, and by the
// per-statement check.
func (c *Conn) IsValid() bool { return !c.closed }

// Close closes the physical connections.
func (c *Conn) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	if c.tx != nil {
		_ = c.tx.inner.Rollback()
		c.tx.end()
	}
	c.drop(rolePrimary)
	c.drop(roleReader)
	if c.ownsConnector {
		return c.c.Close()
	}
	return nil
}

// StdlibConn returns the pgx stdlib connection that serves mode m on this
// logical connection, opening it if needed (ReadOnly: the read connection;
// any other mode: the primary connection). Inside a transaction it returns
// the transaction's connection. Use it from (*sql.Conn).Raw for pgx-only
// features such as CopyFrom; the connection stays owned by the logical one.
// It fails for a node served by a WithNodeConnector connector that is not
// pgx.
func (c *Conn) StdlibConn(ctx context.Context, m Mode) (*stdlib.Conn, error) {
	pc, err := c.physical(ctx, m)
	if err != nil {
		return nil, err
	}
	sc, ok := pc.dc.(*stdlib.Conn)
	if !ok {
		return nil, fmt.Errorf("unified: node %s uses %T, not pgx stdlib", pc.node.name, pc.dc)
	}
	return sc, nil
}

// Physical returns the physical driver.Conn that serves mode m, like
// StdlibConn but for any node driver.
func (c *Conn) Physical(ctx context.Context, m Mode) (driver.Conn, error) {
	pc, err := c.physical(ctx, m)
	if err != nil {
		return nil, err
	}
	return pc.dc, nil
}

func (c *Conn) physical(ctx context.Context, m Mode) (*physConn, error) {
	if c.tx != nil {
		return c.tx.pc, nil
	}
	return c.physFor(ctx, roleOf(m), -1, nil)
}

// tx is a transaction pinned to one physical connection.
type tx struct {
	c        *Conn
	pc       *physConn
	inner    driver.Tx
	readOnly bool
	mode     Mode   // the mode BeginTx ran in, for telemetry
	release  func() // gives back a Batch bulkhead token; nil without one
	// parent carries BeginTx's span to COMMIT/ROLLBACK (database/sql gives
	// them no context); context.Background() when tracing is off.
	parent context.Context
}

// end detaches the transaction from its connection.
func (t *tx) end() {
	t.c.c.tel.physIdle(t.pc.node)
	t.c.tx = nil
	if t.release != nil {
		t.release()
		t.release = nil
	}
}

// Commit commits. When the connection breaks after COMMIT was sent, the
// error wraps ErrCommitUnknown (a read-only transaction's plain error is
// returned: it wrote nothing). COMMIT is never re-sent.
func (t *tx) Commit() error {
	return t.finish(opCommit, "COMMIT", t.inner.Commit, !t.readOnly)
}

// Rollback rolls back.
func (t *tx) Rollback() error {
	return t.finish(opRollback, "ROLLBACK", t.inner.Rollback, false)
}

func (t *tx) finish(op, query string, do func() error, mayHaveWritten bool) error {
	ctx := t.parent
	rec := t.c.c.tel.begin(ctx, op, query, t.mode)
	r := roleOfConn(t.c, t.pc)
	t.end()
	openBefore := !t.pc.broken()
	err := do()
	if err != nil {
		err = t.c.fail(ctx, op, t.pc, err, mayHaveWritten, mayHaveSent(openBefore, t.pc, err))
	}
	rec.end(ctx, t.pc.node, r, err)
	return err
}

// stmt is a logical prepared statement: it remembers the query and prepares
// it on each physical connection it executes on.
type stmt struct {
	conn     *Conn
	query    string
	numInput int
	prepared []preparedOn
	closed   bool
}

type preparedOn struct {
	pc *physConn
	st driver.Stmt
}

var (
	_ driver.Stmt             = (*stmt)(nil)
	_ driver.StmtExecContext  = (*stmt)(nil)
	_ driver.StmtQueryContext = (*stmt)(nil)
)

// on returns the statement prepared on pc, preparing it there if needed and
// forgetting the ones on closed connections.
func (s *stmt) on(ctx context.Context, pc *physConn) (driver.Stmt, error) {
	live := s.prepared[:0]
	var found driver.Stmt
	for _, p := range s.prepared {
		if p.pc.closed {
			continue
		}
		live = append(live, p)
		if p.pc == pc {
			found = p.st
		}
	}
	clear(s.prepared[len(live):])
	s.prepared = live
	if found != nil {
		return found, nil
	}
	ps, err := pc.prepare(ctx, s.query)
	if err != nil {
		return nil, err
	}
	s.prepared = append(s.prepared, preparedOn{pc: pc, st: ps})
	return ps, nil
}

func (s *stmt) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	var first error
	for _, p := range s.prepared {
		if p.pc.closed {
			continue
		}
		if err := p.st.Close(); err != nil && first == nil {
			first = err
		}
	}
	s.prepared = nil
	return first
}

// NumInput is the parameter count reported by the first preparation.
func (s *stmt) NumInput() int { return s.numInput }

func (s *stmt) Exec([]driver.Value) (driver.Result, error) {
	return nil, errors.New("unified: Stmt.Exec is deprecated and not implemented; use ExecContext")
}

func (s *stmt) Query([]driver.Value) (driver.Rows, error) {
	return nil, errors.New("unified: Stmt.Query is deprecated and not implemented; use QueryContext")
}

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	release, err := s.conn.admit(ctx)
	if err != nil {
		return nil, err
	}
	if release != nil {
		defer release()
	}
	var res driver.Result
	err = s.conn.run(ctx, opExec, s.query, func(pc *physConn) error {
		ps, err := s.on(ctx, pc)
		if err != nil {
			return err
		}
		if e, ok := ps.(driver.StmtExecContext); ok {
			res, err = e.ExecContext(ctx, args)
			return err
		}
		return fmt.Errorf("unified: node statement %T does not implement StmtExecContext", ps)
	})
	return res, err
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	release, err := s.conn.admit(ctx)
	if err != nil {
		return nil, err
	}
	var rows driver.Rows
	err = s.conn.run(ctx, opQuery, s.query, func(pc *physConn) error {
		ps, err := s.on(ctx, pc)
		if err != nil {
			return err
		}
		if q, ok := ps.(driver.StmtQueryContext); ok {
			rows, err = q.QueryContext(ctx, args)
			return err
		}
		return fmt.Errorf("unified: node statement %T does not implement StmtQueryContext", ps)
	})
	return holdUntilClose(rows, err, release)
}
