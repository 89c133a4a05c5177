package unified

import (
	"context"
	"database/sql/driver"
	"errors"
	"strings"
	"time"

	"github.com/unifiedsql/unified/internal/classify"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// This file is the telemetry of one operation: its duration histogram
// record (with attribute sets cached per node, role, mode, operation name
// and error type) and its span.

// opRecord is one statement or transaction operation in flight. It is a
// value: starting one does not allocate when metrics and traces are off.
type opRecord struct {
	t       *telemetry
	ctx     context.Context // the span's context for exemplars; nil without a span
	start   time.Time       // zero when neither metrics nor traces were on at begin
	name    string          // db.operation.name; "" when unknown
	mode    Mode
	metrics bool       // the duration histogram was enabled at begin
	span    trace.Span // nil: tracing off
}

// begin starts an operation: op is its kind, query the SQL
// text (only its first keyword is recorded, unless the user opted in to
// SQL in spans), mode the statement's mode. The node is not known yet:
// end sets the server attributes.
func (t *telemetry) begin(ctx context.Context, op opKind, query string, mode Mode) opRecord {
	if t == nil {
		return opRecord{}
	}
	r := opRecord{t: t, mode: mode, metrics: t.duration.Enabled(ctx)}
	if !r.metrics && t.tracer == nil {
		return r
	}
	r.name = t.names.Operation(op.String(), query)
	r.start = time.Now()
	if t.tracer != nil {
		r.ctx, r.span = t.startSpan(ctx, op, query, r.name, mode)
	}
	return r
}

func (t *telemetry) startSpan(ctx context.Context, op opKind, query, name string, mode Mode) (context.Context, trace.Span) {
	spanName := name
	if spanName == "" || spanName == otherValue {
		spanName = "postgresql"
	}
	attrs := make([]attribute.KeyValue, 0, len(t.common)+3)
	attrs = append(attrs, t.common...)
	if name != "" {
		attrs = append(attrs, semconv.DBOperationNameKey.String(name))
	}
	if mode.valid() {
		attrs = append(attrs, keyMode.String(mode.String()))
	}
	if t.traceSQL && query != "" && op != opPing {
		attrs = append(attrs, semconv.DBQueryTextKey.String(query))
	}
	return t.tracer.Start(ctx, spanName, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
}

// spanParent returns a context that carries only ctx's span, for an
// operation that runs later without a context of its own (COMMIT and
// ROLLBACK get none from database/sql): BeginTx keeps it so that their
// spans are children of the caller's. Without tracing it is
// context.Background() and allocates nothing.
func (t *telemetry) spanParent(ctx context.Context) context.Context {
	if t == nil || t.tracer == nil {
		return context.Background()
	}
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return context.Background()
	}
	return trace.ContextWithSpanContext(context.Background(), sc)
}

// retry notes that the operation is sent again, and why.
func (r *opRecord) retry(reason retryReason) {
	if r == nil || r.t == nil {
		return
	}
	r.t.counts.retries.Add(1)
	r.t.retries.Add(r.context(), 1, r.t.retryOpts[reason]...)
	if r.span != nil {
		r.span.AddEvent("unified.retry", trace.WithAttributes(keyRetryReason.String(reason.String())))
	}
}

// sessionRead notes where a read with a session floor ran, and why.
func (r *opRecord) sessionRead(sl slot, why sessionReason) {
	if r == nil || r.t == nil {
		return
	}
	p := b2i(sl != slotRead)
	r.t.counts.sessionReads[p].Add(1)
	r.t.sessionReads.Add(r.context(), 1, r.t.sessionOpts[why][p]...)
}

// sessionFallback is sessionRead for a read the fallback session on the
// primary serves: counted as a session read only when it has a floor.
func (r *opRecord) sessionFallback(w readWant, why sessionReason) {
	if !w.floor.zero() {
		r.sessionRead(slotFallback, why)
	}
}

// floorWait notes the time a session read spent looking at a replica's
// replay position.
func (r *opRecord) floorWait(d time.Duration) {
	if r == nil || r.t == nil || !r.metrics {
		return
	}
	r.t.floorWait.Record(r.context(), d.Seconds())
}

// failoverWait notes that the operation waited d for a new primary.
func (r *opRecord) failoverWait(d time.Duration) {
	if r == nil || r.span == nil {
		return
	}
	r.span.AddEvent("unified.failover_wait", trace.WithAttributes(keyWaitSeconds.Float64(d.Seconds())))
}

func (r *opRecord) context() context.Context {
	if r.ctx != nil {
		return r.ctx
	}
	return context.Background()
}

// end finishes the operation on node n (nil when no node was reached) in
// slot sl (slotFallback for a read the primary served); err is what the
// caller gets.
func (r *opRecord) end(ctx context.Context, n *node, sl slot, err error) {
	t := r.t
	if t == nil {
		return
	}
	if errors.Is(err, driver.ErrSkip) {
		// Not an outcome: database/sql runs the statement again as
		// Prepare + Exec, which are recorded (and counted) themselves.
		if r.span != nil {
			r.span.End()
		}
		return
	}
	primary := sl != slotRead
	if n != nil && sl == slotFallback {
		t.counts.readFallbacks.Add(1)
		t.fallbacks.Add(r.contextOr(ctx), 1, n.tel.add...)
	}
	if r.start.IsZero() {
		return
	}
	var errType, code string
	if err != nil {
		errType, code = errorType(ctx, err)
	}
	if r.metrics {
		k := opKeyOf(n, primary, r.mode, r.name, errType, code)
		t.duration.Record(r.contextOr(ctx), time.Since(r.start).Seconds(), t.opSet(k)...)
	}
	if r.span != nil {
		if n != nil {
			r.span.SetAttributes(n.tel.attrs...)
		}
		r.span.SetAttributes(t.roleAttrs[b2i(!primary)]...)
		if err != nil {
			if code != "" {
				r.span.SetAttributes(semconv.DBResponseStatusCodeKey.String(code))
			}
			r.span.SetAttributes(semconv.ErrorTypeKey.String(errType))
			r.span.SetStatus(codes.Error, errType)
		}
		r.span.End()
	}
}

// contextOr is the span's context when there is a span (so exemplars point
// at it), else ctx.
func (r *opRecord) contextOr(ctx context.Context) context.Context {
	if r.ctx != nil {
		return r.ctx
	}
	return ctx
}

// errorType returns error.type for err, a low-cardinality value: the
// driver's own outcomes first ("commit_unknown", "circuit_open",
// "no_primary", "no_replica", "not_in_transaction"), then the SQLSTATE of
// a server error, then the error's class ("connection", "canceled", ...),
// "_OTHER" for anything else. The message is never used: it may hold
// data. code is the SQLSTATE, "" when there is none.
func errorType(ctx context.Context, err error) (typ, code string) {
	if c := classify.SQLState(err); validSQLState(c) {
		code = c
	}
	switch {
	case errors.Is(err, ErrCommitUnknown):
		return "commit_unknown", code
	case errors.Is(err, ErrCircuitOpen):
		return "circuit_open", code
	case errors.Is(err, ErrNoPrimary):
		return "no_primary", code
	case errors.Is(err, ErrNoReplica):
		return "no_replica", code
	case errors.Is(err, ErrNotInTransaction):
		return "not_in_transaction", code
	case code != "":
		return code, code
	}
	switch cls := classify.Of(ctx, err); cls {
	case classify.None, classify.Other, classify.SQL:
		return otherValue, ""
	default:
		return cls.String(), ""
	}
}

// validSQLState: five digits or upper-case letters. Anything else (another
// driver's notion of a state) is not recorded.
func validSQLState(s string) bool {
	if len(s) != 5 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'A' || c > 'Z') {
			return false
		}
	}
	return true
}

