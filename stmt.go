package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
)

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

// onAs is s.on as the context method the call needs (I is
// driver.StmtExecContext or driver.StmtQueryContext): pgx's statements
// have both.
func onAs[I any](ctx context.Context, s *stmt, pc *physConn) (I, error) {
	var zero I
	ps, err := s.on(ctx, pc)
	if err != nil {
		return zero, err
	}
	i, ok := ps.(I)
	if !ok {
		return zero, fmt.Errorf("unified: node statement %T does not implement the context methods", ps)
	}
	return i, nil
}

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
		return nil, prepareError{err}
	}
	s.prepared = append(s.prepared, preparedOn{pc: pc, st: ps})
	return ps, nil
}

// prepareError is an error of the preparation an execution makes first on
// a connection the statement was not prepared on (on): what was sent is a
// PREPARE, which writes nothing, so the attempt loop decides it as one
// (Conn.call takes the mark off; the caller gets the driver's error).
type prepareError struct{ err error }

func (e prepareError) Error() string { return e.err.Error() }
func (e prepareError) Unwrap() error { return e.err }

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
	return s.conn.exec(ctx, s.query, func(pc *physConn) (driver.Result, error) {
		e, err := onAs[driver.StmtExecContext](ctx, s, pc)
		if err != nil {
			return nil, err
		}
		return e.ExecContext(ctx, args)
	})
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.conn.query(ctx, s.query, args, s)
}
