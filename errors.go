package unified

import (
	"errors"
	"strings"
)

// Sentinel errors. Match them with errors.Is: the errors the package returns
// wrap them together with the node's own error.
var (
	// ErrNoPrimary: no node is the primary, and none became one within
	// unified_failover_timeout or the caller's deadline.
	ErrNoPrimary = errors.New("unified: no primary available")
	// ErrNoReplica: a ReadOnly statement found no eligible replica and
	// unified_read_fallback is "error".
	ErrNoReplica = errors.New("unified: no eligible replica")
	// ErrCircuitOpen: the node's circuit breaker is open; the call failed
	// fast without touching the network.
	ErrCircuitOpen = errors.New("unified: circuit breaker open")
	// ErrCommitUnknown: the connection broke after a COMMIT, or an autocommit
	// write, was sent. The write may or may not have been committed; it was
	// not re-sent. The caller must check before doing it again.
	ErrCommitUnknown = errors.New("unified: commit outcome unknown")
	// ErrAlreadyRegistered: Register was called with a name that is taken by
	// a different configuration.
	ErrAlreadyRegistered = errors.New("unified: name already registered")
	// ErrNotInTransaction: a Transactional statement was run outside a
	// transaction.
	ErrNotInTransaction = errors.New("unified: statement outside a transaction in transactional mode")
	// ErrClosed: the Connector (and so its *sql.DB) was closed.
	ErrClosed = errors.New("unified: connector is closed")
	// ErrNodeFault, wrapped in a WithBeforeConnect hook's error, counts
	// that failed dial against the node's circuit breaker.
	ErrNodeFault = errors.New("unified: node fault")
)

// hookError is a WithBeforeConnect hook's error: the caller's
// configuration failed, not the node (unless it wraps ErrNodeFault). Its
// message has the password the hook set replaced.
type hookError struct {
	msg string
	err error
}

func (e *hookError) Error() string { return "before connect: " + e.msg }
func (e *hookError) Unwrap() error { return e.err }

// NodeError is the driver's own error about one node: a connection that
// could not be made or broke, an open breaker, a commit of unknown outcome.
// Node is the node's name (host:port, never a password), Op what was being
// done ("connect", "exec", "query", "prepare", "begin", "commit",
// "rollback", "ping", "probe"). What a server answered (a constraint
// violation, a syntax error) is returned as pgx returns it, never wrapped.
type NodeError struct {
	Node string
	Op   string
	Err  error
}

// Error is "unified: <op> on <node>: <error>", with the package prefix
// once even when Err is one of the sentinels above.
func (e *NodeError) Error() string {
	msg := "<nil>"
	if e.Err != nil {
		msg = strings.TrimPrefix(e.Err.Error(), "unified: ")
	}
	return "unified: " + e.Op + " on " + e.Node + ": " + msg
}

// Unwrap returns the underlying error, so errors.Is and errors.As see both
// the sentinel (when one is wrapped) and the driver's error.
func (e *NodeError) Unwrap() error { return e.Err }
