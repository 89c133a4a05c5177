package unified

import (
	"context"
	"database/sql/driver"
	"errors"

	"github.com/jackc/pgx/v5/stdlib"
)

// Conn is a logical connection: what database/sql pools. It holds at most
// two physical connections, each opened on first need:
//
//   - the primary session, for statements without a mode and in the
//     ReadWrite, Batch and Transactional modes. It is the user's server
//     session, as with pgx stdlib: once it has served a statement it is
//     never replaced (session state, temporary tables, advisory locks,
//     LISTEN). When it is lost, or its node is no longer the primary, the
//     Conn is finished: every later call returns driver.ErrBadConn before
//     sending anything, and ResetSession and IsValid report it, so
//     database/sql discards it and moves pooled calls to another Conn.
//   - the read session, for ReadOnly statements: on an eligible replica,
//     or read-only on the primary when reads fall back to it. It is the
//     driver's: outside a transaction it may move to another node between
//     statements, so session state set in ReadOnly mode is not kept.
//
// A transaction stays on the physical connection it began on until Commit
// or Rollback, whatever its statements' contexts say.
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
	phys [numSlots]*physConn // by slot
	tx   *tx                 // the open transaction (&txState), nil outside one
	// txState and rowsBuf hold the open transaction and rows, so that
	// BeginTx and a query allocate nothing of their own.
	txState tx
	rowsBuf [numSlots]rows

	closed        bool
	finished      bool // the primary session is gone: see Conn
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

// mode is the statement's mode: the context's, else the default.
func (c *Conn) mode(ctx context.Context) Mode {
	m, _ := c.route(ctx)
	return m
}

// route reads the context's hints once: the statement's mode (the
// context's, else the default), and what a read asks of its replica.
func (c *Conn) route(ctx context.Context) (Mode, readWant) {
	h := hintsFrom(ctx)
	m := h.mode
	if !m.valid() {
		m = c.c.cfg.DefaultMode
	}
	w := readWant{maxLag: h.maxLag, lagSet: h.lagSet, sess: h.session}
	if h.session != nil && slotFor(m).read() {
		w.floor = h.session.get() // only a read compares it (a lock: not for writes)
	}
	return m, w
}

func (c *Conn) drop(s slot) {
	if pc := c.phys[s]; pc != nil {
		pc.close()
		c.phys[s] = nil
	}
}

// do runs one operation: on the transaction's connection inside one, else
// on the slot its mode routes to, with the rules of outcome.go. It is the
// one entry of Exec, Query, Prepare and Ping, for Conn and stmt alike.
func (c *Conn) do(ctx context.Context, op opKind, query string, fn func(*physConn) error) (*physConn, error) {
	m, w := c.route(ctx)
	return c.doRouted(ctx, op, query, m, w, fn)
}

// doRouted is do for a caller that has read the context's hints already.
func (c *Conn) doRouted(ctx context.Context, op opKind, query string, m Mode, w readWant, fn func(*physConn) error) (*physConn, error) {
	rec := c.c.tel.begin(ctx, op, query, m)
	a := attempt{rec: &rec, want: w}
	var (
		pc  *physConn
		err error
		sl  = slotFor(m)
	)
	switch {
	case c.tx != nil:
		pc, err = c.onTx(ctx, op, m, &rec, fn)
		sl = c.tx.pc.slot
	case m == Transactional && (op == opExec || op == opQuery):
		err = ErrNotInTransaction
	default:
		pc, err = c.run(ctx, op, m, sl, &a, fn)
	}
	var n *node
	if pc != nil {
		n, sl = pc.node, pc.slot
	}
	if err == nil && op == opExec && w.sess != nil && sl == slotPrimary && c.tx == nil {
		c.capture(ctx, pc, w.sess) // an autocommit statement committed: raise the floor
	}
	rec.end(ctx, n, sl, err)
	return pc, err
}

// onTx runs fn on the transaction's connection: no retry, no re-routing
// (invariant 2). A statement inside a transaction commits nothing, so its
// failure is never "outcome unknown"; only COMMIT can be.
func (c *Conn) onTx(ctx context.Context, op opKind, m Mode, rec *opRecord, fn func(*physConn) error) (*physConn, error) {
	pc := c.tx.pc
	busy := pc.busy()
	err := c.call(pc, rec, op, fn)
	if err == nil || errors.Is(err, driver.ErrSkip) {
		return pc, err
	}
	return pc, c.failedInTx(ctx, op, m, pc, busy, err)
}

// failedInTx decides a failure of op on the transaction's connection pc
// (busy: with open rows when op was sent), applies the verdict and returns
// the caller's error: a statement, or the COMMIT or ROLLBACK itself.
func (c *Conn) failedInTx(ctx context.Context, op opKind, m Mode, pc *physConn, busy bool, err error) error {
	f := facts{op: op, slot: pc.slot, mode: m, inTx: true, used: true, readOnly: pc.readOnly, busy: busy,
		class: classOf(ctx, err), sent: sentOf(err), broke: pc.broken()}
	if pc.prepFailed {
		f.op = opPrepare // a statement's lazy preparation failed: nothing ran
	}
	v := decide(f)
	c.apply(ctx, v, f, pc, pc.node, err)
	return c.shape(v.report, f, pc.node, err)
}

