// Package benchdriver is an in-memory database/sql driver that does no I/O
// and next to no work: every statement succeeds, every query returns one
// row of one int64. It is the baseline for measuring what a wrapping driver
// (unified) adds per statement: the same statement through the driver
// alone and through the wrapper differ only by the wrapper's code.
//
// Its Conn implements the optional interfaces pgx stdlib's Conn does
// (ExecerContext, QueryerContext, ConnPrepareContext, ConnBeginTx, Pinger,
// SessionResetter, NamedValueChecker), so database/sql takes the same
// paths as with pgx. Like pgx, CheckNamedValue accepts every argument.
//
// A Connector, and the Driver it returns, are safe for concurrent use; a
// Conn, like every driver.Conn, is used by one goroutine at a time.
package benchdriver

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"sync/atomic"
)

// Connector makes in-memory connections. The zero value is ready to use.
type Connector struct {
	conns atomic.Int64
}

var _ driver.Connector = (*Connector)(nil)

// Connect returns a new connection; it never fails.
func (c *Connector) Connect(context.Context) (driver.Conn, error) {
	c.conns.Add(1)
	return &Conn{}, nil
}

// Driver returns a Driver whose Open makes connections like Connect.
func (c *Connector) Driver() driver.Driver { return Driver{c: c} }

// Conns reports how many connections Connect has made, so a benchmark can
// check which connector (which node) served it.
func (c *Connector) Conns() int64 { return c.conns.Load() }

// Driver opens in-memory connections; the name is ignored.
type Driver struct{ c *Connector }

// Open returns a new connection; it never fails.
func (d Driver) Open(string) (driver.Conn, error) {
	if d.c != nil {
		return d.c.Connect(context.Background())
	}
	return &Conn{}, nil
}

// Conn is one in-memory connection.
type Conn struct {
	inTx   bool
	closed bool
}

var (
	_ driver.Conn               = (*Conn)(nil)
	_ driver.ConnPrepareContext = (*Conn)(nil)
	_ driver.ConnBeginTx        = (*Conn)(nil)
	_ driver.ExecerContext      = (*Conn)(nil)
	_ driver.QueryerContext     = (*Conn)(nil)
	_ driver.Pinger             = (*Conn)(nil)
	_ driver.NamedValueChecker  = (*Conn)(nil)
	_ driver.SessionResetter    = (*Conn)(nil)
)

// errClosed is returned by every method of a closed connection.
var errClosed = errors.New("benchdriver: connection is closed")

// result is every Exec's result: one row affected. It is a package
// variable so that returning it does not allocate.
var result driver.Result = driver.RowsAffected(1)

// Prepare is PrepareContext with a background context.
func (c *Conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// PrepareContext returns a statement that, like the connection, always
// succeeds.
func (c *Conn) PrepareContext(context.Context, string) (driver.Stmt, error) {
	if c.closed {
		return nil, errClosed
	}
	return &Stmt{c: c}, nil
}

// Begin is BeginTx with default options.
func (c *Conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

// BeginTx starts a transaction; a second one before the first ends is an
// error, as with a real server connection.
func (c *Conn) BeginTx(context.Context, driver.TxOptions) (driver.Tx, error) {
	if c.closed {
		return nil, errClosed
	}
	if c.inTx {
		return nil, errors.New("benchdriver: transaction already open")
	}
	c.inTx = true
	return tx{c: c}, nil
}

// ExecContext reports one row affected.
func (c *Conn) ExecContext(context.Context, string, []driver.NamedValue) (driver.Result, error) {
	if c.closed {
		return nil, errClosed
	}
	return result, nil
}

// QueryContext returns one row of one int64 column.
func (c *Conn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	if c.closed {
		return nil, errClosed
	}
	return &Rows{}, nil
}

// Ping succeeds on an open connection.
func (c *Conn) Ping(context.Context) error {
	if c.closed {
		return driver.ErrBadConn
	}
	return nil
}

// ResetSession succeeds on an open connection.
func (c *Conn) ResetSession(context.Context) error {
	if c.closed {
		return driver.ErrBadConn
	}
	return nil
}

// CheckNamedValue accepts every argument unconverted, as pgx stdlib does.
func (c *Conn) CheckNamedValue(*driver.NamedValue) error { return nil }

// Close closes the connection.
func (c *Conn) Close() error {
	c.closed = true
	return nil
}

// tx is pointer-shaped, so returning it as a driver.Tx does not allocate.
type tx struct{ c *Conn }

func (t tx) Commit() error   { t.c.inTx = false; return nil }
func (t tx) Rollback() error { t.c.inTx = false; return nil }

// Stmt is a prepared statement on a Conn.
type Stmt struct{ c *Conn }

var (
	_ driver.Stmt             = (*Stmt)(nil)
	_ driver.StmtExecContext  = (*Stmt)(nil)
	_ driver.StmtQueryContext = (*Stmt)(nil)
)

// Close does nothing.
func (s *Stmt) Close() error { return nil }

// NumInput returns -1: database/sql does not check the argument count.
func (s *Stmt) NumInput() int { return -1 }

// Exec is the deprecated form of ExecContext.
func (s *Stmt) Exec([]driver.Value) (driver.Result, error) {
	return s.c.ExecContext(context.Background(), "", nil)
}

// Query is the deprecated form of QueryContext.
func (s *Stmt) Query([]driver.Value) (driver.Rows, error) {
	return s.c.QueryContext(context.Background(), "", nil)
}

// ExecContext runs the statement like Conn.ExecContext.
func (s *Stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.c.ExecContext(ctx, "", args)
}

// QueryContext runs the statement like Conn.QueryContext.
func (s *Stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.c.QueryContext(ctx, "", args)
}

// Rows is one row of one int64 column named "v".
type Rows struct{ done bool }

var columns = []string{"v"}

// Columns returns ["v"].
func (r *Rows) Columns() []string { return columns }

// Close does nothing.
func (r *Rows) Close() error { return nil }

// Next fills dest with the single row, then reports io.EOF.
func (r *Rows) Next(dest []driver.Value) error {
	if r.done {
		return io.EOF
	}
	r.done = true
	dest[0] = int64(1) // small integers convert to an interface without allocating
	return nil
}
