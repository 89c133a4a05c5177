package unified

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/unifiedsql/unified/internal/classify"
)

// Mode is the access mode of a statement or transaction. It travels in the
// statement's context.Context (see [WithMode]) and decides which node runs it.
//
// The zero value means "not set": such a statement runs in the Connector's
// default mode ([Config.DefaultMode], [ReadWrite] unless the DSN says
// otherwise).
type Mode int

// The access modes. Each is documented in the package manual, section Modes.
const (
	// ReadWrite runs on the primary, exactly as pgx stdlib would.
	ReadWrite Mode = iota + 1
	// ReadOnly runs on an eligible replica (healthy, breaker closed, within the
	// lag bounds); without one it follows unified_read_fallback.
	ReadOnly
	// Batch runs on the primary, admitted through the unified_max_batch_conns
	// bulkhead so that bulk work cannot take every connection.
	Batch
	// Transactional runs on the primary and only inside a transaction: a
	// statement outside one fails with ErrNotInTransaction.
	Transactional
)

var modeNames = spellings[Mode]{
	ReadWrite:     "read-write",
	ReadOnly:      "read-only",
	Batch:         "batch",
	Transactional: "transactional",
}

// String returns the mode's DSN spelling ("read-write", "read-only", "batch",
// "transactional"), or "Mode(n)" for a value outside the enum.
func (m Mode) String() string { return modeNames.format(m, "Mode") }

// valid reports whether m is one of the declared modes.
func (m Mode) valid() bool { return modeNames.valid(m) }

// hints are what a context tells the router: the mode ([WithMode]), the
// session ([WithSession]) and the lag bound ([WithMaxLag]). They travel
// under one key, so that a statement reads all three with one context
// lookup; each With function copies the hints it finds and changes one.
type hints struct {
	mode    Mode
	session *Session
	maxLag  time.Duration
	lagSet  bool
}

type hintsKey struct{}

// hintsFrom returns the hints ctx carries (the zero hints when none).
func hintsFrom(ctx context.Context) hints {
	if h, ok := ctx.Value(hintsKey{}).(*hints); ok {
		return *h
	}
	return hints{}
}

func withHints(ctx context.Context, edit func(*hints)) context.Context {
	h := hintsFrom(ctx)
	edit(&h)
	return context.WithValue(ctx, hintsKey{}, &h)
}

// WithMode returns a copy of ctx that carries the access mode m. Statements
// and transactions started with the returned context are routed by m. An
// invalid m (zero or out of range) is stored as given and treated as unset.
func WithMode(ctx context.Context, m Mode) context.Context {
	return withHints(ctx, func(h *hints) { h.mode = m })
}

// ModeFrom returns the mode carried by ctx and whether one was set with a
// valid value.
func ModeFrom(ctx context.Context) (Mode, bool) {
	m := hintsFrom(ctx).mode
	if !m.valid() {
		return 0, false
	}
	return m, true
}

// WithMaxLag returns a copy of ctx whose ReadOnly statements run only on a
// replica shown to be at most d behind the primary in time, instead of
// unified_max_replica_lag: tighter or looser, for this statement only. A
// replica whose lag is not known yet (behind every sample of the primary's
// position this process holds) does not qualify; unified_max_replica_lag_bytes
// still applies. Without a qualifying replica the read follows
// unified_read_fallback, as any read. d <= 0 removes a bound set before.
func WithMaxLag(ctx context.Context, d time.Duration) context.Context {
	return withHints(ctx, func(h *hints) { h.maxLag, h.lagSet = d, d > 0 })
}

// RunTx runs fn in a transaction begun with opts (nil: the defaults) on the
// primary (a ReadOnly opts or context begins on a replica, as BeginTx does),
// commits it when fn returns nil and rolls it back otherwise.
//
// It re-runs the whole of fn, with jittered exponential backoff, when the
// transaction failed with a serialization failure (SQLSTATE 40001), a
// deadlock (40P01), or lost its connection before COMMIT was sent: in all
// of these PostgreSQL rolled the transaction back, so nothing of it was
// committed. It never re-runs after a COMMIT of unknown outcome: that
// error, wrapping [ErrCommitUnknown], is returned. fn must therefore be
// safe to run more than once, and side effects outside the database belong
// after RunTx returns.
//
// Attempts are bounded by unified_retry_max and by ctx. For a DB that is not
// a unified DB, the defaults apply (3 attempts, 50ms..1s) and a COMMIT whose
// connection broke is reported as ErrCommitUnknown as well.
func RunTx(ctx context.Context, db *sql.DB, opts *sql.TxOptions, fn func(*sql.Tx) error) error {
	attempts, initial, maxBackoff := 3, 50*time.Millisecond, time.Second
	if c, ok := ConnectorOf(db); ok {
		attempts, initial, maxBackoff = c.cfg.RetryMax, c.cfg.RetryBackoffInitial, c.cfg.RetryBackoffMax
	}
	bo := &backoff.ExponentialBackOff{InitialInterval: initial, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: maxBackoff}
	if _, ok := ModeFrom(ctx); !ok {
		ctx = WithMode(ctx, Transactional)
	}
	for attempt := 1; ; attempt++ {
		err := runTxOnce(ctx, db, opts, fn)
		if err == nil {
			return nil
		}
		// The whole transaction is one operation of the rule book: a
		// COMMIT of unknown outcome (sent, its connection broke) and the
		// caller's cancellation end it, a rollback for sure runs it again.
		unknown := errors.Is(err, ErrCommitUnknown)
		f := facts{op: opTx, class: classify.Of(ctx, err), sent: unknown, broke: unknown, attempt: attempt, retryMax: attempts}
		if decide(f).retry == noRetry {
			return err
		}
		t := time.NewTimer(bo.NextBackOff())
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

func runTxOnce(ctx context.Context, db *sql.DB, opts *sql.TxOptions, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		if _, ok := ConnectorOf(db); ok {
			return err // unified already flagged a commit of unknown outcome
		}
		// Another driver: a COMMIT whose connection broke may have landed,
		// whatever the error claims (pgx reports some post-send breaks as
		// safe to retry), so it is taken as sent.
		if decide(facts{op: opCommit, inTx: true, class: classify.Of(ctx, err), sent: true}).report == reportCommitUnknown {
			return fmt.Errorf("%w: %w", ErrCommitUnknown, err)
		}
		return err
	}
	return nil
}
