package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"reflect"
)

// rows are a node's rows watched by the driver, outside a transaction
// (inside one they are pgx's own):
//
//   - on the primary session, an autocommit query may be a write (INSERT
//     ... RETURNING): an error from Next or Close after its connection
//     broke wraps ErrCommitUnknown (invariant 4);
//   - on the read session, a read whose node failed it before any row
//     reached the caller runs again on another node, as a failed read
//     does at QueryContext;
//   - a Batch token is given back at Close.
//
// Every column-type interface pgx's rows implement is forwarded (the parity
// test checks the list), so ColumnTypes work as on pgx's own rows.
type rows struct {
	driver.Rows
	c     *Conn
	pc    *physConn
	ctx   context.Context
	query string
	args  []driver.NamedValue
	st    *stmt // the prepared statement, when run through one
	// release gives back a Batch bulkhead token; nil without one.
	release func()
	want    readWant // what the read asked of its replica: a read run again asks it again
	tries   int      // attempts made so far, run again included (unified_retry_max)
	sess    *Session // the session of an autocommit query on the primary: its floor is read at Close
	seen    bool     // a row reached the caller
	err     error    // the error Next returned, returned by Close again
	inUse   bool     // this value of Conn.rowsBuf is taken
}

var (
	_ driver.Rows                           = (*rows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*rows)(nil)
	_ driver.RowsColumnTypeLength           = (*rows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*rows)(nil)
	_ driver.RowsColumnTypeScanType         = (*rows)(nil)
)

// newRows returns the rows value for a query on pc: the Conn's own for pc's
// slot when it is free (no allocation), else a new one (the caller keeps
// rows of an earlier query open on a sql.Conn).
func (c *Conn) newRows(pc *physConn) *rows {
	if r := &c.rowsBuf[pc.slot]; !r.inUse {
		return r
	}
	return &rows{}
}

func (r *rows) Next(dest []driver.Value) error {
	for {
		err := r.Rows.Next(dest)
		if err == nil {
			r.seen = true
			return nil
		}
		if errors.Is(err, io.EOF) {
			return err
		}
		if rerun, ferr := r.failed(err); !rerun {
			r.err = ferr
			return ferr
		}
	}
}

// failed applies the rules of outcome.go to an error of Next or Close. It
// reports whether the read was run again (r.Rows are then the new node's).
func (r *rows) failed(err error) (rerun bool, _ error) {
	c, pc := r.c, r.pc
	f := facts{op: opQuery, slot: pc.slot, mode: c.mode(r.ctx), used: true, readOnly: pc.readOnly,
		rowsSeen: r.seen, attempt: r.tries, retryMax: c.c.cfg.RetryMax,
		class: classOf(r.ctx, err), sent: true, broke: pc.broken()}
	v := decide(f)
	c.apply(r.ctx, v, f, pc, pc.node, err)
	if v.retry == retryReadFailover && !c.closed {
		if next, npc, rerr := c.rerun(r, pc.node); rerr == nil {
			_ = r.Rows.Close()
			r.pc.active.Add(-1)
			npc.active.Add(1)
			r.Rows, r.pc = next, npc
			return true, nil
		}
	}
	return false, c.shape(v.report, f, pc.node, err)
}

// rerun runs r's read again on another node than exclude, through the
// same loop as every statement (run): the session's floor and lag bound of
// the first try, the attempts r made so far counted against
// unified_retry_max.
func (c *Conn) rerun(r *rows, exclude *node) (driver.Rows, *physConn, error) {
	rec := c.c.tel.begin(r.ctx, opQuery, r.query, ReadOnly)
	rec.retry(retryReadFailover)
	a := attempt{rec: &rec, want: r.want, exclude: exclude, tries: r.tries}
	var dr driver.Rows
	pc, err := c.run(r.ctx, opQuery, ReadOnly, slotRead, &a, func(pc *physConn) (err error) {
		dr, err = c.queryOn(r.ctx, pc, r.query, r.args, r.st)
		return err
	})
	r.tries = a.tries
	var n *node
	sl := slotRead
	if pc != nil {
		n, sl = pc.node, pc.slot
	}
	rec.end(r.ctx, n, sl, err)
	return dr, pc, err
}

func (r *rows) Close() error {
	err := r.Rows.Close()
	switch {
	case err == nil:
	case r.err != nil:
		err = r.err // decided once, in Next
	case !r.c.closed:
		_, err = r.failed(err)
	}
	if err == nil && r.sess != nil && r.err == nil && !r.pc.broken() {
		r.c.capture(r.ctx, r.pc, r.sess) // the statement committed when its rows ended
	}
	if r.release != nil {
		r.release()
	}
	r.pc.active.Add(-1)
	*r = rows{} // frees the Conn's value; drops the references
	return err
}

func (r *rows) ColumnTypeDatabaseTypeName(i int) string {
	if x, ok := r.Rows.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return x.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (r *rows) ColumnTypeLength(i int) (int64, bool) {
	if x, ok := r.Rows.(driver.RowsColumnTypeLength); ok {
		return x.ColumnTypeLength(i)
	}
	return 0, false
}

func (r *rows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	if x, ok := r.Rows.(driver.RowsColumnTypePrecisionScale); ok {
		return x.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

func (r *rows) ColumnTypeScanType(i int) reflect.Type {
	if x, ok := r.Rows.(driver.RowsColumnTypeScanType); ok {
		return x.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}
