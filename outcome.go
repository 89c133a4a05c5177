package unified

import (
	"strconv"

	"github.com/unifiedsql/unified/internal/classify"
)

// This file is the rule book of the statement path: from what happened to
// one attempt of an operation (facts) to what the driver does next
// (verdict). It is pure: no I/O, no clock, no driver state; the attempt
// loop (attempt.go) gathers the facts and applies the verdict, and RunTx
// decides with the same function. Invariants 3, 4 and 9 of DESIGN.md §5
// live here, one table row each in outcome_test.go.

// opKind is the kind of an operation, as the rules see it. Its String is
// the Op of a NodeError.
type opKind uint8

const (
	opExec opKind = iota + 1
	opQuery
	opPrepare
	opPing
	opBegin
	opCommit
	opRollback
	opConnect // a dial: only as the Op of a NodeError
	opProbe   // a health probe: only as the Op of a NodeError
	// opTx is a whole transaction, as RunTx runs it: its facts are the
	// error it ended with (sent: a COMMIT that may have reached the
	// server, ErrCommitUnknown), its verdict whether to run it again.
	opTx
)

var opNames = [...]string{
	opExec: "exec", opQuery: "query", opPrepare: "prepare", opPing: "ping", opBegin: "begin",
	opCommit: "commit", opRollback: "rollback", opConnect: "connect", opProbe: "probe", opTx: "transaction",
}

func (k opKind) String() string {
	if int(k) < len(opNames) && opNames[k] != "" {
		return opNames[k]
	}
	return "op(" + strconv.Itoa(int(k)) + ")"
}

// effectFree reports whether a failed operation of this kind leaves
// nothing behind on the server even if it reached it: a BEGIN whose
// connection broke started nothing that survives, a failed PREPARE
// prepared nothing, a ping does nothing.
func (k opKind) effectFree() bool { return k == opBegin || k == opPrepare || k == opPing }

// slot is one of a logical connection's physical connections.
type slot uint8

const (
	// slotPrimary is the user's server session on the primary: writes,
	// the default mode, Batch, Transactional. Once it has served a
	// statement it is never replaced (invariant 9).
	slotPrimary slot = iota
	// slotRead is the driver's read session on a replica: ReadOnly
	// statements. The driver may move it between statements outside a
	// transaction.
	slotRead
	// slotFallback is the driver's read-only session on the primary, for
	// ReadOnly statements no replica may serve (unified_read_fallback, a
	// session floor no replica has replayed). Like slotRead it is the
	// driver's.
	slotFallback
	numSlots
)

// read reports whether the slot is one of the driver's read sessions.
func (s slot) read() bool { return s != slotPrimary }

// String is the unified.role of what the slot's node serves: "replica" for
// slotRead, "primary" otherwise.
func (s slot) String() string {
	if s == slotRead {
		return "replica"
	}
	return "primary"
}

// retryReason says why an operation is sent again; it is the
// unified.retry.reason attribute of the retry counter.
type retryReason uint8

const (
	noRetry retryReason = iota
	// retryNotSent: nothing of the attempt reached the server, and the
	// cause may pass (too many connections).
	retryNotSent
	// retryReadFailover: a read outside a transaction lost its node before
	// any row reached the caller; it runs again on another node.
	retryReadFailover
	// retryFailover: a write found no primary to send to (a failed dial, an
	// open breaker, a session lost before sending on a connection that had
	// served nothing): it waits for the monitor to confirm the primary or
	// publish a new one, within unified_failover_timeout and its context.
	retryFailover
	// retryTransaction: RunTx runs a whole transaction again, which
	// PostgreSQL rolled back for sure. RunTx is outside the driver: the
	// driver's retry counter does not count it.
	retryTransaction
	numRetryReasons
)

var retryNames = [...]string{noRetry: "", retryNotSent: "not_sent", retryReadFailover: "read_failover",
	retryFailover: "failover", retryTransaction: "transaction"}

