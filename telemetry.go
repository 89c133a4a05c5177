package unified

import (
	"context"
	"time"
)

// telemetry records metrics and traces. STUB: the OpenTelemetry
// implementation replaces this file; the call sites and signatures below
// are the contract.
type telemetry struct{}

func newTelemetry(c *Connector, o options) (*telemetry, error) { return &telemetry{}, nil }

// opRecord is one statement or transaction operation in flight. It is a
// value: starting one must not allocate when metrics and traces are off.
type opRecord struct {
	t     *telemetry
	start time.Time
}

// begin starts an operation: op is one of the op* names, query the SQL
// text (only its first keyword may be recorded, unless the user opted in),
// mode the statement's mode.
func (t *telemetry) begin(ctx context.Context, op, query string, mode Mode) opRecord {
	return opRecord{t: t, start: time.Now()}
}

// retry notes that the operation is re-sent (reason: "not_sent",
// "read_failover", "circuit_open").
func (r *opRecord) retry(reason string) {}

// failoverWait notes that the operation waited d for a new primary.
func (r *opRecord) failoverWait(d time.Duration) {}

// end finishes the operation on node n (nil when no node was reached) in
// role ro; err is what the caller gets.
func (r *opRecord) end(ctx context.Context, n *node, ro role, err error) {}

// failover records a completed failover: d from primary loss to new
// primary in use.
func (t *telemetry) failover(d time.Duration) {}

// close unregisters the asynchronous instruments' callbacks.
func (t *telemetry) close() error { return nil }
