package unified

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/sony/gobreaker/v2"

	"github.com/unifiedsql/unified/internal/classify"
)

// Outcomes fed to a node's breaker: only node faults count as failures;
// the caller's cancellation is excluded from the counts.
var (
	errNodeFault  = errors.New("node fault")
	errNotCounted = errors.New("not counted")
)

// breaker is a node's circuit breaker plus the last node fault, which an
// open breaker reports alongside ErrCircuitOpen.
//
// Statements, dials and health probes all count their connection-class
// failures here. Probes do not ask the breaker for permission (they have
// their own backoff, see monitor), and a probe that succeeds closes an open
// breaker at once by replacing it: a node that answers again, for example a
// replica just promoted, must not stay fenced off for unified_breaker_open.
type breaker struct {
	name    string
	set     gobreaker.Settings
	cb      atomic.Pointer[gobreaker.TwoStepCircuitBreaker[struct{}]]
	lastErr atomic.Pointer[error]
	// gen counts state changes (of any breaker the node had) and
	// closedGen is the gen at which allows last saw the breaker closed:
	// while they are equal it is still closed, so that allows, asked for
	// every node a statement may use, is two atomic loads on the usual
	// path (gobreaker's State takes its lock and reads the clock).
	gen, closedGen atomic.Uint64
}

func newBreaker(cfg *Config, name string, log *slog.Logger) *breaker {
	b := &breaker{name: name}
	b.set = gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Timeout:     cfg.BreakerOpen,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= cfg.BreakerFailures
		},
		IsExcluded: func(err error) bool { return err == errNotCounted },
		// Runs under gobreaker's lock: it only records.
		OnStateChange: func(name string, from, to gobreaker.State) {
			b.gen.Add(1)
			log.Warn("unified: breaker changed", "node", name, "from", breakerName(from), "to", breakerName(to))
		},
	}
	b.cb.Store(gobreaker.NewTwoStepCircuitBreaker[struct{}](b.set))
	return b
}

func (b *breaker) state() gobreaker.State { return b.cb.Load().State() }

// allow asks the breaker for one request. When it is open the error wraps
// ErrCircuitOpen and the node's last fault.
func (b *breaker) allow(name string) (func(ctx context.Context, err error), error) {
	done, err := b.cb.Load().Allow()
	if err != nil {
		cause := err
		if last := b.lastErr.Load(); last != nil {
			cause = *last
		}
		return nil, &NodeError{Node: name, Op: opConnect.String(), Err: fmt.Errorf("%w: %w", ErrCircuitOpen, cause)}
	}
	return func(ctx context.Context, err error) { done(b.outcome(ctx, err)) }, nil
}

// outcome maps a request's error to what the breaker should count.
func (b *breaker) outcome(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	switch cls := classOf(ctx, err); {
	case cls.NodeFault():
		b.lastErr.Store(&err)
		return errNodeFault
	case cls == classify.Canceled:
		return errNotCounted
	default:
		return nil // the node answered: SQL errors say it is alive
	}
}

// record counts a failure seen outside allow (a statement on an
// established connection, a probe).
func (b *breaker) record(ctx context.Context, err error) {
	if !classOf(ctx, err).NodeFault() {
		return
	}
	if done, aerr := b.cb.Load().Allow(); aerr == nil {
		done(b.outcome(ctx, err))
	} else {
		b.lastErr.Store(&err)
	}
}

// healthy is called when a probe of the node succeeded: an open or
// half-open breaker is replaced by a closed one.
func (b *breaker) healthy() {
	cur := b.cb.Load()
	if cur.State() == gobreaker.StateClosed {
		return
	}
	if b.cb.CompareAndSwap(cur, gobreaker.NewTwoStepCircuitBreaker[struct{}](b.set)) && b.set.OnStateChange != nil {
		b.set.OnStateChange(b.name, cur.State(), gobreaker.StateClosed)
	}
}

// allows reports whether the breaker lets new work through; the router
// skips nodes whose breaker is open.
func (b *breaker) allows() bool {
	g := b.gen.Load()
	if b.closedGen.Load() == g {
		return true
	}
	st := b.state()
	if st == gobreaker.StateClosed {
		b.closedGen.Store(g) // a change since g makes gen differ again
	}
	return st != gobreaker.StateOpen
}

// classOf is classify.Of, except for a WithBeforeConnect hook's error: the
// caller's (Other), or a connection failure when it wraps ErrNodeFault.
func classOf(ctx context.Context, err error) classify.Class {
	var hook *hookError
	if errors.As(err, &hook) {
		if errors.Is(err, ErrNodeFault) {
			return classify.Connection
		}
		return classify.Other
	}
	return classify.Of(ctx, err)
}