func (r retryReason) String() string {
	if int(r) < len(retryNames) {
		return retryNames[r]
	}
	return "retry(" + strconv.Itoa(int(r)) + ")"
}

// report is how the caller sees an error the verdict does not retry.
type report uint8

const (
	// reportAsIs returns the node driver's error unchanged: a server error
	// is pgx's own value (invariant 5), a cancellation the caller's.
	reportAsIs report = iota
	// reportNodeError wraps it in a *NodeError naming the node and the
	// operation: the connection failed.
	reportNodeError
	// reportBadConn returns driver.ErrBadConn: nothing of the operation
	// reached the server, or what did had no effect, so database/sql may
	// run it again on another connection (invariant 3).
	reportBadConn
	// reportCommitUnknown wraps it in a *NodeError wrapping ErrCommitUnknown:
	// a COMMIT or an autocommit statement on the primary may have committed
	// (invariant 4).
	reportCommitUnknown
	// reportNoPrimary wraps it with ErrNoPrimary: the operation waited for a
	// primary as long as it may.
	reportNoPrimary
)

// facts is what happened to one attempt of one operation.
type facts struct {
	op    opKind
	slot  slot
	mode  Mode
	inTx  bool           // on a transaction's connection (BEGIN is not in one)
	class classify.Class // of the error, against the caller's context

	// noConn: no connection was reached, so nothing was sent: no primary
	// was published in time, the dial failed, or the node's breaker is
	// open (breakerOpen).
	noConn      bool
	breakerOpen bool
	// sent: the request may have reached the server (pgconn.SafeToRetry and
	// driver.ErrBadConn say it did not).
	sent bool
	// broke: the physical connection is unusable after the call.
	broke bool
	// used: the slot's connection had served a statement before this one,
	// so the session may hold the user's state.
	used bool
	// readOnly: the session cannot write (a read connection).
	readOnly bool
	// busy: the connection was still busy with rows the caller left open
	// (pgx's "conn busy"): the caller's mistake, not the node's.
	busy bool
	// rowsSeen: a row of the result reached the caller.
	rowsSeen bool

	attempt  int // 1 for the first
	retryMax int // unified_retry_max
	// mayWait: the operation may still wait for a new primary. static:
	// there is no health monitor to find one (WithStaticPrimary); a write
	// that found the primary unreachable is retried with backoff instead.
	mayWait bool
	static  bool
}

// verdict is what to do about it.
type verdict struct {
	retry   retryReason
	exclude bool // run the retry on another node than this attempt's
	suspect bool // the primary may be gone: tell the monitor to probe now
	// discard: close the slot's connection. finish: the logical connection
	// is finished, every later call returns driver.ErrBadConn before
	// sending anything (its primary session is gone, invariant 9).
	discard bool
	finish  bool
	report  report
}

// mayHaveWritten reports whether the operation may have committed a write
// if it reached the server: a COMMIT (whatever the transaction's access
// mode: SET TRANSACTION READ WRITE and temporary tables write in "read-only"
// transactions) or a whole transaction ending in one, or an autocommit
// statement on a read-write primary session (INSERT ... RETURNING comes
// through Query).
func (f *facts) mayHaveWritten() bool {
	if f.op == opCommit || f.op == opTx {
		return true
	}
	return !f.inTx && f.slot == slotPrimary && !f.readOnly && (f.op == opExec || f.op == opQuery)
}