// ExecContext runs query on the node its mode routes to (on the
// transaction's connection inside one).
func (c *Conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.exec(ctx, query, func(pc *physConn) (driver.Result, error) { return pc.exec(ctx, query, args) })
}

func (c *Conn) exec(ctx context.Context, query string, run func(*physConn) (driver.Result, error)) (driver.Result, error) {
	m, w := c.route(ctx)
	release, err := c.admit(ctx, m)
	if err != nil {
		return nil, err
	}
	if release != nil {
		defer release()
	}
	var res driver.Result
	_, err = c.doRouted(ctx, opExec, query, m, w, func(pc *physConn) (err error) {
		res, err = run(pc)
		return err
	})
	return res, err
}

// QueryContext runs query like ExecContext. The rows are pgx's own inside a
// transaction; outside one they are watched (see rows) and keep every
// column-type interface pgx offers.
func (c *Conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return c.query(ctx, query, args, nil)
}

// query runs a query, through st when it is a prepared statement's.
func (c *Conn) query(ctx context.Context, query string, args []driver.NamedValue, st *stmt) (driver.Rows, error) {
	m, w := c.route(ctx)
	release, err := c.admit(ctx, m)
	if err != nil {
		return nil, err
	}
	defer func() {
		if release != nil {
			release() // not handed to the rows: an error, or a panic in the node driver
		}
	}()
	var dr driver.Rows
	pc, err := c.doRouted(ctx, opQuery, query, m, w, func(pc *physConn) (err error) {
		dr, err = c.queryOn(ctx, pc, query, args, st)
		return err
	})
	if err != nil {
		return nil, err
	}
	if c.tx != nil {
		return dr, nil // nothing to watch: returned as pgx made them
	}
	r := c.newRows(pc)
	*r = rows{Rows: dr, c: c, pc: pc, ctx: ctx, query: query, args: args, st: st, release: release, want: w, tries: 1, inUse: true}
	if pc.slot == slotPrimary && c.tx == nil {
		r.sess = w.sess // an autocommit query may be a write: its floor is read at Close
	}
	pc.active.Add(1) // until Close
	release = nil
	return r, nil
}

// queryOn runs the query on pc, through st's statement prepared there when
// st is set.
func (c *Conn) queryOn(ctx context.Context, pc *physConn, query string, args []driver.NamedValue, st *stmt) (driver.Rows, error) {
	if st == nil {
		return pc.query(ctx, query, args)
	}
	q, err := onAs[driver.StmtQueryContext](ctx, st, pc)
	if err != nil {
		return nil, err
	}
	return q.QueryContext(ctx, args)
}

// admit takes a Batch bulkhead token for a statement outside a transaction
// (a Batch transaction holds one from BeginTx to its end).
func (c *Conn) admit(ctx context.Context, m Mode) (func(), error) {
	if c.tx != nil || c.c.batch == nil {
		return nil, nil
	}
	return c.c.admitBatch(ctx, m)
}

