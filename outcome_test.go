package unified

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/unifiedsql/unified/internal/classify"
)

// TestOutcome is the rule book of outcome.go as a table: invariants 3
// (nothing that may have executed is sent again; driver.ErrBadConn only
// when nothing did), 4 (a COMMIT or autocommit write whose connection broke
// after it was sent is ErrCommitUnknown) and 9 (a used primary session is
// never replaced) without PostgreSQL. Each row names the case.
func TestOutcome(t *testing.T) {
	const conn, shutdown = classify.Connection, classify.AdminShutdown
	// Fact templates: an autocommit write on a used primary session, a
	// read outside a transaction, a statement inside a transaction.
	write := facts{op: opExec, slot: slotPrimary, mode: ReadWrite, used: true, attempt: 1, retryMax: 3, mayWait: true}
	read := facts{op: opQuery, slot: slotRead, mode: ReadOnly, used: true, readOnly: true, attempt: 1, retryMax: 3, mayWait: true}
	inTx := facts{op: opExec, slot: slotPrimary, mode: ReadWrite, inTx: true, used: true, attempt: 1, retryMax: 3, mayWait: true}
	// A whole transaction as RunTx sees it: sent and broke say the COMMIT
	// may have reached the server (ErrCommitUnknown).
	wholeTx := facts{op: opTx, attempt: 1, retryMax: 3}
	with := func(f facts, edit func(*facts)) facts { edit(&f); return f }

	cases := []struct {
		name string
		f    facts
		want verdict
	}{
		{"success", write, verdict{}},
		{"conn busy: only the statement fails, the connection lives",
			with(inTx, func(f *facts) { f.class, f.busy = classify.Connection, true }), verdict{}},

		// Invariant 4.
		{"autocommit write broke after it was sent: commit unknown, never again",
			with(write, func(f *facts) { f.class, f.sent, f.broke = conn, true, true }),
			verdict{suspect: true, discard: true, finish: true, report: reportCommitUnknown}},
		{"INSERT ... RETURNING (a query) broke after it was sent: commit unknown",
			with(write, func(f *facts) { f.op, f.class, f.sent, f.broke = opQuery, conn, true, true }),
			verdict{suspect: true, discard: true, finish: true, report: reportCommitUnknown}},
		{"autocommit write answered 57P01 (sync rep wait cut short): commit unknown",
			with(write, func(f *facts) { f.class, f.sent = shutdown, true }),
			verdict{suspect: true, discard: true, finish: true, report: reportCommitUnknown}},
		{"COMMIT broke after it was sent: commit unknown",
			with(inTx, func(f *facts) { f.op, f.class, f.sent, f.broke = opCommit, conn, true, true }),
			verdict{suspect: true, discard: true, finish: true, report: reportCommitUnknown}},
		{"COMMIT of a read-only transaction broke: still commit unknown",
			with(inTx, func(f *facts) {
				f.op, f.slot, f.readOnly, f.class, f.sent, f.broke = opCommit, slotRead, true, conn, true, true
			}),
			verdict{discard: true, report: reportCommitUnknown}},
		{"COMMIT on a connection lost before it was sent: a plain error (rolled back)",
			with(inTx, func(f *facts) { f.op, f.class, f.broke = opCommit, conn, true }),
			verdict{suspect: true, discard: true, finish: true, report: reportNodeError}},
		{"the caller canceled a write that was sent and the connection closed: commit unknown",
			with(write, func(f *facts) { f.class, f.sent, f.broke = classify.Canceled, true, true }),
			verdict{discard: true, finish: true, report: reportCommitUnknown}},

		// Invariants 3 and 9 on the primary session.
		{"used session lost before sending: ErrBadConn, the logical connection is finished",
			with(write, func(f *facts) { f.class, f.broke = conn, true }),
			verdict{suspect: true, discard: true, finish: true, report: reportBadConn}},
		{"unused session lost before sending: wait for the primary and send",
			with(write, func(f *facts) { f.used, f.class, f.broke = false, conn, true }),
			verdict{retry: retryFailover, suspect: true, discard: true}},
		{"dial failed: wait for the primary and send",
			with(write, func(f *facts) { f.used, f.noConn, f.class = false, true, conn }),
			verdict{retry: retryFailover, suspect: true}},
		{"dial failed, the wait for a primary is over: ErrNoPrimary",
			with(write, func(f *facts) { f.used, f.noConn, f.class, f.mayWait = false, true, conn, false }),
			verdict{suspect: true, report: reportNoPrimary}},
		{"dial failed in Batch mode: no retry",
			with(write, func(f *facts) { f.mode, f.used, f.noConn, f.class = Batch, false, true, conn }),
			verdict{suspect: true, report: reportNodeError}},
		{"dial failed with static roles: backoff and again",
			with(write, func(f *facts) { f.used, f.noConn, f.class, f.static, f.mayWait = false, true, conn, true, false }),
			verdict{retry: retryNotSent, suspect: true}},
		{"dial failed with static roles, attempts spent",
			with(write, func(f *facts) {
				f.used, f.noConn, f.class, f.static, f.mayWait, f.attempt = false, true, conn, true, false, 3
			}),
			verdict{suspect: true, report: reportNodeError}},
		{"primary's breaker open: wait for it or for a new primary",
			with(write, func(f *facts) { f.used, f.noConn, f.breakerOpen, f.class = false, true, true, classify.Other }),
			verdict{retry: retryFailover, suspect: true}},
		{"too many connections at dial: backoff and again",
			with(write, func(f *facts) { f.used, f.noConn, f.class = false, true, classify.TooManyConnections }),
			verdict{retry: retryNotSent}},
		{"too many connections at dial, attempts spent",
			with(write, func(f *facts) { f.used, f.noConn, f.class, f.attempt = false, true, classify.TooManyConnections, 3 }),
			verdict{report: reportNodeError}},
		{"authentication failed: never again",
			with(write, func(f *facts) { f.used, f.noConn, f.class = false, true, classify.Auth }),
			verdict{report: reportNodeError}},
		{"BEGIN broke on an unused session: no effect, wait and send again",
			with(write, func(f *facts) { f.op, f.used, f.class, f.sent, f.broke = opBegin, false, conn, true, true }),
			verdict{retry: retryFailover, suspect: true, discard: true}},
		{"BEGIN answered 57P01 on a used session: ErrBadConn, database/sql moves it",
			with(write, func(f *facts) { f.op, f.class, f.sent = opBegin, shutdown, true }),
			verdict{suspect: true, discard: true, finish: true, report: reportBadConn}},
		{"ping failed: ErrBadConn and the session is done, as pgx",
			with(write, func(f *facts) { f.op, f.used, f.class, f.sent, f.broke = opPing, false, conn, true, true }),
			verdict{discard: true, finish: true, report: reportBadConn}},
		{"ping could not dial: wait for the primary",
			with(write, func(f *facts) { f.op, f.used, f.noConn, f.class = opPing, false, true, conn }),
			verdict{retry: retryFailover, suspect: true}},
		{"server error on the primary: pgx's value, nothing else",
			with(write, func(f *facts) { f.class, f.sent = classify.SQL, true }),
			verdict{report: reportAsIs}},
		{"25006 on the primary: it may have been demoted, probe now",
			with(write, func(f *facts) { f.class, f.sent = classify.ReadOnly, true }),
			verdict{suspect: true, report: reportAsIs}},
		{"the caller canceled before sending: its error, no retry",
			with(write, func(f *facts) { f.used, f.class = false, classify.Canceled }),
			verdict{report: reportAsIs}},

		// Reads.
		{"read broke before any row: another node",
			with(read, func(f *facts) { f.class, f.sent, f.broke = conn, true, true }),
			verdict{retry: retryReadFailover, exclude: true, discard: true}},
		{"read answered 57P01 before any row: another node",
			with(read, func(f *facts) { f.class, f.sent = shutdown, true }),
			verdict{retry: retryReadFailover, exclude: true, discard: true}},
		{"read broke after rows reached the caller: the caller's",
			with(read, func(f *facts) { f.class, f.sent, f.broke, f.rowsSeen = conn, true, true, true }),
			verdict{discard: true, report: reportNodeError}},
		{"read broke, attempts spent",
			with(read, func(f *facts) { f.class, f.sent, f.broke, f.attempt = conn, true, true, 3 }),
			verdict{discard: true, report: reportNodeError}},
		{"read could not dial: another node",
			with(read, func(f *facts) { f.noConn, f.class = true, conn }),
			verdict{retry: retryReadFailover, exclude: true}},
		{"read's node breaker open: another node",
			with(read, func(f *facts) { f.noConn, f.breakerOpen, f.class = true, true, classify.Other }),
			verdict{retry: retryReadFailover, exclude: true}},
		{"read got a server error: pgx's value",
			with(read, func(f *facts) { f.class, f.sent = classify.SQL, true }),
			verdict{report: reportAsIs}},
		{"the caller canceled a read: no retry",
			with(read, func(f *facts) { f.class, f.sent, f.broke = classify.Canceled, true, true }),
			verdict{discard: true, report: reportAsIs}},

		// Transactions (invariant 2: no retry, no re-routing).
		{"statement in a transaction broke: a plain error, the session is finished",
			with(inTx, func(f *facts) { f.class, f.sent, f.broke = conn, true, true }),
			verdict{suspect: true, discard: true, finish: true, report: reportNodeError}},
		{"statement in a read transaction broke: a plain error, no retry",
			with(inTx, func(f *facts) { f.slot, f.readOnly, f.class, f.sent, f.broke = slotRead, true, conn, true, true }),
			verdict{discard: true, report: reportNodeError}},
		{"serialization failure in a transaction: pgx's value (RunTx re-runs it)",
			with(inTx, func(f *facts) { f.class, f.sent = classify.Serialization, true }),
			verdict{report: reportAsIs}},
		{"ROLLBACK broke: a plain error",
			with(inTx, func(f *facts) { f.op, f.class, f.sent, f.broke = opRollback, conn, true, true }),
			verdict{suspect: true, discard: true, finish: true, report: reportNodeError}},
		{"another driver's COMMIT failed with a connection error, taken as sent (RunTx): commit unknown",
			facts{op: opCommit, inTx: true, class: conn, sent: true},
			verdict{suspect: true, discard: true, finish: true, report: reportCommitUnknown}},

		// A whole transaction (RunTx): run again only what PostgreSQL
		// rolled back for sure.
		{"transaction: serialization failure: again",
			with(wholeTx, func(f *facts) { f.class = classify.Serialization }),
			verdict{retry: retryTransaction}},
		{"transaction: deadlock: again",
			with(wholeTx, func(f *facts) { f.class = classify.Deadlock }),
			verdict{retry: retryTransaction}},
		{"transaction: connection lost before COMMIT was sent: again",
			with(wholeTx, func(f *facts) { f.class = conn }),
			verdict{retry: retryTransaction}},
		{"transaction: 57P01 before COMMIT was sent: again",
			with(wholeTx, func(f *facts) { f.class = shutdown }),
			verdict{retry: retryTransaction}},
		{"transaction: ErrCommitUnknown: never again",
			with(wholeTx, func(f *facts) { f.class, f.sent, f.broke = conn, true, true }),
			verdict{report: reportCommitUnknown}},
		{"transaction: ErrCommitUnknown after the caller's cancellation: never again",
			with(wholeTx, func(f *facts) { f.class, f.sent, f.broke = classify.Canceled, true, true }),
			verdict{report: reportCommitUnknown}},
		{"transaction: the caller canceled: never again",
			with(wholeTx, func(f *facts) { f.class = classify.Canceled }),
			verdict{}},
		{"transaction: serialization failure, attempts spent: its error",
			with(wholeTx, func(f *facts) { f.class, f.attempt = classify.Serialization, 3 }),
			verdict{}},
		{"transaction: a constraint violation: never again",
			with(wholeTx, func(f *facts) { f.class = classify.SQL }),
			verdict{}},
		{"transaction: fn's own error: never again",
			with(wholeTx, func(f *facts) { f.class = classify.Other }),
			verdict{}},
		{"transaction: 25006 (a write in a read-only transaction): never again",
			with(wholeTx, func(f *facts) { f.class = classify.ReadOnly }),
			verdict{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, decide(tc.f))
		})
	}
}