// decide is the rule book. The order of the checks is the order of
// precedence.
func decide(f facts) verdict {
	var v verdict
	if f.class == classify.None || f.busy {
		return v // done; or the caller's open rows: only this statement fails
	}
	gone := f.broke || f.class == classify.Connection || f.class == classify.AdminShutdown

	// The connection. A primary session that may hold the user's state is
	// never replaced: losing it finishes the logical connection. One that
	// has served nothing, and of which nothing with an effect reached the
	// server, may be dialed again. (A whole transaction has no connection
	// of its own: its statements' verdicts saw to theirs.)
	if gone && !f.noConn && f.op != opTx {
		v.discard = true
		if f.slot == slotPrimary && (f.used || (f.sent && !f.op.effectFree())) {
			v.finish = true
		}
	}
	if f.op == opPing && !f.noConn {
		// pgx: a failed ping is a fatal state; database/sql discards the
		// connection and a sql.Conn is done, whatever the session held.
		v.discard, v.finish, v.report = true, f.slot == slotPrimary, reportBadConn
		return v
	}
	if f.slot == slotPrimary && f.op != opTx && (f.class.LostPrimary() || f.breakerOpen) {
		v.suspect = true
	}

	switch {
	case f.mayHaveWritten() && f.sent && gone:
		// Invariant 4: it may have committed; it is never sent again.
		v.report = reportCommitUnknown
	case f.class == classify.Canceled:
		// The caller's own deadline: never again, and pgx's error as it is.
	case f.class == classify.Auth:
		// A configuration error: never again.
		v.report = reportFor(f, gone)
	case f.op == opTx:
		txVerdict(f, gone, &v)
	case f.slot.read() && !f.inTx:
		readVerdict(f, gone, &v)
	case f.inTx:
		// No retry, no re-routing inside a transaction (invariant 2).
		v.report = reportFor(f, gone)
	default:
		primaryVerdict(f, gone, &v)
	}
	return v
}

// txVerdict: RunTx runs a whole transaction again when PostgreSQL rolled
// it back for sure: a serialization failure or a deadlock, or a connection
// lost before COMMIT was sent (one that may have been sent is
// ErrCommitUnknown, above, and never runs again whatever its class). Its
// error is returned as it is.
func txVerdict(f facts, gone bool, v *verdict) {
	if !f.sent && (f.class.RetryTx() || gone) && f.attempt < f.retryMax {
		v.retry = retryTransaction
	}
}

// readVerdict: a read outside a transaction is re-run on another node
// after its node failed it, as long as no row reached the caller.
func readVerdict(f facts, gone bool, v *verdict) {
	nodeFailed := gone || f.noConn || f.breakerOpen || f.class == classify.TooManyConnections
	if nodeFailed && !f.rowsSeen && f.attempt < f.retryMax {
		v.retry, v.exclude = retryReadFailover, true
		return
	}
	v.report = reportFor(f, gone)
}

// primaryVerdict: an operation on the primary session, outside a
// transaction (BEGIN included).
func primaryVerdict(f facts, gone bool, v *verdict) {
	// Nothing with an effect reached the server.
	clean := f.noConn || !f.sent || (gone && f.op.effectFree())
	switch {
	case !clean:
		v.report = reportFor(f, gone)
	case f.used && !f.noConn:
		// The user's session is gone before anything was sent on it:
		// database/sql moves a pooled call to another connection; a
		// sql.Conn or Tx caller gets the error, as with pgx.
		v.report = reportBadConn
	case f.class == classify.TooManyConnections:
		if f.attempt < f.retryMax && f.mode != Batch {
			v.retry = retryNotSent
			return
		}
		v.report = reportNodeError
	case gone || f.breakerOpen:
		// The primary is unreachable: wait for it, or for the new one.
		if f.mode == Batch {
			v.report = reportNodeError // bulk jobs own their retries
			return
		}
		switch {
		case f.static && f.attempt < f.retryMax:
			v.retry = retryNotSent
		case f.static:
			v.report = reportNodeError
		case f.mayWait:
			v.retry = retryFailover
		default:
			v.report = reportNoPrimary
		}
	default:
		v.report = reportFor(f, gone)
	}
}

// reportFor is the plain report: the driver's own failure (a connection,
// a dial) as a NodeError, anything the server said as it is.
func reportFor(f facts, gone bool) report {
	if gone || f.noConn {
		return reportNodeError
	}
	return reportAsIs
}