// PrepareContext prepares query on the connection the context routes to, so
// a syntax error shows at Prepare as with pgx; executions with another mode
// prepare again, lazily, on their own connection.
func (c *Conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	var first driver.Stmt
	pc, err := c.do(ctx, opPrepare, query, func(pc *physConn) (err error) {
		first, err = pc.prepare(ctx, query)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &stmt{conn: c, query: query, numInput: first.NumInput(), prepared: []preparedOn{{pc: pc, st: first}}}, nil
}

// Prepare is PrepareContext with a background context.
func (c *Conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// BeginTx begins a transaction on the session the context's mode routes to:
// the primary session, or a replica in ReadOnly mode (from the context or
// unified_default_mode). opts.ReadOnly without a mode is a read-only
// transaction on the primary session, exactly as with pgx. Every statement
// of the transaction runs on that physical connection until Commit or
// Rollback, whatever its own context says.
func (c *Conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if c.tx != nil {
		return nil, errors.New("unified: a transaction is already open on this connection")
	}
	m, w := c.route(ctx)
	release, err := c.c.admitBatch(ctx, m)
	if err != nil {
		return nil, err
	}
	defer func() {
		if release != nil {
			release()
		}
	}()
	var inner driver.Tx
	pc, err := c.doRouted(ctx, opBegin, "BEGIN", m, w, func(pc *physConn) (err error) {
		inner, err = pc.begin(ctx, opts)
		return err
	})
	if err != nil {
		return nil, err
	}
	// The transaction lives in the Conn (one at a time): no allocation.
	c.txState = tx{c: c, pc: pc, inner: inner, mode: m, release: release, parent: c.c.tel.spanParent(ctx)}
	if w.sess != nil && pc.slot == slotPrimary {
		c.txState.sess, c.txState.ctx = w.sess, ctx // its COMMIT raises the floor
	}
	release = nil
	c.tx = &c.txState
	c.c.tel.connCount(pc.node, 0, 1)
	pc.active.Add(1) // until the transaction ends
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
	_, err := c.do(ctx, opPing, "", func(pc *physConn) error { return pc.ping(ctx) })
	return err
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
// reused. A primary session that is lost, left inside a transaction (pgx's
// rule), or whose node is no longer the primary (another is, or it is down
// while none is: a failover; it is not pinged with the next caller's
// context then) finishes the Conn: it
// returns driver.ErrBadConn and database/sql discards it. A read session the
// topology no longer allows is closed, and so is a fallback session on the
// primary that has sat idle for two health intervals while a replica is
// eligible; the next read opens another.
func (c *Conn) ResetSession(ctx context.Context) error {
	if c.closed || c.finished {
		return driver.ErrBadConn
	}
	v := c.c.viewNow()
	if pc := c.phys[slotPrimary]; pc != nil {
		primary := v.primary()
		ok := pc.fit() && (primary == pc.node || primary == nil && !v.down(pc.node)) && pc.reset(ctx) == nil
		switch {
		case !ok && pc.used:
			return c.finish()
		case !ok:
			c.drop(slotPrimary)
		}
	}
	for _, sl := range [...]slot{slotRead, slotFallback} {
		if pc := c.phys[sl]; pc != nil && (!pc.fit() || c.c.readStale(pc, v) || c.c.idleFallback(pc, v) || pc.reset(ctx) != nil) {
			c.drop(sl)
		}
	}
	return nil
}

// IsValid is called by database/sql before a connection goes back to the
// pool: false once the Conn is finished or closed. It does no I/O.
func (c *Conn) IsValid() bool { return !c.closed && !c.finished }

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
	for sl := range numSlots {
		c.drop(sl)
	}
	if c.ownsConnector {
		return c.c.Close()
	}
	return nil
}

// StdlibConn returns the pgx stdlib connection that serves mode m on this
// logical connection, opening it if needed (ReadOnly: the read connection;
// any other mode: the primary session). Inside a transaction it returns
// the transaction's connection. Use it from (*sql.Conn).Raw for pgx-only
// features such as CopyFrom; the connection stays owned by the logical one,
// and a primary session handed out this way is the user's (it is never
// replaced). It fails for a node served by a WithNodeConnector connector
// that is not pgx.
func (c *Conn) StdlibConn(ctx context.Context, m Mode) (*stdlib.Conn, error) {
	pc, err := c.physical(ctx, m)
	if err != nil {
		return nil, err
	}
	if pc.sc == nil {
		return nil, &NodeError{Node: pc.node.name, Op: "raw", Err: errNotPgx}
	}
	return pc.sc, nil
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
	a := attempt{rec: &opRecord{}}
	pc, err := c.physFor(ctx, slotFor(m), nil, &a)
	if err != nil {
		return nil, err
	}
	pc.used = true
	return pc, nil
}

// tx is a transaction pinned to one physical connection.
type tx struct {
	c       *Conn
	pc      *physConn
	inner   driver.Tx
	mode    Mode   // the mode BeginTx ran in, for telemetry
	release func() // gives back a Batch bulkhead token; nil without one
	// parent carries BeginTx's span to COMMIT/ROLLBACK (database/sql gives
	// them no context); context.Background() when tracing is off.
	parent context.Context
	// sess is the session of a transaction on the primary begun with one,
	// whose COMMIT raises its floor, within ctx (BeginTx's, as pgx uses
	// it for COMMIT).
	sess *Session
	ctx  context.Context
}

// end detaches the transaction from its connection.
func (t *tx) end() {
	t.c.c.tel.connCount(t.pc.node, 0, -1)
	t.pc.active.Add(-1)
	t.c.tx = nil
	if t.release != nil {
		t.release()
		t.release = nil
	}
}

// Commit commits. When the connection breaks after COMMIT was sent, the
// error wraps ErrCommitUnknown, whatever the transaction's access mode.
// COMMIT is never sent again.
func (t *tx) Commit() error {
	if t.sess != nil {
		c, pc, inner, sess, ctx := t.c, t.pc, t.inner, t.sess, t.ctx
		return t.finish(opCommit, func() error { return c.commitWithFloor(ctx, pc, inner, sess) })
	}
	return t.finish(opCommit, t.inner.Commit)
}

// Rollback rolls back.
func (t *tx) Rollback() error { return t.finish(opRollback, t.inner.Rollback) }

func (t *tx) finish(op opKind, do func() error) error {
	ctx, c, pc := t.parent, t.c, t.pc
	rec := c.c.tel.begin(ctx, op, "", t.mode)
	busy := pc.busy()
	// The connection stays in use until COMMIT returns (a drain does not
	// close it under the COMMIT; a stall is seen: see node.stalled).
	err := c.call(pc, &rec, op, func(*physConn) error { return do() })
	t.end()
	if err != nil {
		err = c.failedInTx(ctx, op, t.mode, pc, busy, err)
	}
	rec.end(ctx, pc.node, pc.slot, err)
	return err
}