// TestOutcomeNeverResendsWhatMayHaveRun checks invariant 3 over every
// combination of the facts: a verdict that retries or returns
// driver.ErrBadConn never follows an attempt that may have run a write.
func TestOutcomeNeverResendsWhatMayHaveRun(t *testing.T) {
	classes := []classify.Class{classify.Canceled, classify.Connection, classify.ReadOnly, classify.AdminShutdown,
		classify.TooManyConnections, classify.Auth, classify.Serialization, classify.Deadlock, classify.SQL, classify.Other}
	ops := []opKind{opExec, opQuery, opPrepare, opPing, opBegin, opCommit, opRollback, opTx}
	n := 0
	for _, op := range ops {
		for _, sl := range []slot{slotPrimary, slotRead} {
			for _, cls := range classes {
				for bits := 0; bits < 1<<9; bits++ {
					b := func(i int) bool { return bits&(1<<i) != 0 }
					f := facts{op: op, slot: sl, mode: ReadWrite, class: cls, inTx: b(0), noConn: b(1), sent: b(2),
						broke: b(3), used: b(4), readOnly: b(5) || sl == slotRead, rowsSeen: b(6), mayWait: b(7), static: b(8),
						attempt: 1, retryMax: 3}
					if f.noConn && (f.sent || f.broke || f.inTx || f.rowsSeen) {
						continue // no connection: nothing sent, nothing broke, not in a transaction
					}
					if f.rowsSeen && (op != opQuery || !f.sent) {
						continue // only a query that was sent has rows
					}
					if op == opCommit || op == opRollback {
						f.inTx = true
					}
					if op == opTx && (sl != slotPrimary || f.inTx || f.noConn || f.used || f.rowsSeen) {
						continue // a whole transaction: only its error, and whether COMMIT may have been sent
					}
					n++
					v := decide(f)
					// Spelled out here, not f.mayHaveWritten(): a mutated rule
					// must not change what the test checks.
					mayWrite := op == opCommit || op == opTx ||
						(!f.inTx && sl == slotPrimary && !f.readOnly && (op == opExec || op == opQuery))
					wrote := f.sent && mayWrite
					if wrote && (v.retry != noRetry || v.report == reportBadConn) {
						t.Fatalf("%+v: sent again what may have run: %+v", f, v)
					}
					if wrote && (f.broke || cls == classify.Connection || cls == classify.AdminShutdown) && v.report != reportCommitUnknown {
						t.Fatalf("%+v: a write whose connection broke after it was sent is not flagged: %+v", f, v)
					}
					if f.inTx && v.retry != noRetry {
						t.Fatalf("%+v: retried inside a transaction: %+v", f, v)
					}
					if op == opTx && (v.discard || v.finish || v.suspect) {
						t.Fatalf("%+v: a whole transaction acted on a connection: %+v", f, v)
					}
					if f.slot == slotPrimary && f.used && (f.broke || cls == classify.Connection || cls == classify.AdminShutdown) && !f.noConn && !v.finish {
						t.Fatalf("%+v: a used primary session was lost and the logical connection goes on: %+v", f, v)
					}
					if f.rowsSeen && v.retry != noRetry {
						t.Fatalf("%+v: re-ran a read whose rows the caller has seen: %+v", f, v)
					}
				}
			}
		}
	}
	t.Logf("%d combinations", n)
}