// opKey identifies one attribute set of db.client.operation.duration.
type opKey struct {
	// The node's server.address and server.port, not the node itself: a
	// node re-resolved from DNS or Patroni is a new *node with the same
	// series, and a dead one must not stay pinned in the cache.
	reached bool // a node was reached
	host    string
	port    int
	primary bool
	mode    Mode
	name    string
	errType string
	code    string
}

// opKeyOf is the key of an operation that reached node n (nil: none).
func opKeyOf(n *node, primary bool, mode Mode, name, errType, code string) opKey {
	k := opKey{primary: primary, mode: mode, name: name, errType: errType, code: code}
	if n != nil {
		k.reached, k.host, k.port = true, n.host, n.port
	}
	return k
}

// opSet returns the options Record needs for k, cached.
func (t *telemetry) opSet(k opKey) []metric.RecordOption {
	opts, _ := t.opSets.Get(k, func() (opKey, []metric.RecordOption) {
		own := k
		own.errType, own.code = strings.Clone(k.errType), strings.Clone(k.code) // do not pin the error
		return own, []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(t.opAttrs(own)...))}
	})
	return opts
}

// opAttrs lists the attributes of one db.client.operation.duration series.
func (t *telemetry) opAttrs(k opKey) []attribute.KeyValue {
	attrs := append([]attribute.KeyValue{}, t.common...)
	if k.name != "" {
		attrs = append(attrs, semconv.DBOperationNameKey.String(k.name))
	}
	if k.reached {
		// server.address and server.port, as in the node's own attributes:
		// unified.node would repeat them, and the SDK's cost per Record
		// grows with the attribute count.
		attrs = append(attrs, semconv.ServerAddressKey.String(k.host), semconv.ServerPortKey.Int(k.port))
	}
	if k.mode.valid() {
		attrs = append(attrs, keyMode.String(k.mode.String()))
	}
	attrs = append(attrs, t.roleAttrs[b2i(!k.primary)]...)
	if k.errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(k.errType))
	}
	if k.code != "" {
		attrs = append(attrs, semconv.DBResponseStatusCodeKey.String(k.code))
	}
	return attrs
}
